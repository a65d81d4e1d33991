//! Grants from `access.yaml` against the real daemon: a viewer granted
//! "operator on tag web for whoami" runs it there, and is refused on another
//! tag and for another script, the refusal naming what it would take; taken
//! out of Git, the grant is gone at the next request.

use linkops_reconcilers::operation::OperationState;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{ADMIN, FleetSetup, TestDaemon, VIEWER, run_to_end};

const SCRIPTS: &str = "scripts:\n  - {id: whoami, name: Who am I, body: id -un}\n  - {id: hostname, name: Host name, body: hostname}\n";

/// `POST /api/operations/run` of `script` on `machine` as `token`'s holder.
async fn run(
    daemon: &TestDaemon,
    token: &str,
    script: &str,
    machine: &str,
) -> (StatusCode, String) {
    let body = json!({"script": script, "targets": {"machines": [machine]}});
    let path = "/api/operations/run";
    let (status, answer) = daemon
        .request(reqwest::Method::POST, path, token, Some(body))
        .await;
    (
        status,
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn a_viewer_granted_a_script_on_a_tag_runs_it_there_and_nothing_more() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let links = setup.fleet.inventory("test", &[], "");
    // host1 is a web machine, host2 not.
    let links = links.replacen("    tags: [test]\n", "    tags: [test, web]\n", 1);
    setup.work.write("links.yaml", &links);
    setup.work.write(
        "access.yaml",
        &format!(
            "grants:\n  - to: {{user: {}}}\n    role: operator\n    tags: [web]\n    scripts: [whoami]\n",
            VIEWER.0
        ),
    );
    setup
        .work
        .commit("host1 is web; the viewer runs whoami there");
    let daemon = setup.start().await;
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;

    let (id, ended) = run_to_end(&daemon, &viewer, "whoami", &["host1"]).await;
    assert_eq!(ended, OperationState::Succeeded, "operation {id}");
    assert_eq!(
        run(&daemon, &viewer, "whoami", "host2").await,
        (
            StatusCode::FORBIDDEN,
            "this needs operator on machine host2 for script whoami".to_owned()
        )
    );
    assert_eq!(
        run(&daemon, &viewer, "hostname", "host1").await,
        (
            StatusCode::FORBIDDEN,
            "this needs operator on machine host1 for script hostname".to_owned()
        )
    );

    // Taken out of Git: gone at the next request.
    std::fs::remove_file(setup.work.dir.join("access.yaml")).unwrap();
    setup.work.commit("no more grants");
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let synced = daemon.post("/api/git/sync", Some(&admin)).await;
    assert_eq!(synced.status(), StatusCode::OK);
    let (status, said) = run(&daemon, &viewer, "whoami", "host1").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    daemon.stop().await;
}
