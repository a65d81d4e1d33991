//! What the store lets go, so its size is bounded by settings rather than by
//! how long the daemon has run: health history thinned with age
//! (`reconcilers::retention`), the output of operations that ended long
//! ago and, later, the operations themselves (sync attempts are bounded as
//! they are recorded: `sync.rs`), and the
//! records of declared states that left Git, or of machines that left a
//! state's targets, once their grace passed. Run in batches of small
//! transactions, so writers never wait long.

use std::time::Duration;

use linkops_reconcilers::retention::{self, HealthRetention, Sample};
use serde::{Deserialize, Serialize};

use super::engine::{Json, Read, Table, Write};
use super::schema::{
    APPLIED_STATE, HEALTH_HISTORY, META, OPERATION_EVENTS, OPERATION_HOSTS, OPERATIONS,
    STATE_CHECKS, STATE_STATUS, STATE_TARGETS,
};
use super::{Result, Store};

/// Machines whose history one transaction thins.
const MACHINES_PER_BATCH: usize = 200;
/// Departed records of states on machines one transaction removes.
const TARGETS_PER_BATCH: usize = 200;
/// Operations whose output (or whole record) one transaction removes.
const OPERATIONS_PER_BATCH: usize = 20;
/// `META` key: operations with a smaller id have had their output judged.
const OUTPUT_JUDGED_BELOW: &str = "retention.output_judged_below";

/// What to keep (`[retention]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub health: HealthRetention,
    /// The output of an operation that ended longer ago than this goes; its
    /// record, per-machine results and states stay…
    pub operation_output: Duration,
    /// …until it ended longer ago than this: then it goes whole.
    pub operations: Duration,
    /// A declared state's records stay this long after it left Git (its
    /// record on a machine, after the machine left its targets).
    pub departed_states: Duration,
}

impl From<&crate::config::RetentionConfig> for Retention {
    fn from(config: &crate::config::RetentionConfig) -> Retention {
        Retention {
            health: HealthRetention {
                full: config.health_full,
                bucket: config.health_bucket,
                window: config.health_window,
                max_samples: config.health_max_samples,
            },
            operation_output: config.operation_output,
            operations: config.operations,
            departed_states: config.departed_states,
        }
    }
}

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub health_samples: u64,
    pub output_events: u64,
    /// Operations gone whole (record, per-machine results, events).
    pub operations: u64,
    /// Records of states, and of states on machines, with their checks.
    pub state_records: u64,
    /// Revocations of certificates long expired.
    pub revocations: u64,
}

/// Only the tag of a stored operation event (its data is not decoded).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    event: EventKind,
}

#[derive(Serialize, Deserialize)]
struct EventKind {
    #[serde(rename = "type")]
    kind: String,
}

/// The operations' event logs, read for their tags only.
const EVENT_KINDS: Table<(u64, u64), Json<StoredEvent>> = Table::new(OPERATION_EVENTS.name);

impl Store {
    /// One retention pass at `now_ms`. Blocking: run it off the async runtime.
    pub fn prune(&self, policy: &Retention, now_ms: i64) -> Result<Pruned> {
        Ok(Pruned {
            health_samples: self.prune_health(&policy.health, now_ms)?,
            output_events: self.prune_output(policy.operation_output, now_ms)?,
            operations: self.prune_operations(policy.operations, now_ms)?,
            state_records: self.prune_departed_states(policy.departed_states, now_ms)?,
            revocations: self.prune_expired_revocations(now_ms)?,
        })
    }

    /// Lets go of the records of states Git no longer declares, and of
    /// states on machines their targets no longer select, once `grace`
    /// passed without anything happening to them. Nothing goes before a
    /// revision was applied.
    fn prune_departed_states(&self, grace: Duration, now_ms: i64) -> Result<u64> {
        use linkops_reconcilers::retention::{departed, last_activity};
        let (gone_targets, gone_states) = {
            let tx = self.read()?;
            let Some((_, desired)) = tx.all(APPLIED_STATE, false).next().transpose()? else {
                return Ok(0);
            };
            let selected: std::collections::HashMap<&str, std::collections::HashSet<String>> =
                desired
                    .states
                    .values()
                    .map(|state| {
                        let machines = state.targets.select(&desired.machines);
                        (state.id.as_str(), machines.into_iter().collect())
                    })
                    .collect();
            let mut targets = Vec::new();
            // States with a record on a machine that stays: a state goes once it has none.
            let mut still_held = std::collections::HashSet::new();
            for entry in tx.all(STATE_TARGETS, false) {
                let ((state, machine), target) = entry?;
                let declared = selected
                    .get(state.as_str())
                    .is_some_and(|machines| machines.contains(&machine));
                if departed(declared, last_activity(&target), grace, now_ms) {
                    targets.push((state, machine));
                } else {
                    still_held.insert(state);
                }
            }
            let mut states = Vec::new();
            for entry in tx.all(STATE_STATUS, false) {
                let (id, status) = entry?;
                let declared = desired.states.contains_key(&id);
                if !still_held.contains(&id)
                    && departed(declared, status.updated_at_ms, grace, now_ms)
                {
                    states.push(id);
                }
            }
            (targets, states)
        };
        let mut removed = 0;
        for batch in gone_targets.chunks(TARGETS_PER_BATCH) {
            let mut tx = self.write()?;
            for (state, machine) in batch {
                let (state, machine) = (state.as_str(), machine.as_str());
                let checks: Vec<i64> = tx
                    .range(
                        STATE_CHECKS,
                        (state, machine, i64::MIN)..=(state, machine, i64::MAX),
                    )
                    .map(|entry| entry.map(|((_, _, at), _)| at))
                    .collect::<Result<_>>()?;
                for at in checks {
                    tx.remove(STATE_CHECKS, (state, machine, at))?;
                }
                tx.remove(STATE_TARGETS, (state, machine))?;
                removed += 1;
            }
            tx.commit()?;
        }
        if !gone_states.is_empty() {
            let mut tx = self.write()?;
            for id in &gone_states {
                tx.remove(STATE_STATUS, id.as_str())?;
                removed += 1;
            }
            tx.commit()?;
        }
        Ok(removed)
    }

    fn prune_health(&self, policy: &HealthRetention, now_ms: i64) -> Result<u64> {
        let mut removed = 0;
        let mut after: Option<String> = None;
        loop {
            let mut tx = self.write()?;
            let next = {
                let mut machines = Vec::new();
                let mut cursor = after.clone();
                while machines.len() < MACHINES_PER_BATCH {
                    let start = match &cursor {
                        // The first key after every sample of the previous machine.
                        Some(id) => tx
                            .range(HEALTH_HISTORY, (id.as_str(), i64::MAX)..)
                            .find(|entry| entry.as_ref().map_or(true, |((of, _), _)| of != id)),
                        None => tx.all(HEALTH_HISTORY, false).next(),
                    };
                    let Some(entry) = start else { break };
                    let ((id, _), _) = entry?;
                    cursor = Some(id.clone());
                    machines.push(id);
                }
                for id in &machines {
                    let mut samples = Vec::new();
                    let mut previous: Option<(String, bool)> = None;
                    let all = (id.as_str(), i64::MIN)..=(id.as_str(), i64::MAX);
                    for entry in tx.range(HEALTH_HISTORY, all) {
                        let ((_, at_ms), sample) = entry?;
                        let state = (sample.health.name().to_owned(), sample.enrolled);
                        samples.push(Sample {
                            at_ms,
                            changed: previous.as_ref().is_some_and(|p| *p != state),
                        });
                        previous = Some(state);
                    }
                    for at in retention::expired(&samples, now_ms, policy) {
                        tx.remove(HEALTH_HISTORY, (id.as_str(), at))?;
                        removed += 1;
                    }
                }
                (machines.len() == MACHINES_PER_BATCH)
                    .then_some(cursor)
                    .flatten()
            };
            tx.commit()?;
            match next {
                Some(id) => after = Some(id),
                None => return Ok(removed),
            }
        }
    }

    /// Lets go of operations that ended before `keep`, oldest first, each
    /// whole: its record, index entries, per-machine results and events. The
    /// newest operation always stays: a new one's id is the newest's plus
    /// one, and an id must never name two operations (run-requests, fires
    /// and approvals keep the id they started).
    fn prune_operations(&self, keep: Duration, now_ms: i64) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        let mut removed = 0;
        loop {
            let mut tx = self.write()?;
            let Some((newest, _)) = tx.last(OPERATIONS)? else {
                return Ok(removed);
            };
            let mut ended = Vec::new();
            for entry in tx.range(OPERATIONS, ..newest) {
                let (_, operation) = entry?;
                // As for output: one not ended before the cutoff waits, and those after it.
                if operation.finished_at_ms.is_none_or(|at| at >= cutoff)
                    || ended.len() == OPERATIONS_PER_BATCH
                {
                    break;
                }
                ended.push(operation);
            }
            for operation in &ended {
                let id = operation.id;
                let hosts: Vec<String> = tx
                    .range(OPERATION_HOSTS, (id, "")..(id.saturating_add(1), ""))
                    .map(|entry| entry.map(|((_, machine), _)| machine))
                    .collect::<Result<_>>()?;
                for machine in hosts {
                    tx.remove(OPERATION_HOSTS, (id, machine.as_str()))?;
                }
                let events: Vec<u64> = tx
                    .range(EVENT_KINDS, (id, 0)..=(id, u64::MAX))
                    .map(|entry| entry.map(|((_, seq), _)| seq))
                    .collect::<Result<_>>()?;
                for seq in events {
                    tx.remove(OPERATION_EVENTS, (id, seq))?;
                }
                super::scan::unindex_operation(&mut tx, operation)?;
                tx.remove(OPERATIONS, id)?;
            }
            tx.commit()?;
            removed += ended.len() as u64;
            if ended.len() < OPERATIONS_PER_BATCH {
                return Ok(removed);
            }
        }
    }

    fn prune_output(&self, keep: Duration, now_ms: i64) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        let mut removed = 0;
        loop {
            let mut tx = self.write()?;
            let mut judged = 0;
            let mut more = false;
            {
                let from = tx.get(META, OUTPUT_JUDGED_BELOW)?.unwrap_or(0);
                let mut below = from;
                let mut ended = Vec::new();
                for entry in tx.range(OPERATIONS, from..) {
                    let (_, operation) = entry?;
                    // Ids grow with creation time, and an operation ends within its
                    // timeout: one not ended before the cutoff waits, and those after it.
                    if operation.finished_at_ms.is_none_or(|at| at >= cutoff) {
                        break;
                    }
                    if judged == OPERATIONS_PER_BATCH {
                        more = true;
                        break;
                    }
                    ended.push(operation.id);
                    judged += 1;
                    below = operation.id + 1;
                }
                for id in ended {
                    let outputs: Vec<u64> = tx
                        .range(EVENT_KINDS, (id, 0)..=(id, u64::MAX))
                        .filter_map(|entry| match entry {
                            Ok(((_, seq), stored)) => {
                                (stored.event.kind == "output").then_some(Ok(seq))
                            }
                            Err(error) => Some(Err(error)),
                        })
                        .collect::<Result<_>>()?;
                    for seq in outputs {
                        tx.remove(OPERATION_EVENTS, (id, seq))?;
                        removed += 1;
                    }
                }
                if below != from {
                    tx.insert(META, OUTPUT_JUDGED_BELOW, &below)?;
                }
            }
            tx.commit()?;
            if !more {
                return Ok(removed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing;
    use linkops_reconcilers::machine::{Health, MachineStatus};
    use linkops_reconcilers::operation::{
        Operation, OperationEvent, OperationState, Requester, Stream,
    };

    use super::*;
    use crate::store::{HealthSample, OperationUpdate, now_ms};

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    const EVERY: i64 = 10 * MINUTE;

    /// An operation of `uptime` on machine `m`, running from now.
    fn running_on_m() -> Operation {
        Operation {
            id: 0,
            script: "uptime".into(),
            params: Default::default(),
            machines: vec!["m".into()],
            requested_by: Requester::User { name: "ada".into() },
            state: OperationState::Running,
            created_at_ms: now_ms(),
            finished_at_ms: None,
            rollout: None,
            retry_of: None,
            secrets: Vec::new(),
        }
    }

    fn policy() -> Retention {
        Retention {
            health: HealthRetention {
                full: Duration::from_secs(3600),
                bucket: Duration::from_secs(3600),
                window: Duration::from_secs(7 * 86400),
                max_samples: 1000,
            },
            operation_output: Duration::from_secs(30 * 86400),
            operations: Duration::from_secs(90 * 86400),
            departed_states: Duration::from_secs(30 * 86400),
        }
    }

    #[test]
    fn records_of_departed_states_and_machines_go_after_their_grace() {
        use crate::store::{StateWrite, SyncOutcome, SyncRecord};
        use linkops_reconcilers::desired::DesiredState;
        use linkops_reconcilers::state::{CheckOutcome, CheckRecord, StateStatus, Target};
        for backing in testing::backings() {
            let store = backing.open();
            let write = |state: &str, machines: &[&str]| StateWrite {
                status: StateStatus::new(state, "d", "r", 0),
                targets: machines.iter().map(|m| Target::new(state, m, 0)).collect(),
                checks: machines
                    .iter()
                    .map(|m| {
                        let check = CheckRecord {
                            digest: "d".into(),
                            at_ms: 0,
                            duration_ms: 1,
                            outcome: CheckOutcome::Holds,
                            output: String::new(),
                        };
                        (m.to_string(), check)
                    })
                    .collect(),
                audits: vec![],
                outgoing: vec![],
            };
            store.put_state(write("kept", &["web1", "web2"])).unwrap();
            store.put_state(write("gone", &["web1"])).unwrap();
            // Git now declares `kept` on web1 only, and no `gone`.
            let files: linkops_reconcilers::desired::RepoFiles = [
                ("links.yaml", "machines:\n  - {id: web1, name: W, host: h, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935}\n  - {id: web2, name: W, host: h, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f936}\n"),
                ("scripts.yaml", "scripts:\n  - {id: s, name: S, body: 'true', check: 'true'}\n"),
                ("states/kept.yaml", "id: kept\nscript: s\ntargets: {machines: [web1]}\n"),
            ]
            .into_iter()
            .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
            .collect();
            let desired: DesiredState = linkops_reconcilers::desired::load("r2", &files).unwrap();
            let applied = SyncRecord {
                seq: 0,
                started_at_ms: 0,
                duration_ms: 0,
                trigger: "test".into(),
                revision: Some("r2".into()),
                previous: None,
                outcome: SyncOutcome::Applied {
                    changed_files: vec![],
                    forced: false,
                },
            };
            store
                .record_sync(applied, Some(&desired), None, 10, &[])
                .unwrap();
            // Within the grace nothing goes; after it, what left Git does.
            let within = store.prune(&policy(), 29 * DAY).unwrap();
            assert_eq!(within.state_records, 0);
            let after = store.prune(&policy(), 31 * DAY).unwrap();
            assert_eq!(after.state_records, 3, "kept/web2, gone/web1 and gone");
            assert!(store.state_status("gone").unwrap().is_none());
            assert!(store.state_status("kept").unwrap().is_some());
            let kept = store.state_targets("kept").unwrap();
            assert_eq!(kept.keys().collect::<Vec<_>>(), ["web1"]);
            assert!(store.state_checks("kept", "web2").unwrap().is_empty());
            assert_eq!(store.state_checks("kept", "web1").unwrap().len(), 1);
        }
    }

    #[test]
    fn an_empty_store_prunes_nothing() {
        for backing in testing::backings() {
            let store = backing.open();
            assert_eq!(
                store.prune(&policy(), 1_000_000).unwrap(),
                Pruned::default()
            );
        }
    }

    #[test]
    fn two_days_of_checks_keep_the_last_hour_one_per_hour_and_every_change() {
        for backing in testing::backings() {
            let store = backing.open();
            // More machines than one batch, each checked every 10 minutes for two
            // days; the first machine is unreachable for one check of the first day.
            let machines = MACHINES_PER_BATCH + 3;
            let now = 2 * DAY;
            let down = DAY / 2 + 20 * MINUTE;
            // One transaction: a commit per check would take minutes.
            let mut tx = store.write().unwrap();
            {
                for machine in 0..machines {
                    let id = format!("m{machine:03}");
                    for check in 0..=(2 * DAY / EVERY) {
                        let at_ms = check * EVERY;
                        let health = if machine == 0 && at_ms == down {
                            Health::Unreachable {
                                error: "gone".into(),
                            }
                        } else {
                            Health::Reachable { latency_ms: 1 }
                        };
                        let sample = HealthSample {
                            at_ms,
                            health,
                            enrolled: true,
                        };
                        tx.insert(HEALTH_HISTORY, (id.as_str(), at_ms), &sample)
                            .unwrap();
                    }
                }
            }
            tx.commit().unwrap();
            // A check as the daemon records it lands beside them.
            let checked = crate::store::StatusWrite {
                status: MachineStatus::new("m000"),
                sample: Some(HealthSample {
                    at_ms: now,
                    health: Health::Reachable { latency_ms: 1 },
                    enrolled: true,
                }),
                audits: Vec::new(),
                outgoing: Vec::new(),
            };
            store.put_machine_statuses(&[checked]).unwrap();
            let pruned = store.prune(&policy(), now).unwrap();
            // Per machine: the 7 samples of the last hour and the first of each of the 47 hours before.
            let kept_per_machine = 7 + 47;
            let written = (2 * DAY / EVERY + 1) as usize;
            let changes = 2; // down, and up again
            assert_eq!(
                pruned.health_samples as usize,
                machines * (written - kept_per_machine) - changes
            );
            let first = store.health_history("m000", usize::MAX).unwrap();
            assert_eq!(first.len(), kept_per_machine + changes);
            assert!(first.iter().any(|s| s.at_ms == down));
            assert!(first.iter().any(|s| s.at_ms == down + EVERY));
            let last = store
                .health_history(&format!("m{:03}", machines - 1), usize::MAX)
                .unwrap();
            assert_eq!(last.len(), kept_per_machine);
            // A second pass finds nothing more to let go.
            assert_eq!(store.prune(&policy(), now).unwrap(), Pruned::default());
        }
    }

    #[test]
    fn output_of_operations_that_ended_long_ago_goes_and_their_record_stays() {
        for backing in testing::backings() {
            let store = backing.open();
            let operation = running_on_m();
            let output = |text: &str| OperationEvent::Output {
                machine_id: "m".into(),
                stream: Stream::Stdout,
                data: text.as_bytes().to_vec(),
            };
            let mut ids = Vec::new();
            for finished in [true, true, false] {
                let id = store
                    .create_operation(&operation, "local", &[], None, |_| Vec::new())
                    .unwrap()
                    .id;
                let mut events = vec![output("one\n"), output("two\n")];
                let mut state = None;
                if finished {
                    events.push(OperationEvent::End {
                        state: OperationState::Succeeded,
                    });
                    state = Some((OperationState::Succeeded, true));
                }
                let update = OperationUpdate {
                    events,
                    state,
                    ..OperationUpdate::default()
                };
                store.record_operation_update(id, update).unwrap();
                ids.push(id);
            }
            let kinds = |id: u64| -> Vec<&'static str> {
                let events = store.operation_events(id, 0, 100, 1 << 20).unwrap();
                events
                    .iter()
                    .map(|e| match e.event {
                        OperationEvent::Output { .. } => "output",
                        OperationEvent::End { .. } => "end",
                        _ => "other",
                    })
                    .collect()
            };
            // Within the month, nothing goes.
            assert_eq!(store.prune(&policy(), now_ms()).unwrap(), Pruned::default());
            let later = now_ms() + 31 * DAY;
            let pruned = store.prune(&policy(), later).unwrap();
            assert_eq!(pruned.output_events, 4);
            // Its states stay (the operation's start, its end).
            assert_eq!(kinds(ids[0]), ["other", "end"]);
            assert_eq!(kinds(ids[1]), ["other", "end"]);
            // The unfinished one keeps its output, and is judged again next time.
            assert_eq!(kinds(ids[2]), ["other", "output", "output"]);
            assert!(store.operation(ids[0]).unwrap().is_some());
            assert_eq!(store.prune(&policy(), later).unwrap(), Pruned::default());
        }
    }

    #[test]
    fn operations_that_ended_long_ago_go_whole_and_their_ids_never_come_back() {
        use super::super::schema::OPERATION_INDEX;
        use linkops_reconcilers::operation::{HostResult, HostState};
        for backing in testing::backings() {
            let store = backing.open();
            let operation = running_on_m();
            let host = HostResult {
                machine_id: "m".into(),
                state: HostState::Running,
                started_at_ms: None,
                finished_at_ms: None,
                stdout_bytes: 0,
                stderr_bytes: 0,
                certificate: None,
            };
            // Ended, still running, ended, ended (the newest).
            let mut ids = Vec::new();
            for finished in [true, false, true, true] {
                let id = (store.create_operation(
                    &operation,
                    "local",
                    std::slice::from_ref(&host),
                    None,
                    |_| Vec::new(),
                ))
                .unwrap()
                .id;
                let update = OperationUpdate {
                    events: vec![OperationEvent::Output {
                        machine_id: "m".into(),
                        stream: Stream::Stdout,
                        data: b"up\n".to_vec(),
                    }],
                    state: finished.then_some((OperationState::Succeeded, true)),
                    ..OperationUpdate::default()
                };
                store.record_operation_update(id, update).unwrap();
                ids.push(id);
            }
            let index_entries = |id: u64| {
                let tx = store.read().unwrap();
                let all = tx.all(OPERATION_INDEX, false);
                (all.filter(|entry| entry.as_ref().unwrap().0.2 == id)).count()
            };
            assert_eq!(index_entries(ids[0]), 3, "state, script, machine");
            // Within the 90 days nothing goes but output.
            let pruned = store.prune(&policy(), now_ms() + 89 * DAY).unwrap();
            assert_eq!(pruned.operations, 0);
            let later = now_ms() + 91 * DAY;
            let pruned = store.prune(&policy(), later).unwrap();
            // The first goes whole; the running one waits, and those after it.
            assert_eq!(pruned.operations, 1);
            assert!(store.operation(ids[0]).unwrap().is_none());
            assert!(
                store
                    .operation_events(ids[0], 0, 100, 1 << 20)
                    .unwrap()
                    .is_empty()
            );
            let mut hosts = 0;
            (store.scan_operation_hosts(Some(ids[0]), |_, _| {
                hosts += 1;
                true
            }))
            .unwrap();
            assert_eq!(hosts, 0);
            assert_eq!(index_entries(ids[0]), 0);
            assert!(store.operation(ids[1]).unwrap().is_some());

            // Once it ends, those after it go too, but never the newest.
            let ended = OperationUpdate {
                state: Some((OperationState::Succeeded, true)),
                ..OperationUpdate::default()
            };
            store.record_operation_update(ids[1], ended).unwrap();
            let pruned = store.prune(&policy(), now_ms() + 181 * DAY).unwrap();
            assert_eq!(pruned.operations, 2);
            assert!(
                store.operation(ids[3]).unwrap().is_some(),
                "the newest stays"
            );
            let next = (store.create_operation(&operation, "local", &[], None, |_| Vec::new()))
                .unwrap()
                .id;
            assert_eq!(next, ids[3] + 1, "an id never names two operations");
        }
    }
}
