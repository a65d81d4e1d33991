//! `linkops demo` end to end: from nothing to a working fleet, and everything gone after Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support;

/// The demo's API, as its banner describes it.
struct Api {
    url: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    /// The final state of a run-request's operation, once it has one.
    async fn finished_run(&self, id: &str) -> Option<String> {
        let run = self.get(&format!("/api/runs/{id}")).await;
        let operation = run["state"]["operation_id"].as_u64()?;
        let operation = self.get(&format!("/api/operations/{operation}")).await;
        let state = operation["state"].as_str()?.to_owned();
        (state != "running" && state != "pending").then_some(state)
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

#[tokio::test]
async fn the_demo_runs_a_fleet_follows_commits_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_linkops"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env_remove("LINKOPS_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    let addresses: Vec<&str> = machines
        .split(", ")
        .filter_map(|host| host.split_whitespace().last())
        .collect();
    assert_eq!(addresses.len(), 5, "{banner:#?}");

    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{url}/api/auth/login"))
        .json(&json!({ "username": "admin", "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"]
        .as_str()
        .expect("the printed password logs in")
        .to_owned();
    let api = Api { url, token, client };

    // Four machines enrolled, the fifth flagged.
    support::eventually("every demo machine to be checked", || async {
        let links = api.get("/api/links").await;
        let states: Vec<&str> = links
            .as_array()?
            .iter()
            .map(|m| m["enrollment"]["state"].as_str().unwrap_or(""))
            .collect();
        (states == ["enrolled", "enrolled", "enrolled", "enrolled", "mismatch"]).then_some(())
    })
    .await;
    // The bundled run-request ran once, and succeeded.
    let welcome = support::eventually("the welcome run-request to finish", || {
        api.finished_run("welcome")
    })
    .await;
    assert_eq!(welcome, "succeeded");

    // A commit to the demo repository is followed.
    let request = "id: again\nscript: greet\ntargets:\n  machines: [host1]\n";
    std::fs::write(format!("{repo}/runs/again.yaml"), request).unwrap();
    for args in [&["add", "."][..], &["commit", "-qm", "again"][..]] {
        let status = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let again = support::eventually("the committed run-request to finish", || {
        api.finished_run("again")
    })
    .await;
    assert_eq!(again, "succeeded");

    // Ctrl-C: the daemon, every demo machine and the files go.
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(interrupted.unwrap().success());
    assert!(child.wait().unwrap().success());
    for address in addresses {
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "{address} still answers"
        );
    }
    assert!(
        !std::path::Path::new(&repo).exists(),
        "{repo} is left behind"
    );
}

#[test]
fn without_root_the_demo_says_what_to_run() {
    use std::os::unix::fs::PermissionsExt;
    // A copy nobody can run wherever the checkout lives; setpriv (util-linux) drops to nobody.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("linkops");
    std::fs::copy(env!("CARGO_BIN_EXE_linkops"), &binary).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .arg("demo")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run `sudo linkops demo`"), "{stderr}");
}
