//! `POST /api/tables/query` over a store with history, through a real socket.

use std::collections::BTreeMap;

use linkops::contract::{ErrorBody, TablePage};
use linkops::store::OperationUpdate;
use linkops_reconcilers::operation::{HostResult, HostState, Operation, OperationState, Requester};
use linkops_reconcilers::role::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{self, ADMIN, TestDaemon, VIEWER};

const STATES: [OperationState; 3] = [
    OperationState::Succeeded,
    OperationState::Failed,
    OperationState::Stopped,
];

/// Operations 1..=n: script `s<i % 4>`, state by `i % 3`, on `web<i % 5>` and `db1`, a minute apart.
fn operations(n: usize) -> Vec<(Operation, Vec<HostResult>)> {
    (1..=n)
        .map(|i| {
            let machines = vec![format!("web{}", i % 5), "db1".to_owned()];
            let operation = Operation {
                id: 0,
                script: format!("s{}", i % 4),
                params: BTreeMap::new(),
                machines: machines.clone(),
                requested_by: Requester::User { name: "ada".into() },
                state: STATES[i % 3],
                created_at_ms: 1_700_000_000_000 + i as i64 * 60_000,
                finished_at_ms: Some(1_700_000_000_000 + i as i64 * 60_000 + 5_000),
                rollout: None,
                retry_of: None,
                secrets: Vec::new(),
            };
            let hosts = machines
                .into_iter()
                .map(|machine_id| HostResult {
                    machine_id,
                    state: HostState::Succeeded,
                    started_at_ms: None,
                    finished_at_ms: None,
                    stdout_bytes: i as u64,
                    stderr_bytes: 0,
                    certificate: None,
                })
                .collect();
            (operation, hosts)
        })
        .collect()
}

async fn daemon_with_history(n: usize) -> (tempfile::TempDir, TestDaemon) {
    let data = testbed::private_dir();
    support::add_users(
        data.path(),
        &[
            (ADMIN.0, Role::Admin, ADMIN.1),
            (VIEWER.0, Role::Viewer, VIEWER.1),
        ],
    );
    let store = support::open_store(&support::config(data.path()));
    support::as_the_cli(|| store.import_operations(&operations(n)).unwrap());
    // A state change moves the operation in the index.
    let update = OperationUpdate {
        state: Some((OperationState::Interrupted, true)),
        ..Default::default()
    };
    support::as_the_cli(|| store.record_operation_update(3, update).unwrap());
    drop(store);
    let mut config = support::config(data.path());
    // The history is from 2023: kept whole, not let go as `[retention] operations` would.
    config.retention.operations = std::time::Duration::from_secs(100 * 365 * 86400);
    let daemon = TestDaemon::start(config).await;
    (data, daemon)
}

async fn query(daemon: &TestDaemon, token: &str, body: Value) -> (StatusCode, Value) {
    daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            token,
            Some(body),
        )
        .await
}

/// The page an answer holds; its rows stay free-form (each table has its columns).
fn page(answered: &Value) -> TablePage {
    support::answer(answered)
}

fn ids(page: &TablePage) -> Vec<i64> {
    let rows = page.rows.iter();
    rows.map(|r| r["id"].as_i64().unwrap()).collect()
}

/// The values of `column` in each row of `page`.
fn column<'a>(page: &'a TablePage, column: &str) -> Vec<&'a Value> {
    page.rows.iter().map(|r| &r[column]).collect()
}

#[tokio::test]
async fn indexed_filters_page_with_cursors_without_gaps_or_repeats() {
    let (_data, daemon) = daemon_with_history(300).await;
    let token = daemon.token(VIEWER.0, VIEWER.1).await;
    // Failed ones are i % 3 == 1, newest first; 3 was re-stated as interrupted.
    let expected: Vec<i64> = (1..=300)
        .rev()
        .filter(|i| i % 3 == 1)
        .map(|i| i as i64)
        .collect();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (status, answered) = query(
            &daemon,
            &token,
            json!({
                "table": "operations",
                "filter": [{ "column": "state", "op": "eq", "value": "failed" }],
                "sort": [{ "column": "id", "dir": "desc" }],
                "limit": 30,
                "cursor": cursor,
            }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answered}");
        let page = page(&answered);
        assert!(
            page.total.is_none(),
            "a key-ordered page does not count: {answered}"
        );
        seen.extend(ids(&page));
        if !page.has_more {
            assert!(page.next_cursor.is_none());
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, expected);

    let (_, interrupted) = query(
        &daemon,
        &token,
        json!({ "table": "operations", "filter": [{ "column": "state", "op": "eq", "value": "interrupted" }] }),
    )
    .await;
    let interrupted = page(&interrupted);
    assert_eq!(ids(&interrupted), [3]);
    let row = &interrupted.rows[0];
    assert_eq!(row["script"], "s3");
    assert_eq!(row["machines"], json!(["web3", "db1"]));
    assert_eq!(row["created_at"], "2023-11-14T22:16:20Z");

    // A machine (through the index) and a time window, oldest first.
    let (_, answered) = query(
        &daemon,
        &token,
        json!({
            "table": "operations",
            "filter": [
                { "column": "machines", "op": "contains", "value": "web2" },
                { "column": "created_at", "op": "ge", "value": "2023-11-15T00:00:00Z" },
                { "column": "script", "op": "in", "value": ["s3", "s0"] },
            ],
            "limit": 5,
        }),
    )
    .await;
    let expected: Vec<i64> = (1..=300i64)
        .filter(|i| i % 5 == 2 && [3, 0].contains(&(i % 4)))
        .filter(|i| 1_700_000_000_000 + i * 60_000 >= 1_700_006_400_000)
        .take(5)
        .collect();
    assert_eq!(ids(&page(&answered)), expected, "{answered}");

    // Sorting by another column reads every match and can count them.
    let (_, answered) = query(
        &daemon,
        &token,
        json!({ "table": "operations", "sort": [{ "column": "script" }, { "column": "id", "dir": "desc" }], "limit": 3, "offset": 1 }),
    )
    .await;
    let sorted = page(&answered);
    assert_eq!(sorted.total, Some(300));
    assert_eq!(
        ids(&sorted),
        [296, 292, 288],
        "s0 is every fourth id; the first is skipped"
    );

    let (_, hosts) = query(
        &daemon,
        &token,
        json!({ "table": "operation_hosts", "filter": [{ "column": "operation_id", "op": "eq", "value": 7 }] }),
    )
    .await;
    let hosts = page(&hosts);
    assert_eq!(column(&hosts, "machine"), [&json!("db1"), &json!("web2")]);
    assert_eq!(hosts.rows[0]["exit_code"], 0);
    daemon.stop().await;
}

#[tokio::test]
async fn bad_queries_are_400s_that_name_the_problem_and_secrets_stay_out() {
    let (_data, daemon) = daemon_with_history(3).await;
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let refused = |body: Value| {
        let (daemon, viewer) = (&daemon, &viewer);
        async move {
            let (status, answer) = query(daemon, viewer, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
            support::answer::<ErrorBody>(&answer).error.message
        }
    };
    let message = refused(json!({ "table": "secrets" })).await;
    assert!(message.contains("unknown table \"secrets\""), "{message}");
    let message = refused(json!({ "table": "operations", "filter": [{ "column": "colour", "op": "eq", "value": 1 }] })).await;
    assert!(message.contains("no column \"colour\""), "{message}");
    let message = refused(json!({ "table": "operations", "filter": [{ "column": "id", "op": "eq", "value": "one" }] })).await;
    assert!(message.contains("column id is a integer"), "{message}");
    let message = refused(json!({ "table": "sync_history", "filter": [{ "column": "seq", "op": "contains", "value": 1 }] })).await;
    assert!(message.contains("does not support"), "{message}");
    let message = refused(
        json!({ "table": "operations", "filter": [{ "column": "id", "op": "like", "value": 1 }] }),
    )
    .await;
    assert!(message.contains("unknown variant `like`"), "{message}");

    let (status, _) = query(&daemon, &viewer, json!({ "table": "users" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, users) = query(
        &daemon,
        &admin,
        json!({ "table": "users", "sort": [{ "column": "name" }] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let users_page = page(&users);
    let names = column(&users_page, "name");
    assert_eq!(names, [&json!(ADMIN.0), &json!(VIEWER.0)]);
    let text = users.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password_hash"),
        "{text}"
    );

    // Logins are in the audit log, queryable like the rest.
    let (_, audit) = query(
        &daemon,
        &admin,
        json!({ "table": "audit_log", "filter": [{ "column": "action", "op": "prefix", "value": "auth." }, { "column": "actor", "op": "eq", "value": VIEWER.0 }] }),
    )
    .await;
    assert!(!page(&audit).rows.is_empty(), "{audit}");
    daemon.stop().await;
}

/// Queries at once are bounded: a viewer asking many at a time is answered
/// 429 naming the setting for those beyond `[http] table_queries_per_user`,
/// and each query answered holds only its page.
#[tokio::test]
async fn queries_at_once_are_bounded_per_user() {
    let data = testbed::private_dir();
    support::add_users(
        data.path(),
        &[
            (ADMIN.0, Role::Admin, ADMIN.1),
            (VIEWER.0, Role::Viewer, VIEWER.1),
        ],
    );
    let mut config = support::config(data.path());
    config.http.table_queries_per_user = 1;
    let store = support::open_store(&config);
    support::as_the_cli(|| store.import_operations(&operations(20_000)).unwrap());
    drop(store);
    let daemon = TestDaemon::start(config).await;
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;
    // Sorted by a column no index serves: every operation is read.
    let body =
        json!({"table": "operations", "sort": [{"column": "script", "dir": "desc"}], "limit": 10});
    let answers =
        futures::future::join_all((0..16).map(|_| query(&daemon, &viewer, body.clone()))).await;
    let mut refused = 0;
    for (status, answer) in &answers {
        match *status {
            StatusCode::OK => {
                let answered = page(answer);
                assert_eq!(answered.rows.len(), 10);
                assert_eq!(answered.total, Some(20_000));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let message = support::answer::<ErrorBody>(answer).error.message;
                assert!(
                    message.contains("[http] table_queries_per_user = 1"),
                    "{message}"
                );
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert!(refused > 0, "16 at once, one allowed: some are refused");
    assert!(refused < 16, "the first one is served");
    // Another user is not held back by the viewer's queries.
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let (status, _) = query(&daemon, &admin, body).await;
    assert_eq!(status, StatusCode::OK);
    daemon.stop().await;
}
