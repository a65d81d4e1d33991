//! Fan-out benchmark: `cat /etc/linkops/client_id` on 50 real sshd hosts.
//!
//! Side by side in one run: LinkOps through its whole API path
//! (`POST /api/operations/run` until the SSE `end` event) cold (no pooled
//! connections) and warm, a bare russh client (this crate's `ssh` module: no
//! API, no store), `parallel-ssh -p 50` and `ansible all -m raw -f 50` (cold
//! and with ControlPersist warm). Then one operation printing 10 MiB on one
//! host, watched by 200 SSE clients: delivery time and the daemon's peak RSS.
//!
//! Run as root with pssh and ansible-core installed: `cargo bench --bench fanout`.
//! `FANOUT_ONLY=store`: the warm fan-out with the store in redb, in
//! PostgreSQL, and through one of three replicas sharing it.
//! `FANOUT_ONLY=takeover`: three replicas on one PostgreSQL store with the
//! fleet; how long until the others own a replica's machines after it is
//! killed, and after it is paused, over 20 rounds each.
//! `FANOUT_ONLY=certificates`: the fleet's static key against certificates
//! signed per login, cold and warm, and what signing one costs.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, read_to_end};
use linkops::config::SshConfig;
use linkops::ssh::{ConnectOptions, Connection, KeyFile, Target};
use serde_json::{Value, json};
use testbed::{TEST_USER, TestFleet};

const HOSTS: usize = 50;
const REPETITIONS: usize = 5;
const FLOOD_BYTES: usize = 10 << 20;
const SSE_CLIENTS: usize = 200;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    // FANOUT_ONLY=pool: what keeping a connection costs with real sshd (1,000 hosts).
    if std::env::var("FANOUT_ONLY").is_ok_and(|only| only == "pool") {
        pooled_memory().await;
        return;
    }
    let fleet = TestFleet::start(HOSTS).expect("the benchmark needs root and openssh-server");
    let repo = common::config_repo(
        &fleet,
        "scripts:\n  - {id: client-id, name: Client id, body: cat /etc/linkops/client_id}\n  - {id: flood, name: Flood, body: \"head -c 10485760 /dev/zero | tr '\\\\0' x\"}\n",
    )
    .dir;
    // FANOUT_ONLY=store: the warm fan-out on each store engine, side by side.
    if std::env::var("FANOUT_ONLY").is_ok_and(|only| only == "store") {
        let rows = store_engines(&fleet, &repo).await;
        print_against("| store | median | vs redb | runs (s) |", &rows, |_| 0);
        return;
    }
    // FANOUT_ONLY=certificates: static keys against certificates signed per login.
    if std::env::var("FANOUT_ONLY").is_ok_and(|only| only == "certificates") {
        let rows = certificates(&fleet, &repo).await;
        // Each row against the key's of its kind: cold the first, warm the third.
        let key_row = |index| if index < 2 { 0 } else { 2 };
        print_against("| login | median | vs the key | runs (s) |", &rows, key_row);
        return;
    }
    if std::env::var("FANOUT_ONLY").is_ok_and(|only| only == "takeover") {
        takeover(&fleet, &repo).await;
        return;
    }
    // FANOUT_ONLY=sse runs the SSE part alone (for quick iterations on it).
    if std::env::var("FANOUT_ONLY").is_ok_and(|only| only == "sse") {
        let daemon = Daemon::start(&fleet, &repo, "sse", "10m").await;
        daemon.wait_enrolled().await;
        sse_flood(&daemon).await;
        return;
    }
    // FANOUT_ONLY=warm: LinkOps warm against the bare client warm (goal 3), alone.
    if std::env::var("FANOUT_ONLY").is_ok_and(|only| only == "warm") {
        let warm = Daemon::start(&fleet, &repo, "warm", "10m").await;
        let linkops = warm_runs(&warm, 4 * REPETITIONS).await;
        let bare = bare_warm(&fleet).await;
        let script = bare_warm_as_a_script(&fleet).await;
        print_goal(median(&linkops), median(&bare), median(&script));
        return;
    }
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();

    // LinkOps, cold: the pool closes connections idle for 1 s; each run waits them out.
    let cold = Daemon::start(&fleet, &repo, "cold", "1s").await;
    rows.push((
        "LinkOps API, cold".into(),
        cold_runs(&cold, REPETITIONS).await,
    ));
    drop(cold);

    // LinkOps, warm: connections stay pooled.
    let warm = Daemon::start(&fleet, &repo, "warm", "10m").await;
    rows.push((
        "LinkOps API, warm".into(),
        warm_runs(&warm, REPETITIONS).await,
    ));
    drop(warm);
    rows.extend(store_engines(&fleet, &repo).await);
    let warm = Daemon::start(&fleet, &repo, "warm-again", "10m").await;
    warm.wait_enrolled().await;

    rows.push(("bare russh client, cold".into(), bare_cold(&fleet).await));
    rows.push(("bare russh client, warm".into(), bare_warm(&fleet).await));
    rows.push((
        "bare russh client, warm, running the script as the daemon does".into(),
        bare_warm_as_a_script(&fleet).await,
    ));
    rows.push(("parallel-ssh -p 50".into(), repeat(|| pssh(&fleet))));
    let control = fleet.dir().join("ansible-cp-cold");
    rows.push((
        "ansible -m raw -f 50, cold".into(),
        repeat(|| {
            std::fs::remove_dir_all(&control).ok();
            ansible(&fleet, &control)
        }),
    ));
    let control = fleet.dir().join("ansible-cp-warm");
    ansible(&fleet, &control);
    rows.push((
        "ansible -m raw -f 50, ControlPersist warm".into(),
        repeat(|| ansible(&fleet, &control)),
    ));

    print_table(&rows);
    sse_flood(&warm).await;
}

/// Real sshd hosts whose connections a daemon keeps, for [`pooled_memory`].
const POOLED_HOSTS: usize = 1000;

/// What an idle pooled connection to real OpenSSH costs the daemon (issue 35,
/// goal 1, beside the simulated fleet's in `cargo bench --bench scale`): a
/// daemon keeping 256 connections, then one keeping every machine's, each
/// after every machine was checked and a fan-out read every client id.
async fn pooled_memory() {
    let fleet =
        TestFleet::start(POOLED_HOSTS).expect("the benchmark needs root and openssh-server");
    let repo = common::config_repo(
        &fleet,
        "scripts:\n  - {id: client-id, name: Client id, body: cat /etc/linkops/client_id}\n",
    )
    .dir;
    let body =
        json!({ "script": "client-id", "targets": { "tags": ["bench"] }, "concurrency": 256 });
    let mut kept = Vec::new();
    for pool in [256, POOLED_HOSTS] {
        let ssh = format!("pool_size = {pool}");
        let daemon =
            Daemon::start_with_ssh(&fleet, &repo, &format!("pool-{pool}"), "1h", &ssh).await;
        daemon.wait_enrolled().await;
        daemon.run_to_end(body.clone()).await;
        let (warm, _) = daemon.run_to_end(body.clone()).await;
        let rss = daemon.rss_kib();
        println!(
            "{POOLED_HOSTS} real sshd, {pool} connections kept: RSS {} MiB, a warm fan-out {:.2} s",
            rss / 1024,
            warm.as_secs_f64()
        );
        kept.push((pool, rss, warm));
    }
    let [(few, few_rss, few_warm), (all, all_rss, all_warm)] = kept[..] else {
        unreachable!("two daemons measured");
    };
    let each = all_rss.saturating_sub(few_rss) as f64 / (all - few) as f64;
    println!(
        "\n| {POOLED_HOSTS} real sshd | connections kept | daemon RSS | fan-out, warm |\n|---|---:|---:|---:|\n| as shipped | {few} | {} MiB | {:.2} s |\n| every machine's | {all} | {} MiB | {:.2} s |\n\nAn idle pooled connection to OpenSSH: {each:.0} KiB (goal < 15 KiB).",
        few_rss / 1024,
        few_warm.as_secs_f64(),
        all_rss / 1024,
        all_warm.as_secs_f64()
    );
}

/// The fan-out through the API cold: the pool closes connections idle for
/// 1 s (`daemon` started so), each run waits them out.
async fn cold_runs(daemon: &Daemon, runs: usize) -> Vec<Duration> {
    daemon.wait_enrolled().await;
    let mut times = Vec::new();
    for _ in 0..runs {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let body = json!({ "script": "client-id", "targets": { "tags": ["bench"] } });
        times.push(daemon.run_to_end(body).await.0);
    }
    times
}

/// The fan-out through the API warm: after one run, connections stay pooled.
async fn warm_runs(daemon: &Daemon, runs: usize) -> Vec<Duration> {
    daemon.wait_enrolled().await;
    let body = json!({ "script": "client-id", "targets": { "tags": ["bench"] } });
    daemon.run_to_end(body.clone()).await;
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(daemon.run_to_end(body.clone()).await.0);
    }
    times
}

/// The fan-out with the fleet's static key against certificates signed for
/// each login (the same hosts, trusting the daemon's CA): cold, then warm —
/// with each operation's own login (`[ssh] login_per_operation`, as shipped)
/// and sharing the pooled connection.
async fn certificates(fleet: &TestFleet, keys: &Path) -> Vec<(String, Vec<Duration>)> {
    const RUNS: usize = 9;
    let scripts =
        "scripts:\n  - {id: client-id, name: Client id, body: cat /etc/linkops/client_id}\n";
    let certified = common::certificate_repo(fleet, scripts).dir;
    let authority = linkops::ssh::ca::Authority::open(&common::shared_ca(fleet)).unwrap();
    let certifier =
        linkops::ssh::ca::Certifier::new(Arc::new(authority), "bench", Duration::from_secs(600));
    let purpose = linkops_reconcilers::certificate::Purpose::Health;
    let mut signing: Vec<Duration> = (0..1000)
        .map(|_| {
            let started = Instant::now();
            let from = std::net::Ipv4Addr::LOCALHOST.into();
            certifier.certify(TEST_USER, &purpose, from).unwrap();
            started.elapsed()
        })
        .collect();
    signing.sort();
    println!(
        "signing a user certificate: {:.1} µs (median of 1,000)",
        signing[500].as_secs_f64() * 1e6
    );
    let mut rows = Vec::new();
    let daemon = Daemon::start(fleet, keys, "key-cold", "1s").await;
    rows.push((
        "static key, cold".to_owned(),
        cold_runs(&daemon, RUNS).await,
    ));
    drop(daemon);
    let daemon = Daemon::start(fleet, &certified, "certificate-cold", "1s").await;
    rows.push((
        "certificates, cold".to_owned(),
        cold_runs(&daemon, RUNS).await,
    ));
    drop(daemon);
    let daemon = Daemon::start(fleet, keys, "key-warm", "10m").await;
    rows.push((
        "static key, warm".to_owned(),
        warm_runs(&daemon, RUNS).await,
    ));
    drop(daemon);
    let daemon = Daemon::start(fleet, &certified, "certificate-warm", "10m").await;
    let label = "certificates, warm, a login per operation (as shipped)";
    rows.push((label.to_owned(), warm_runs(&daemon, RUNS).await));
    drop(daemon);
    let shared = "login_per_operation = false";
    let daemon =
        Daemon::start_with_ssh(fleet, &certified, "certificate-shared", "10m", shared).await;
    let label = "certificates, warm, operations on the pooled login";
    rows.push((label.to_owned(), warm_runs(&daemon, RUNS).await));
    drop(daemon);
    rows
}

/// The warm fan-out through the API with the store in redb, then in PostgreSQL.
async fn store_engines(fleet: &TestFleet, repo: &Path) -> Vec<(String, Vec<Duration>)> {
    let server =
        testbed::postgres::TestPostgres::start().expect("the benchmark needs Debian's postgresql");
    let database = server.database().unwrap();
    let mut rows = Vec::new();
    for (name, postgres) in [("redb", None), ("postgres", Some(&database))] {
        let daemon = Daemon::start_on(fleet, repo, &format!("store-{name}"), "10m", postgres).await;
        daemon.wait_enrolled().await;
        let body = json!({ "script": "client-id", "targets": { "tags": ["bench"] } });
        daemon.run_to_end(body.clone()).await;
        let mut times = Vec::new();
        for _ in 0..REPETITIONS * 4 {
            times.push(daemon.run_to_end(body.clone()).await.0);
        }
        rows.push((format!("LinkOps API, warm, store in {name}"), times));
    }
    // Three replicas share the database (and the fleet's checks); the
    // operations run on the one the API call reached.
    let shared = server.database().unwrap();
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(
            Daemon::start_on(fleet, repo, &format!("shared-{name}"), "10m", Some(&shared)).await,
        );
    }
    until_members(&replicas.iter().collect::<Vec<_>>(), 3).await;
    let through = &replicas[0];
    through.wait_enrolled().await;
    let body = json!({ "script": "client-id", "targets": { "tags": ["bench"] } });
    through.run_to_end(body.clone()).await;
    let mut times = Vec::new();
    for _ in 0..REPETITIONS * 4 {
        times.push(through.run_to_end(body.clone()).await.0);
    }
    rows.push((
        "LinkOps API, warm, one of three replicas on postgres".into(),
        times,
    ));
    rows
}

/// Rounds of each kind of takeover measured.
const TAKEOVER_ROUNDS: usize = 20;

/// Three replicas on one store: each round one is killed (or paused, then
/// resumed: it stops by itself) and replaced; the time from the signal
/// until both others list only each other as members, which is when its
/// machines, run-requests and states have their new owners (and the leader
/// marks its operations interrupted).
async fn takeover(fleet: &TestFleet, repo: &Path) {
    use rustix::process::Signal;
    let server =
        testbed::postgres::TestPostgres::start().expect("the benchmark needs Debian's postgresql");
    let database = server.database().unwrap();
    let mut started = 0;
    let mut start = async || {
        started += 1;
        Daemon::start_on(
            fleet,
            repo,
            &format!("replica-{started}"),
            "10m",
            Some(&database),
        )
        .await
    };
    let mut replicas = vec![start().await, start().await, start().await];
    until_members(&replicas.iter().collect::<Vec<_>>(), 3).await;
    let mut rows = Vec::new();
    for kind in ["kill -9", "SIGSTOP"] {
        let mut times = Vec::new();
        for round in 0..TAKEOVER_ROUNDS {
            let victim = replicas.remove(round % 3);
            let at = Instant::now();
            let paused = match kind {
                "kill -9" => {
                    victim.kill_9();
                    None
                }
                _ => {
                    victim.signal(Signal::STOP);
                    Some(victim)
                }
            };
            until_members(&replicas.iter().collect::<Vec<_>>(), 2).await;
            times.push(at.elapsed());
            if let Some(paused) = paused {
                paused.signal(Signal::CONT);
                assert!(
                    !paused.exited().success(),
                    "a paused replica stops when it wakes"
                );
            }
            replicas.insert(round % 3, start().await);
            until_members(&replicas.iter().collect::<Vec<_>>(), 3).await;
        }
        rows.push((format!("after {kind}"), times));
    }
    println!("
| takeover ({TAKEOVER_ROUNDS} rounds, 3 replicas, {HOSTS} machines) | p50 | p99 | max |\n|---|---|---|---|");
    for (name, mut times) in rows {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64();
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.2} s |",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}

/// Waits until every one of `replicas` lists exactly `members` live members.
async fn until_members(replicas: &[&Daemon], members: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut agreed = true;
        for replica in replicas {
            let view = replica
                .api(reqwest::Method::GET, "/api/cluster", None)
                .await;
            agreed &= view["members"]
                .as_array()
                .is_some_and(|m| m.len() == members);
        }
        if agreed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas never agreed on {members} members"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Host `index` of `fleet` with the fleet's client key; connections as the
/// default `[ssh]` makes them, trusting exactly the fleet's host keys.
fn reach(fleet: &TestFleet, index: usize) -> (Target, ConnectOptions) {
    let (host, key) = (fleet.host(index), KeyFile::at(fleet.client_key()));
    let target = Target::new(
        host.address().to_string(),
        host.port(),
        TEST_USER.into(),
        key,
    );
    let known_hosts = fleet.known_hosts().to_owned();
    (
        target,
        ConnectOptions::new(&SshConfig::default(), known_hosts, Default::default()),
    )
}

async fn bare_cold(fleet: &TestFleet) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..REPETITIONS {
        let started = Instant::now();
        let tasks: Vec<_> = (0..HOSTS)
            .map(|i| {
                let (target, options) = reach(fleet, i);
                tokio::spawn(async move {
                    let connection = Connection::open(&target, &options).await.unwrap();
                    read_client_id(&connection).await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().status.success());
        }
        times.push(started.elapsed());
    }
    times
}

async fn bare_warm(fleet: &TestFleet) -> Vec<Duration> {
    warm_execs(fleet, "cat /etc/linkops/client_id", "").await
}

/// The bare client warm, running the script as the daemon does: its command
/// line (the shell's pid, the environment, `exec sh`) with the body on stdin.
/// The difference to LinkOps is the daemon's own (API, store, SSE); to
/// [`bare_warm`], what running a script costs each machine.
async fn bare_warm_as_a_script(fleet: &TestFleet) -> Vec<Duration> {
    let script = linkops_reconcilers::script::Script {
        id: "client-id".into(),
        name: "Client id".into(),
        description: String::new(),
        body: "cat /etc/linkops/client_id\n".into(),
        check: None,
        interpreter: "sh".into(),
        params: Vec::new(),
        timeout: Duration::from_secs(30),
        max_parallel: None,
        targets: Default::default(),
    };
    let command = linkops::operations::command_line(
        &script,
        &Default::default(),
        |_| false,
        &Default::default(),
    )
    .unwrap();
    warm_execs(fleet, &command, &script.body).await
}

/// `command` (with `stdin`) on every host at once over connections opened
/// beforehand, [`REPETITIONS`] times.
async fn warm_execs(fleet: &TestFleet, command: &str, stdin: &str) -> Vec<Duration> {
    let mut connections = Vec::new();
    for i in 0..HOSTS {
        let (target, options) = reach(fleet, i);
        let connection = Connection::open(&target, &options).await.unwrap();
        connections.push(Arc::new(connection));
    }
    let mut times = Vec::new();
    for _ in 0..REPETITIONS {
        let started = Instant::now();
        let tasks: Vec<_> = (connections.iter().cloned())
            .map(|connection| {
                let (command, stdin) = (command.to_owned(), stdin.to_owned());
                tokio::spawn(async move {
                    let execution = connection
                        .exec(&command, stdin.as_bytes(), Duration::from_secs(30))
                        .await
                        .unwrap();
                    execution.collect(128).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().status.success());
        }
        times.push(started.elapsed());
    }
    times
}

/// The bare client's unit of work: the enrollment check's command on a new channel.
async fn read_client_id(connection: &Connection) -> linkops::ssh::Output {
    connection
        .exec("cat /etc/linkops/client_id", b"", Duration::from_secs(30))
        .await
        .unwrap()
        .collect(128)
        .await
        .unwrap()
}

fn repeat(mut once: impl FnMut() -> Duration) -> Vec<Duration> {
    (0..REPETITIONS).map(|_| once()).collect()
}

fn pssh(fleet: &TestFleet) -> Duration {
    let hosts = fleet.dir().join("pssh-hosts");
    let lines: String = fleet
        .hosts()
        .iter()
        .map(|h| format!("{}:{}\n", h.address(), h.port()))
        .collect();
    std::fs::write(&hosts, lines).unwrap();
    let started = Instant::now();
    let output = Command::new("parallel-ssh")
        .args(["-p", "50", "-l", TEST_USER, "-h"])
        .arg(&hosts)
        .arg("-x")
        .arg(format!(
            "-i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            fleet.client_key().display(),
            fleet.known_hosts().display()
        ))
        .arg("cat /etc/linkops/client_id")
        .output()
        .expect("parallel-ssh (apt-get install pssh)");
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    elapsed
}

fn ansible(fleet: &TestFleet, control: &Path) -> Duration {
    let inventory = fleet.dir().join("ansible-inventory");
    let lines: String = fleet
        .hosts()
        .iter()
        .map(|h| {
            format!(
                "{} ansible_port={} ansible_user={TEST_USER} ansible_ssh_private_key_file={}\n",
                h.address(),
                h.port(),
                fleet.client_key().display()
            )
        })
        .collect();
    std::fs::write(&inventory, format!("[bench]\n{lines}")).unwrap();
    std::fs::create_dir_all(control).unwrap();
    let started = Instant::now();
    let output = Command::new("ansible")
        .args([
            "all",
            "-m",
            "raw",
            "-a",
            "cat /etc/linkops/client_id",
            "-f",
            "50",
            "-i",
        ])
        .arg(&inventory)
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env(
            "ANSIBLE_SSH_ARGS",
            format!(
                "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={}",
                fleet.known_hosts().display()
            ),
        )
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", control)
        .env("ANSIBLE_LOCAL_TEMP", fleet.dir().join("ansible-tmp"))
        .output()
        .expect("ansible (apt-get install ansible-core)");
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    elapsed
}

/// A Markdown table under `header`: each row's median, against the median
/// of the row `base` names for it, and its runs.
fn print_against(header: &str, rows: &[(String, Vec<Duration>)], base: impl Fn(usize) -> usize) {
    println!("\n{header}\n|---|---|---|---|");
    for (index, (name, times)) in rows.iter().enumerate() {
        let against = median(&rows[base(index)].1).as_secs_f64();
        let m = median(times).as_secs_f64();
        let runs: Vec<String> = times
            .iter()
            .map(|t| format!("{:.3}", t.as_secs_f64()))
            .collect();
        println!(
            "| {name} | {m:.3} s | {:.2}× | {} |",
            m / against,
            runs.join(" ")
        );
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// The warm fan-out through the API beside the bare client's (issue 35, goal
/// 3), and beside the bare client running the script as the daemon does.
fn print_goal(linkops: Duration, bare: Duration, script: Duration) {
    let ratio = |base: Duration| linkops.as_secs_f64() / base.as_secs_f64();
    let met = |base| {
        if ratio(base) <= 1.2 {
            "met"
        } else {
            "**not met**"
        }
    };
    println!("\n| goal | target | measured | beside | met |\n|---|---|---|---|---|");
    println!(
        "| 3. warm fan-out on {HOSTS} real sshd | ≤ 1.2× the bare russh client | {:.3} s ({:.2}×) | bare russh client {:.3} s | {} |",
        linkops.as_secs_f64(),
        ratio(bare),
        bare.as_secs_f64(),
        met(bare)
    );
    println!(
        "| 3. … the daemon's own share | ≤ 1.2× the bare client running the script | {:.3} s ({:.2}×) | bare client, the script's command line {:.3} s | {} |",
        linkops.as_secs_f64(),
        ratio(script),
        script.as_secs_f64(),
        met(script)
    );
}

fn print_table(rows: &[(String, Vec<Duration>)]) {
    let pssh = median(
        &rows
            .iter()
            .find(|(name, _)| name.starts_with("parallel-ssh"))
            .unwrap()
            .1,
    );
    let bare_cold = median(
        &rows
            .iter()
            .find(|(name, _)| name == "bare russh client, cold")
            .unwrap()
            .1,
    );
    let bare_warm = median(
        &rows
            .iter()
            .find(|(name, _)| name == "bare russh client, warm")
            .unwrap()
            .1,
    );
    println!(
        "\n`cat /etc/linkops/client_id` on {HOSTS} hosts, median of {REPETITIONS} (all runs, s)\n"
    );
    println!("| tool | median | vs pssh | vs bare russh | runs |");
    println!("|---|---|---|---|---|");
    for (name, times) in rows {
        let m = median(times);
        let bare = if name.contains("warm") {
            bare_warm
        } else {
            bare_cold
        };
        let runs: Vec<String> = times
            .iter()
            .map(|t| format!("{:.3}", t.as_secs_f64()))
            .collect();
        println!(
            "| {name} | {:.3} s | {:.2}× | {:.2}× | {} |",
            m.as_secs_f64(),
            m.as_secs_f64() / pssh.as_secs_f64(),
            m.as_secs_f64() / bare.as_secs_f64(),
            runs.join(" ")
        );
    }
    let row = |wanted: &str| median(&rows.iter().find(|(name, _)| name == wanted).unwrap().1);
    print_goal(
        row("LinkOps API, warm"),
        bare_warm,
        row("bare russh client, warm, running the script as the daemon does"),
    );
}

/// 10 MiB of output on one host, watched by 200 SSE clients: every byte to every client.
async fn sse_flood(daemon: &Daemon) {
    let before = daemon.peak_rss_kib();
    let started = Instant::now();
    let id = daemon
        .start_operation(json!({ "script": "flood", "targets": { "machines": ["host1"] } }))
        .await;
    let readers: Vec<_> = (0..SSE_CLIENTS)
        .map(|_| {
            let (client, url, token) = (
                reqwest::Client::new(),
                daemon.url.clone(),
                daemon.token.clone(),
            );
            tokio::spawn(async move {
                read_to_end(&client, &url, &token, id)
                    .await
                    .iter()
                    .filter(|e| e.event == "output")
                    .map(|e| {
                        serde_json::from_str::<Value>(&e.data).unwrap()["text"]
                            .as_str()
                            .unwrap()
                            .len()
                    })
                    .sum::<usize>()
            })
        })
        .collect();
    let mut complete = 0;
    for reader in readers {
        if reader.await.unwrap() == FLOOD_BYTES {
            complete += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "\n{} MiB on one host to {SSE_CLIENTS} SSE clients: {complete}/{SSE_CLIENTS} got every byte in {:.2} s; daemon peak RSS {} MiB (before: {} MiB)",
        FLOOD_BYTES >> 20,
        elapsed.as_secs_f64(),
        daemon.peak_rss_kib() / 1024,
        before / 1024
    );
}
