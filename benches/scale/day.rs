//! What needs no fleet: the inventory's parse, validation and plan at
//! 10,000 machines, and a simulated day of the store.

use super::*;

/// The inventory of `size` machines: parsed and validated, then planned against itself plus one.
pub(super) fn inventory_at(size: usize) {
    let spec = Spec {
        count: size,
        ..spec(size)
    };
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("links.yaml".into(), inventory(&spec).into_bytes());
    files.insert("scripts.yaml".into(), SCRIPTS.as_bytes().to_vec());
    let started = Instant::now();
    let applied = linkops_reconcilers::desired::load("a", &files).unwrap();
    let loaded = started.elapsed();
    let bigger = Spec {
        count: size + 1,
        ..spec.clone()
    };
    files.insert("links.yaml".into(), inventory(&bigger).into_bytes());
    let proposed = linkops_reconcilers::desired::load("b", &files).unwrap();
    let started = Instant::now();
    let changes =
        linkops_reconcilers::plan::plan(&proposed, &applied, &BTreeMap::new(), &BTreeMap::new());
    let planned = started.elapsed();
    assert_eq!(changes.len(), 1);
    println!(
        "inventory of {size} machines ({} KiB): parsed and validated in {} ms, planned in {} ms",
        files["links.yaml"].len() / 1024,
        loaded.as_millis(),
        planned.as_millis()
    );
}

/// A day of a fleet of `size` in a store, written as the daemon writes it:
/// every machine checked every 60 s (statuses from `machine::observe`,
/// group-committed 512 at a time; 0.5 % of machines down, 2 % flapping every
/// hour), a fan-out to every machine each hour (200 bytes of output each),
/// and a retention pass every 10 minutes with the default `[retention]`.
/// Prints the store's size and what it holds at the end.
pub(super) fn store_after_a_day(size: usize) {
    use linkops::store::{HealthSample, OperationUpdate, StatusWrite, Store};
    use linkops_reconcilers::enrollment::ClientIdReading;
    use linkops_reconcilers::machine::{self, CheckResult};
    use linkops_reconcilers::operation::{
        HostResult, HostState, Operation, OperationEvent, OperationState, Requester, Stream,
    };

    const MINUTE_MS: i64 = 60_000;
    let spec = Spec {
        count: size,
        ..spec(size)
    };
    let files = BTreeMap::from([
        ("links.yaml".to_owned(), inventory(&spec).into_bytes()),
        ("scripts.yaml".to_owned(), SCRIPTS.as_bytes().to_vec()),
    ]);
    let desired = linkops_reconcilers::desired::load("a", &files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path).unwrap();
    let policy = linkops::store::Retention::from(&linkops::config::RetentionConfig::default());
    let begun = Instant::now();
    let day_start = linkops::store::now_ms();
    let mut pruned = 0;
    let mut statuses: Vec<Option<machine::MachineStatus>> = vec![None; size];
    for minute in 0..24 * 60 {
        let now = day_start + minute * MINUTE_MS;
        let hour = minute / 60;
        let writes: Vec<StatusWrite> = desired
            .machines
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let down = spec.is_down(index) || (index % 50 == 7 && hour % 2 == 1);
                let reading = match down {
                    true => ClientIdReading::Unreachable(format!(
                        "cannot connect to bench@{}:2222: Connection refused (os error 111)",
                        entry.host
                    )),
                    false => ClientIdReading::Content(format!(
                        "LINKOPS-{}\n",
                        simulated::uuid(spec.seed, index)
                    )),
                };
                let result = CheckResult {
                    latency_ms: 3,
                    reading,
                };
                let at = now + (index as i64 * MINUTE_MS) / size as i64;
                let observed =
                    machine::observe(entry, statuses[index].take(), result, "a", at).status;
                statuses[index] = Some(observed.clone());
                StatusWrite {
                    sample: Some(HealthSample {
                        at_ms: at,
                        health: observed.health.clone(),
                        enrolled: observed.enrollment.is_enrolled(),
                    }),
                    status: observed,
                    audits: Vec::new(),
                    outgoing: Vec::new(),
                }
            })
            .collect();
        for batch in writes.chunks(512) {
            store.put_machine_statuses(batch).unwrap();
        }
        if minute % 60 == 30 {
            let machines: Vec<String> = desired.machines.iter().map(|m| m.id.clone()).collect();
            let hosts: Vec<HostResult> = machines
                .iter()
                .map(|id| HostResult {
                    machine_id: id.clone(),
                    state: HostState::Pending,
                    started_at_ms: None,
                    finished_at_ms: None,
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                    certificate: None,
                })
                .collect();
            let operation = store
                .create_operation(
                    &Operation {
                        id: 0,
                        script: "client-id".into(),
                        params: BTreeMap::new(),
                        machines: machines.clone(),
                        requested_by: Requester::User {
                            name: "admin".into(),
                        },
                        state: OperationState::Running,
                        created_at_ms: now,
                        finished_at_ms: None,
                        rollout: None,
                        retry_of: None,
                        secrets: Vec::new(),
                    },
                    "local",
                    &hosts,
                    None,
                    |_| Vec::new(),
                )
                .unwrap();
            for batch in hosts.chunks(256) {
                let mut update = OperationUpdate::default();
                for host in batch {
                    update.events.push(OperationEvent::Output {
                        machine_id: host.machine_id.clone(),
                        stream: Stream::Stdout,
                        data: [b"x".repeat(199), b"\n".to_vec()].concat(),
                    });
                    let done = HostResult {
                        state: HostState::Succeeded,
                        started_at_ms: Some(now),
                        finished_at_ms: Some(now + 1000),
                        stdout_bytes: 200,
                        ..host.clone()
                    };
                    update.events.push(OperationEvent::Host {
                        machine_id: host.machine_id.clone(),
                        state: done.state.clone(),
                    });
                    update.hosts.push(done);
                }
                store.record_operation_update(operation.id, update).unwrap();
            }
            let update = OperationUpdate {
                state: Some((OperationState::Succeeded, true)),
                events: vec![OperationEvent::Operation {
                    state: OperationState::Succeeded,
                }],
                ..OperationUpdate::default()
            };
            store.record_operation_update(operation.id, update).unwrap();
        }
        if minute % 10 == 9 {
            pruned += store.prune(&policy, now).unwrap().health_samples;
        }
        if minute % 60 == 59 {
            eprintln!(
                "simulated hour {}: {:.0} MiB, {:.0} s",
                hour + 1,
                std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64,
                begun.elapsed().as_secs_f64()
            );
        }
    }
    let bytes = std::fs::metadata(&path).unwrap().len();
    let kept: usize = desired
        .machines
        .iter()
        .map(|m| store.health_history(&m.id, usize::MAX).unwrap().len())
        .sum();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let tables: Vec<String> = store
        .table_sizes()
        .unwrap()
        .into_iter()
        .take(5)
        .map(|(name, bytes)| format!("{name} {:.0} MiB", mib(bytes)))
        .collect();
    println!(
        "a simulated day of {size} machines in the store: {:.0} MiB on disk ({}), {kept} health samples kept of {} written ({pruned} pruned), 24 operations × {size} machines of output; written in {:.0} s",
        mib(bytes),
        tables.join(", "),
        size * 24 * 60,
        begun.elapsed().as_secs_f64()
    );
}
