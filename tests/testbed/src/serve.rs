//! The daemon for tests and benchmarks: `linkops serve` as its own process
//! (spawned on a free loopback port, its address read from its "linkops
//! serving" log line, a login), and waiting on the fleet it sees through its
//! event stream rather than by polling.
//!
//! The testbed knows the daemon from outside only, as any client of its API:
//! the answers are read into the caller's types (`linkops::contract`), the
//! envelope of the fleet's events (`snapshot`, `changes`) here.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long [`until_machines`] waits: a first check of every machine.
const FLEET_WAIT: Duration = Duration::from_secs(60);
/// How long [`ServeProcess::spawn`] waits for the daemon to serve.
const SERVE_WAIT: Duration = Duration::from_secs(60);
/// How long [`ServeProcess::exited`] waits for the daemon to exit.
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// The first event of `/api/fleet/events`: every machine.
#[derive(serde::Deserialize)]
struct Snapshot<M> {
    machines: Vec<M>,
}

/// A later event: the machines that changed, and those gone.
#[derive(serde::Deserialize)]
struct Changes<M> {
    changed: Vec<M>,
    removed: Vec<String>,
}

/// Follows `/api/fleet/events` of the daemon at `url` until the machines
/// (`M`, read as the API shows them, `id` naming each; in id order) satisfy
/// `done`; returns them. Fails, saying `what` it waited for and the last list
/// seen, after a minute or when the stream ends.
pub async fn until_machines<M: DeserializeOwned + Serialize + Clone>(
    url: &str,
    token: &str,
    what: &str,
    id: fn(&M) -> &str,
    done: impl Fn(&[M]) -> bool,
) -> Result<Vec<M>, String> {
    let by_id = |machines: Vec<M>| -> BTreeMap<String, M> {
        let keyed = machines
            .into_iter()
            .map(|machine| (id(&machine).to_owned(), machine));
        keyed.collect()
    };
    use eventsource_stream::Eventsource;
    let response = reqwest::Client::new()
        .get(format!("{url}/api/fleet/events"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|error| format!("waiting for {what}: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("waiting for {what}: HTTP {}", response.status()));
    }
    let mut events = response.bytes_stream().eventsource();
    // The machines the stream has told of, by id: a snapshot, then changes.
    let mut machines: BTreeMap<String, M> = BTreeMap::new();
    let mut last = Vec::new();
    let follow = async {
        while let Some(event) = events.next().await {
            let event = event.map_err(|error| error.to_string())?;
            let unreadable = |error: serde_json::Error| format!("a {} event: {error}", event.event);
            match event.event.as_str() {
                "snapshot" => {
                    let snapshot: Snapshot<M> =
                        serde_json::from_str(&event.data).map_err(unreadable)?;
                    machines = by_id(snapshot.machines);
                }
                "changes" => {
                    let changes: Changes<M> =
                        serde_json::from_str(&event.data).map_err(unreadable)?;
                    machines.extend(by_id(changes.changed));
                    for id in changes.removed {
                        machines.remove(&id);
                    }
                }
                _ => continue,
            }
            last = machines.values().cloned().collect();
            if done(&last) {
                return Ok(true);
            }
        }
        Ok::<_, String>(false)
    };
    match tokio::time::timeout(FLEET_WAIT, follow).await {
        Ok(Ok(true)) => Ok(last),
        Ok(Ok(false)) => Err(format!("the fleet stream ended before {what}")),
        Ok(Err(error)) => Err(format!("waiting for {what}: {error}")),
        Err(_) => Err(format!(
            "timed out after {FLEET_WAIT:?} waiting for {what}; the machines: {}",
            serde_json::to_string(&last).unwrap_or_default()
        )),
    }
}

/// A running `linkops serve`; killed on drop.
pub struct ServeProcess {
    child: Child,
    /// Its stderr after the "serving" line, as a thread reads it, until
    /// [`ServeProcess::drain_log`] (the thread then drops what it reads).
    log: Option<mpsc::Receiver<String>>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl ServeProcess {
    /// Runs `command` (the binary, or a wrapper such as `prlimit … linkops`)
    /// as `linkops serve --listen 127.0.0.1:0 ARGS…` and waits until it
    /// serves. Returns it with the log lines before "serving" (a first
    /// start's banner is among them), or, if it exits first, everything it said.
    pub fn spawn(
        mut command: Command,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> Result<(ServeProcess, Vec<String>), String> {
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("linkops serve did not start: {error}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        // A thread reads the log, so that every wait on it has a bound.
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Kept reading when nobody listens: the daemon never blocks on a full pipe.
                lines.send(line).ok();
            }
        });
        let deadline = Instant::now() + SERVE_WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match log.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    child.kill().ok();
                    child.wait().ok();
                    return Err(format!(
                        "linkops serve did not serve within {SERVE_WAIT:?}:\n{}",
                        before.join("\n")
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let address = line
                .contains("linkops serving")
                .then(|| {
                    line.split_whitespace()
                        .find_map(|field| field.strip_prefix("address="))
                })
                .flatten();
            if let Some(address) = address {
                let url = format!("http://{address}");
                let serving = ServeProcess {
                    child,
                    log: Some(log),
                    url,
                };
                return Ok((serving, before));
            }
            before.push(line);
        }
        child.wait().ok();
        Err(format!(
            "linkops serve exited before serving:\n{}",
            before.join("\n")
        ))
    }

    /// A session token for `user`.
    pub async fn login(&self, user: &str, password: &str) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Session {
            token: String,
        }
        let request = serde_json::json!({ "username": user, "password": password });
        let response = reqwest::Client::new()
            .post(format!("{}/api/auth/login", self.url))
            .json(&request)
            .send()
            .await
            .map_err(|error| format!("login as {user}: {error}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("login as {user}: HTTP {status}"));
        }
        let answer: Session = response
            .json()
            .await
            .map_err(|error| format!("login as {user}: {error}"))?;
        Ok(answer.token)
    }

    /// Reads its log until a line contains `needle` (at most `within`): the
    /// lines read, that one last.
    pub fn log_until(&mut self, needle: &str, within: Duration) -> Result<Vec<String>, String> {
        let log = self.log.as_ref().ok_or("its log was drained")?;
        let deadline = Instant::now() + within;
        let mut read = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => {
                    read.push(line);
                    return Ok(read);
                }
                Ok(line) => read.push(line),
                Err(_) => {
                    return Err(format!(
                        "no log line with {needle:?} within {within:?}:\n{}",
                        read.join("\n")
                    ));
                }
            }
        }
    }

    /// Drops the rest of its log as it comes, so a long run holds none of it.
    pub fn drain_log(&mut self) {
        self.log = None;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill_9(mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// SIGTERM, then its exit status and the rest of its log (empty once drained).
    pub fn terminate(self) -> (ExitStatus, String) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a child's pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).ok();
        self.exited()
    }

    /// Waits (at most [`EXIT_WAIT`], then kills it) for it to exit by itself:
    /// its exit status and the rest of its log.
    pub fn exited(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + EXIT_WAIT;
        let mut rest = Vec::new();
        if let Some(log) = self.log.take() {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match log.recv_timeout(left) {
                    Ok(line) => rest.push(line),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        rest.push(format!("(still running after {EXIT_WAIT:?}: killed)"));
                        self.child.kill().ok();
                        break;
                    }
                }
            }
        }
        let status = self.child.wait().expect("the daemon is our child");
        (status, rest.join("\n"))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}
