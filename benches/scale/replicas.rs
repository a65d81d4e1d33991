//! Three replicas on one PostgreSQL store sharing a simulated fleet (issue
//! 35, goal 5): the fleet observed through any of them, each replica's
//! memory and CPU over a sweep, a fan-out through one to every machine, and
//! one killed (`kill -9`) mid-sweep, its share taken over and checked.
//!
//! `SCALE_REPLICAS=3000,6000` sets the sizes (0 skips it); what the two cores
//! hold bounds the largest.

use super::*;

/// Replicas sharing the store.
const REPLICAS: usize = 3;

/// What three replicas did with one size of fleet.
pub(super) struct ReplicaRow {
    pub size: usize,
    /// From the first replica's start until every machine is observed (read through the last).
    pub observed: Duration,
    /// The longest gap between a machine's two checks, read through the first replica.
    pub gap: Option<Duration>,
    /// Each replica's RSS after the sweep, and its CPU over it.
    pub replicas: Vec<(u64, Duration)>,
    pub fanout: Duration,
    /// From the kill until every machine was checked after it.
    pub all_checked_after_kill: Option<Duration>,
}

pub(super) fn sizes() -> Vec<usize> {
    std::env::var("SCALE_REPLICAS")
        .unwrap_or_else(|_| "3000,6000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&size| size > 0)
        .collect()
}

pub(super) async fn measure(size: usize) -> ReplicaRow {
    let server =
        testbed::postgres::TestPostgres::start().expect("the benchmark needs Debian's postgresql");
    let database = server.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, fleet) = simulated_fleet(dir.path(), size);
    let repo = config_repo(dir.path(), &fleet.spec);
    // Every replica signs tokens and certificates with the same keys.
    let authority = dir.path().join("ca");
    linkops::ssh::ca::Authority::open(&authority).unwrap();
    let mut datas = Vec::new();
    for replica in 0..REPLICAS {
        let data = data_dir(
            &dir.path().join(format!("replica-{replica}")),
            &key,
            &fleet.spec,
            &repo.dir,
        );
        shared_store(&data, &database, &authority);
        datas.push(data);
    }
    common::create_admin(&postgres_store(&database));
    let started = Instant::now();
    let mut replicas = Vec::new();
    for data in &datas {
        replicas.push(Daemon::start(data, &[]).await);
    }
    let client = reqwest::Client::new();
    let last = replicas.last().unwrap();
    let id: fn(&MachineView) -> &str = |m| &m.spec.id;
    let observed = until_machines(
        last.url(),
        &last.token,
        "every machine observed through the last replica",
        id,
        |machines| machines.len() == size && machines.iter().all(|m| m.checked_at.is_some()),
    )
    .await
    .unwrap();
    let observed_after = started.elapsed();
    let first = checked(&observed);

    let cpu_before: Vec<Duration> = replicas.iter().map(|r| cpu_time(r.process.pid())).collect();
    tokio::time::sleep(Duration::from_secs(66)).await;
    let through = &replicas[0];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut gap = None;
    while gap.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = machines(&client, through).await;
        gap = longest_gap(&first, &now);
    }
    let per_replica = (replicas.iter().zip(cpu_before))
        .map(|(replica, before)| {
            let pid = replica.process.pid();
            (
                status_kib(pid, "VmRSS:"),
                cpu_time(pid).saturating_sub(before),
            )
        })
        .collect();

    let fanout = through.fan_out(&client).await;

    // One replica killed mid-sweep: every machine checked again after it,
    // its share by the other two once they have taken it over.
    let before = machines(&client, through).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let killed_at = jiff::Timestamp::now();
    let killed = Instant::now();
    let victim = replicas.last().unwrap().process.pid() as i32;
    let victim = rustix::process::Pid::from_raw(victim).expect("a live replica");
    rustix::process::kill_process(victim, rustix::process::Signal::KILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut all_checked_after_kill = None;
    while all_checked_after_kill.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = machines(&client, through).await;
        let after_kill = now
            .iter()
            .filter(|m| m.checked_at.is_some_and(|at| at > killed_at))
            .count();
        if after_kill == before.len() {
            all_checked_after_kill = Some(killed.elapsed());
        }
    }
    let row = ReplicaRow {
        size,
        observed: observed_after,
        gap,
        replicas: per_replica,
        fanout,
        all_checked_after_kill,
    };
    println!(
        "{size} machines on {REPLICAS} replicas: observed {:.1} s, longest gap {:?}, fan-out through one {:.1} s, every machine checked {:?} after a replica's kill -9",
        row.observed.as_secs_f64(),
        row.gap,
        row.fanout.as_secs_f64(),
        row.all_checked_after_kill
    );
    drop(replicas);
    drop(fleet);
    row
}

/// Points the daemon of `data` at the shared database, with the keys replicas share.
fn shared_store(data: &Path, database: &testbed::postgres::Database, authority: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let private = |path: PathBuf, content: &str| {
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    private(data.join("keys/postgres_password"), &database.password);
    private(
        data.join("jwt_secret"),
        "bench-replicas-share-this-signing-key",
    );
    testbed::copy_private(authority, &data.join("ca"));
    let config = data.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[store]\nbackend = \"postgres\"\nurl = {:?}\n",
        database.url
    ));
    std::fs::write(config, text).unwrap();
}

fn postgres_store(database: &testbed::postgres::Database) -> linkops::store::Store {
    let options = linkops::store::engine::postgres::Options::with_password(
        database.url.clone(),
        database.password.clone(),
    );
    linkops::store::Store::connect(&options).unwrap()
}

async fn machines(client: &reqwest::Client, replica: &Daemon) -> Vec<MachineView> {
    common::get_json(
        client,
        &format!("{}/api/links", replica.url()),
        &replica.token,
    )
    .await
}

fn checked(machines: &[MachineView]) -> BTreeMap<String, jiff::Timestamp> {
    (machines.iter())
        .filter_map(|m| Some((m.spec.id.clone(), m.checked_at?)))
        .collect()
}

/// The longest gap between a machine's check in `first` and its latest in
/// `now`, once every machine has a later one.
fn longest_gap(first: &BTreeMap<String, jiff::Timestamp>, now: &[MachineView]) -> Option<Duration> {
    let mut longest = Duration::ZERO;
    for machine in now {
        let before = first.get(&machine.spec.id)?;
        let after = machine.checked_at.filter(|at| at > before)?;
        longest = longest.max(Duration::try_from(after.duration_since(*before)).ok()?);
    }
    Some(longest)
}

pub(super) fn print(rows: &[ReplicaRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\n| machines on {REPLICAS} replicas | all observed (through another) | longest gap between two checks | RSS of each | CPU of each in the sweep | fan-out through one | all checked after a kill -9 |"
    );
    println!("|---:|---:|---:|---|---|---:|---:|");
    for row in rows {
        let rss: Vec<String> = (row.replicas.iter())
            .map(|(rss, _)| format!("{:.0}", *rss as f64 / 1024.0))
            .collect();
        let cpu: Vec<String> = (row.replicas.iter())
            .map(|(_, cpu)| format!("{:.1}", cpu.as_secs_f64()))
            .collect();
        let seconds = |d: Option<Duration>| {
            d.map_or("not in time".into(), |d| {
                format!("{:.1} s", d.as_secs_f64())
            })
        };
        println!(
            "| {} | {:.1} s | {} | {} MiB | {} s | {:.1} s | {} |",
            row.size,
            row.observed.as_secs_f64(),
            seconds(row.gap),
            rss.join(" / "),
            cpu.join(" / "),
            row.fanout.as_secs_f64(),
            seconds(row.all_checked_after_kill),
        );
    }
}
