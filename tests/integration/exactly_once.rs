//! A committed run-request runs exactly once, even when the daemon is killed
//! with SIGKILL right after claiming it and started again.
//!
//! Rounds: `EXACTLY_ONCE_ROUNDS` (default 2; CI runs 20).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use linkops::contract::{OperationView, RunView};
use linkops_reconcilers::operation::OperationState;
use linkops_reconcilers::role::Role;
use linkops_reconcilers::run::RunState;
use testbed::{ServeProcess, TestFleet};

use crate::support::{add_users, answer, eventually, fleet_config};
use testbed::WorkRepo;

const ADMIN: (&str, &str) = ("ada", "pw-ada-1");

/// The daemon as a separate process, so that it can be killed for real.
struct Daemon {
    process: ServeProcess,
    token: String,
}

impl Daemon {
    async fn start(config: &Path) -> Daemon {
        let binary = Command::new(env!("CARGO_BIN_EXE_linkops"));
        let (mut process, _) =
            ServeProcess::spawn(binary, [OsStr::new("--config"), config.as_os_str()]).unwrap();
        process.drain_log();
        let token = process.login(ADMIN.0, ADMIN.1).await.unwrap();
        Daemon { process, token }
    }

    /// The answer to `GET path` as `T`; `None` when it is no success (a 404 before a run exists).
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.process.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        match response.status().is_success() {
            true => Some(answer(&response.json().await.unwrap())),
            false => None,
        }
    }

    /// The operation run-request `run` started, once it has.
    async fn started_by(&self, run: &str) -> Option<u64> {
        let view: RunView = self.get(&format!("/api/runs/{run}")).await?;
        match view.state? {
            RunState::Started { operation_id } => Some(operation_id),
            _ => None,
        }
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

/// Two test hosts, a directory where the script marks each run, a config
/// repository with the `slow` script, and a daemon's config: its file (for a
/// process of its own) and as a value (to open its store while it is stopped).
struct Slow {
    fleet: TestFleet,
    marks_dir: std::path::PathBuf,
    work: WorkRepo,
    _data: tempfile::TempDir,
    config: std::path::PathBuf,
    in_process: linkops::config::Config,
}

fn slow_fleet() -> Slow {
    let fleet = TestFleet::start(2).unwrap();
    let marks_dir = fleet.dir().join("marks");
    std::fs::create_dir(&marks_dir).unwrap();
    std::fs::set_permissions(
        &marks_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let work = WorkRepo::new(&fleet.dir().join("config"), None);
    work.write("links.yaml", &fleet.inventory("test", &[], ""));
    work.write(
        "scripts.yaml",
        &format!(
            "scripts:\n  - id: slow\n    name: Mark, then take a while\n    params:\n      - {{name: run, type: string, required: true}}\n    body: |\n      echo x >> {marks}/$LINKOPS_PARAM_RUN-$(cat /etc/linkops/client_id)\n      sleep 30\n",
            marks = marks_dir.display()
        ),
    );
    work.commit("fleet and script");
    let data = testbed::private_dir();
    add_users(data.path(), &[(ADMIN.0, Role::Admin, ADMIN.1)]);
    let in_process = fleet_config(data.path(), &fleet);
    let store = crate::support::store_toml(&in_process);
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[git]\nurl = {:?}\n{store}",
            data.path(),
            work.dir
        ),
    )
    .unwrap();
    Slow {
        fleet,
        marks_dir,
        work,
        _data: data,
        config,
        in_process,
    }
}

#[tokio::test]
async fn a_run_request_survives_sigkill_without_running_twice() {
    let rounds: usize = std::env::var("EXACTLY_ONCE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let Slow {
        fleet: _fleet,
        marks_dir,
        work,
        _data,
        config,
        ..
    } = slow_fleet();

    for round in 0..rounds {
        let run = format!("round-{round}");
        let daemon = Daemon::start(&config).await;
        work.write(
            &format!("runs/{run}.yaml"),
            &format!(
                "id: {run}\nscript: slow\ntargets: {{tags: [test]}}\nparams: {{run: {run}}}\n"
            ),
        );
        work.commit(&run);

        // Kill at two points: right after the claim is recorded, and once the
        // script has visibly run on every host.
        let operation_id =
            eventually("the claim", || async { daemon.started_by(&run).await }).await;
        if round % 2 == 1 {
            eventually("the script to run on both hosts", || async {
                (marks(&marks_dir, &run).len() == 2).then_some(())
            })
            .await;
        }
        daemon.process.kill_9();

        // After the restart: the operation is interrupted, not re-run (at
        // once on redb; on PostgreSQL once the killed replica's lease passed).
        let daemon = Daemon::start(&config).await;
        let operation = eventually("the operation to be marked interrupted", || async {
            let path = format!("/api/operations/{operation_id}");
            let operation: OperationView = daemon.get(&path).await?;
            let state = operation.operation.state;
            let unfinished = [OperationState::Pending, OperationState::Running].contains(&state);
            (!unfinished).then_some(operation)
        })
        .await;
        assert_eq!(
            operation.operation.state,
            OperationState::Interrupted,
            "round {round}: {operation:?}"
        );
        // An edit makes the run-request reconcile again after the restart; it still does not re-run.
        work.write(&format!("runs/{run}.yaml"), &format!("id: {run}\nscript: slow\ntargets: {{tags: [test]}}\nparams: {{run: {run}-edited}}\n"));
        work.commit(&format!("{run} edited"));
        let state = eventually("the edit to be reconciled", || async {
            let state: RunView = daemon.get(&format!("/api/runs/{run}")).await?;
            state.changed_after_run.then_some(state)
        })
        .await;
        assert_eq!(
            state.state,
            Some(RunState::Started { operation_id }),
            "round {round}"
        );
        let (status, log) = daemon.process.terminate();
        assert!(status.success(), "round {round}: {status:?} {log}");

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

/// The fires schedule `name` recorded, newest first.
async fn fires(daemon: &Daemon, name: &str) -> Vec<linkops_reconcilers::schedule::FireRecord> {
    let detail: Option<linkops::contract::ScheduleDetail> =
        daemon.get(&format!("/api/schedules/{name}")).await;
    detail.map(|d| d.fires).unwrap_or_default()
}

#[tokio::test]
async fn a_schedule_s_fire_survives_sigkill_after_its_claim_without_running_twice() {
    let rounds: usize = std::env::var("EXACTLY_ONCE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
        .min(6);
    let Slow {
        fleet: _fleet,
        marks_dir,
        work,
        _data,
        config,
        in_process,
    } = slow_fleet();

    for round in 0..rounds {
        let name = format!("every-minute-{round}");
        // Known since just before the current minute began, and until just
        // after: its one fire, at the minute's start, is due when the daemon
        // starts (caught up once if the start took past the minute).
        let now = jiff::Timestamp::now().as_millisecond();
        let minute = now - now.rem_euclid(60_000);
        {
            let store = crate::support::open_store(&in_process);
            crate::support::as_the_cli(|| store.schedule_since(&name, minute - 10_000).unwrap());
        }
        let until = jiff::Timestamp::from_millisecond(minute + 1_000).unwrap();
        work.write(
            &format!("schedules/{name}.yaml"),
            &format!("name: {name}\nscript: slow\ntargets: {{tags: [test]}}\nparams: {{run: {name}}}\ncron: \"* * * * *\"\nzone: Europe/Berlin\ncatch_up: once\nuntil: {until}\n"),
        );
        work.commit(&name);
        let daemon = Daemon::start(&config).await;
        // Killed as soon as the fire is claimed, or once its script ran on every host.
        let claimed = eventually("the fire's claim", || async {
            let fires = fires(&daemon, &name).await;
            fires.into_iter().find_map(|fire| match fire.outcome {
                linkops_reconcilers::schedule::FireOutcome::Started { operation_id } => {
                    Some((fire.due_ms, operation_id))
                }
                _ => None,
            })
        })
        .await;
        if round % 2 == 1 {
            eventually("the script to run on both hosts", || async {
                (marks(&marks_dir, &name).len() == 2).then_some(())
            })
            .await;
        }
        daemon.process.kill_9();

        let daemon = Daemon::start(&config).await;
        let (due_ms, operation_id) = claimed;
        let operation = eventually("the operation to be marked interrupted", || async {
            let operation: OperationView = daemon
                .get(&format!("/api/operations/{operation_id}"))
                .await?;
            let state = operation.operation.state;
            let unfinished = [OperationState::Pending, OperationState::Running].contains(&state);
            (!unfinished).then_some(operation)
        })
        .await;
        assert_eq!(
            operation.operation.state,
            OperationState::Interrupted,
            "round {round}"
        );
        // The fire is the one recorded; none is claimed for the same due time again.
        let recorded = fires(&daemon, &name).await;
        assert_eq!(
            recorded.iter().filter(|f| f.due_ms == due_ms).count(),
            1,
            "round {round}: {recorded:?}"
        );
        let (status, log) = daemon.process.terminate();
        assert!(status.success(), "round {round}: {status:?} {log}");
        let counts = marks(&marks_dir, &name);
        assert!(
            counts.iter().all(|c| *c == 1),
            "round {round}: ran more than once: {counts:?}"
        );
        if round % 2 == 1 {
            assert_eq!(counts.len(), 2, "round {round}");
        }
        work.remove(&format!("schedules/{name}.yaml"));
        work.commit(&format!("{name} done"));
    }
}
