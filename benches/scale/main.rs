//! One daemon and a fleet of 1,000, 5,000 and 10,000 machines: a simulated
//! fleet (`testbed::simulated`, real SSH servers on russh's server side,
//! sharing this machine's cores with the daemon) with 0.5 % of its hosts
//! down, 2 % slow and 0.2 % serving a changed host key.
//!
//! Per size, first the daemon as shipped (`[ssh] pool_size` 256): the time
//! until every machine is observed, whether the next sweep of checks (every
//! 60 s) keeps to its interval (the longest gap between a machine's first and
//! second check), the daemon's memory (RSS, and per machine), CPU over that
//! sweep and open files; a fan-out of the client-id read to every machine
//! through the API until the SSE `end`, twice (the second on what the first
//! left pooled), with the daemon's memory after it; 40 pushes, each a
//! run-request for one machine sent by a signed webhook, timed to the
//! revision's application and to the run's exec on the host; a declared state
//! on every machine (`states.rs`: counted, converged, applied once, three
//! cycles' check gaps, CPU and memory after each); the fleet's first event as the
//! console reads it (rows) and in full (views). Then a daemon keeping every
//! machine's connection (`pool_size` the fleet's size): the same sweep and
//! fan-outs. Then `parallel-ssh -p 200` on the same fleet (and `ansible -m
//! raw -f 200` up to 1,000 machines). And the inventory's parse, validation
//! and plan at 10,000 machines.
//!
//! Then three replicas on one PostgreSQL sharing a fleet (`replicas.rs`).
//!
//! Then, with no fleet: a simulated day of the store at 10,000 machines
//! (its size at the end, by table), written as the daemon writes it.
//!
//! Last, the largest size's figures beside their goals (`goals.rs`).
//!
//! `cargo bench --bench scale` as root (it binds 127.100.x.y:2222), about
//! 45 minutes. Sizes: `SCALE_SIZES=1000,5000,10000` (the default); the
//! replicas': `SCALE_REPLICAS=3000,6000` (0 skips them); the simulated
//! day's: `SCALE_DAY_MACHINES=10000` (0 skips it).
//!
//! Here: the fleet's measures; the peers in `peers.rs`, the state in
//! `states.rs`, the replicas in `replicas.rs`, what needs no fleet in
//! `day.rs`, the goals in `goals.rs`.

#[path = "../common/mod.rs"]
mod common;
mod day;
mod goals;
mod peers;
mod replicas;
mod states;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use linkops::contract::MachineView;
use serde_json::json;
use testbed::measure::{cpu_time, status_kib};
use testbed::simulated::{self, SimulatedFleet, Spec};
use testbed::{ServeProcess, WorkRepo, until_machines};

const SEED: u64 = 2026;

/// The largest fleet Ansible is run on (38 s at 1,000); `parallel-ssh` runs at every size.
const ANSIBLE_UP_TO: usize = 1000;

const HOSTS_PER_WORKER: usize = 2500;

const SCRIPTS: &str = "scripts:\n  - id: client-id\n    name: Read the client id\n    targets: {tags: [bench]}\n    max_parallel: 256\n    body: |\n      cat /etc/linkops/client_id\n  - id: clock\n    name: Say when it ran\n    targets: {tags: [bench]}\n    body: |\n      date +%s%N\n  - id: touched\n    name: A file touched, once\n    targets: {tags: [bench]}\n    check: |\n      test -f /var/lib/linkops-bench/touched\n    body: |\n      touch /var/lib/linkops-bench/touched\n";

/// Pushes timed from the webhook to the run-request's first exec, per size.
const PUSHES: usize = 40;

const WEBHOOK_SECRET: &str = "bench-hook";

fn main() {
    simulated::run_worker_if_asked();
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "1000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    for &size in &sizes {
        rows.push(runtime.block_on(measure(size)));
    }
    let shared: Vec<replicas::ReplicaRow> = (replicas::sizes().into_iter())
        .map(|size| runtime.block_on(replicas::measure(size)))
        .collect();
    day::inventory_at(10_000);
    // SCALE_DAY_MACHINES=0 skips the simulated day (13 minutes at 10,000).
    let day: usize = std::env::var("SCALE_DAY_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if day > 0 {
        day::store_after_a_day(day);
    }
    println!(
        "\n| machines | pool | all observed | longest gap between two checks | daemon RSS | per machine | CPU in a sweep | per check | open files | fan-out 1st | fan-out 2nd | RSS after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!("{}", row.shipped.line(row.size, "256"));
        println!("{}", row.pooled.line(row.size, "every machine"));
    }
    println!(
        "\n| machines | webhook → revision applied, p50 | p99 | webhook → first exec of its run-request, p50 | p99 |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for row in &rows {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {} | {} | {} | {} | {} |",
            row.size,
            ms(row.push.applied[0]),
            ms(row.push.applied[1]),
            ms(row.push.exec[0]),
            ms(row.push.exec[1])
        );
    }
    println!(
        "\n| machines | state counted | converged | applies / reachable machines | check gap p50 | p99 | longest | CPU per check | RSS after each cycle |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let state = &row.state;
        println!(
            "| {} | {:.2} s | {:.1} s | {} / {} | {:.1} s | {:.1} s | {:.1} s | {:.2} ms | {} MiB |",
            row.size,
            state.counted.as_secs_f64(),
            state.converged.as_secs_f64(),
            state.applied.0,
            state.applied.1,
            state.gaps[0].as_secs_f64(),
            state.gaps[1].as_secs_f64(),
            state.gaps[2].as_secs_f64(),
            state.cpu_per_check.as_secs_f64() * 1000.0,
            mib_each(&state.rss_kib),
        );
    }
    println!(
        "\n| machines | fleet snapshot as rows | bytes | as views | bytes | parallel-ssh -p 200 | answered | ansible -m raw -f 200 | answered |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let peer = |run: &Option<peers::PeerRun>| {
            run.as_ref().map_or("not run | ".to_owned(), |run| {
                format!("{:.1} s | {}", run.took.as_secs_f64(), run.answered)
            })
        };
        println!(
            "| {} | {:.0} ms | {:.1} MB | {:.0} ms | {:.1} MB | {} | {} |",
            row.size,
            row.snapshot.rows.0.as_secs_f64() * 1000.0,
            row.snapshot.rows.1 as f64 / 1e6,
            row.snapshot.views.0.as_secs_f64() * 1000.0,
            row.snapshot.views.1 as f64 / 1e6,
            peer(&row.peers.pssh),
            peer(&row.peers.ansible),
        );
    }
    replicas::print(&shared);
    if let Some(largest) = rows.last() {
        goals::print(largest, shared.last());
    }
}

/// Memory figures in MiB, `a → b → c`.
fn mib_each(kib: &[u64]) -> String {
    let each: Vec<String> = kib.iter().map(|kib| (kib / 1024).to_string()).collect();
    each.join(" → ")
}

/// One size's figures: the daemon as shipped, then keeping every machine's connection.
struct Row {
    size: usize,
    /// `[ssh] pool_size` as shipped (256).
    shipped: Sweep,
    /// `[ssh] pool_size` the fleet's size: no check or fan-out connects afresh.
    pooled: Sweep,
    push: PushLatency,
    state: states::StateFigures,
    snapshot: Snapshots,
    peers: peers::Peers,
}

/// A daemon's first observation of the fleet, its next sweep, and two fan-outs.
struct Sweep {
    observed: Duration,
    gap: Option<Duration>,
    rss_kib: u64,
    cpu: Duration,
    files: usize,
    fanout: [Duration; 2],
    rss_after_kib: u64,
}

impl Sweep {
    fn line(&self, size: usize, pool: &str) -> String {
        let gap = self.gap.map_or("not in 120 s".to_owned(), |gap| {
            format!("{:.1} s", gap.as_secs_f64())
        });
        format!(
            "| {size} | {pool} | {:.1} s | {gap} | {:.0} MiB | {:.0} KiB | {:.1} s | {:.2} ms | {} | {:.1} s | {:.1} s | {:.0} MiB |",
            self.observed.as_secs_f64(),
            self.rss_kib as f64 / 1024.0,
            self.rss_kib as f64 / size as f64,
            self.cpu.as_secs_f64(),
            self.per_check(size).as_secs_f64() * 1000.0,
            self.files,
            self.fanout[0].as_secs_f64(),
            self.fanout[1].as_secs_f64(),
            self.rss_after_kib as f64 / 1024.0,
        )
    }

    /// The daemon's CPU per machine checked in the sweep.
    fn per_check(&self, size: usize) -> Duration {
        self.cpu / size.max(1) as u32
    }
}

/// The fleet's first event as the console's fleet page reads it (rows) and
/// in full (views): how long until its end, and its bytes.
struct Snapshots {
    rows: (Duration, usize),
    views: (Duration, usize),
}

fn spec(size: usize) -> Spec {
    Spec {
        first: 0,
        count: size,
        seed: SEED,
        latency: Duration::from_millis(2),
        down_every: 200,
        slow_every: 50,
        rekeyed_every: 500,
    }
}

/// A running daemon on the bench's data dir, and its admin's token.
struct Daemon {
    process: ServeProcess,
    token: String,
    started: Instant,
}

impl Daemon {
    /// Starts `linkops serve` as the unit runs it, with `env` beside `SCALE_DAEMON_ENV`'s.
    async fn start(data: &Path, env: &[(&str, String)]) -> Daemon {
        let started = Instant::now();
        let mut binary = Command::new("prlimit");
        binary
            .arg("--nofile=20000:20000")
            // Profiling: SCALE_DAEMON_WRAPPER="heaptrack -o /tmp/daemon". Only the
            // wrapper is killed at the end: heaptrack's daemon outlives it (pkill it).
            .args(
                std::env::var("SCALE_DAEMON_WRAPPER")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .arg(env!("CARGO_BIN_EXE_linkops"))
            .env("LINKOPS_LOG", "warn,linkops::server=info")
            // As deploy/linkopsd.service runs it.
            .env("MALLOC_ARENA_MAX", "2")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            // Experiments: SCALE_DAEMON_ENV=MALLOC_ARENA_MAX=2,LINKOPS_SSH_POOL_SIZE=100
            .envs(
                std::env::var("SCALE_DAEMON_ENV")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<Vec<_>>(),
            );
        let config = data.join("config.toml");
        let (mut process, _) =
            ServeProcess::spawn(binary, ["--config".as_ref(), config.as_os_str()]).unwrap();
        process.drain_log();
        let token = process
            .login("admin", common::ADMIN_PASSWORD)
            .await
            .unwrap();
        Daemon {
            process,
            token,
            started,
        }
    }

    fn url(&self) -> &str {
        &self.process.url
    }

    /// Until every machine is observed, then the next sweep (every 60 s);
    /// then the client-id read through the API to every machine, twice.
    async fn sweep(&self, client: &reqwest::Client, size: usize) -> Sweep {
        let token = &self.token;
        let id: fn(&MachineView) -> &str = |m| &m.spec.id;
        let observed = until_machines(
            self.url(),
            token,
            "every machine observed",
            id,
            |machines| machines.len() == size && machines.iter().all(|m| m.checked_at.is_some()),
        )
        .await
        .unwrap();
        let observed_after = self.started.elapsed();
        let first: BTreeMap<String, jiff::Timestamp> = observed
            .iter()
            .filter_map(|m| Some((m.spec.id.clone(), m.checked_at?)))
            .collect();
        let pid = self.process.pid();

        // The next sweep: polled (the fleet's events do not carry mere check times),
        // until every machine was checked again; the longest gap between a
        // machine's two checks says whether the sweep kept to its 60 s. Polled
        // only once every machine is due again (its interval and a tenth of
        // jitter): reading every machine's view is the bench's work, not the sweep's.
        let cpu_before = cpu_time(pid);
        let deadline = Instant::now() + Duration::from_secs(120);
        tokio::time::sleep(Duration::from_secs(66)).await;
        let mut gap = None;
        while gap.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let machines: Vec<linkops::contract::MachineView> =
                common::get_json(client, &format!("{}/api/links", self.url()), token).await;
            let gaps: Option<Vec<(jiff::SignedDuration, &str)>> = machines
                .iter()
                .map(|m| {
                    let before = first.get(&m.spec.id)?;
                    let now = m.checked_at.filter(|at| at > before)?;
                    Some((now.duration_since(*before), m.spec.id.as_str()))
                })
                .collect();
            if let Some(mut gaps) = gaps {
                gaps.sort();
                let at = |q: f64| gaps[((gaps.len() - 1) as f64 * q) as usize];
                println!(
                    "{size} machines, gaps between two checks: p50 {:?}, p99 {:?}, longest {:?}",
                    at(0.5).0,
                    at(0.99).0,
                    at(1.0)
                );
                gap = Duration::try_from(at(1.0).0).ok();
            }
        }
        let cpu = cpu_time(pid).saturating_sub(cpu_before);
        let rss_kib = status_kib(pid, "VmRSS:");
        let files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());

        let fanout = [self.fan_out(client).await, self.fan_out(client).await];
        Sweep {
            observed: observed_after,
            gap,
            rss_kib,
            cpu,
            files,
            fanout,
            rss_after_kib: status_kib(pid, "VmRSS:"),
        }
    }

    /// The client-id read through the API on every machine, until the SSE `end`.
    async fn fan_out(&self, client: &reqwest::Client) -> Duration {
        let begun = Instant::now();
        let operation: serde_json::Value = client
            .post(format!("{}/api/operations/run", self.url()))
            .bearer_auth(&self.token)
            .json(&json!({ "script": "client-id", "concurrency": 256 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = operation["id"].as_u64().expect("an operation");
        common::read_to_end(client, self.url(), &self.token, id).await;
        begun.elapsed()
    }

    /// The first event of the fleet's stream in `shape`: until its end, and its bytes.
    async fn snapshot(&self, client: &reqwest::Client, shape: &str) -> (Duration, usize) {
        use futures::StreamExt;
        let asked = Instant::now();
        let url = format!("{}/api/fleet/events?shape={shape}", self.url());
        let response = client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let mut body = response.bytes_stream();
        let (mut bytes, mut last) = (0, 0u8);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            bytes += chunk.len();
            // An event ends with a blank line, perhaps split between two chunks.
            let ends = (last == b'\n' && chunk.first() == Some(&b'\n'))
                || chunk.windows(2).any(|pair| pair == b"\n\n");
            if ends {
                break;
            }
            last = chunk.last().copied().unwrap_or(last);
        }
        (asked.elapsed(), bytes)
    }
}

/// A simulated fleet of `size` accepting a new client key in `dir`, and the key.
fn simulated_fleet(dir: &Path, size: usize) -> (PathBuf, SimulatedFleet) {
    let key = client_key(dir);
    let fleet = SimulatedFleet::start(
        &std::env::current_exe().unwrap(),
        spec(size),
        HOSTS_PER_WORKER,
        &key.with_extension("pub"),
    )
    .unwrap();
    (key, fleet)
}

async fn measure(size: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let (key, fleet) = simulated_fleet(dir.path(), size);
    let repo = config_repo(dir.path(), &fleet.spec);
    let data = data_dir(dir.path(), &key, &fleet.spec, &repo.dir);
    let client = reqwest::Client::new();

    // As shipped: the sweep, the fan-outs, pushes, a declared state, the snapshot.
    let daemon = Daemon::start(&data, &[]).await;
    let shipped = daemon.sweep(&client, size).await;
    let push = pushes(&client, daemon.url(), &daemon.token, &repo, &fleet.spec).await;
    let state = states::rollout_and_cycle(
        &client,
        daemon.url(),
        &daemon.token,
        &repo,
        &fleet.spec,
        daemon.process.pid(),
    )
    .await;
    let snapshot = Snapshots {
        rows: daemon.snapshot(&client, "rows").await,
        views: daemon.snapshot(&client, "views").await,
    };
    drop(daemon);

    // Every machine's connection kept, on a store of its own (every machine
    // observed afresh); the state gone, so the sweep is the health checks'.
    repo.remove("states/bench.yaml");
    repo.commit("no state");
    let data = data_dir(&dir.path().join("pooled"), &key, &fleet.spec, &repo.dir);
    let daemon = Daemon::start(&data, &[("LINKOPS_SSH_POOL_SIZE", size.to_string())]).await;
    let pooled = daemon.sweep(&client, size).await;
    drop(daemon);

    // The same read with the peers, on the same fleet (Ansible where it manages in reasonable time).
    let peers = peers::peers(
        &fleet.spec,
        &key,
        &data.join("ssh/known_hosts"),
        dir.path(),
        size <= ANSIBLE_UP_TO,
    );
    drop(fleet);
    Row {
        size,
        shipped,
        pooled,
        push,
        state,
        snapshot,
        peers,
    }
}

/// Tells the daemon of `revision` as the forge does: a signed push webhook.
async fn push(client: &reqwest::Client, url: &str, revision: &str, delivery: &str) {
    let body = json!({ "ref": "refs/heads/main", "after": revision }).to_string();
    let answer = client
        .post(format!("{url}/api/git/webhook"))
        .header("content-type", "application/json")
        .header("x-forgejo-event", "push")
        .header("x-forgejo-delivery", delivery)
        .header(
            "x-forgejo-signature",
            linkops::git::webhook::sign(body.as_bytes(), WEBHOOK_SECRET.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
}

/// Webhook to applied revision, and to the first exec of the run-request it
/// brought (the host's clock, which is this machine's), p50 and p99.
#[derive(Debug, Default)]
struct PushLatency {
    applied: [Duration; 2],
    exec: [Duration; 2],
}

/// [`PUSHES`] times: commits a run-request for one healthy machine, sends
/// the signed push webhook, and times the revision's application and the
/// run's exec on the machine.
async fn pushes(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    repo: &WorkRepo,
    spec: &Spec,
) -> PushLatency {
    let mut applied = Vec::new();
    let mut exec = Vec::new();
    let healthy = (0..spec.count)
        .map(|n| (n * 7919) % spec.count)
        .filter(|&index| !spec.is_down(index) && !spec.is_rekeyed(index) && !spec.is_slow(index));
    for (number, index) in healthy.take(PUSHES).enumerate() {
        let id = format!("latency-{number}");
        repo.write(
            &format!("runs/{id}.yaml"),
            &format!("id: {id}\nscript: clock\ntargets: {{machines: [m{index:05}]}}\n"),
        );
        let revision = repo.commit(&id);
        let sent = std::time::SystemTime::now();
        push(client, url, &revision, &id).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let operation = loop {
            assert!(
                Instant::now() < deadline,
                "run-request {id} did not start within 60 s of its webhook"
            );
            let run = client
                .get(format!("{url}/api/runs/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            if run.status().is_success() {
                let run: linkops::contract::RunView = run.json().await.unwrap();
                if let Some(linkops_reconcilers::run::RunState::Started { operation_id }) =
                    run.state
                {
                    break operation_id;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let status: linkops::contract::GitStatus =
            common::get_json(client, &format!("{url}/api/git/status"), token).await;
        assert_eq!(status.applied_revision.as_deref(), Some(revision.as_str()));
        let applied_at = std::time::SystemTime::from(status.applied_at.expect("applied"));
        applied.push(applied_at.duration_since(sent).unwrap_or_default());
        let ran = common::read_to_end(client, url, token, operation)
            .await
            .into_iter()
            .filter(|event| event.event == "output")
            .find_map(|event| {
                let chunk: linkops::contract::OutputChunk =
                    serde_json::from_str(&event.data).ok()?;
                match chunk.bytes {
                    linkops::contract::OutputBytes::Text { text } => {
                        text.trim().parse::<u64>().ok()
                    }
                    linkops::contract::OutputBytes::Base64 { .. } => None,
                }
            })
            .expect("the host said when it ran");
        let ran = std::time::UNIX_EPOCH + Duration::from_nanos(ran);
        exec.push(ran.duration_since(sent).unwrap_or_default());
    }
    let quantiles = |mut samples: Vec<Duration>| {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        [at(0.5), at(0.99)]
    };
    let latency = PushLatency {
        applied: quantiles(applied),
        exec: quantiles(exec),
    };
    println!(
        "{} machines, {PUSHES} pushes: webhook to revision applied p50 {:?} p99 {:?}; to the run-request's first exec p50 {:?} p99 {:?}",
        spec.count, latency.applied[0], latency.applied[1], latency.exec[0], latency.exec[1]
    );
    latency
}

fn client_key(dir: &Path) -> PathBuf {
    let key = dir.join("fleet_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    key
}

/// Every host of the fleet in `links.yaml`, checked every 60 s.
fn inventory(spec: &Spec) -> String {
    let mut links = String::from("machines:\n");
    for index in spec.first..spec.first + spec.count {
        links.push_str(&format!(
            "  - {{id: m{index:05}, name: m{index:05}, host: {}, port: {}, uuid: {}, tags: [bench]}}\n",
            simulated::address(index),
            simulated::PORT,
            simulated::uuid(spec.seed, index),
        ));
    }
    links
}

fn config_repo(dir: &Path, spec: &Spec) -> WorkRepo {
    let repo = WorkRepo::new(&dir.join("config"), None);
    repo.write("links.yaml", &inventory(spec));
    repo.write("scripts.yaml", SCRIPTS);
    repo.commit("bench");
    repo
}

/// The daemon's data dir and config: as shipped but for the fleet's size
/// (sessions, reconciles, connections) and facts (gathered at enrollment and
/// hourly, an exec per machine that would fall in the sweep measured).
fn data_dir(dir: &Path, key: &Path, spec: &Spec, repo: &Path) -> PathBuf {
    let data = dir.join("data");
    let known_hosts: String = (spec.first..spec.first + spec.count)
        .map(|index| simulated::known_hosts_line(spec.seed, index) + "\n")
        .collect();
    common::private_data_dir(&data, key, &known_hosts);
    std::fs::write(
        data.join("config.toml"),
        format!(
            "data_dir = {data:?}\n[git]\nurl = {repo:?}\n[ssh]\nuser = \"bench\"\nkey = \"fleet_key\"\nconcurrency = 256\nidle_timeout = \"1h\"\n[reconcile]\nconcurrency = 128\n[facts]\ninterval = \"0s\"\n[http]\nmax_connections = 1024\n[webhook]\nsecret = {WEBHOOK_SECRET:?}\n"
        ),
    )
    .unwrap();
    data
}
