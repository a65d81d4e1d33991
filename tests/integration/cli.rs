//! The `linkops` client commands against a running daemon and a real fleet.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use linkops::contract::OperationView;
use linkops_reconcilers::operation::OperationState;
use serde_json::Value;

use crate::support::{ADMIN, FleetSetup, TestDaemon};

const SCRIPTS: &str = r#"scripts:
  - id: hello
    name: Say hello
    body: |
      echo "hello $LINKOPS_PARAM_WHO from $(cat /etc/linkops/client_id)"
      echo "to stderr" >&2
    params:
      - name: who
        type: string
        default: world
  - id: fail
    name: Fail on purpose
    body: |
      echo "about to fail"
      exit 3
"#;

/// Runs `linkops ARGS` with its own config dir, optionally feeding stdin.
async fn linkops(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    linkops_with(home, args, stdin, &[]).await
}

/// [`linkops`] with `env` set too; `home` is its HOME as well.
pub(crate) async fn linkops_with(
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkops"))
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .env_remove("LINKOPS_SERVER")
        .env_remove("SSH_AUTH_SOCK")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    child.wait_with_output().await.unwrap()
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) async fn logged_in(daemon: &TestDaemon) -> tempfile::TempDir {
    let home = testbed::private_dir();
    let login = linkops(
        home.path(),
        &[
            "login",
            "--server",
            &daemon.url,
            "--user",
            ADMIN.0,
            "--password-stdin",
        ],
        Some(&format!("{}\n", ADMIN.1)),
    )
    .await;
    assert!(login.status.success(), "{}", stderr(&login));
    let session = home.path().join("linkops/session.json");
    let mode = std::fs::metadata(&session).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the session file holds a token");
    home
}

#[tokio::test]
async fn run_follows_output_live_and_exits_with_the_fleets_verdict() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let daemon = setup.start().await;
    let home = logged_in(&daemon).await;
    let home = home.path();
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for id in ["host1", "host2"] {
        // Scripts run on machines seen enrolled.
        daemon
            .post(&format!("/api/links/{id}/verify"), Some(&token))
            .await;
    }

    let run = linkops(
        home,
        &[
            "run", "hello", "-t", "host1", "-t", "host2", "-p", "who=ops",
        ],
        None,
    )
    .await;
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let out = stdout(&run);
    for host in 0..2 {
        let line = format!(
            "host{} | hello ops from LINKOPS-{}",
            host + 1,
            setup.fleet.host(host).uuid()
        );
        assert!(out.contains(&line), "{out}");
    }
    assert!(
        stderr(&run).contains("host1 ! to stderr"),
        "{}",
        stderr(&run)
    );
    assert!(stderr(&run).contains("succeeded"), "{}", stderr(&run));

    let failed = linkops(home, &["run", "fail", "--target", "host2"], None).await;
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(stdout(&failed).contains("host2 | about to fail"));

    let refused = linkops(home, &["run", "nonexistent", "-t", "host1"], None).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("no script \"nonexistent\""),
        "{}",
        stderr(&refused)
    );

    let ops = linkops(home, &["--json", "ops"], None).await;
    let ops: Vec<OperationView> = serde_json::from_slice(&ops.stdout).unwrap();
    let states: Vec<_> = ops.iter().map(|o| o.operation.state).collect();
    assert_eq!(states, [OperationState::Failed, OperationState::Succeeded]);
    let first = ops[1].operation.id.to_string();
    let logs = linkops(home, &["ops", "logs", &first], None).await;
    assert!(
        stdout(&logs).contains("host2 | hello ops"),
        "{}",
        stdout(&logs)
    );

    let machines = linkops(home, &["machines"], None).await;
    let table = stdout(&machines);
    assert!(table.starts_with("MACHINE"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("host")).count(),
        2,
        "{table}"
    );
    let status = linkops(home, &["status"], None).await;
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        stdout(&status).contains("machines   2"),
        "{}",
        stdout(&status)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn plan_shows_what_a_checkout_would_change() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let daemon = setup.start().await;
    let home = logged_in(&daemon).await;
    let home = home.path();
    let checkout = setup.work.dir.to_str().unwrap().to_owned();

    let same = linkops(home, &["plan", &checkout], None).await;
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}{}",
        stdout(&same),
        stderr(&same)
    );
    assert!(stdout(&same).contains("no changes"));

    setup
        .work
        .write("scripts.yaml", &SCRIPTS.replace("exit 3", "exit 4"));
    setup.work.write(
        "runs/r1.yaml",
        "id: r1\nscript: hello\ntargets: {machines: [host1]}\n",
    );
    let changed = linkops(home, &["plan", &checkout], None).await;
    assert_eq!(changed.status.code(), Some(1), "{}", stderr(&changed));
    let out = stdout(&changed);
    assert!(out.contains("~ script fail: body changed"), "{out}");
    assert!(
        out.contains("▶ run-request r1 would start script hello"),
        "{out}"
    );

    setup.work.write("links.yaml", "machines: [oops\n");
    let broken = linkops(home, &["plan", &checkout], None).await;
    assert_eq!(broken.status.code(), Some(2));
    assert!(
        stdout(&broken).contains("links.yaml:"),
        "{}",
        stdout(&broken)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn without_a_session_the_client_says_how_to_log_in() {
    let home = testbed::private_dir();
    let output = linkops(
        home.path(),
        &["--server", "http://127.0.0.1:9", "machines"],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("run `linkops login --server http://127.0.0.1:9`"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn a_session_the_daemon_no_longer_takes_says_to_log_in_and_status_needs_none() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let daemon = setup.start().await;
    let home = logged_in(&daemon).await;
    // As after a restart with a new signing key: the saved token is refused.
    let session = home.path().join("linkops/session.json");
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&session).unwrap()).unwrap();
    saved["token"] = Value::String(format!("{}x", saved["token"].as_str().unwrap()));
    std::fs::write(&session, serde_json::to_vec(&saved).unwrap()).unwrap();
    let output = linkops(home.path(), &["machines"], None).await;
    assert_eq!(output.status.code(), Some(2));
    let said = stderr(&output);
    assert!(
        said.contains("no longer valid") && said.contains("run `linkops login --server"),
        "{said}"
    );
    // Without a session, status still tells the daemon's health.
    let fresh = testbed::private_dir();
    let output = linkops(fresh.path(), &["--server", &daemon.url, "status"], None).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let told = stdout(&output);
    assert!(
        told.contains("(ok)") && told.contains("linkops login"),
        "{told}"
    );
    daemon.stop().await;
}

/// `linkops man | head` and the like: a reader that is gone before the page
/// is written is no error.
#[test]
fn the_man_page_and_completions_to_a_closed_pipe_are_no_error() {
    for args in [&["man"][..], &["completions", "bash"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_linkops"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        assert_eq!(stderr(&output), "", "{args:?}");
    }
}
