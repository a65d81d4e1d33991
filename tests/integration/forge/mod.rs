//! The forge and the people: commit statuses on a test forge, notifications
//! to a signed webhook, ntfy and a Slack-compatible webhook.
//!
//! No Forgejo can be installed here, so `TestForge` serves the one endpoint
//! LinkOps calls as Forgejo's API description (swagger `v1`) states it —
//! `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`, `CreateStatusOption`
//! `{context, description, state, target_url}` (strings; `state` one of
//! pending, success, error, failure, warning), `Authorization: token <t>` or
//! `Bearer <t>`, a full commit id that exists in the repository, `201` with
//! a `CommitStatus` — and records every request that strays from it as a
//! violation, which the tests require to be none. The sinks check theirs too
//! (the webhook's HMAC-SHA256 signature, ntfy's publish form, Slack's `{"text"}`).
//!
//! Here: the test servers and what the tests share; commit statuses in
//! `statuses.rs`, plans of other branches in `plans.rs`, the sinks in `sinks.rs`.

mod plans;
mod sinks;
mod statuses;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{KeyInit, Mac};
use linkops::config::{Config, ForgeKind, SinkConfig, SinkKind};
use linkops::contract::{ErrorBody, GitStatus, WebhookAnswer};
use linkops_reconcilers::outbox::{CommitState, Message};
use serde_json::{Value, json};

use crate::git_sync::{WEBHOOK_SECRET, applied, ssh_config, ssh_setup, sync};
use crate::support::{self, ADMIN, FleetSetup, TestDaemon, VIEWER, eventually};

const TOKEN: &str = "forge-token-0123456789";
const OWNER_REPO: (&str, &str) = ("ops", "linkops-config");
const STATES: [&str; 5] = ["pending", "success", "error", "failure", "warning"];

/// What a test server received, and what in it broke the peer's API description.
#[derive(Default)]
pub(crate) struct Received {
    requests: Mutex<Vec<Value>>,
    violations: Mutex<Vec<String>>,
    /// Answer 503 to everything (the peer is down).
    down: AtomicBool,
    arrived: tokio::sync::Notify,
}

impl Received {
    fn all(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Records a request, or the ways it breaks the description (then answers 422).
    fn take(&self, request: Value, problems: Vec<String>) -> Response {
        if !problems.is_empty() {
            self.violations.lock().unwrap().extend(problems.clone());
            let body = json!({"message": problems.join("; "), "url": "https://forgejo.example/api/swagger"});
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
        }
        self.requests.lock().unwrap().push(request.clone());
        self.arrived.notify_waiters();
        (StatusCode::CREATED, axum::Json(request)).into_response()
    }

    /// Waits until `count` requests matching `keep` have arrived (bounded by `eventually`).
    pub(crate) async fn until(
        &self,
        what: &str,
        count: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        eventually(what, || async {
            let matching: Vec<Value> = self.all().into_iter().filter(|r| keep(r)).collect();
            (matching.len() >= count).then_some(matching)
        })
        .await
    }
}

/// The forge's statuses endpoint, checked against Forgejo's API description.
struct TestForge {
    url: String,
    received: Arc<Received>,
}

#[derive(Clone)]
struct ForgeState {
    received: Arc<Received>,
    repository: PathBuf,
}

impl TestForge {
    async fn start(repository: PathBuf) -> TestForge {
        let received = Arc::new(Received::default());
        let state = ForgeState {
            received: received.clone(),
            repository,
        };
        let app = axum::Router::new()
            .route(
                "/api/v1/repos/{owner}/{repo}/statuses/{sha}",
                post(create_status),
            )
            .fallback(|request: axum::extract::Request| async move {
                let path = request.uri().path().to_owned();
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"message": format!("no route {path}")})),
                )
            })
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        TestForge { url, received }
    }
}

async fn create_status(
    State(state): State<ForgeState>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if state.received.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut problems = Vec::new();
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if authorization != Some(&format!("token {TOKEN}"))
        && authorization != Some(&format!("Bearer {TOKEN}"))
    {
        // Forgejo answers 401 for a missing or wrong token; a violation all the same.
        state
            .received
            .violations
            .lock()
            .unwrap()
            .push(format!("authorization {authorization:?}"));
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "token is required"})),
        )
            .into_response();
    }
    if (owner.as_str(), repo.as_str()) != OWNER_REPO {
        problems.push(format!("repository {owner}/{repo} does not exist"));
    }
    let is_commit = sha.len() == 40
        && sha.chars().all(|c| c.is_ascii_hexdigit())
        && std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&state.repository)
            .args(["cat-file", "-e", &format!("{sha}^{{commit}}")])
            .status()
            .is_ok_and(|s| s.success());
    if !is_commit {
        problems.push(format!("sha {sha:?} is not a commit of the repository"));
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some("application/json") {
        problems.push(format!("content-type {content_type:?}"));
    }
    let option: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match option.as_object() {
        None => problems.push("the body is not a JSON object (CreateStatusOption)".into()),
        Some(fields) => {
            for (name, value) in fields {
                match name.as_str() {
                    "context" | "description" | "target_url" if value.is_string() => {}
                    "state" if value.as_str().is_some_and(|s| STATES.contains(&s)) => {}
                    other => problems.push(format!("CreateStatusOption has no {other}: {value}")),
                }
            }
            if !fields.contains_key("state") {
                problems.push("no state".into());
            }
        }
    }
    let request = json!({"sha": sha, "status": option});
    state.received.take(request, problems)
}

/// A webhook receiver (signature checked), ntfy's publish endpoint and a Slack-style webhook.
pub(crate) struct TestSinks {
    pub(crate) url: String,
    pub(crate) received: Arc<Received>,
}

pub(crate) const HOOK_SECRET: &str = "sink-secret-1";
const NTFY_TOKEN: &str = "tk_ntfy0123";

impl TestSinks {
    pub(crate) async fn start() -> TestSinks {
        let received = Arc::new(Received::default());
        let app = axum::Router::new()
            .route("/hook", post(webhook))
            .route("/ntfy/{topic}", post(ntfy))
            .route("/slack", post(slack))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        TestSinks { url, received }
    }

    fn of(&self, sink: &str) -> Vec<Value> {
        self.received
            .all()
            .into_iter()
            .filter(|r| r["sink"] == sink)
            .collect()
    }
}

async fn webhook(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if received.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut problems = Vec::new();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let signature = headers
        .get("x-linkops-signature-256")
        .and_then(|v| v.to_str().ok());
    if signature != Some(expected.as_str()) {
        problems.push(format!("signature {signature:?}"));
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if event["version"] != 1 {
        problems.push(format!("version {}", event["version"]));
    }
    let kind = headers.get("x-linkops-event").and_then(|v| v.to_str().ok());
    if kind != event["kind"].as_str() {
        problems.push(format!("X-LinkOps-Event {kind:?} is not the body's kind"));
    }
    let delivery = headers
        .get("x-linkops-delivery")
        .and_then(|v| v.to_str().ok());
    if delivery.and_then(|d| d.parse::<u64>().ok()).is_none() {
        problems.push(format!("X-LinkOps-Delivery {delivery:?}"));
    }
    received.take(
        json!({"sink": "webhook", "delivery": delivery, "event": event}),
        problems,
    )
}

async fn ntfy(
    State(received): State<Arc<Received>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if received.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut problems = Vec::new();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header("authorization") != Some(format!("Bearer {NTFY_TOKEN}")) {
        problems.push("ntfy's access token is `Authorization: Bearer <token>`".into());
    }
    if body.is_empty() {
        problems.push("an empty message".into());
    }
    let priority = header("priority");
    if !priority
        .as_deref()
        .is_some_and(|p| ["1", "2", "3", "4", "5"].contains(&p))
    {
        problems.push(format!("priority {priority:?}"));
    }
    let request = json!({"sink": "ntfy", "topic": topic, "title": header("title"), "tags": header("tags"), "message": body});
    received.take(request, problems)
}

async fn slack(State(received): State<Arc<Received>>, body: axum::body::Bytes) -> Response {
    if received.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut problems = Vec::new();
    if !message["text"].is_string() || message.as_object().is_some_and(|m| m.len() != 1) {
        problems.push(format!(
            "a Slack incoming webhook takes {{\"text\"}}: {message}"
        ));
    }
    received.take(json!({"sink": "slack", "text": message["text"]}), problems)
}

/// Posts commit statuses to the Forgejo API at `url` (a test forge or gateway).
fn forgejo(config: &mut Config, url: &str) {
    config.forge.kind = Some(ForgeKind::Forgejo);
    config.forge.api_url = Some(format!("{url}/api/v1"));
    config.forge.repository = Some(format!("{}/{}", OWNER_REPO.0, OWNER_REPO.1));
}

/// Runs `fail` on host1 and follows it to its end: its id.
async fn failed_on_host1(daemon: &TestDaemon, token: &str) -> u64 {
    support::run_to_end(daemon, token, "fail", &["host1"])
        .await
        .0
}

pub(crate) fn write_secret(config: &Config, name: &str, value: &str) {
    std::fs::create_dir_all(config.keys_dir()).unwrap();
    let path = config.keys_dir().join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn statuses_of(received: &[Value], sha: &str) -> Vec<(String, String, String)> {
    received
        .iter()
        .filter(|r| r["sha"] == sha)
        .map(|r| {
            let s = &r["status"];
            (
                s["context"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
                s["description"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

const SCRIPTS: &str = r#"scripts:
  - id: fail
    name: Fail on purpose
    body: |
      echo "about to fail"
      exit 3
  - id: flaky
    name: Fail where a host is marked broken
    body: |
      [ -f "$MARKS/$(cat /etc/linkops/client_id).broken" ] && exit 4
      echo fine
"#;

fn sinks(url: &str) -> Vec<SinkConfig> {
    let sink = |name: &str, kind, path: &str| SinkConfig {
        name: name.into(),
        kind,
        url: format!("{url}{path}").into(),
        secret_file: None,
        token_file: None,
        events: vec![linkops_reconcilers::outbox::EventKind::OperationFailed],
        allow_plain_http: false,
    };
    vec![
        SinkConfig {
            secret_file: Some("hook_secret".into()),
            ..sink("webhook", SinkKind::Webhook, "/hook")
        },
        SinkConfig {
            token_file: Some("ntfy_token".into()),
            ..sink("ntfy", SinkKind::Ntfy, "/ntfy/linkops-alerts")
        },
        sink("chat", SinkKind::Slack, "/slack"),
    ]
}
