//! One daemon and a fleet of 1,000, 5,000 and 10,000 machines: a simulated
//! fleet (`testbed::simulated`, real SSH servers on russh's server side,
//! sharing this machine's cores with the daemon) with 0.5 % of its hosts
//! down, 2 % slow and 0.2 % serving a changed host key.
//!
//! Per size: the time until every machine is observed, whether the next
//! sweep of checks (every 60 s) keeps to its interval (the longest gap
//! between a machine's first and second check), the daemon's
//! memory (RSS, and per machine), CPU over that sweep and open files; then a
//! fan-out of the client-id read to every machine through the API until the
//! SSE `end`, twice (the second on the connections the first left pooled),
//! with the daemon's memory after it; 40 pushes, each a run-request for one
//! machine sent by a signed webhook, timed to the revision's application and
//! to the run's exec on the host; at 1,000 machines the same read with
//! `parallel-ssh -p 200` and `ansible -m raw -f 200` on the same fleet. And
//! the inventory's parse, validation and plan at 10,000 machines.
//!
//! Then, with no fleet: a simulated day of the store at 10,000 machines
//! (its size at the end, by table), written as the daemon writes it.
//!
//! `cargo bench --bench scale` as root (it binds 127.100.x.y:2222), about
//! 25 minutes. Sizes: `SCALE_SIZES=1000,5000,10000` (the default); the
//! simulated day's: `SCALE_DAY_MACHINES=10000` (0 skips it).
//!
//! Here: the fleet's measures; the peers in `peers.rs`, what needs no fleet in `day.rs`.

#[path = "../common/mod.rs"]
mod common;
mod day;
mod peers;

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

/// The largest fleet `parallel-ssh` and Ansible are run on.
const PEERS_UP_TO: usize = 1000;

const HOSTS_PER_WORKER: usize = 2500;

const SCRIPTS: &str = "scripts:\n  - id: client-id\n    name: Read the client id\n    targets: {tags: [bench]}\n    max_parallel: 256\n    body: |\n      cat /etc/linkops/client_id\n  - id: clock\n    name: Say when it ran\n    targets: {tags: [bench]}\n    body: |\n      date +%s%N\n";

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
        "\n| machines | all observed | longest gap between two checks | daemon RSS | per machine | CPU in a sweep | per check | open files | fan-out 1st | fan-out 2nd | RSS after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!("{row}");
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
}

struct Row {
    size: usize,
    observed: Duration,
    sweep: Option<Duration>,
    rss_kib: u64,
    cpu: Duration,
    files: usize,
    fanout: [Duration; 2],
    rss_after_kib: u64,
    push: PushLatency,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sweep = self.sweep.map_or("not in 120 s".to_owned(), |gap| {
            format!("{:.1} s", gap.as_secs_f64())
        });
        write!(
            f,
            "| {} | {:.1} s | {sweep} | {:.0} MiB | {:.0} KiB | {:.1} s | {:.2} ms | {} | {:.1} s | {:.1} s | {:.0} MiB |",
            self.size,
            self.observed.as_secs_f64(),
            self.rss_kib as f64 / 1024.0,
            self.rss_kib as f64 / self.size as f64,
            self.cpu.as_secs_f64(),
            self.cpu.as_secs_f64() * 1000.0 / self.size as f64,
            self.files,
            self.fanout[0].as_secs_f64(),
            self.fanout[1].as_secs_f64(),
            self.rss_after_kib as f64 / 1024.0,
        )
    }
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

async fn measure(size: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let key = client_key(dir.path());
    let fleet = SimulatedFleet::start(
        &std::env::current_exe().unwrap(),
        spec(size),
        HOSTS_PER_WORKER,
        &key.with_extension("pub"),
    )
    .unwrap();
    let repo = config_repo(dir.path(), &fleet.spec);
    let data = data_dir(dir.path(), &key, &fleet.spec, &repo.dir);

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
    let (mut daemon, _) =
        ServeProcess::spawn(binary, ["--config".as_ref(), config.as_os_str()]).unwrap();
    daemon.drain_log();
    let token = daemon.login("admin", common::ADMIN_PASSWORD).await.unwrap();
    let id: fn(&MachineView) -> &str = |m| &m.spec.id;
    let observed = until_machines(
        &daemon.url,
        &token,
        "every machine observed",
        id,
        |machines| machines.len() == size && machines.iter().all(|m| m.checked_at.is_some()),
    )
    .await
    .unwrap();
    let observed_after = started.elapsed();
    let first: BTreeMap<String, jiff::Timestamp> = observed
        .iter()
        .filter_map(|m| Some((m.spec.id.clone(), m.checked_at?)))
        .collect();
    let pid = daemon.pid();

    // The next sweep: polled (the fleet's events do not carry mere check times),
    // until every machine was checked again; the longest gap between a
    // machine's two checks says whether the sweep kept to its 60 s. Polled
    // only once every machine is due again (its interval and a tenth of
    // jitter): reading every machine's view is the bench's work, not the sweep's.
    let client = reqwest::Client::new();
    let cpu_before = cpu_time(pid);
    let deadline = Instant::now() + Duration::from_secs(120);
    tokio::time::sleep(Duration::from_secs(66)).await;
    let mut sweep = None;
    while sweep.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let machines: Vec<linkops::contract::MachineView> =
            common::get_json(&client, &format!("{}/api/links", daemon.url), &token).await;
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
            sweep = Duration::try_from(at(1.0).0).ok();
        }
    }
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    let rss_kib = status_kib(pid, "VmRSS:");
    let files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());

    let mut fanout = [Duration::ZERO; 2];
    for run in &mut fanout {
        let begun = Instant::now();
        let operation: serde_json::Value = client
            .post(format!("{}/api/operations/run", daemon.url))
            .bearer_auth(&token)
            .json(&json!({ "script": "client-id", "concurrency": 256 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = operation["id"].as_u64().expect("an operation");
        common::read_to_end(&client, &daemon.url, &token, id).await;
        *run = begun.elapsed();
    }
    let rss_after_kib = status_kib(pid, "VmRSS:");
    let push = pushes(&client, &daemon.url, &token, &repo, &fleet.spec).await;
    drop(daemon);
    // The same read with the peers, on the same fleet, where they manage in reasonable time.
    if size <= PEERS_UP_TO {
        peers::peers(&fleet.spec, &key, &data.join("ssh/known_hosts"), dir.path());
    }
    drop(fleet);
    Row {
        size,
        observed: observed_after,
        sweep,
        rss_kib,
        cpu,
        files,
        fanout,
        rss_after_kib,
        push,
    }
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
    for (push, index) in healthy.take(PUSHES).enumerate() {
        let id = format!("latency-{push}");
        repo.write(
            &format!("runs/{id}.yaml"),
            &format!("id: {id}\nscript: clock\ntargets: {{machines: [m{index:05}]}}\n"),
        );
        let revision = repo.commit(&id);
        let body = json!({ "ref": "refs/heads/main", "after": revision }).to_string();
        let sent = std::time::SystemTime::now();
        let answer = client
            .post(format!("{url}/api/git/webhook"))
            .header("content-type", "application/json")
            .header("x-forgejo-event", "push")
            .header("x-forgejo-delivery", &id)
            .header(
                "x-forgejo-signature",
                linkops::git::webhook::sign(body.as_bytes(), WEBHOOK_SECRET.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
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

/// A peer's time on `machines`, and how many answered (lines of its output with `answered`).
fn report(
    tool: &str,
    package: &str,
    output: std::io::Result<std::process::Output>,
    answered: &str,
    machines: usize,
    started: Instant,
) {
    match output {
        Ok(output) => println!(
            "{tool} on {machines} machines: {:.1} s, {} answered",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&output.stdout)
                .matches(answered)
                .count()
        ),
        Err(error) => println!("{tool} not run ({error}): apt-get install {package}"),
    }
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

fn data_dir(dir: &Path, key: &Path, spec: &Spec, repo: &Path) -> PathBuf {
    let data = dir.join("data");
    let known_hosts: String = (spec.first..spec.first + spec.count)
        .map(|index| simulated::known_hosts_line(spec.seed, index) + "\n")
        .collect();
    common::private_data_dir(&data, key, &known_hosts);
    std::fs::write(
        data.join("config.toml"),
        format!(
            "data_dir = {data:?}\n[git]\nurl = {repo:?}\n[ssh]\nuser = \"bench\"\nkey = \"fleet_key\"\nconcurrency = 256\nidle_timeout = \"1h\"\n[reconcile]\nconcurrency = 128\n[http]\nmax_connections = 1024\n[webhook]\nsecret = {WEBHOOK_SECRET:?}\n"
        ),
    )
    .unwrap();
    data
}
