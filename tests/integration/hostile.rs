//! The daemon attacked as an attacker would, over real sockets: unauthenticated floods,
//! oversized and malformed input, reads beyond a role. Each test names the defect it holds shut.

use std::time::Duration;

use linkops::contract::{ErrorBody, LoginResponse, TablePage};
use linkops_reconcilers::role::Role;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, ADMIN, TestDaemon, VIEWER};

/// Long enough for anything the daemon bounds to have ended; a test that reaches it fails.
const WAIT: Duration = Duration::from_secs(30);

fn data_dir() -> tempfile::TempDir {
    let dir = testbed::private_dir();
    support::add_users(
        dir.path(),
        &[
            (ADMIN.0, Role::Admin, ADMIN.1),
            (VIEWER.0, Role::Viewer, VIEWER.1),
        ],
    );
    dir
}

fn address(daemon: &TestDaemon) -> String {
    daemon.url.trim_start_matches("http://").to_owned()
}

/// Reads until the daemon closes the connection; what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the daemon kept the connection open")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Defect 5: half a header, or an idle keep-alive connection, is closed by
/// the header timeout; at the connection cap a new client takes the place of
/// a connection that sent no request, and when every slot is being served it
/// gets a 503 at once, counted; the daemon answers again when one goes.
#[tokio::test]
async fn slow_and_excess_connections_are_closed_and_counted() {
    let dir = data_dir();
    let mut config = support::config(dir.path());
    config.http.header_timeout = Duration::from_millis(500);
    config.http.max_connections = 3;
    let daemon = TestDaemon::start(config).await;

    let mut half = TcpStream::connect(address(&daemon)).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let answer = read_to_close(&mut half).await;
    assert!(!answer.contains("200 OK"), "{answer}");

    let mut idle = TcpStream::connect(address(&daemon)).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    // Three connections that send nothing hold every slot: a fourth takes
    // the place of the oldest (which is closed) and is served.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(address(&daemon)).await.unwrap());
    }
    let mut fourth = TcpStream::connect(address(&daemon)).await.unwrap();
    fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut fourth).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let started = std::time::Instant::now();
    assert_eq!(read_to_close(&mut held.remove(0)).await, "");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "closed to make room"
    );
    drop(held);

    // Three streams being served hold every slot: the fourth is refused, naming the limit.
    let token = {
        // On a connection of its own that closes: the client's pool would hold a slot.
        let mut login = TcpStream::connect(address(&daemon)).await.unwrap();
        let body = format!(r#"{{"username":"{}","password":"{}"}}"#, ADMIN.0, ADMIN.1);
        let request = format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        login.write_all(request.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut login).await;
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let answer: LoginResponse = serde_json::from_str(body).expect(&answer);
        answer.token
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address(&daemon)).await.unwrap();
        let request = format!(
            "GET /api/fleet/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(WAIT, stream.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        streams.push(stream);
    }
    let mut excess = TcpStream::connect(address(&daemon)).await.unwrap();
    let answer = read_to_close(&mut excess).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("[http] max_connections"),
        "{answer}"
    );
    drop(streams);
    let metrics = support::eventually("the daemon to answer again", || async {
        let response = daemon
            .client()
            .get(format!("{}/metrics", daemon.url))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    })
    .await;
    assert!(
        metrics.contains("linkops_http_connections_refused_total 1"),
        "{metrics}"
    );
    daemon.stop().await;
}

/// Defects 4 and 7: logins with huge invented names cost nothing and store nothing
/// unbounded; a flood of logins is bounded by the hash slots and told to retry.
#[tokio::test]
async fn login_floods_neither_grow_the_store_nor_exhaust_the_daemon() {
    let dir = data_dir();
    let mut config = support::config(dir.path());
    config.auth.max_concurrent_hashes = 1;
    config.auth.login_queue = 4;
    let daemon = TestDaemon::start(config.clone()).await;
    let size = || support::store_bytes(&config);
    let before = size();
    let huge = "n".repeat(1 << 20);
    for _ in 0..20 {
        let response = daemon.login(&huge, "guess").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let grown = size() - before;
    assert!(
        grown < 1 << 20,
        "20 huge names grew the store by {grown} bytes"
    );

    // Invented names lock like accounts, but only in bounded memory.
    for _ in 0..5 {
        daemon.login("nobody-at-all", "guess").await;
    }
    let locked = daemon.login("nobody-at-all", "guess").await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);

    let logins = (0..40).map(|i| {
        let daemon = &daemon;
        async move { daemon.login(&format!("guess{i}"), "wrong").await }
    });
    let answers = futures::future::join_all(logins).await;
    let mut busy = 0;
    for answer in answers {
        match answer.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                busy += 1;
                assert_eq!(answer.headers()["retry-after"], "1");
                let body: ErrorBody = answer.json().await.unwrap();
                let message = body.error.message;
                assert!(message.contains("[auth] login_queue"), "{message}");
            }
            other => panic!("a login answered {other}"),
        }
    }
    assert!(
        busy > 0,
        "40 logins at once on one hash slot were all queued"
    );

    // The audit entry of a huge name is bounded, and says what was refused.
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let (_, audit) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &admin,
            Some(json!({ "table": "audit_log", "filter": [{ "column": "action", "op": "eq", "value": "auth.login" }] })),
        )
        .await;
    // Rows are free-form: each table has its own columns.
    let audit: TablePage = support::answer(&audit);
    let huge_row = (audit.rows.iter())
        .find(|row| row["detail"].as_str().unwrap().contains("1048576 bytes"))
        .expect("the huge name's entry");
    assert_eq!(huge_row["target"].as_str().unwrap().len(), 64);
    daemon.stop().await;
}

/// Defect 6: a request's method never becomes a label value.
#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let dir = data_dir();
    let daemon = TestDaemon::start(support::config(dir.path())).await;
    let method = reqwest::Method::from_bytes("X".repeat(16 << 10).as_bytes()).unwrap();
    for _ in 0..50 {
        daemon
            .client()
            .request(method.clone(), format!("{}/api/links", daemon.url))
            .send()
            .await
            .unwrap();
    }
    let metrics = daemon.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.len() < 64 << 10, "{} bytes", metrics.len());
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    daemon.stop().await;
}

/// Defect 3: a table shows every row, so it needs the role that sees every row.
#[tokio::test]
async fn viewers_read_no_table_their_role_does_not_show() {
    let dir = data_dir();
    let daemon = TestDaemon::start(support::config(dir.path())).await;
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    for table in [
        "audit_log",
        "terminal_workspaces",
        "terminal_sessions",
        "users",
    ] {
        let body = json!({ "table": table });
        let (status, answer) = daemon
            .request(
                reqwest::Method::POST,
                "/api/tables/query",
                &viewer,
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{table}: {answer}");
        let (status, _) = daemon
            .request(
                reqwest::Method::POST,
                "/api/tables/query",
                &admin,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{table}");
    }
    let (status, _) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &viewer,
            Some(json!({ "table": "machines" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    daemon.stop().await;
}

/// Defect 14: every answer carries the security headers; API answers are never cached.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let dir = data_dir();
    let daemon = TestDaemon::start(support::config(dir.path())).await;
    let login = daemon.login(ADMIN.0, ADMIN.1).await;
    let console = daemon.get("/", None).await;
    let missing = daemon.get("/api/no-such-thing", None).await;
    for response in [&login, &console, &missing] {
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    assert_eq!(login.headers()["cache-control"], "no-store");
    assert_eq!(missing.headers()["cache-control"], "no-store");
    daemon.stop().await;
}

/// Defect 13: the store is owner-only, and a data dir others can read is refused.
#[tokio::test]
async fn the_store_is_private_and_an_open_data_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    let config = support::config(dir.path());
    let daemon = TestDaemon::start(config.clone()).await;
    daemon.stop().await;
    // What holds secrets is owner-only: the redb file, or the database's password file.
    let private = match support::postgres() {
        None => config.store_path(),
        Some(_) => config.keys_dir().join(&config.store.password_file),
    };
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    if support::postgres().is_some() {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused =
            linkops::server::Daemon::start(config.clone(), listener, std::future::pending())
                .await
                .err()
                .expect("a readable password file is refused");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("chmod 600 {}", private.display())),
            "{message}"
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = linkops::server::Daemon::start(config, listener, std::future::pending())
        .await
        .err()
        .expect("an open data dir is refused");
    let message = refused.to_string();
    assert!(
        message.contains(&format!("chmod 700 {}", dir.path().display())),
        "{message}"
    );
}

/// Defect 11: a token in the Git URL reaches no viewer, no audit entry, no error message.
#[tokio::test]
async fn credentials_in_the_git_url_never_leave_the_daemon() {
    let dir = data_dir();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = support::config(dir.path());
    let url = format!("https://bot:SECRET-TOKEN-42@127.0.0.1:{port}/ops/fleet.git");
    config.git.url = Some(linkops::config::RepoUrl::parse(&url));
    let daemon = TestDaemon::start(config).await;
    daemon.daemon().git().first_attempt().await;
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let status = daemon
        .get("/api/git/status", Some(&viewer))
        .await
        .text()
        .await
        .unwrap();
    assert!(status.contains("bot:***@127.0.0.1"), "{status}");
    let (_, audit) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &admin,
            Some(json!({ "table": "audit_log" })),
        )
        .await;
    let (_, history) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &admin,
            Some(json!({ "table": "sync_history" })),
        )
        .await;
    let health = daemon.get("/health", None).await.text().await.unwrap();
    for text in [status, audit.to_string(), history.to_string(), health] {
        assert!(!text.contains("SECRET-TOKEN-42"), "{text}");
    }
    daemon.stop().await;
}
