//! The OpenAPI description: served, complete, and true to the routes.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{self, TestDaemon};

/// The paths the original backend's frontend depends on.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/auth/login"),
    ("get", "/api/links"),
    ("get", "/api/links/{id}"),
    ("post", "/api/links/{id}/verify"),
    ("post", "/api/operations/run"),
    ("get", "/api/operations/{id}"),
    ("get", "/api/operations/{id}/events"),
    ("post", "/api/operations/{id}/stop"),
    ("get", "/api/git/status"),
    ("post", "/api/git/sync"),
    ("post", "/api/tables/query"),
    ("post", "/api/terminal/workspaces"),
    ("put", "/api/terminal/workspaces/{id}/panes"),
    ("post", "/api/terminal/workspaces/{id}/connect-all"),
    ("get", "/api/terminal/workspaces/{id}/ws"),
    ("get", "/health"),
    ("get", "/metrics"),
];

fn refs(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.insert(target.clone());
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_description_covers_every_route_and_every_route_answers() {
    let data = testbed::private_dir();
    let daemon = TestDaemon::start(support::config(data.path())).await;
    let response = daemon.get("/api/openapi.json", None).await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    // An unknown API path is a JSON error, not the console's page.
    let unknown = daemon.get("/api/no/such/thing", None).await;
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.unwrap().contains("no_route"));
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();

    for (method, path) in CONTRACT {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not described"
        );
    }

    // Every described operation is routed: placeholders in, anything but "no such route" out.
    let mut operations = 0;
    let mut ids = BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            // Generators (the console's types) key operations by id.
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{method} {path}: operation id {id:?} twice"
            );
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            let url = format!("{}{}", daemon.url, path.replace("{id}", "1"));
            let request = daemon
                .client()
                .request(method.to_uppercase().parse().unwrap(), url);
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path} is described but not routed");
            assert!(
                !body.contains("no_route"),
                "{method} {path} is described but not routed"
            );
            // Refusals come in the one error shape.
            if status >= 400 && !body.is_empty() {
                let error: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|_| panic!("{method} {path}: {body}"));
                assert!(
                    error["error"]["code"].is_string() && error["error"]["message"].is_string(),
                    "{method} {path}: {body}"
                );
            }
        }
    }
    assert!(
        operations > CONTRACT.len(),
        "{operations} operations described"
    );

    // Every schema a path or schema refers to is defined.
    let mut found = BTreeSet::new();
    refs(&doc, &mut found);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for target in found {
        let name = target.trim_start_matches("#/components/schemas/");
        assert!(
            schemas.contains_key(name),
            "{target} is referred to but not defined"
        );
    }
    // The shapes no route names: SSE event payloads, the terminal socket's messages and close codes.
    for name in [
        "ErrorBody",
        "OutputChunk",
        "HostEvent",
        "StateEvent",
        "ClientMessage",
        "ServerMessage",
        "SocketCloseCode",
    ] {
        assert!(schemas.contains_key(name), "{name} is not described");
    }
    assert_eq!(
        doc["components"]["schemas"]["SocketCloseCode"]["enum"],
        serde_json::json!([4001, 4002, 4003, 1001])
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    daemon.stop().await;
}
