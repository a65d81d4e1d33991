//! Inbound triggers against the real sshd fleet, fed Alertmanager's
//! documented webhook payloads (version 4): a full disk on host3 runs the
//! cleanup on host3 only, a resend does nothing, a group runs each firing
//! alert the trigger allows, and a wrong token, another trigger's token, a
//! machine outside the mapping or too big a body are refused.

use std::os::unix::fs::PermissionsExt;

use linkops::contract::{OperationView, TriggerAnswer, TriggerOutcome};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{self, ADMIN, FleetSetup, read_events};

const SCRIPTS: &str = r#"scripts:
  - id: disk-cleanup
    name: Clean a filesystem up
    params:
      - {name: mountpoint, type: string, required: true, pattern: "/[a-z/]*"}
      - {name: keep_days, type: int, default: 7}
    body: echo "cleaning $LINKOPS_PARAM_MOUNTPOINT, keeping $LINKOPS_PARAM_KEEP_DAYS days"
"#;
const DISK_FULL: &str = include_str!("../fixtures/alertmanager/disk-full-host3.json");
const GROUPED: &str = include_str!("../fixtures/alertmanager/grouped.json");
const TOKEN: &str = "9f2c41d7a0b84e6c93d15e7a2b6c08f4";
const OTHER_TOKEN: &str = "1a7e5c3b9d0f42e8b6a4c2e0d8f6b4a2";

fn trigger(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\nscript: disk-cleanup\nmachines: {{machines: [host2, host3]}}\nmap: {{mountpoint: labels.mountpoint}}\n{extra}"
    )
}

/// Writes a trigger's token where the daemon reads it, mode 0600.
fn token_file(dir: &std::path::Path, name: &str, token: &str) {
    let path = dir.join(format!("{name}.secret"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn call(
    daemon: &support::TestDaemon,
    name: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = daemon
        .client()
        .post(format!("{}/api/triggers/{name}", daemon.url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

fn outcomes(answer: &Value) -> Vec<String> {
    let answer: TriggerAnswer = support::answer(answer);
    (answer.runs.iter())
        .map(|run| {
            format!(
                "{} {}",
                run.machine.as_deref().unwrap_or("-"),
                run.outcome.name()
            )
        })
        .collect()
}

async fn triggered(daemon: &support::TestDaemon, token: &str) -> Vec<OperationView> {
    let operations: Vec<OperationView> = daemon.read("/api/operations", token).await;
    (operations.into_iter())
        .filter(|o| o.operation.requested_by.label() == "trigger:disk-full")
        .collect()
}

#[tokio::test]
async fn an_alert_runs_its_script_on_its_machine_once_and_nothing_else_gets_through() {
    let setup = FleetSetup::new(4, &[], SCRIPTS);
    setup
        .work
        .write("triggers/disk-full.yaml", &trigger("disk-full", ""));
    setup
        .work
        .write("triggers/other.yaml", &trigger("other", ""));
    setup.work.write(
        "triggers/rehearsal.yaml",
        &trigger("rehearsal", "dry_run: true\n"),
    );
    setup.work.write(
        "triggers/signed.yaml",
        &trigger("signed", "auth: hmac_sha256\ndry_run: true\n"),
    );
    setup.work.commit("the disk-full triggers");
    let secrets = tempfile::tempdir().unwrap();
    token_file(secrets.path(), "disk-full", TOKEN);
    token_file(secrets.path(), "other", OTHER_TOKEN);
    token_file(secrets.path(), "rehearsal", TOKEN);
    token_file(secrets.path(), "signed", OTHER_TOKEN);
    let mut config = setup.config();
    config.triggers.secrets_dir = secrets.path().to_owned();
    config.triggers.max_body = 64 << 10;
    let daemon = setup.start_with(config).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;

    // Host3's full /var runs the cleanup there, once.
    let (status, answer) = call(&daemon, "disk-full", Some(TOKEN), DISK_FULL).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let run = &support::answer::<TriggerAnswer>(&answer).runs[0];
    assert_eq!(run.alert.as_deref(), Some("b4c1f3e2a9d07c55"));
    let TriggerOutcome::Started { operation_id } = run.outcome else {
        panic!("{answer}");
    };
    let events = read_events(&daemon, &admin, operation_id, None).await;
    assert_eq!(events.last().unwrap().state().name(), "succeeded");
    let output = support::output_text(&events, "host3", "stdout");
    assert_eq!(output, "cleaning /var, keeping 7 days\n");
    let ran = support::operation(&daemon, &admin, operation_id).await;
    assert_eq!(ran.operation.machines, ["host3"]);

    // Alertmanager resends the firing group: nothing more runs.
    let (status, answer) = call(&daemon, "disk-full", Some(TOKEN), DISK_FULL).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(outcomes(&answer), ["host3 duplicate"]);

    // A group: host3's again (a duplicate), host2's runs, the resolved one
    // is ignored, a machine the inventory lacks is refused.
    let (status, answer) = call(&daemon, "disk-full", Some(TOKEN), GROUPED).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        outcomes(&answer),
        ["host3 duplicate", "host2 started", "- ignored", "- refused"]
    );

    // A machine the trigger may not run on is refused, nothing runs.
    let host4 = DISK_FULL.replace("host3:9100", "host4:9100");
    let (status, answer) = call(&daemon, "disk-full", Some(TOKEN), &host4).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("machine host4 is not one trigger disk-full may run on"),
        "{message}"
    );

    // No token, a wrong one, another trigger's: refused alike.
    for token in [None, Some("not-the-token"), Some(OTHER_TOKEN)] {
        let (status, answer) = call(
            &daemon,
            "disk-full",
            token,
            DISK_FULL.replace("/var", "/tmp").as_str(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {answer}");
    }
    // Too big a body is refused naming the limit and its setting.
    let padded = DISK_FULL.replace(
        "\"receiver\"",
        &format!("\"padding\": \"{}\", \"receiver\"", "x".repeat(70 << 10)),
    );
    let (status, answer) = call(&daemon, "disk-full", Some(TOKEN), &padded).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[triggers] max_body")
    );

    // A dry run says what it would run and runs nothing.
    let (status, answer) = call(&daemon, "rehearsal", Some(TOKEN), DISK_FULL).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(outcomes(&answer), ["host3 would_run"]);

    // Signed with the trigger's key, the body is taken; signed otherwise, or altered, not.
    let signed = |key: &str, body: &str| {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let send_signed = |signature: String, body: &'static str| {
        let request = daemon
            .client()
            .post(format!("{}/api/triggers/signed", daemon.url))
            .header("content-type", "application/json")
            .header("x-linkops-signature", signature)
            .body(body);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(
        send_signed(signed(OTHER_TOKEN, DISK_FULL), DISK_FULL).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send_signed(signed(TOKEN, DISK_FULL), DISK_FULL).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send_signed(signed(OTHER_TOKEN, DISK_FULL), GROUPED).await,
        StatusCode::UNAUTHORIZED
    );

    let started = triggered(&daemon, &admin).await;
    let mut machines: Vec<&str> = (started.iter())
        .map(|o| o.operation.machines[0].as_str())
        .collect();
    machines.sort();
    assert_eq!(machines, ["host2", "host3"], "two runs in all");
    let metrics = daemon.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("linkops_trigger_runs_total{trigger=\"disk-full\",result=\"started\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("linkops_trigger_refusals_total{result=\"unauthorized\"} 5"));
    daemon.stop().await;

    // The refusals after a proven caller are audited.
    let audit = support::audit_log(setup.data.path(), 10_000);
    let refused: Vec<&str> = (audit.iter())
        .filter(|entry| entry.action == "trigger.refused")
        .filter_map(|entry| entry.detail.as_deref())
        .collect();
    assert!(refused.iter().any(|d| d.contains("host4")), "{refused:?}");
}

#[tokio::test]
async fn a_trigger_s_token_can_be_a_sealed_secret_of_the_repository() {
    let setup = FleetSetup::new(4, &[], SCRIPTS);
    let config = setup.config();
    // The daemon's identity where it looks for it; the token sealed to it by Debian's age.
    let daemon_key = linkops::sealed::Keyring::load_or_create(&config.age_identity_path()).unwrap();
    let recipient = daemon_key.recipients().remove(0);
    setup
        .work
        .write("recipients.yaml", &format!("all:\n  - {recipient}\n"));
    let mut age = std::process::Command::new("age");
    age.args(["-e", "-a", "-r", &recipient]);
    let sealed = support::with_stdin(&mut age, TOKEN.as_bytes());
    assert!(sealed.status.success());
    let indented: String = (String::from_utf8(sealed.stdout).unwrap().lines())
        .map(|line| format!("  {line}\n"))
        .collect();
    setup.work.write(
        "secrets/alert-token.yaml",
        &format!("name: alert-token\nvalue: |\n{indented}"),
    );
    setup.work.write(
        "triggers/disk-full.yaml",
        &trigger("disk-full", "secret: alert-token\ndry_run: true\n"),
    );
    setup.work.commit("a trigger whose token is sealed in Git");
    let daemon = setup.start_with(config).await;

    let (status, answer) = call(&daemon, "disk-full", Some(TOKEN), DISK_FULL).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(outcomes(&answer), ["host3 would_run"]);
    let (status, _) = call(&daemon, "disk-full", Some(OTHER_TOKEN), DISK_FULL).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    daemon.stop().await;
}
