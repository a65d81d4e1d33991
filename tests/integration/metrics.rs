//! `GET /metrics` scraped after real work on a real fleet.

use linkops_reconcilers::operation::OperationState;
use reqwest::StatusCode;

use crate::support::{self, ADMIN, FleetSetup};

const SCRIPTS: &str = r#"scripts:
  - id: hello
    name: Say hello
    body: echo hello
"#;

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_scrape_shows_syncs_machines_operations_ssh_and_requests() {
    let setup = FleetSetup::new(2, &[1], SCRIPTS);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for id in ["host1", "host2"] {
        let verified = daemon
            .post(&format!("/api/links/{id}/verify"), Some(&token))
            .await;
        assert_eq!(verified.status(), StatusCode::OK);
    }
    let (_, ended) = support::run_to_end(&daemon, &token, "hello", &["host1"]).await;
    assert_eq!(ended, OperationState::Succeeded);
    // Its `end` event goes out before its task has wound down: the gauge follows.
    support::eventually("the operation to stop counting as running", || async {
        let text = daemon.get("/metrics", None).await.text().await.unwrap();
        (sample(&text, "linkops_operations_running") == Some(0.0)).then_some(())
    })
    .await;

    let response = daemon.get("/metrics", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    let expect =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));

    assert_eq!(expect(r#"linkops_syncs_total{result="applied"}"#), 1.0);
    assert!(expect("linkops_sync_applied_age_seconds") >= 0.0);
    assert_eq!(
        expect(r#"linkops_machines_by_health{state="reachable"}"#),
        2.0
    );
    assert_eq!(
        expect(r#"linkops_machines_by_enrollment{state="enrolled"}"#),
        1.0
    );
    assert_eq!(
        expect(r#"linkops_machines_by_enrollment{state="mismatch"}"#),
        1.0
    );
    assert_eq!(
        expect(r#"linkops_operations_finished_total{state="succeeded"}"#),
        1.0
    );
    assert_eq!(expect("linkops_operations_running"), 0.0);
    assert!(expect(r#"linkops_reconciles_total{kind="machine",result="success"}"#) >= 2.0);
    // One pooled connection per machine.
    assert_eq!(expect("linkops_ssh_connections_open"), 2.0);
    assert!(expect("linkops_ssh_connect_duration_seconds_count") >= 2.0);
    assert_eq!(
        expect(
            r#"linkops_http_requests_total{method="POST",route="/api/links/{id}/verify",status="200"}"#
        ),
        2.0
    );
    // The stream just read may still be closing; the gauge is there either way.
    assert!(text.contains("linkops_sse_clients "), "{text}");
    assert!(text.contains("linkops_reconcile_queue_depth"), "{text}");
    daemon.stop().await;
}
