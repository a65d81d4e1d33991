//! Load: 20 operations at once on 50 real sshd hosts, followed by 500 SSE
//! clients, while 4 terminals type. Every output byte must reach every client
//! and the store; the daemon's RSS and CPU are reported beside an idle daemon's.
//!
//! `cargo bench --bench load` (as root, like the fan-out bench). README has the figures.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, read_to_end};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testbed::TestFleet;
use tokio_tungstenite::tungstenite::Message;

const HOSTS: usize = 50;
const OPERATIONS: usize = 20;
const SSE_CLIENTS: usize = 500;
const TERMINALS: usize = 4;
const KEYSTROKE_LINES: usize = 50;
/// Lines each host prints per operation, 20 ms apart.
const LINES: usize = 100;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let fleet = TestFleet::start(HOSTS).expect("the benchmark needs root and openssh-server");
    let scripts = format!(
        "scripts:\n  - id: chatter\n    name: Chatter\n    body: |\n      for i in $(seq 1 {LINES}); do echo \"line $i of $(cat /etc/linkops/client_id)\"; sleep 0.02; done\n  - {{id: client-id, name: Client id, body: cat /etc/linkops/client_id}}\n"
    );
    let repo = common::config_repo(&fleet, &scripts).dir;
    let daemon = Daemon::start(&fleet, &repo, "load", "10m").await;
    daemon.wait_enrolled().await;
    // Warm the pool, so that the load measures serving rather than connecting.
    daemon
        .run_to_end(json!({ "script": "client-id", "targets": { "tags": ["bench"] } }))
        .await;

    let idle = Usage::over(&daemon, Duration::from_secs(10)).await;
    println!(
        "idle daemon ({HOSTS} machines): RSS {} MiB, CPU {:.1} % over {:.0} s",
        idle.rss_kib / 1024,
        idle.cpu_percent(),
        idle.wall.as_secs_f64()
    );

    let before = Usage::start(&daemon);
    let started = Instant::now();
    let mut operations = Vec::new();
    for _ in 0..OPERATIONS {
        let body =
            json!({ "script": "chatter", "targets": { "tags": ["bench"] }, "concurrency": HOSTS });
        operations.push(daemon.start_operation(body).await);
    }
    let followers: Vec<_> = (0..SSE_CLIENTS)
        .map(|i| {
            let (client, url, token) = (
                reqwest::Client::new(),
                daemon.url.clone(),
                daemon.token.clone(),
            );
            let id = operations[i % OPERATIONS];
            tokio::spawn(async move {
                let events = read_to_end(&client, &url, &token, id).await;
                let bytes: usize = events
                    .iter()
                    .filter(|e| e.event == "output")
                    .map(|e| {
                        serde_json::from_str::<Value>(&e.data).unwrap()["text"]
                            .as_str()
                            .unwrap()
                            .len()
                    })
                    .sum();
                (id, bytes)
            })
        })
        .collect();
    let typed = tokio::spawn(type_in_terminals(daemon.url.clone(), daemon.token.clone()));
    let mut received = Vec::new();
    for follower in followers {
        received.push(follower.await.unwrap());
    }
    let terminal_lines = typed.await.unwrap();
    let wall = started.elapsed();
    let load = before.finish(&daemon);

    // What the store recorded per operation, and what the scripts printed.
    let mut stored = std::collections::BTreeMap::new();
    for &id in &operations {
        let path = format!("/api/operations/{id}");
        let operation = daemon.api(reqwest::Method::GET, &path, None).await;
        let bytes: u64 = operation["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["stdout_bytes"].as_u64().unwrap_or(0))
            .sum();
        stored.insert(id, bytes as usize);
    }
    let expected = fleet
        .hosts()
        .iter()
        .map(|host| {
            (1..=LINES)
                .map(|i| format!("line {i} of LINKOPS-{}\n", host.uuid()).len())
                .sum::<usize>()
        })
        .sum::<usize>();
    let complete = received
        .iter()
        .filter(|(id, bytes)| *bytes == expected && stored[id] == expected)
        .count();
    let total_bytes: usize = received.iter().map(|(_, bytes)| bytes).sum();
    println!(
        "{OPERATIONS} operations x {HOSTS} hosts ({} KiB of output each), {SSE_CLIENTS} SSE clients, {TERMINALS} terminals typing {KEYSTROKE_LINES} lines each:",
        expected / 1024
    );
    println!(
        "  {complete}/{SSE_CLIENTS} clients got every byte, and the store holds every byte of all {OPERATIONS}: {}",
        stored.values().all(|&b| b == expected)
    );
    println!(
        "  terminals: {terminal_lines}/{} typed lines echoed back",
        TERMINALS * KEYSTROKE_LINES
    );
    println!(
        "  {:.1} s wall, {:.0} MiB of event data to clients; daemon peak RSS {} MiB, CPU {:.0} % of one core ({:.1} s)",
        wall.as_secs_f64(),
        total_bytes as f64 / (1 << 20) as f64,
        daemon.peak_rss_kib() / 1024,
        load.cpu_percent(),
        load.cpu.as_secs_f64()
    );
    assert_eq!(complete, SSE_CLIENTS, "a client or the store lost output");
    assert_eq!(terminal_lines, TERMINALS * KEYSTROKE_LINES);
}

/// A 2x2 workspace on host1..host4; types `echo` lines into every pane and
/// counts the ones that come back. Returns how many did.
async fn type_in_terminals(url: String, token: String) -> usize {
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{url}/api/terminal/workspaces"))
        .bearer_auth(&token)
        .json(&json!({ "name": "load", "layout": "grid2x2" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let panes: Vec<String> = (1..=TERMINALS).map(|i| format!("host{i}")).collect();
    client
        .put(format!("{url}/api/terminal/workspaces/{id}/panes"))
        .bearer_auth(&token)
        .json(&json!({ "panes": panes }))
        .send()
        .await
        .unwrap();
    client
        .post(format!("{url}/api/terminal/workspaces/{id}/connect-all"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let socket_url = format!(
        "{}/api/terminal/workspaces/{id}/ws?access_token={token}",
        url.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(socket_url).await.unwrap();
    let mut screens = vec![String::new(); TERMINALS];
    let mut seen = 0;
    for line in 0..KEYSTROKE_LINES {
        for pane in 0..TERMINALS {
            let mut frame = vec![pane as u8];
            frame.extend_from_slice(format!("echo typed-{pane}-$(({line}+1000))\r").as_bytes());
            socket.send(Message::binary(frame)).await.unwrap();
        }
        // Each pane answers its line before the next is typed, as a person types.
        while (0..TERMINALS)
            .any(|pane| !screens[pane].contains(&format!("typed-{pane}-{}", line + 1000)))
        {
            match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
                Ok(Some(Ok(Message::Binary(frame)))) if !frame.is_empty() => {
                    let pane = usize::from(frame[0]);
                    if pane < TERMINALS {
                        screens[pane].push_str(&String::from_utf8_lossy(&frame[1..]));
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return seen,
            }
        }
        seen += TERMINALS;
    }
    seen
}

/// The daemon's CPU time (from /proc) over a stretch of wall time.
struct Usage {
    pid: u32,
    cpu_at_start: Duration,
    started: Instant,
}

struct Measured {
    cpu: Duration,
    wall: Duration,
    rss_kib: u64,
}

impl Measured {
    fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

impl Usage {
    fn start(daemon: &Daemon) -> Usage {
        Usage {
            pid: daemon.pid(),
            cpu_at_start: testbed::measure::cpu_time(daemon.pid()),
            started: Instant::now(),
        }
    }

    async fn over(daemon: &Daemon, wall: Duration) -> Measured {
        let usage = Usage::start(daemon);
        tokio::time::sleep(wall).await;
        usage.finish(daemon)
    }

    fn finish(self, daemon: &Daemon) -> Measured {
        Measured {
            cpu: testbed::measure::cpu_time(self.pid).saturating_sub(self.cpu_at_start),
            wall: self.started.elapsed(),
            rss_kib: daemon.rss_kib(),
        }
    }
}
