//! The audit log records host keys learned and refused — once each, not on every check.

use linkops::contract::TablePage;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{self, ADMIN, FleetSetup};

#[tokio::test]
async fn host_keys_learned_and_refused_are_audited_once() {
    let setup = FleetSetup::new(2, &[], "scripts: []\n");
    let mut config = setup.config();
    config.ssh.trust_on_first_use = true;
    // host1's entry carries host2's key (a changed key: refused even with TOFU);
    // host2 has no entry (unknown: learned).
    let lines: Vec<String> = std::fs::read_to_string(setup.fleet.known_hosts())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let host1 = lines[0].split(' ').next().unwrap();
    let key2 = lines[1].split_once(' ').unwrap().1;
    std::fs::write(config.known_hosts_path(), format!("{host1} {key2}\n")).unwrap();
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for _ in 0..2 {
        for id in ["host1", "host2"] {
            let verified = daemon
                .post(&format!("/api/links/{id}/verify"), Some(&token))
                .await;
            assert_eq!(verified.status(), StatusCode::OK);
        }
    }
    let entries = |action: &'static str| {
        let (daemon, token) = (&daemon, &token);
        async move {
            let body = json!({ "table": "audit_log", "filter": [{ "column": "action", "op": "eq", "value": action }] });
            let (_, page) = daemon
                .request(
                    reqwest::Method::POST,
                    "/api/tables/query",
                    token,
                    Some(body),
                )
                .await;
            // Rows are free-form: each table has its own columns.
            support::answer::<TablePage>(&page).rows
        }
    };
    let refused = entries("ssh.host_key_refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["target"], "host1");
    assert_eq!(refused[0]["outcome"], "denied");
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .contains("HOST KEY CHANGED"),
        "{refused:?}"
    );
    let learned = entries("ssh.host_key_learned").await;
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0]["target"], "host2");
    let verifies = entries("machine.verify").await;
    assert_eq!(verifies.len(), 4);
    assert!(verifies.iter().all(|e| e["actor"] == ADMIN.0));
    daemon.stop().await;
}
