//! Grants from `access.yaml` against the real daemon: a viewer granted
//! "operator on tag web for whoami" runs it there, and is refused on another
//! tag and for another script, the refusal naming what it would take; taken
//! out of Git, the grant is gone at the next request. A user with no role of
//! their own sees only what their grants reach — machines, the fleet stream,
//! operations and their output, tables — and their open stream ends when
//! the grant goes.

use linkops::contract::{Credentials, MachineView, OperationView, OutputPage};
use linkops_reconcilers::operation::OperationState;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{ADMIN, FleetSetup, TestDaemon, VIEWER, answer, read_events, run_to_end};

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

/// A user made through the API with no role over the whole fleet, and their token.
async fn user_without_a_role(daemon: &TestDaemon, admin: &str, name: &str) -> String {
    let body = json!({"username": name, "role": null});
    let (status, created) =
        (daemon.request(reqwest::Method::POST, "/api/users", admin, Some(body))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let credentials: Credentials = answer(&created);
    daemon.token(name, &credentials.password).await
}

#[tokio::test]
async fn a_user_granted_a_tag_sees_only_its_machines_and_their_output_and_loses_them_with_the_grant()
 {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let links = setup.fleet.inventory("test", &[], "");
    let links = links.replacen("    tags: [test]\n", "    tags: [test, web]\n", 1);
    setup.work.write("links.yaml", &links);
    setup.work.write(
        "access.yaml",
        "grants:\n  - to: {user: wendy}\n    role: operator\n    tags: [web]\n",
    );
    setup.work.commit("wendy operates the web machine");
    let daemon = setup.start().await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let wendy = user_without_a_role(&daemon, &admin, "wendy").await;
    let (both, _) = run_to_end(&daemon, &admin, "hostname", &["host1", "host2"]).await;
    let (db_only, _) = run_to_end(&daemon, &admin, "hostname", &["host2"]).await;

    // Machines: the list, one machine, the table.
    let machines: Vec<MachineView> = daemon.read("/api/links", &wendy).await;
    let ids: Vec<&str> = machines.iter().map(|m| m.spec.id.as_str()).collect();
    assert_eq!(ids, ["host1"]);
    let refused = daemon.get("/api/links/host2", Some(&wendy)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let said: Value = refused.json().await.unwrap();
    assert_eq!(
        said["error"]["message"],
        "this needs viewer on machine host2"
    );
    let body = json!({"table": "machines", "limit": 10});
    let (status, page) = (daemon.request(
        reqwest::Method::POST,
        "/api/tables/query",
        &wendy,
        Some(body),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["rows"][0]["id"], "host1");

    // Operations: those touching a machine seen, with that machine's part only.
    let listed: Vec<OperationView> = daemon.read("/api/operations", &wendy).await;
    let listed: Vec<u64> = listed.iter().map(|o| o.operation.id).collect();
    assert_eq!(listed, [both]);
    let seen: OperationView = daemon
        .read(&format!("/api/operations/{both}"), &wendy)
        .await;
    let hosts: Vec<&str> = seen.hosts.iter().map(|h| h.machine_id.as_str()).collect();
    assert_eq!(hosts, ["host1"]);
    let output: OutputPage = daemon
        .read(&format!("/api/operations/{both}/output"), &wendy)
        .await;
    assert!(!output.chunks.is_empty());
    assert!(
        output.chunks.iter().all(|c| c.machine == "host1"),
        "{output:?}"
    );
    let events = read_events(&daemon, &wendy, both, None).await;
    let machines_told: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| {
            e.data
                .get("machine")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(machines_told, ["host1".to_owned()].into());
    let hidden = daemon
        .get(&format!("/api/operations/{db_only}"), Some(&wendy))
        .await;
    assert_eq!(hidden.status(), StatusCode::FORBIDDEN);

    // A terminal where the grant reaches, not elsewhere.
    let body = json!({"layout": "single"});
    let (status, created) = (daemon.request(
        reqwest::Method::POST,
        "/api/terminal/workspaces",
        &wendy,
        Some(body),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let panes = format!(
        "/api/terminal/workspaces/{}/panes",
        created["id"].as_str().unwrap()
    );
    let (status, said) = (daemon.request(
        reqwest::Method::PUT,
        &panes,
        &wendy,
        Some(json!({"panes": ["host2"]})),
    ))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{said}");
    assert_eq!(
        said["error"]["message"],
        "this needs operator on machine host2 for every script (a terminal runs anything)"
    );
    let (status, said) = (daemon.request(
        reqwest::Method::PUT,
        &panes,
        &wendy,
        Some(json!({"panes": ["host1"]})),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{said}");

    // The fleet stream shows the web machine; the grant gone, it ends.
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let url = format!("{}/api/fleet/events?access_token={wendy}", daemon.url);
    let response = daemon.client().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream().eventsource();
    let snapshot = stream.next().await.expect("a snapshot").unwrap();
    let snapshot: Value = serde_json::from_str(&snapshot.data).unwrap();
    let ids: Vec<&str> = (snapshot["machines"].as_array().unwrap().iter())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["host1"], "{snapshot}");
    std::fs::remove_file(setup.work.dir.join("access.yaml")).unwrap();
    setup.work.commit("wendy's grant taken");
    let synced = daemon.post("/api/git/sync", Some(&admin)).await;
    assert_eq!(synced.status(), StatusCode::OK);
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        assert_ne!(
            event.event, "snapshot",
            "a stream of a lost grant went on: {event:?}"
        );
    }
    let machines: Vec<MachineView> = daemon.read("/api/links", &wendy).await;
    assert!(machines.is_empty(), "{machines:?}");
    daemon.stop().await;
}
