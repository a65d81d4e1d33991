//! Login, tokens, roles and lockout through the real HTTP server on a real socket.

use std::path::Path;

use linkops::contract::{Credentials, ErrorBody, ErrorCode, Health, LoginResponse, Me, UserView};
use linkops::store::Outcome;
use linkops_reconcilers::role::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{self, TestDaemon, add_users};

async fn start(dir: &Path) -> TestDaemon {
    TestDaemon::start(support::config(dir)).await
}

fn data_dir_with_users(users: &[(&str, Role, &str)]) -> tempfile::TempDir {
    let dir = testbed::private_dir();
    add_users(dir.path(), users);
    dir
}

async fn error_code(response: reqwest::Response) -> ErrorCode {
    let body: ErrorBody = response.json().await.unwrap();
    body.error.code
}

#[tokio::test]
async fn login_answers_token_expiry_and_role_and_the_token_works() {
    let dir = data_dir_with_users(&[("ada", Role::Operator, "pw-ada-1")]);
    let server = start(dir.path()).await;

    let response = server.login("ada", "pw-ada-1").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: LoginResponse = response.json().await.unwrap();
    assert_eq!(body.role, Some(Role::Operator));
    let lifetime = body.expires_at.duration_since(jiff::Timestamp::now());
    assert!(
        lifetime > jiff::SignedDuration::from_hours(23),
        "{lifetime:?}"
    );
    assert!(
        lifetime <= jiff::SignedDuration::from_hours(24),
        "{lifetime:?}"
    );

    let me = server.get("/api/auth/me", Some(&body.token)).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(
        me,
        json!({ "username": "ada", "role": "operator", "grants": [{"role": "operator", "tags": [], "machines": [], "scripts": []}], "within": null, "second_factor": false, "second_factor_at": null })
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let dir = data_dir_with_users(&[("ada", Role::Viewer, "pw-ada-1")]);
    let server = start(dir.path()).await;
    let wrong = server.login("ada", "nope").await;
    let unknown = server.login("nobody", "nope").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.text().await.unwrap(), unknown.text().await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn missing_forged_and_expired_tokens_are_401() {
    let dir = data_dir_with_users(&[("ada", Role::Admin, "pw-ada-1")]);
    let server = start(dir.path()).await;
    let good = server.token("ada", "pw-ada-1").await;

    assert_eq!(
        server.get("/api/auth/me", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let missing = server.get("/api/users", None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(missing).await, ErrorCode::Unauthorized);

    // Signed with another secret.
    let secret = std::fs::read_to_string(dir.path().join("jwt_secret")).unwrap();
    let sign = |key: &[u8], exp: i64| {
        let now = jiff::Timestamp::now();
        let claims = json!({
            "sub": "ada", "role": "admin", "iat": now.as_second(), "iat_ms": now.as_millisecond(), "exp": exp,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let in_an_hour = jiff::Timestamp::now().as_second() + 3600;
    let forged = sign(b"not the daemon's secret", in_an_hour);
    assert_eq!(
        server.get("/api/users", Some(&forged)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Signed with the right secret but expired a minute ago.
    let expired = sign(
        secret.trim().as_bytes(),
        jiff::Timestamp::now().as_second() - 60,
    );
    assert_eq!(
        server.get("/api/users", Some(&expired)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The same construction with a valid expiry is accepted: the two above failed for their flaw.
    let fresh = sign(secret.trim().as_bytes(), in_an_hour);
    assert_eq!(
        server.get("/api/users", Some(&fresh)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        server.get("/api/users", Some(&good)).await.status(),
        StatusCode::OK
    );
    server.stop().await;
}

#[tokio::test]
async fn roles_below_admin_get_403_and_admins_never_see_hashes() {
    let dir = data_dir_with_users(&[
        ("ada", Role::Admin, "pw-ada-1"),
        ("otto", Role::Operator, "pw-otto-1"),
        ("vic", Role::Viewer, "pw-vic-1"),
    ]);
    let server = start(dir.path()).await;
    for (name, secret) in [("otto", "pw-otto-1"), ("vic", "pw-vic-1")] {
        let token = server.token(name, secret).await;
        let response = server.get("/api/users", Some(&token)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{name}");
        let body: ErrorBody = response.json().await.unwrap();
        assert_eq!(body.error.code, ErrorCode::Forbidden);
        assert_eq!(body.error.details.unwrap()["required_role"], "admin");
    }
    let token = server.token("ada", "pw-ada-1").await;
    let response = server.get("/api/users", Some(&token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(!text.contains("argon2"), "{text}");
    let users: Vec<UserView> = serde_json::from_str(&text).unwrap();
    assert_eq!(users.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn five_failures_lock_the_account_across_a_restart() {
    let dir = data_dir_with_users(&[("ada", Role::Admin, "pw-ada-1")]);
    let server = start(dir.path()).await;
    for attempt in 1..=5 {
        let response = server.login("ada", "wrong").await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
    // Locked: even the right password is refused, without saying it was right.
    let locked = server.login("ada", "pw-ada-1").await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=300).contains(&retry_after), "{retry_after}");
    let body: ErrorBody = locked.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::Locked);
    assert_eq!(body.error.details.unwrap()["retry_after_secs"], retry_after);
    let wrong_while_locked = server.login("ada", "wrong").await;
    assert_eq!(wrong_while_locked.status(), StatusCode::TOO_MANY_REQUESTS);
    server.stop().await;

    // A restart does not reset the counter.
    let server = start(dir.path()).await;
    assert_eq!(
        server.login("ada", "pw-ada-1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    server.stop().await;

    // Every attempt is in the audit log, with no password in it.
    let logins: Vec<_> = support::audit_log(dir.path(), 100)
        .into_iter()
        .filter(|e| e.action == "auth.login")
        .collect();
    let count = |outcome| logins.iter().filter(|e| e.outcome == outcome).count();
    assert_eq!(count(Outcome::Failure), 5);
    assert_eq!(count(Outcome::Denied), 3);
    let dump = format!("{logins:?}");
    assert!(
        !dump.contains("pw-ada-1") && !dump.contains("wrong\""),
        "{dump}"
    );
}

#[tokio::test]
async fn success_resets_the_failure_count() {
    let dir = data_dir_with_users(&[("ada", Role::Admin, "pw-ada-1")]);
    let server = start(dir.path()).await;
    for _ in 0..4 {
        assert_eq!(
            server.login("ada", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    server.token("ada", "pw-ada-1").await;
    for _ in 0..4 {
        assert_eq!(
            server.login("ada", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    server.token("ada", "pw-ada-1").await;
    server.stop().await;
}

#[tokio::test]
async fn health_reports_ready_without_auth() {
    let dir = data_dir_with_users(&[]);
    let server = start(dir.path()).await;
    let response = server.get("/health", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Health = response.json().await.unwrap();
    assert!(body.ready);
    assert!(body.store.ok);
    server.stop().await;
}

#[tokio::test]
async fn admins_create_users_and_reset_passwords_shown_once() {
    let dir = data_dir_with_users(&[
        ("ada", Role::Admin, "pw-ada-1"),
        ("oli", Role::Operator, "pw-oli-1"),
    ]);
    let server = start(dir.path()).await;
    let admin = server.token("ada", "pw-ada-1").await;
    let post = |path: &'static str, token: String, body: Option<Value>| {
        let server = &server;
        async move {
            server
                .request(reqwest::Method::POST, path, &token, body)
                .await
        }
    };

    let (status, created) = post(
        "/api/users",
        admin.clone(),
        Some(json!({ "username": "vic", "role": "viewer" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let password = support::answer::<Credentials>(&created).password;
    assert_eq!(password.len(), 20);
    let vic = server.token("vic", &password).await;
    let me: Me = server
        .get("/api/auth/me", Some(&vic))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me.role, Some(Role::Viewer));

    let (status, _) = post(
        "/api/users",
        admin.clone(),
        Some(json!({ "username": "vic", "role": "admin" })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, answer) = post(
        "/api/users",
        admin.clone(),
        Some(json!({ "username": "no spaces", "role": "viewer" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let refused = support::answer::<ErrorBody>(&answer).error;
    assert_eq!(refused.details.unwrap()["field"], "username");
    let operator = server.token("oli", "pw-oli-1").await;
    let (status, _) = post(
        "/api/users",
        operator,
        Some(json!({ "username": "eve", "role": "admin" })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A reset: the old password and the old token stop working, the new password works.
    let (status, reset) = post("/api/users/vic/password", admin.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    assert_eq!(
        server.get("/api/auth/me", Some(&vic)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.login("vic", &password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let reset = support::answer::<Credentials>(&reset);
    server.token("vic", &reset.password).await;
    let (status, _) = post("/api/users/nobody/password", admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    server.stop().await;
    let entries = support::audit_log(dir.path(), 1000);
    let by_ada: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e.actor == "ada" && e.action.starts_with("user."))
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(by_ada, [("user.create", "vic"), ("user.passwd", "vic")]);
    assert!(
        entries
            .iter()
            .all(|e| !e.detail.as_deref().unwrap_or("").contains(&password))
    );
    assert!(
        entries
            .iter()
            .all(|e| e.outcome != Outcome::Failure || e.action == "auth.login")
    );
}

#[tokio::test]
async fn admins_change_roles_and_delete_users_but_never_the_last_admin() {
    let dir = data_dir_with_users(&[
        ("ada", Role::Admin, "pw-ada-1"),
        ("oli", Role::Operator, "pw-oli-1"),
        ("vic", Role::Viewer, "pw-vic-1"),
    ]);
    let server = start(dir.path()).await;
    let admin = server.token("ada", "pw-ada-1").await;
    let oli = server.token("oli", "pw-oli-1").await;
    let vic = server.token("vic", "pw-vic-1").await;
    let call = |method: reqwest::Method, path: &'static str, token: &str, body: Option<Value>| {
        let (server, token) = (&server, token.to_owned());
        async move { server.request(method, path, &token, body).await }
    };
    let patch = |path, token: &str, role: &str| {
        call(
            reqwest::Method::PATCH,
            path,
            token,
            Some(json!({ "role": role })),
        )
    };
    let delete = |path, token: &str| call(reqwest::Method::DELETE, path, token, None);
    let workspace = json!({ "layout": "single" });
    let create_workspace = |token: &str| {
        call(
            reqwest::Method::POST,
            "/api/terminal/workspaces",
            token,
            Some(workspace.clone()),
        )
    };

    // A role left out is refused, not taken for none.
    let (status, said) = call(
        reqwest::Method::PATCH,
        "/api/users/oli",
        &admin,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
    assert!(
        said["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `role`"),
        "{said}"
    );

    // Demoting an operator takes effect on their very next request, with the same token.
    assert_eq!(create_workspace(&oli).await.0, StatusCode::CREATED);
    let (status, user) = patch("/api/users/oli", &admin, "viewer").await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let user = support::answer::<UserView>(&user);
    assert_eq!(
        (user.username.as_str(), user.role),
        ("oli", Some(Role::Viewer))
    );
    assert_eq!(create_workspace(&oli).await.0, StatusCode::FORBIDDEN);

    // Only admins change users; the last admin stays one; unknown names and roles are refused.
    assert_eq!(
        patch("/api/users/vic", &oli, "admin").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        delete("/api/users/ada", &vic).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, refused) = patch("/api/users/ada", &admin, "operator").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let message = support::answer::<ErrorBody>(&refused).error.message;
    assert!(message.contains("last admin"), "{message}");
    assert_eq!(
        delete("/api/users/ada", &admin).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        patch("/api/users/nobody", &admin, "viewer").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete("/api/users/nobody", &admin).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, refused) = patch("/api/users/vic", &admin, "root").await;
    assert!(status.is_client_error(), "{status}");
    assert!(
        !support::answer::<ErrorBody>(&refused)
            .error
            .message
            .is_empty()
    );

    // A deleted user's token and password stop working at once.
    assert_eq!(
        delete("/api/users/vic", &admin).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server.get("/api/auth/me", Some(&vic)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.login("vic", "pw-vic-1").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // With a second admin, the first may step down.
    assert_eq!(
        patch("/api/users/oli", &admin, "admin").await.0,
        StatusCode::OK
    );
    assert_eq!(
        patch("/api/users/ada", &admin, "operator").await.0,
        StatusCode::OK
    );

    server.stop().await;
    let changes: Vec<(String, String, Outcome, String)> = support::audit_log(dir.path(), 1000)
        .into_iter()
        .filter(|e| e.action == "user.role" || e.action == "user.delete")
        .map(|e| (e.action, e.target, e.outcome, e.detail.unwrap_or_default()))
        .collect();
    let summary: Vec<(&str, &str, Outcome)> = changes
        .iter()
        .map(|(action, target, outcome, _)| (action.as_str(), target.as_str(), *outcome))
        .collect();
    assert_eq!(
        summary,
        [
            ("user.role", "oli", Outcome::Success),
            ("user.role", "ada", Outcome::Denied),
            ("user.delete", "ada", Outcome::Denied),
            ("user.delete", "vic", Outcome::Success),
            ("user.role", "oli", Outcome::Success),
            ("user.role", "ada", Outcome::Success),
        ]
    );
    assert_eq!(changes[0].3, "operator -> viewer");
    assert_eq!(
        changes[3].3,
        "was viewer; 0 terminal workspace(s) and 0 API token(s) deleted; the name is retired"
    );
}

/// The roles of `docs/api.md`'s table: (METHOD, path template) → the least
/// role (0 anyone, 1 viewer, 2 operator, 3 admin).
fn documented_roles() -> std::collections::BTreeMap<(String, String), u8> {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let rows = page
        .split_once("| route | role | what |\n|---|---|---|\n")
        .expect("the API table")
        .1
        .lines()
        .take_while(|line| line.starts_with("| `"));
    let mut roles = std::collections::BTreeMap::new();
    for row in rows {
        let cells: Vec<&str> = row.trim_start_matches("| ").splitn(3, " | ").collect();
        let role = match cells[1] {
            "anyone" => 0,
            "viewer" => 1,
            "operator" => 2,
            "admin" => 3,
            other => panic!("no role {other:?} in {row}"),
        };
        for route in cells[0].split(", ") {
            let route = route.trim_matches('`');
            let (method, path) = route.split_once(' ').expect(route);
            let path = path.split('[').next().unwrap();
            roles.insert((method.to_owned(), path.to_owned()), role);
        }
    }
    roles
}

/// Every route of the OpenAPI description is in the API table with its
/// role, and each `GET` route refuses exactly the callers below it: no
/// token 401, too low a role 403.
#[tokio::test]
async fn every_route_needs_the_role_the_api_table_names() {
    let dir = data_dir_with_users(&[
        ("ada", Role::Admin, "pw-ada-1"),
        ("otto", Role::Operator, "pw-otto-1"),
        ("vic", Role::Viewer, "pw-vic-1"),
    ]);
    let server = start(dir.path()).await;
    let roles = documented_roles();
    let description: Value = server
        .get("/api/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    for (path, methods) in description["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let ws = (method == "GET" && path.ends_with("/ws")).then_some("WS");
            let key = (ws.unwrap_or(&method).to_owned(), path.clone());
            assert!(
                roles.contains_key(&key),
                "{key:?} is not in docs/api.md's table"
            );
        }
    }
    let mut callers = vec![(0u8, None)];
    for (rank, name, password) in [
        (1, "vic", "pw-vic-1"),
        (2, "otto", "pw-otto-1"),
        (3, "ada", "pw-ada-1"),
    ] {
        callers.push((rank, Some(server.token(name, password).await)));
    }
    let mut asked = 0;
    for ((method, path), role) in &roles {
        if method != "GET" {
            continue;
        }
        let concrete =
            (path.replace("{id}", "1").replace("{name}", "nobody")).replace("{provider}", "nobody");
        for (rank, token) in &callers {
            let status = server.get(&concrete, token.as_deref()).await.status();
            let expected = match (*rank < *role, token) {
                (true, None) => Some(StatusCode::UNAUTHORIZED),
                (true, Some(_)) => Some(StatusCode::FORBIDDEN),
                (false, _) => None,
            };
            match expected {
                Some(expected) => assert_eq!(status, expected, "GET {path} as rank {rank}"),
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "GET {path} as rank {rank}: {status}"
                ),
            }
            asked += 1;
        }
    }
    assert!(asked > 60, "{asked} asks");
    server.stop().await;
}

#[tokio::test]
async fn with_passwords_for_admins_alone_others_are_sent_to_their_provider() {
    let dir = data_dir_with_users(&[
        ("ada", Role::Admin, "pw-ada-1"),
        ("oli", Role::Operator, "pw-oli-1"),
    ]);
    let mut config = support::config(dir.path());
    config.auth.password_sign_in = linkops::config::PasswordSignIn::Admins;
    let server = TestDaemon::start(config).await;
    assert_eq!(
        server.login("ada", "pw-ada-1").await.status(),
        StatusCode::OK
    );
    let refused = server.login("oli", "pw-oli-1").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: ErrorBody = refused.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::SignInRefused);
    assert!(
        body.error.message.contains("password_sign_in"),
        "{}",
        body.error.message
    );
    // A wrong password is still only a wrong password: nothing said of the policy.
    let wrong = server.login("oli", "not-it").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
    let audit = support::audit_log(dir.path(), 50);
    let denied = audit.iter().find(|entry| {
        entry.target == "oli"
            && entry.detail.as_deref()
                == Some("right password, but password sign-in is for admins alone")
    });
    assert!(denied.is_some(), "{audit:?}");
}
