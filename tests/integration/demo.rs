//! `linkops demo` end to end: from nothing to a working fleet, and everything gone after Ctrl-C.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStderr, Command, Stdio};

use linkops::contract::{LoginResponse, MachineView, OperationView, RunView};
use linkops_reconcilers::operation::OperationState;
use linkops_reconcilers::run::RunState;
use serde_json::{Value, json};

use crate::support;

/// The demo's API, as its banner describes it.
struct Api {
    url: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    /// The answer to `GET path` as `T`; `None` when it is no success (a 404 before a run exists).
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        match response.status().is_success() {
            true => Some(support::answer(&response.json().await.unwrap())),
            false => None,
        }
    }

    /// The final state of a run-request's operation, once it has one.
    async fn finished_run(&self, id: &str) -> Option<OperationState> {
        let run: RunView = self.get(&format!("/api/runs/{id}")).await?;
        let RunState::Started { operation_id } = run.state? else {
            return None;
        };
        let path = format!("/api/operations/{operation_id}");
        let operation: OperationView = self.get(&path).await?;
        let state = operation.operation.state;
        (![OperationState::Running, OperationState::Pending].contains(&state)).then_some(state)
    }
}

/// `name:` lines of the banner, first word after the label.
fn field(banner: &[String], name: &str) -> String {
    banner
        .iter()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name} in {banner:#?}"))
        .to_owned()
}

/// A running `linkops demo`, signed in as its admin.
struct Demo {
    child: Child,
    /// The sshd hosts' processes as (pid, start time). Checked by process, not by
    /// address: once the demo lets an address go, another test's host may take it.
    hosts: Vec<(u32, u64)>,
    stderr: Lines<BufReader<ChildStderr>>,
    /// The demo's config repository.
    repo: String,
    /// The admin's password, from the banner.
    password: String,
    api: Api,
}

impl Demo {
    async fn start() -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_linkops"))
            .args(["demo", "--listen", "127.0.0.1:0"])
            .env_remove("LINKOPS_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut banner = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Ctrl-C stops");
            banner.push(line);
            if done {
                break;
            }
        }
        let (url, password, repo) = (
            field(&banner, "api:"),
            field(&banner, "password:"),
            field(&banner, "config:"),
        );
        let machines = banner
            .iter()
            .find(|l| l.trim().starts_with("machines:"))
            .unwrap();
        assert_eq!(machines.split(", ").count(), 5, "{banner:#?}");

        let client = reqwest::Client::new();
        let login: LoginResponse = client
            .post(format!("{url}/api/auth/login"))
            .json(&json!({ "username": "admin", "password": &password }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login.token;
        let hosts: Vec<(u32, u64)> = descendants(child.id())
            .into_iter()
            .filter(|process| process.comm == "sshd")
            .map(|process| (process.pid, process.start))
            .collect();
        assert!(hosts.len() >= 5, "the demo's sshd hosts: {hosts:?}");
        Demo {
            stderr: BufReader::new(child.stderr.take().unwrap()).lines(),
            hosts,
            child,
            repo,
            password,
            api: Api { url, token, client },
        }
    }

    /// Waits for every machine to be checked: four enrolled, the fifth flagged.
    async fn checked(&self) {
        let expected = ["enrolled", "enrolled", "enrolled", "enrolled", "mismatch"];
        let what = "every demo machine to be checked";
        let (url, token) = (&self.api.url, &self.api.token);
        let id: fn(&MachineView) -> &str = |m| &m.spec.id;
        testbed::until_machines(url, token, what, id, |machines| {
            machines.iter().map(|m| m.enrollment.name()).eq(expected)
        })
        .await
        .unwrap();
    }

    /// Sends SIGINT, as Ctrl-C does.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        assert!(status.unwrap().success());
    }

    /// Reads the demo's stderr up to a line containing `text`; returns that line.
    fn said(&mut self, text: &str) -> String {
        let mut before = Vec::new();
        for line in self.stderr.by_ref().map(Result::unwrap) {
            if line.contains(text) {
                return line;
            }
            before.push(line);
        }
        panic!("the demo never said {text:?}; it said {before:#?}")
    }

    /// Waits for the demo to exit; asserts that its machines and files are gone.
    fn exited_and_cleaned_up(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        // The demo waits for its hosts to exit before it does.
        let alive = |(pid, start): &&(u32, u64)| {
            stat(*pid).is_some_and(|p| p.start == *start && p.state != 'Z')
        };
        let left: Vec<_> = self.hosts.iter().filter(alive).collect();
        assert!(left.is_empty(), "demo sshd hosts still running: {left:?}");
        let repo = std::path::Path::new(&self.repo);
        assert!(!repo.exists(), "{} is left behind", self.repo);
        status
    }
}

/// A test that fails midway still stops its demo (Ctrl-C), machines and all.
impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // No assertion here: this may run while a failed one unwinds.
            let pid = self.child.id().to_string();
            if Command::new("kill").args(["-INT", &pid]).status().is_ok() {
                self.child.wait().ok();
            }
        }
    }
}

/// A process as `/proc/PID/stat` describes it.
#[derive(Clone)]
struct Process {
    pid: u32,
    parent: u32,
    comm: String,
    /// `Z` for a zombie: exited, not yet reaped by whoever inherited it.
    state: char,
    /// Start time in clock ticks since boot: with the pid, names one process for good.
    start: u64,
}

fn stat(pid: u32) -> Option<Process> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid … starttime …": comm may hold spaces and parentheses.
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Process {
        pid,
        parent: fields.get(1)?.parse().ok()?,
        comm,
        state: fields.first()?.chars().next()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process below `root`.
fn descendants(root: u32) -> Vec<Process> {
    let all: Vec<Process> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| stat(entry.ok()?.file_name().to_str()?.parse().ok()?))
        .collect();
    let mut found: Vec<Process> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for process in all.iter().filter(|p| p.parent == parent) {
            parents.push(process.pid);
            found.push(process.clone());
        }
    }
    found
}

#[tokio::test]
async fn the_demo_runs_a_fleet_follows_commits_and_cleans_up() {
    let demo = Demo::start().await;
    let (api, repo) = (&demo.api, &demo.repo);

    // Four machines enrolled, the fifth flagged.
    demo.checked().await;
    // The bundled run-request ran once, and succeeded.
    let welcome = support::eventually("the welcome run-request to finish", || {
        api.finished_run("welcome")
    })
    .await;
    assert_eq!(welcome, OperationState::Succeeded);

    // A commit to the demo repository is followed.
    let request = "id: again\nscript: greet\ntargets:\n  machines: [host1]\n";
    std::fs::write(format!("{repo}/runs/again.yaml"), request).unwrap();
    for args in [&["add", "."][..], &["commit", "-qm", "again"][..]] {
        let status = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let again = support::eventually("the committed run-request to finish", || {
        api.finished_run("again")
    })
    .await;
    assert_eq!(again, OperationState::Succeeded);

    // Ctrl-C: the daemon, every demo machine and the files go.
    demo.interrupt();
    assert!(demo.exited_and_cleaned_up().success());
}

#[tokio::test]
async fn a_second_ctrl_c_stops_at_once_and_still_removes_the_machines() {
    let mut demo = Demo::start().await;
    demo.checked().await;
    // Someone watches a minute-long operation: the daemon's stop would wait for that stream.
    let (status, started) = {
        let response = demo
            .api
            .client
            .post(format!("{}/api/operations/run", demo.api.url))
            .bearer_auth(&demo.api.token)
            .json(&json!({ "script": "countdown", "targets": { "tags": ["db"] } }))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert!(status.is_success(), "{started}");
    let id = support::answer::<OperationView>(&started).operation.id;
    let mut events = demo
        .api
        .client
        .get(format!("{}/api/operations/{id}/events", demo.api.url))
        .bearer_auth(&demo.api.token)
        .send()
        .await
        .unwrap();
    // Once the countdown prints, the stream has a minute to go.
    let mut seen = String::new();
    while !seen.contains("event: output") {
        let chunk = events
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    demo.interrupt();
    demo.said("stopping the demo");
    demo.interrupt();
    let cut_short = demo.said("second Ctrl-C");
    assert!(cut_short.contains("sshd hosts"), "{cut_short}");
    let status = demo.exited_and_cleaned_up();
    assert!(!status.success(), "{status}");
    drop(events);
}

/// The README's shell blocks marked `# while the demo runs`, in order, as a
/// reader types them in a terminal (`script` gives them one, so `linkops
/// login` prompts and reads the password typed), with the banner's values in
/// place of the README's example ones: the address, the config path, and
/// where the binary is.
#[tokio::test]
async fn the_readme_examples_run_against_the_demo_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(code, _)| code))
        .filter(|code| code.starts_with("# while the demo runs"))
        .collect();
    assert_eq!(blocks.len(), 3, "the README's demo blocks");
    // The README's example banner values.
    let (example_url, example_config) =
        ("http://127.0.0.1:8000", "/tmp/linkops-demo-rtPTaD/config");
    for block in &blocks {
        assert!(!block.contains("127.0.0.1:8000") || block.contains(example_url));
    }

    let demo = Demo::start().await;
    demo.checked().await;
    support::eventually("the welcome run-request to finish", || {
        demo.api.finished_run("welcome")
    })
    .await;
    let home = testbed::private_dir();
    let binary_dir = std::path::Path::new(env!("CARGO_BIN_EXE_linkops"))
        .parent()
        .unwrap();
    // One shell for all of them, as the reader's second shell.
    let script = blocks
        .concat()
        .replace(example_url, &demo.api.url)
        .replace(example_config, &demo.repo)
        .replace("$PWD/target/release", &binary_dir.display().to_string());
    let path = home.path().join("readme.sh");
    std::fs::write(&path, format!("set -euo pipefail\n{script}")).unwrap();
    // Bounded: a prompt nobody answers ends the test, not CI's clock (timeout(1)).
    let mut typed = Command::new("timeout")
        .args([
            "--kill-after=5",
            "300",
            "script",
            "--quiet",
            "--return",
            "--command",
        ])
        .arg(format!("bash {}", path.display()))
        .arg("/dev/null")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("LINKOPS_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The password, typed at the login prompt.
    {
        use std::io::Write;
        let mut stdin = typed.stdin.take().unwrap();
        writeln!(stdin, "{}", demo.password).unwrap();
    }
    let output = typed.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script}\nfailed:\n{said}");

    // What the README says they show.
    for expected in [
        "logged in to",
        "host5    127.0.10.",
        "mismatch",
        "run:welcome",
        "hello, operator (2/2)",
        // Its id depends on how soon the demo's state applied (its applies are operations too).
        ": succeeded (of 2 machine(s): 2 succeeded)",
        "host5 skipped: not enrolled",
        "refused: host5 is not enrolled",
        "applied: revision",
        "no changes against the applied revision",
        "hello, ops (1/1)",
        "state motd (enforce mode, script motd",
        "MACHINE  STANDING",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }
    let again = support::eventually("the README's run-request to finish", || {
        demo.api.finished_run("again")
    })
    .await;
    assert_eq!(again, OperationState::Succeeded);

    demo.interrupt();
    assert!(demo.exited_and_cleaned_up().success());
}

/// `linkops demo` run as nobody from a copy nobody can run, wherever the
/// checkout lives (setpriv, from util-linux, drops to nobody), with only the
/// copy's directory on the PATH and `sudo` there when given.
fn demo_as_nobody(sudo: Option<&str>) -> (std::process::Output, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = testbed::private_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("linkops");
    std::fs::copy(env!("CARGO_BIN_EXE_linkops"), &binary).unwrap();
    if let Some(script) = sudo {
        let path = dir.path().join("sudo");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let output = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_BACKTRACE")
        .env("PATH", dir.path())
        .output()
        .unwrap();
    (output, binary)
}

#[test]
fn as_a_user_the_demo_asks_sudo_to_run_it_again() {
    // A stand-in sudo that says how it was called: the demo must exec it with its own command line.
    let (output, binary) = demo_as_nobody(Some("#!/bin/sh\necho \"sudo $*\"\nexit 7\n"));
    // exec: the process became the stand-in, exit code and all.
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("sudo {} demo --listen 127.0.0.1:0", binary.display())
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("asking sudo"));
}

#[test]
fn without_root_the_demo_says_what_to_run() {
    // No sudo to ask.
    let (output, _) = demo_as_nobody(None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("run it as root, or as a user with sudo"),
        "{stderr}"
    );
}
