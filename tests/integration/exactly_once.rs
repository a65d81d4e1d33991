//! A committed run-request runs exactly once, even when the daemon is killed
//! with SIGKILL right after claiming it and started again.
//!
//! Rounds: `EXACTLY_ONCE_ROUNDS` (default 2; CI runs 20).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use linkops::store::Role;
use linkops::testbed::Fleet;
use serde_json::{Value, json};

use crate::support::{WorkRepo, add_users, eventually, fleet_config, fleet_links};

const ADMIN: (&str, &str) = ("ada", "pw-ada-1");

/// The daemon as a separate process, so that it can be killed for real.
struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_linkops"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        let address = lines
            .by_ref()
            .map(Result::unwrap)
            .find_map(|line| {
                let address = line
                    .contains("linkops serving")
                    .then(|| {
                        line.split_whitespace()
                            .find_map(|f| f.strip_prefix("address="))
                            .map(str::to_owned)
                    })
                    .flatten();
                log.push(line);
                address
            })
            .unwrap_or_else(|| panic!("the daemon did not start: {log:#?}"));
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Daemon {
            child,
            url: format!("http://{address}"),
        }
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(self.child.wait().unwrap().success());
    }

    async fn get(&self, token: &str, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap_or_default()
    }

    async fn token(&self) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/api/auth/login", self.url))
            .json(&json!({ "username": ADMIN.0, "password": ADMIN.1 }))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }
}

fn marks(dir: &Path, run: &str) -> Vec<usize> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(run))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
        .collect()
}

#[tokio::test]
async fn a_run_request_survives_sigkill_without_running_twice() {
    let rounds: usize = std::env::var("EXACTLY_ONCE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let fleet = Fleet::start(2).unwrap();
    let marks_dir = fleet.dir().join("marks");
    std::fs::create_dir(&marks_dir).unwrap();
    std::fs::set_permissions(
        &marks_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let work = WorkRepo::new(&fleet.dir().join("config"), None);
    work.write("links.yaml", &fleet_links(&fleet, &[]));
    work.write(
        "scripts.yaml",
        &format!(
            "scripts:\n  - id: slow\n    name: Mark, then take a while\n    params:\n      - {{name: run, type: string, required: true}}\n    body: |\n      echo x >> {marks}/$LINKOPS_PARAM_RUN-$(cat /etc/linkops/client_id)\n      sleep 30\n",
            marks = marks_dir.display()
        ),
    );
    work.commit("fleet and script");

    let data = crate::support::private_dir();
    add_users(data.path(), &[(ADMIN.0, Role::Admin, ADMIN.1)]);
    fleet_config(data.path(), &fleet);
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[git]\nurl = {:?}\n",
            data.path(),
            work.dir
        ),
    )
    .unwrap();

    for round in 0..rounds {
        let run = format!("round-{round}");
        let daemon = Daemon::start(&config);
        let token = daemon.token().await;
        work.write(
            &format!("runs/{run}.yaml"),
            &format!(
                "id: {run}\nscript: slow\ntargets: {{tags: [test]}}\nparams: {{run: {run}}}\n"
            ),
        );
        work.commit(&run);

        // Kill at two points: right after the claim is recorded, and once the
        // script has visibly run on every host.
        let operation_id = eventually("the claim", || async {
            daemon.get(&token, &format!("/api/runs/{run}")).await["state"]["operation_id"].as_u64()
        })
        .await;
        if round % 2 == 1 {
            eventually("the script to run on both hosts", || async {
                (marks(&marks_dir, &run).len() == 2).then_some(())
            })
            .await;
        }
        daemon.kill_9();

        // After the restart: the operation is interrupted, not re-run.
        let daemon = Daemon::start(&config);
        let token = daemon.token().await;
        let operation = daemon
            .get(&token, &format!("/api/operations/{operation_id}"))
            .await;
        assert_eq!(
            operation["state"], "interrupted",
            "round {round}: {operation}"
        );
        // An edit makes the run-request reconcile again after the restart; it still does not re-run.
        work.write(&format!("runs/{run}.yaml"), &format!("id: {run}\nscript: slow\ntargets: {{tags: [test]}}\nparams: {{run: {run}-edited}}\n"));
        work.commit(&format!("{run} edited"));
        let state = eventually("the edit to be reconciled", || async {
            let state = daemon.get(&token, &format!("/api/runs/{run}")).await;
            (state["changed_after_run"] == true).then_some(state)
        })
        .await;
        assert_eq!(
            state["state"]["operation_id"], operation_id,
            "round {round}"
        );
        daemon.stop();

        let counts = marks(&marks_dir, &run);
        assert!(
            counts.iter().all(|c| *c == 1),
            "round {round}: ran more than once: {counts:?}"
        );
        assert!(
            marks(&marks_dir, &format!("{run}-edited")).is_empty(),
            "round {round}: the edit ran"
        );
        if round % 2 == 1 {
            assert_eq!(counts.len(), 2, "round {round}");
        }
    }
}
