//! API tokens against the real daemon and fleet: a service token scoped to
//! one script runs it from a shell (`LINKOPS_TOKEN`) and nothing else, and
//! stops working when revoked; a personal token never reaches beyond its
//! owner, makes no tokens, and stops working when it expires; the secret is
//! shown once and never again.

use linkops::contract::{CreatedToken, OperationView, TokenView};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cli::{linkops_with, stderr, stdout};
use crate::support::{ADMIN, FleetSetup, TestDaemon, VIEWER, answer, eventually};

const SCRIPTS: &str = "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n  - {id: hostname, name: Host name, body: hostname}\n";

/// `POST /api/tokens` as `token`'s holder: the status and the answer.
async fn make(daemon: &TestDaemon, token: &str, body: Value) -> (StatusCode, Value) {
    daemon
        .request(reqwest::Method::POST, "/api/tokens", token, Some(body))
        .await
}

/// An expiry `seconds` from now.
fn in_seconds(seconds: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds)).to_string()
}

#[tokio::test]
async fn a_service_token_for_one_script_runs_it_from_a_shell_and_nothing_else_until_revoked() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let daemon = setup.start().await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let body = json!({
        "name": "ci-whoami", "service": true, "expires_at": in_seconds(3600),
        "grant": {"role": "operator", "scripts": ["whoami"]},
    });
    let (status, made) = make(&daemon, &admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let made: CreatedToken = answer(&made);
    assert!(made.token.starts_with("lot_"), "{}", made.token);
    assert_eq!(made.view.owner, None);

    // From a shell, with the token in the environment and no session.
    let home = testbed::private_dir();
    let env = [("LINKOPS_TOKEN", made.token.as_str())];
    let cli = |args: &'static [&'static str]| {
        let (home, server) = (home.path().to_owned(), daemon.url.clone());
        async move {
            let mut all = vec!["--server", server.as_str()];
            all.extend_from_slice(args);
            linkops_with(&home, &all, None, &env).await
        }
    };
    let ran = cli(&["run", "whoami", "--target", "host1"]).await;
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert!(
        stdout(&ran).contains(testbed::TEST_USER),
        "{}",
        stdout(&ran)
    );
    let refused = cli(&["run", "hostname", "--target", "host1"]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("this needs operator on machine host1 for script hostname"),
        "{}",
        stderr(&refused)
    );
    // Nothing else: users, terminals.
    let users = daemon.get("/api/users", Some(&made.token)).await;
    assert_eq!(users.status(), StatusCode::FORBIDDEN);
    let (status, _) = daemon
        .request(
            reqwest::Method::POST,
            "/api/terminal/workspaces",
            &made.token,
            Some(json!({"layout": "single"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Its operations name it; its last use is noted; its secret is never shown again.
    let operations: Vec<OperationView> = daemon.read("/api/operations", &admin).await;
    let by = serde_json::to_value(&operations[0].operation.requested_by).unwrap();
    assert_eq!(by["name"], "token:ci-whoami", "{by}");
    let listed = eventually("the token's use to be noted", || async {
        let tokens: Vec<TokenView> = daemon.read("/api/tokens", &admin).await;
        tokens.into_iter().find(|t| t.last_used_at.is_some())
    })
    .await;
    assert_eq!(listed.id, made.view.id);
    let text = daemon
        .get("/api/tokens", Some(&admin))
        .await
        .text()
        .await
        .unwrap();
    let secret = made.token.rsplit('_').next().unwrap();
    assert!(!text.contains(secret), "{text}");

    // Revoked: it opens nothing, and the shell is told why.
    let path = format!("/api/tokens/{}", made.view.id);
    let (status, _) = daemon
        .request(reqwest::Method::DELETE, &path, &admin, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after = cli(&["run", "whoami", "--target", "host1"]).await;
    assert!(!after.status.success());
    assert!(
        stderr(&after).contains("refused the API token in LINKOPS_TOKEN"),
        "{}",
        stderr(&after)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_personal_token_stays_within_its_owner_makes_no_tokens_and_expires() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let daemon = setup.start().await;
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;

    // Beyond what the viewer holds: refused, naming why.
    let operator =
        json!({"name": "mine", "expires_at": in_seconds(3600), "grant": {"role": "operator"}});
    let (status, said) = make(&daemon, &viewer, operator).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    let message = said["error"]["message"].as_str().unwrap();
    assert!(message.contains("must be within one you hold"), "{message}");
    // A service token is an admin's to make; an expiry beyond the setting is refused.
    let service = json!({"name": "svc", "service": true, "expires_at": in_seconds(3600), "grant": {"role": "viewer"}});
    assert_eq!(
        make(&daemon, &viewer, service).await.0,
        StatusCode::FORBIDDEN
    );
    let far = json!({"name": "far", "expires_at": in_seconds(400 * 24 * 3600), "grant": {"role": "viewer"}});
    let (status, said) = make(&daemon, &viewer, far).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
    assert!(
        said["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api_token_max_lifetime")
    );

    // A grant naming what the fleet does not have would give nothing: refused.
    let mistyped = json!({"name": "typo", "expires_at": in_seconds(3600), "grant": {"role": "viewer", "tags": ["wbe"]}});
    let (status, said) = make(&daemon, &viewer, mistyped).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
    assert_eq!(
        said["error"]["message"],
        "no tag \"wbe\" in the desired state in force"
    );

    // Within it, expiring in two seconds: it reads, makes no token, then stops.
    let short = json!({"name": "short", "expires_at": in_seconds(2), "grant": {"role": "viewer"}});
    let (status, made) = make(&daemon, &viewer, short).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let made: CreatedToken = answer(&made);
    assert_eq!(made.view.owner.as_deref(), Some(VIEWER.0));
    let me = daemon.get("/api/auth/me", Some(&made.token)).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["username"], VIEWER.0);
    assert_eq!(me["within"]["role"], "viewer", "{me}");
    let again =
        json!({"name": "again", "expires_at": in_seconds(3600), "grant": {"role": "viewer"}});
    let (status, said) = make(&daemon, &made.token, again).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    eventually("the token to expire", || async {
        let status = daemon.get("/api/auth/me", Some(&made.token)).await.status();
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    daemon.stop().await;
}
