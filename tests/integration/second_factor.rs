//! A second factor before the dangerous things, against the real daemon and
//! fleet: an admin action, a terminal and a run on a machine marked
//! `protected` each ask for one; a TOTP enrolled with its first code gives
//! one (a code once, a recovery code once), and the session that gave it may
//! do them for `[auth] step_up_within`.

use linkops::contract::{LoginResponse, Me, RecoveryCodes, SecondFactorEnrolment};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{ADMIN, FleetSetup, TestDaemon, answer};

const SCRIPTS: &str = "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n";

/// `method path` as `token`'s holder: the status, and the error code if refused.
async fn ask(
    daemon: &TestDaemon,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    daemon.request(method, path, token, body).await
}

/// The code the app shows `seconds` from now.
fn code(secret: &str, seconds: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret).unwrap();
    let totp = totp_rs::Builder::new().with_secret(secret).build().unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    totp.generate(now + seconds).to_string()
}

#[tokio::test]
async fn admin_actions_terminals_and_protected_machines_ask_for_a_second_factor() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let links = setup.fleet.inventory("test", &[], "");
    // host1 is protected.
    let links = links.replacen(
        "    tags: [test]\n",
        "    tags: [test]\n    protected: true\n",
        1,
    );
    setup.work.write("links.yaml", &links);
    setup.work.commit("host1 is protected");
    let mut config = setup.config();
    config.auth.step_up = true;
    let daemon = setup.start_with(config).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    use reqwest::Method;

    // Without a second factor: told to enrol one.
    let (status, said) = ask(&daemon, Method::POST, "/api/git/sync", &admin, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    assert_eq!(said["error"]["code"], "step_up_required");
    assert_eq!(said["error"]["details"]["how"], "enrol");

    // Enrolled: a QR code, the first code confirms it, recovery codes once.
    let (status, begun) = ask(
        &daemon,
        Method::POST,
        "/api/auth/second-factor",
        &admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{begun}");
    let begun: SecondFactorEnrolment = answer(&begun);
    assert!(begun.qr_svg.contains("<svg"), "{}", begun.qr_svg);
    let url = &begun.otpauth_url;
    assert!(
        url.starts_with("otpauth://totp/LinkOps") && url.contains(&begun.secret),
        "{url}"
    );
    let confirm = "/api/auth/second-factor/confirm";
    let (status, _) = ask(
        &daemon,
        Method::POST,
        confirm,
        &admin,
        Some(json!({"code": "000000"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let first = code(&begun.secret, 0);
    let (status, codes) = ask(
        &daemon,
        Method::POST,
        confirm,
        &admin,
        Some(json!({"code": first})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{codes}");
    let codes: RecoveryCodes = answer(&codes);
    assert_eq!(codes.recovery_codes.len(), 10);

    // Still this session has given none: told to give a code.
    let (status, said) = ask(&daemon, Method::POST, "/api/git/sync", &admin, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(said["error"]["details"]["how"], "totp", "{said}");

    // A code once: the first one was taken by the enrolment; the next one steps up.
    let step_up = "/api/auth/step-up";
    let (status, said) = ask(
        &daemon,
        Method::POST,
        step_up,
        &admin,
        Some(json!({"code": first})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    assert!(
        said["error"]["message"]
            .as_str()
            .unwrap()
            .contains("used already")
    );
    let next = code(&begun.secret, 30);
    let (status, stepped) = ask(
        &daemon,
        Method::POST,
        step_up,
        &admin,
        Some(json!({"code": next})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stepped}");
    let stepped = answer::<LoginResponse>(&stepped).token;
    let me: Me = daemon.read("/api/auth/me", &stepped).await;
    assert!(me.second_factor && me.second_factor_at.is_some(), "{me:?}");

    // The stepped-up session syncs; the old one still may not.
    let (status, said) = ask(&daemon, Method::POST, "/api/git/sync", &stepped, None).await;
    assert_eq!(status, StatusCode::OK, "{said}");
    assert_eq!(
        ask(&daemon, Method::POST, "/api/git/sync", &admin, None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // A run on the protected machine asks for it; elsewhere not.
    let run = |machine: &str| json!({"script": "whoami", "targets": {"machines": [machine]}});
    let (status, said) = ask(
        &daemon,
        Method::POST,
        "/api/operations/run",
        &admin,
        Some(run("host1")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    let message = said["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("running on protected machines host1 asks for a second factor"),
        "{message}"
    );
    let (status, said) = ask(
        &daemon,
        Method::POST,
        "/api/operations/run",
        &admin,
        Some(run("host2")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{said}");
    let (status, said) = ask(
        &daemon,
        Method::POST,
        "/api/operations/run",
        &stepped,
        Some(run("host1")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{said}");

    // A terminal asks for it too.
    let (status, workspace) = ask(
        &daemon,
        Method::POST,
        "/api/terminal/workspaces",
        &admin,
        Some(json!({"layout": "single"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{workspace}");
    let panes = format!(
        "/api/terminal/workspaces/{}/panes",
        workspace["id"].as_str().unwrap()
    );
    let (status, said) = ask(
        &daemon,
        Method::PUT,
        &panes,
        &admin,
        Some(json!({"panes": ["host2"]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    assert!(
        said["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("a terminal to host2 asks")
    );
    let (status, said) = ask(
        &daemon,
        Method::PUT,
        &panes,
        &stepped,
        Some(json!({"panes": ["host2"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{said}");

    // A recovery code steps up once.
    let recovery = json!({"recovery_code": codes.recovery_codes[0]});
    let (status, _) = ask(
        &daemon,
        Method::POST,
        step_up,
        &admin,
        Some(recovery.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = ask(&daemon, Method::POST, step_up, &admin, Some(recovery)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    daemon.stop().await;
}
