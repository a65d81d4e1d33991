//! Secrets in Git against the real sshd fleet and Debian's `age` CLI: a secret
//! sealed by `linkops secret set` and one sealed by `age` reach a script, which
//! prints them; the stored output, the live stream and the failure's
//! notification show `***`, the audit names the secret, and no process on the
//! machine carries the value on its command line while the script runs (a
//! second script lists every `/proc/*/cmdline` there, as `ps` shows any user). A
//! secret limited to `db` is refused for a `web` machine; a commit naming a
//! missing secret is refused where it names it, the last good revision kept;
//! rotated to a new recipient, a secret no longer opens with the old key —
//! and the daemon, still holding it, refuses that commit too.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use futures::StreamExt;
use linkops::config::{SinkConfig, SinkKind};
use linkops::contract::{OperationView, OutputBytes, OutputPage, SyncOutcome};
use linkops::sealed::Keyring;
use linkops_reconcilers::operation::OperationState;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::forge::{HOOK_SECRET, TestSinks, write_secret};
use crate::git_sync::{applied, sync};
use crate::support::{ADMIN, FleetSetup, TestDaemon, answer, read_events, with_stdin};

const SCRIPTS: &str = r#"scripts:
  - id: show
    name: Print a secret
    params:
      - {name: token, type: secret}
    body: |
      echo "pid $$"
      printf 'plain %s\n' "$LINKOPS_PARAM_TOKEN"
      printf 'b64 %s\n' "$(printf '%s' "$LINKOPS_PARAM_TOKEN" | base64 -w0)"
      echo waiting
      read _ < "$MARKS/release"
      printf 'last %s\n' "$LINKOPS_PARAM_TOKEN"
      exit 3
  - id: quick
    name: Print a secret and end
    params:
      - {name: token, type: secret}
    body: printf 'plain %s\n' "$LINKOPS_PARAM_TOKEN"
  - id: processes
    name: Every command line on the machine, as ps shows them to any user
    params:
      - {name: pid, type: int}
    body: |
      for f in /proc/[0-9]*/cmdline; do printf '%s: ' "$f"; tr '\0' ' ' < "$f"; echo; done
      printf 'in its environment: '
      tr '\0' '\n' < "/proc/$LINKOPS_PARAM_PID/environ" | grep -c '^LINKOPS_PARAM_TOKEN='
  - id: backup
    name: Back up the database
    params:
      - {name: password, type: secret, default: db-password}
    body: echo "would connect"
"#;

/// A value that needs URL-encoding, with a space and a slash.
const API_TOKEN: &str = "s3cr3t Tok/en+42";
const CLI_TOKEN: &str = "sealed-by-the-age-cli";
const DB_PASSWORD: &str = "pg-pass-0123";

/// `linkops` (this build) with `args`, `stdin` piped in: its output.
fn linkops(args: &[&str], stdin: &str) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_linkops"));
    with_stdin(command.args(args), stdin.as_bytes())
}

/// A real `age` or `age-keygen` with `args` and `stdin`: its stdout, and whether it succeeded.
fn age(program: &str, args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>) {
    let output = with_stdin(Command::new(program).args(args), stdin);
    (output.status.success(), output.stdout)
}

/// A new identity made by `age-keygen` (0600) in `dir`: its path and recipient.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let (made, _) = age("age-keygen", &["-o", path.to_str().unwrap()], b"");
    assert!(made);
    let (_, public) = age("age-keygen", &["-y", path.to_str().unwrap()], b"");
    (path, String::from_utf8(public).unwrap().trim().to_owned())
}

/// The sealed block of a secret's file, unindented: what `age -d` reads.
fn sealed_block(file: &str) -> String {
    (file.lines())
        .skip_while(|line| !line.contains("BEGIN AGE"))
        .map(|line| format!("{}\n", line.trim()))
        .collect()
}

/// `POST /api/operations/run` of `script` with `token` as its secret on `machine`.
async fn run(
    daemon: &TestDaemon,
    admin: &str,
    script: &str,
    params: Value,
    machine: &str,
) -> (StatusCode, Value) {
    let body = json!({"script": script, "params": params, "targets": {"machines": [machine]}});
    daemon
        .request(
            reqwest::Method::POST,
            "/api/operations/run",
            admin,
            Some(body),
        )
        .await
}

/// Follows operation `id`'s live output until `marker` has been printed.
async fn until_printed(daemon: &TestDaemon, token: &str, id: u64, marker: &str) -> String {
    let mut events = std::pin::pin!(crate::support::event_stream(daemon, token, id, None).await);
    let mut text = String::new();
    while !text.contains(marker) {
        let event = events
            .next()
            .await
            .expect("the stream ended first")
            .unwrap();
        if event.event == "output" {
            let chunk: linkops::contract::OutputChunk = serde_json::from_str(&event.data).unwrap();
            if let OutputBytes::Text { text: more } = chunk.bytes {
                text.push_str(&more);
            }
        }
    }
    text
}

fn never_shows(text: &str, values: &[&str]) {
    let encoded: Vec<String> = values
        .iter()
        .map(|v| base64::engine::general_purpose::STANDARD_NO_PAD.encode(v))
        .collect();
    for value in values
        .iter()
        .copied()
        .chain(encoded.iter().map(String::as_str))
    {
        assert!(!text.contains(value), "{value:?} shown in {text}");
    }
}

#[tokio::test]
async fn a_secret_reaches_its_script_and_nothing_else_shows_it() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let links = setup.fleet.inventory("test", &[], "");
    let links = links
        .replacen("    tags: [test]\n", "    tags: [test, db]\n", 1)
        .replacen("    tags: [test]\n", "    tags: [test, web]\n", 1);
    setup.work.write("links.yaml", &links);
    let release = setup.marks.join("release");
    let made = Command::new("mkfifo")
        .args(["-m", "666"])
        .arg(&release)
        .status()
        .unwrap();
    assert!(made.success());

    // The daemon's identity, made where it looks for it; the operator's by age-keygen.
    let receivers = TestSinks::start().await;
    let mut config = setup.config();
    config.notify.sinks = vec![SinkConfig {
        name: "hook".into(),
        kind: SinkKind::Webhook,
        url: format!("{}/hook", receivers.url).into(),
        secret_file: Some("hook_secret".into()),
        token_file: None,
        events: vec![linkops_reconcilers::outbox::EventKind::OperationFailed],
        allow_plain_http: false,
    }];
    write_secret(&config, "hook_secret", HOOK_SECRET);
    let daemon_identity = config.age_identity_path();
    let daemon_key = Keyring::load_or_create(&daemon_identity).unwrap();
    let daemon_recipient = daemon_key.recipients().remove(0);
    let keys = tempfile::tempdir().unwrap();
    let (operator, operator_recipient) = keygen(keys.path(), "operator.txt");
    setup.work.write(
        "recipients.yaml",
        &format!(
            "all:\n  - {daemon_recipient}  # linkopsd\n  - {operator_recipient}  # the operator\n"
        ),
    );
    let repo = setup.work.dir.to_str().unwrap();
    for (name, value, limits) in [
        (
            "api-token",
            API_TOKEN,
            vec!["--script", "show", "--script", "quick"],
        ),
        (
            "db-password",
            DB_PASSWORD,
            vec!["--tag", "db", "--script", "backup"],
        ),
    ] {
        let mut args = vec!["secret", "set", name, "--repo", repo];
        args.extend(limits);
        let set = linkops(&args, &format!("{value}\n"));
        assert!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
    }
    // One sealed by the age CLI, its file written by hand.
    let (_, sealed) = age(
        "age",
        &["-e", "-a", "-r", &daemon_recipient],
        CLI_TOKEN.as_bytes(),
    );
    let indented: String = String::from_utf8(sealed)
        .unwrap()
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    setup.work.write(
        "secrets/cli-token.yaml",
        &format!("name: cli-token\nvalue: |\n{indented}"),
    );
    // What Git holds is sealed: no value in clear, and the operator's own key opens it.
    let file = setup.work.read("secrets/api-token.yaml");
    never_shows(&file, &[API_TOKEN]);
    let (opened, value) = age(
        "age",
        &["-d", "-i", operator.to_str().unwrap()],
        sealed_block(&file).as_bytes(),
    );
    assert!(opened);
    assert_eq!(value, API_TOKEN.as_bytes());
    let good = setup.work.commit("secrets for show and backup");

    let daemon = setup.start_with(config).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let (status, started) = run(
        &daemon,
        &admin,
        "show",
        json!({"token": "api-token"}),
        "host1",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = answer::<OperationView>(&started).operation.id;

    // While it waits: its own process carries the value in its environment
    // only; no command line on the machine shows it.
    let live = until_printed(&daemon, &admin, id, "waiting").await;
    let pid: u32 = (live.lines().find_map(|l| l.strip_prefix("pid ")))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {live}"));
    let (status, started) = run(&daemon, &admin, "processes", json!({"pid": pid}), "host1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let listing = answer::<OperationView>(&started).operation.id;
    let events = read_events(&daemon, &admin, listing, None).await;
    let processes = crate::support::output_text(&events, "host1", "stdout");
    assert!(
        processes.contains(&format!("/proc/{pid}/cmdline: ")),
        "the script's process is listed: {processes}"
    );
    assert!(
        processes.ends_with("in its environment: 1\n"),
        "{processes}"
    );
    never_shows(&processes, &[API_TOKEN]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&release)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();

    // The live stream, the stored output, the record, the audit, the notification.
    let events = read_events(&daemon, &admin, id, None).await;
    assert_eq!(events.last().unwrap().state(), OperationState::Failed);
    let streamed = crate::support::output_text(&events, "host1", "stdout");
    assert!(
        streamed.contains("plain ***\nb64 ***") && streamed.contains("last ***\n"),
        "{streamed}"
    );
    never_shows(&streamed, &[API_TOKEN]);
    let stored: OutputPage = daemon
        .read(&format!("/api/operations/{id}/output"), &admin)
        .await;
    let stored_text: String = (stored.chunks.iter())
        .filter_map(|chunk| match &chunk.bytes {
            OutputBytes::Text { text } => Some(text.as_str()),
            OutputBytes::Base64 { .. } => None,
        })
        .collect();
    assert!(stored_text.contains("plain ***"), "{stored_text}");
    never_shows(&stored_text, &[API_TOKEN]);
    let record: Value = daemon.read(&format!("/api/operations/{id}"), &admin).await;
    assert_eq!(record["params"]["token"], "api-token");
    assert_eq!(record["secrets"], json!(["api-token"]));
    never_shows(&record.to_string(), &[API_TOKEN]);
    let body = json!({"table": "audit_log", "filter": [{"column": "action", "op": "eq", "value": "operation.run"}]});
    let (_, audit) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &admin,
            Some(body),
        )
        .await;
    assert!(
        audit.to_string().contains("giving secret(s) api-token"),
        "{audit}"
    );
    never_shows(&audit.to_string(), &[API_TOKEN]);
    let told = receivers
        .received
        .until("the failure's notification", 1, |_| true)
        .await;
    let text = told[0]["event"]["text"].as_str().unwrap().to_owned();
    assert!(text.ends_with("\nhost1: last ***"), "{text}");
    never_shows(&told[0].to_string(), &[API_TOKEN]);

    // The value sealed by the age CLI opens alike.
    let (status, started) = run(
        &daemon,
        &admin,
        "quick",
        json!({"token": "cli-token"}),
        "host1",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = answer::<OperationView>(&started).operation.id;
    let events = read_events(&daemon, &admin, id, None).await;
    assert_eq!(events.last().unwrap().state(), OperationState::Succeeded);
    assert_eq!(
        crate::support::output_text(&events, "host1", "stdout"),
        "plain ***\n"
    );

    // Limited to db: refused for the web machine, named and explained.
    let (status, refused) = run(&daemon, &admin, "backup", json!({}), "host2").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        refused["error"]["message"],
        "parameter password: secret \"db-password\" may reach machines tagged db only; host2 is not among them (secrets/db-password.yaml)"
    );
    // A secret's name, never a value, is what a secret parameter takes.
    let (status, _) = run(
        &daemon,
        &admin,
        "quick",
        json!({"token": API_TOKEN}),
        "host1",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // The catalog as Git holds it: sealed.
    let desired: Value = daemon.read("/api/desired", &admin).await;
    let sealed = desired["secrets"]["api-token"]["sealed"].as_str().unwrap();
    assert!(
        sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{sealed}"
    );
    never_shows(&desired.to_string(), &[API_TOKEN]);

    // A run-request naming a missing secret: refused where it names it; the good revision stays.
    setup.work.write(
        "runs/typo.yaml",
        "id: typo\nscript: quick\ntargets: {machines: [host1]}\nparams:\n  token: api-tokn\n",
    );
    let bad = setup.work.commit("a typo in a secret's name");
    let record = sync(&daemon, &admin).await;
    let SyncOutcome::Invalid { problems } = &record.outcome else {
        panic!("not refused: {record:?}");
    };
    assert_eq!(record.revision.as_deref(), Some(bad.as_str()));
    assert_eq!(
        problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "runs/typo.yaml:5:10: no secret \"api-tokn\": there is no secrets/api-tokn.yaml (`linkops secret set api-tokn` writes one)"
        ]
    );
    assert_eq!(applied(&daemon, &good).await.revision, good);
    setup.work.remove("runs/typo.yaml");

    // Rotated to a new recipient: the old key no longer opens it, the new one does…
    let (new_key, new_recipient) = keygen(keys.path(), "new-daemon.txt");
    setup.work.write(
        "recipients.yaml",
        &format!("all:\n  - {new_recipient}\n  - {operator_recipient}\n"),
    );
    let rotate = linkops(
        &[
            "secret",
            "rotate",
            "--repo",
            repo,
            "--identity",
            operator.to_str().unwrap(),
            "api-token",
            "db-password",
        ],
        "",
    );
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let file = setup.work.read("secrets/api-token.yaml");
    let old = daemon_identity.to_str().unwrap();
    let (opened, _) = age("age", &["-d", "-i", old], sealed_block(&file).as_bytes());
    assert!(!opened, "the old key still opens it");
    let (opened, value) = age(
        "age",
        &["-d", "-i", new_key.to_str().unwrap()],
        sealed_block(&file).as_bytes(),
    );
    assert!(opened);
    assert_eq!(value, API_TOKEN.as_bytes());
    // …and the daemon, still holding the old key, refuses the commit, naming its recipient.
    let rotated = setup.work.commit("sealed to the new daemon key");
    let record = sync(&daemon, &admin).await;
    let SyncOutcome::Invalid { problems } = &record.outcome else {
        panic!("not refused: {record:?}");
    };
    assert_eq!(record.revision.as_deref(), Some(rotated.as_str()));
    let said: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].starts_with("secrets/api-token.yaml:1:1: secret \"api-token\""),
        "{said:?}"
    );
    assert!(said[0].contains(&daemon_recipient), "{said:?}");
    assert_eq!(applied(&daemon, &good).await.revision, good);
    daemon.stop().await;
}

/// On a checkout, no daemon: `edit` changes a value in the editor (a file only
/// its owner reads, gone after), and `validate --identity` says whether every
/// secret opens with a key, without printing one.
#[test]
fn a_secret_is_edited_in_place_and_validated_against_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("config");
    std::fs::create_dir(&repo).unwrap();
    let (operator, operator_recipient) = keygen(dir.path(), "operator.txt");
    let (other, _) = keygen(dir.path(), "other.txt");
    std::fs::write(repo.join("links.yaml"), "machines: []\n").unwrap();
    std::fs::write(
        repo.join("recipients.yaml"),
        format!("all: [{operator_recipient}]\n"),
    )
    .unwrap();
    let repo_arg = repo.to_str().unwrap();
    let set = linkops(
        &["secret", "set", "api-token", "--repo", repo_arg],
        "old-value-0123\n",
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    // The editor notes where it was given the value, and changes it there.
    let noted = dir.path().join("edited-at");
    let editor = format!(
        "f() {{ echo \"$1\" > {}; sed -i s/old/new/ \"$1\"; }}; f",
        noted.display()
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_linkops"));
    command
        .args([
            "secret",
            "edit",
            "api-token",
            "--repo",
            repo_arg,
            "--identity",
        ])
        .arg(&operator)
        .env_remove("VISUAL")
        .env("EDITOR", editor);
    let edited = with_stdin(&mut command, b"");
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    let edited_at = std::fs::read_to_string(&noted).unwrap();
    assert!(
        edited_at.starts_with("/dev/shm/linkops-secret-"),
        "{edited_at}"
    );
    assert!(
        !Path::new(edited_at.trim()).exists(),
        "the editor's copy is gone"
    );
    let file = std::fs::read_to_string(repo.join("secrets/api-token.yaml")).unwrap();
    never_shows(&file, &["new-value-0123", "old-value-0123"]);
    let (opened, value) = age(
        "age",
        &["-d", "-i", operator.to_str().unwrap()],
        sealed_block(&file).as_bytes(),
    );
    assert!(opened);
    assert_eq!(
        value, b"new-value-0123",
        "the editor's newline is not part of it"
    );

    let validate = |identity: &Path| {
        let output = linkops(
            &[
                "validate",
                repo_arg,
                "--identity",
                identity.to_str().unwrap(),
            ],
            "",
        );
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        never_shows(&said, &["new-value-0123"]);
        (output.status.success(), said)
    };
    let (valid, said) = validate(&operator);
    assert!(
        valid && said.contains("1 secrets, each opens with the identity given"),
        "{said}"
    );
    let (valid, said) = validate(&other);
    assert!(!valid);
    assert!(
        said.starts_with("secrets/api-token.yaml:1:1: secret \"api-token\""),
        "{said}"
    );
}
