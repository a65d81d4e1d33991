//! The database restarted under load: nothing lost, nothing told twice.

use linkops::contract::{ErrorBody, OutputBytes, OutputChunk, StateEvent};
use linkops_reconcilers::operation::OperationState;

use super::*;

/// PostgreSQL is restarted (stopped as by a crash) under a running operation
/// whose output another replica follows: while it is down both say not ready
/// and start nothing; once it is back the output is whole, each event once,
/// in order, and the operation ends as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_event_and_reports_nothing_twice() {
    let (mut server, database, _store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;
    let fleet = TestFleet::start(1).unwrap();
    // A lease longer than a restart of the database takes under load: the
    // replicas ride it out (with the 6 s lease, a restart slower than ~4 s
    // rightly stops them: they could not renew).
    let (_work, _data, a, b) =
        two_replicas(&server, &database, &database.url, &fleet, None, "30s").await;
    let host = fleet.hosts()[0].name().to_owned();
    let operation = start(&a, "talk", &host).await;
    let mut events = follow(&b, &b.token, operation).await;
    let mut seen = read_until(&mut events, "output").await;

    // Down: neither replica is ready, and nothing starts.
    let mut server = linkops::blocking::run(move || {
        server.stop().unwrap();
        server
    })
    .await
    .unwrap();
    let health = |replica: &Replica| reqwest::get(format!("{}/health", replica.process.url));
    for replica in [&a, &b] {
        let status = health(replica).await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    }
    let refused = run(&b, "talk", &host).await;
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let said: ErrorBody = refused.json().await.unwrap();
    let message = said.error.message;
    assert!(
        message.contains("PostgreSQL at"),
        "names the database: {message}"
    );
    let server = linkops::blocking::run(move || {
        server.resume().unwrap();
        server
    })
    .await
    .unwrap();

    // Back: the rest of the log, through the same stream.
    seen.extend(read_until(&mut events, "end").await);
    let ids: Vec<u64> = seen.iter().map(|event| event.id.parse().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let printed: String = seen
        .iter()
        .filter(|event| event.event == "output")
        .map(|event| {
            let chunk: OutputChunk = serde_json::from_str(&event.data).unwrap();
            match chunk.bytes {
                OutputBytes::Text { text } => text,
                OutputBytes::Base64 { .. } => panic!("the script prints text: {chunk:?}"),
            }
        })
        .collect();
    assert_eq!(printed, talk_output(), "the whole output, once");
    let end: StateEvent = serde_json::from_str(&seen.last().unwrap().data).unwrap();
    assert_eq!(end.state, OperationState::Succeeded, "{end:?}");
    // The run refused while the database was down never started.
    let operations: Vec<OperationView> = b.get("/api/operations").await.unwrap();
    let ids: Vec<u64> = operations.iter().map(|v| v.operation.id).collect();
    assert_eq!(ids, [operation], "{operations:?}");
    for replica in [a, b] {
        let (status, log) = linkops::blocking::run(move || replica.process.terminate())
            .await
            .unwrap();
        assert!(status.success(), "{log}");
    }
    drop(server);
}
