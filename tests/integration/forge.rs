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
use serde_json::{Value, json};

use crate::git_sync::{WEBHOOK_SECRET, applied, ssh_config, ssh_setup, sync};
use crate::support::{ADMIN, FleetSetup, TestDaemon, VIEWER, eventually, read_events};

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

const HOOK_SECRET: &str = "sink-secret-1";
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
    let (status, operation) = daemon
        .request(
            reqwest::Method::POST,
            "/api/operations/run",
            token,
            Some(json!({"script": "fail", "targets": {"machines": ["host1"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{operation}");
    let id = operation["id"].as_u64().unwrap();
    read_events(daemon, token, id, None).await;
    id
}

fn write_secret(config: &Config, name: &str, value: &str) {
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

#[tokio::test]
async fn every_revision_shows_on_its_commit_pending_then_applied_or_refused() {
    let setup = ssh_setup();
    let forge = TestForge::start(setup.remote.path.clone()).await;
    let mut config = ssh_config(setup.data.path(), &setup.fleet, &setup.remote.url);
    forgejo(&mut config, &forge.url);
    config.forge.console_url = Some("https://linkops.example".into());
    write_secret(&config, "forge_token", TOKEN);
    let first = setup.work.head();
    let daemon = TestDaemon::start(config).await;
    applied(&daemon, &first).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let posted = forge
        .received
        .until("the first revision's statuses", 2, |r| {
            r["sha"] == first.as_str() && r["status"]["context"] == "linkops/sync"
        })
        .await;
    assert_eq!(
        statuses_of(&posted, &first),
        [
            (
                "linkops/sync".into(),
                "pending".into(),
                "fetched; checking the revision".into()
            ),
            (
                "linkops/sync".into(),
                "success".into(),
                "applied: the fleet follows this revision".into()
            ),
        ]
    );
    assert_eq!(
        posted[1]["status"]["target_url"],
        format!("https://linkops.example/#/git?revision={first}")
    );

    // A broken commit: refused, and said so on it, where the problem is.
    setup.work.write(
        "links.yaml",
        "machines:\n  - id: broken\n    host: [not, a, host]\n",
    );
    let broken = setup.work.commit("a broken inventory");
    setup.work.push(&setup.remote.url);
    let synced = sync(&daemon, &token).await;
    assert_eq!(synced["result"], "invalid", "{synced}");
    let sent = std::time::Instant::now();
    let refused = forge
        .received
        .until("the refusal", 2, |r| {
            r["sha"] == broken.as_str() && r["status"]["context"] == "linkops/sync"
        })
        .await;
    eprintln!(
        "refusal on the forge {:?} after the sync answered",
        sent.elapsed()
    );
    let (context, state, description) = statuses_of(&refused, &broken).remove(1);
    assert_eq!(
        (context.as_str(), state.as_str()),
        ("linkops/sync", "failure")
    );
    assert!(
        description.starts_with("refused: links.yaml:"),
        "{description}"
    );
    // `GET /api/git/status` says what the forge has for the revision it looked
    // at last — once the delivery that the forge answered is recorded.
    let status = eventually("the refusal recorded as posted", || async {
        let status: Value = daemon
            .get("/api/git/status", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        let shown: Vec<&Value> = status["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|posted| &posted["status"]["state"])
            .collect();
        (shown.len() > 1 || shown.first().is_some_and(|state| *state != "pending"))
            .then_some(status)
    })
    .await;
    let shown: Vec<&Value> = status["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|posted| &posted["status"]["state"])
        .collect();
    assert_eq!(shown, [&json!("failure")], "{status}");
    let waiting_on_it = status["statuses_queued"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["message"]["sha"] == broken.as_str())
        .count();
    assert_eq!(waiting_on_it, 0, "{status}");
    // Nothing new for the revision in force, and nothing outside the API description.
    let sync_statuses = statuses_of(&forge.received.all(), &first)
        .into_iter()
        .filter(|(context, _, _)| context == "linkops/sync")
        .count();
    assert_eq!(sync_statuses, 2);
    assert_eq!(forge.received.violations(), Vec::<String>::new());
    daemon.stop().await;
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

#[tokio::test]
async fn a_failed_operation_reaches_each_sink_once_across_a_restart_and_an_outage() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let receivers = TestSinks::start().await;
    let configured = || {
        let mut config = setup.config();
        config.notify.sinks = sinks(&receivers.url);
        config.forge.console_url = Some("https://linkops.example".into());
        write_secret(&config, "hook_secret", HOOK_SECRET);
        write_secret(&config, "ntfy_token", NTFY_TOKEN);
        config
    };
    // The sinks are down when it fails.
    receivers.received.down.store(true, Ordering::SeqCst);
    let daemon = setup.start_with(configured()).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let verified = daemon.post("/api/links/host1/verify", Some(&token)).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let id = failed_on_host1(&daemon, &token).await;
    // Queued for each sink, tried, still there.
    let outbox = eventually("three tried deliveries", || async {
        let (_, outbox) = daemon
            .request(reqwest::Method::GET, "/api/notifications", &token, None)
            .await;
        let queued = outbox["queued"].as_array().cloned().unwrap_or_default();
        (queued.len() == 3 && queued.iter().all(|q| q["attempts"].as_u64() >= Some(1)))
            .then_some(queued)
    })
    .await;
    let channels: BTreeMap<String, String> = outbox
        .iter()
        .map(|q| {
            (
                q["channel"].as_str().unwrap().to_owned(),
                q["last_error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        channels.keys().collect::<Vec<_>>(),
        ["chat", "ntfy", "webhook"]
    );
    assert!(channels.values().all(|e| e.contains("503")), "{channels:?}");
    daemon.stop().await;

    // Restarted while queued; the sinks come back.
    receivers.received.down.store(false, Ordering::SeqCst);
    let daemon = setup.start_with(configured()).await;
    receivers
        .received
        .until("one message per sink", 3, |_| true)
        .await;
    eventually("an empty outbox", || async {
        let (_, outbox) = daemon
            .request(reqwest::Method::GET, "/api/notifications", &token, None)
            .await;
        (outbox["queued"].as_array().is_some_and(Vec::is_empty)).then_some(())
    })
    .await;
    let webhook = receivers.of("webhook");
    assert_eq!(
        webhook.len(),
        1,
        "{:?} {:?}",
        receivers.received.all(),
        receivers.received.violations()
    );
    let event = &webhook[0]["event"];
    assert_eq!(event["kind"], "operation_failed");
    assert_eq!(event["subject"], id.to_string());
    assert_eq!(event["text"], "0 succeeded, 1 failed on host1");
    assert_eq!(
        event["url"],
        format!("https://linkops.example/#/operations/{id}")
    );
    let ntfy = receivers.of("ntfy");
    assert_eq!(ntfy.len(), 1, "{ntfy:?}");
    assert_eq!(ntfy[0]["topic"], "linkops-alerts");
    assert_eq!(ntfy[0]["tags"], "operation_failed");
    assert!(
        ntfy[0]["title"]
            .as_str()
            .unwrap()
            .starts_with(&format!("operation {id} (fail, by ada)"))
    );
    let chat = receivers.of("slack");
    assert_eq!(chat.len(), 1, "{chat:?}");
    assert!(
        chat[0]["text"]
            .as_str()
            .unwrap()
            .contains("0 succeeded, 1 failed on host1")
    );
    assert_eq!(receivers.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

#[tokio::test]
async fn a_run_request_reports_on_the_commit_that_asked_for_it() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let forge = TestForge::start(setup.work.dir.join(".git")).await;
    let uuid = setup.fleet.hosts()[1].uuid();
    std::fs::write(setup.marks.join(format!("LINKOPS-{uuid}.broken")), "").unwrap();
    let mut config = setup.config();
    // GitHub's form: `Authorization: Bearer`, the same statuses path.
    config.forge.kind = Some(ForgeKind::Github);
    config.forge.api_url = Some(format!("{}/api/v1", forge.url));
    config.forge.repository = Some(format!("{}/{}", OWNER_REPO.0, OWNER_REPO.1));
    write_secret(&config, "forge_token", TOKEN);
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    setup.work.write(
        "runs/nightly.yaml",
        "id: nightly\nscript: flaky\ntargets: {tags: [test]}\n",
    );
    let asked = setup.work.commit("run flaky once");
    sync(&daemon, &token).await;
    let posted = forge
        .received
        .until("the run-request's end on its commit", 4, |r| {
            r["sha"] == asked.as_str()
        })
        .await;
    assert_eq!(
        statuses_of(&posted, &asked),
        [
            (
                "linkops/sync".into(),
                "pending".into(),
                "fetched; checking the revision".into()
            ),
            (
                "linkops/sync".into(),
                "success".into(),
                "applied: the fleet follows this revision".into()
            ),
            (
                "linkops/run/nightly".into(),
                "pending".into(),
                format!("operation {} started", 1)
            ),
            (
                "linkops/run/nightly".into(),
                "failure".into(),
                "partially failed: 1 succeeded, 1 failed on host2".into()
            ),
        ]
    );
    assert_eq!(forge.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

/// A signed Forgejo push delivery of `head` to `branch`.
async fn push_delivery(daemon: &TestDaemon, branch: &str, head: &str, delivery: &str) -> Value {
    let response = deliver_push(daemon, branch, head, delivery).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.unwrap()
}

/// Delivers a signed Forgejo push of `head` to `branch`: the daemon's answer.
async fn deliver_push(
    daemon: &TestDaemon,
    branch: &str,
    head: &str,
    delivery: &str,
) -> reqwest::Response {
    let body = json!({ "ref": format!("refs/heads/{branch}"), "after": head }).to_string();
    let signature = linkops::git::webhook::sign(body.as_bytes(), WEBHOOK_SECRET.as_bytes());
    daemon
        .client()
        .post(format!("{}/api/git/webhook", daemon.url))
        .header("content-type", "application/json")
        .header("x-forgejo-event", "push")
        .header("x-forgejo-delivery", delivery)
        .header("x-forgejo-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_push_to_another_branch_is_planned_on_its_head_and_changes_nothing() {
    let setup = ssh_setup();
    let forge = TestForge::start(setup.remote.path.clone()).await;
    let mut config = ssh_config(setup.data.path(), &setup.fleet, &setup.remote.url);
    forgejo(&mut config, &forge.url);
    write_secret(&config, "forge_token", TOKEN);
    let first = setup.work.head();
    let daemon = TestDaemon::start(config).await;
    applied(&daemon, &first).await;

    // A feature branch that changes a script's timeout.
    setup
        .work
        .git(&["checkout", "-q", "-b", "feature/longer-uptime"]);
    let scripts = setup
        .work
        .read("scripts.yaml")
        .replace("timeout: 30s", "timeout: 45s");
    setup.work.write("scripts.yaml", &scripts);
    let good = setup.work.commit("a longer uptime timeout");
    setup.work.git(&[
        "push",
        "-q",
        "--force",
        &setup.remote.url,
        "feature/longer-uptime",
    ]);
    let answer = push_delivery(&daemon, "feature/longer-uptime", &good, "plan-1").await;
    assert_eq!(answer, json!({"plan": "feature/longer-uptime"}));
    let planned = forge
        .received
        .until("the plan", 1, |r| r["sha"] == good.as_str())
        .await;
    assert_eq!(
        statuses_of(&planned, &good),
        [(
            "linkops/plan".into(),
            "success".into(),
            "1 change(s): ~ script uptime: timeout changed".into()
        )]
    );

    // A broken branch: the plan says where it would be refused.
    setup.work.write(
        "links.yaml",
        "machines:\n  - id: broken\n    host: [not, a, host]\n",
    );
    let broken = setup.work.commit("a broken inventory");
    setup.work.git(&[
        "push",
        "-q",
        "--force",
        &setup.remote.url,
        "feature/longer-uptime",
    ]);
    push_delivery(&daemon, "feature/longer-uptime", &broken, "plan-2").await;
    let refused = forge
        .received
        .until("the refusal", 1, |r| r["sha"] == broken.as_str())
        .await;
    let (context, state, description) = statuses_of(&refused, &broken).remove(0);
    assert_eq!(
        (context.as_str(), state.as_str()),
        ("linkops/plan", "failure")
    );
    assert!(
        description.starts_with("would be refused: links.yaml:"),
        "{description}"
    );

    // Nothing was applied from the branch, and the sync history has no attempt of it.
    let desired = daemon.daemon().git().desired().borrow().clone().unwrap();
    assert_eq!(desired.revision, first);
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let status: Value = daemon
        .get("/api/git/status", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["last_attempt"]["revision"],
        first.as_str(),
        "{status}"
    );
    // A name that could change the fetch's refspec is not planned.
    let answer = push_delivery(&daemon, "a:b", &good, "plan-3").await;
    assert!(answer["ignored"].is_string(), "{answer}");
    assert_eq!(forge.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

#[tokio::test]
async fn a_burst_of_branch_pushes_is_planned_without_loss_and_deleted_branches_are_forgotten() {
    let setup = ssh_setup();
    let forge = TestForge::start(setup.remote.path.clone()).await;
    let mut config = ssh_config(setup.data.path(), &setup.fleet, &setup.remote.url);
    forgejo(&mut config, &forge.url);
    config.git.plan_queue = 3;
    let plans_dir = config.plans_dir();
    write_secret(&config, "forge_token", TOKEN);
    let first = setup.work.head();
    let daemon = TestDaemon::start(config).await;
    applied(&daemon, &first).await;

    // Twelve branches, each a commit of its own, and eight pushes to one of them.
    let mut heads = BTreeMap::new();
    for n in 0..12 {
        let branch = format!("feature/{n:02}");
        setup.work.git(&["checkout", "-q", "-B", &branch, &first]);
        setup.work.write(
            "runs/planned.yaml",
            &format!("id: planned-{n}\nscript: uptime\n"),
        );
        heads.insert(branch, setup.work.commit(&format!("plan {n}")));
    }
    let mut again = Vec::new();
    for k in 0..8 {
        setup.work.git(&["checkout", "-q", "feature/00"]);
        setup.work.write(
            "runs/planned.yaml",
            &format!("id: planned-0-{k}\nscript: uptime\n"),
        );
        again.push(setup.work.commit(&format!("plan 0, push {k}")));
    }
    let mut push = vec!["push", "-q", "--force", setup.remote.url.as_str()];
    push.extend(heads.keys().map(String::as_str));
    setup.work.git(&push);
    // All at once: each answer is a plan queued, or a 503 naming the setting, to deliver again.
    let deliveries = heads
        .iter()
        .map(|(branch, head)| (branch.clone(), head.clone(), format!("burst-{branch}")))
        .chain(
            again
                .iter()
                .enumerate()
                .map(|(k, head)| ("feature/00".to_owned(), head.clone(), format!("again-{k}"))),
        );
    let mut waiting: Vec<(String, String, String)> = deliveries.collect();
    let mut refused = 0;
    for round in 0..150 {
        let answers = futures::future::join_all(
            waiting
                .iter()
                .map(|(branch, head, delivery)| deliver_push(&daemon, branch, head, delivery)),
        )
        .await;
        let mut next = Vec::new();
        for (answer, delivery) in answers.into_iter().zip(waiting) {
            match answer.status() {
                StatusCode::ACCEPTED => {
                    let body: Value = answer.json().await.unwrap();
                    assert_eq!(body, json!({"plan": delivery.0}));
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused += 1;
                    assert!(answer.headers().contains_key("retry-after"));
                    let body: Value = answer.json().await.unwrap();
                    let message = body["error"]["message"].as_str().unwrap();
                    assert!(message.contains("[git] plan_queue"), "{message}");
                    next.push(delivery);
                }
                other => panic!("round {round}: {other} for {delivery:?}"),
            }
        }
        waiting = next;
        if waiting.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(waiting.is_empty(), "never taken: {waiting:?}");
    // Every branch is planned on its newest head: nothing was dropped.
    let newest = again.last().unwrap().clone();
    heads.insert("feature/00".into(), newest);
    for (branch, head) in &heads {
        let planned = forge
            .received
            .until(&format!("the plan of {branch}"), 1, |r| {
                r["sha"] == head.as_str()
            })
            .await;
        let (context, state, _) = statuses_of(&planned, head).remove(0);
        assert_eq!(
            (context.as_str(), state.as_str()),
            ("linkops/plan", "success")
        );
    }
    eprintln!("{refused} deliveries were refused for a full queue, then taken");

    // Deleted branches are forgotten, and with the last one the plans' mirror goes.
    assert!(plans_dir.exists());
    for (n, branch) in heads.keys().enumerate() {
        let zeros = "0".repeat(40);
        let answer = loop {
            let response = deliver_push(&daemon, branch, &zeros, &format!("delete-{n}")).await;
            if response.status() == StatusCode::ACCEPTED {
                break response.json::<Value>().await.unwrap();
            }
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(answer, json!({"forgotten": branch}));
    }
    eventually("the plans' mirror to be removed", || async {
        (!plans_dir.exists()).then_some(())
    })
    .await;
    assert_eq!(forge.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

#[tokio::test]
async fn a_state_reports_its_rollout_on_its_commit_and_notifies_drift_and_halts() {
    use crate::states;
    let setup = states::setup(2, &[0, 1], &states::state_file("v1", ""));
    let forge = TestForge::start(setup.work.dir.join(".git")).await;
    let receivers = TestSinks::start().await;
    let mut config = setup.config();
    forgejo(&mut config, &forge.url);
    write_secret(&config, "forge_token", TOKEN);
    write_secret(&config, "hook_secret", HOOK_SECRET);
    config.notify.sinks = vec![SinkConfig {
        name: "ops".into(),
        kind: SinkKind::Webhook,
        url: format!("{}/hook", receivers.url).into(),
        secret_file: Some("hook_secret".into()),
        token_file: None,
        events: vec![
            linkops_reconcilers::outbox::EventKind::StateDrifted,
            linkops_reconcilers::outbox::EventKind::RolloutHalted,
        ],
        allow_plain_http: false,
    }];
    let declared = setup.work.head();
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    states::until_state(&daemon, &token, "in sync", |d| states::in_sync(d, 2)).await;
    let on_commit = |sha: &str| {
        statuses_of(&forge.received.all(), sha)
            .into_iter()
            .filter(|(context, _, _)| context == "linkops/state/app-config")
            .collect::<Vec<_>>()
    };
    let reported = eventually("the state's success on its commit", || async {
        let statuses = on_commit(&declared);
        statuses
            .iter()
            .any(|(_, state, _)| state == "success")
            .then_some(statuses)
    })
    .await;
    assert_eq!(
        reported.first().map(|s| s.1.as_str()),
        Some("pending"),
        "{reported:?}"
    );
    assert_eq!(reported.last().unwrap().2, "in sync on 2 machine(s)");

    // A hand edit on host1: notified as drift, once.
    states::hand_edit(&daemon, &token, "host1").await;
    let drifted = receivers
        .received
        .until("the drift", 1, |r| r["event"]["kind"] == "state_drifted")
        .await;
    assert_eq!(
        drifted[0]["event"]["title"],
        "state app-config drifted on 1 machine(s)"
    );
    assert_eq!(drifted[0]["event"]["text"], "No longer as declared: host1.");

    // A broken release: the canary fails, the rollout halts — on the commit, and notified.
    setup
        .work
        .write("states/app-config.yaml", &states::state_file("fail", ""));
    let broken = setup.work.commit("a broken release");
    states::sync(&daemon, &token).await;
    let halted = receivers
        .received
        .until("the halt", 1, |r| r["event"]["kind"] == "rollout_halted")
        .await;
    assert!(
        halted[0]["event"]["text"]
            .as_str()
            .unwrap()
            .starts_with("a canary failed")
    );
    let failure = eventually("the failure on the broken commit", || async {
        on_commit(&broken)
            .into_iter()
            .find(|(_, state, _)| state == "failure")
    })
    .await;
    assert!(
        failure.2.starts_with("rollout halted: a canary failed"),
        "{failure:?}"
    );
    assert_eq!(
        receivers.of("webhook").len(),
        2,
        "{:?}",
        receivers.received.all()
    );
    assert_eq!(forge.received.violations(), Vec::<String>::new());
    assert_eq!(receivers.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

#[tokio::test]
async fn a_machine_going_down_is_told_once_and_its_bouncing_damped() {
    let mut setup = FleetSetup::new(1, &[], SCRIPTS);
    let receivers = TestSinks::start().await;
    let mut config = setup.config();
    write_secret(&config, "hook_secret", HOOK_SECRET);
    config.notify.sinks = vec![SinkConfig {
        name: "ops".into(),
        kind: SinkKind::Webhook,
        url: format!("{}/hook", receivers.url).into(),
        secret_file: Some("hook_secret".into()),
        token_file: None,
        events: vec![],
        allow_plain_http: false,
    }];
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let verify = || async {
        let response = daemon.post("/api/links/host1/verify", Some(&token)).await;
        assert_eq!(response.status(), StatusCode::OK);
    };
    verify().await;
    setup.fleet.hosts_mut()[0].stop();
    verify().await;
    let told = receivers
        .received
        .until("the machine's trouble", 1, |r| {
            r["event"]["kind"] == "machine_unreachable"
        })
        .await;
    assert_eq!(told[0]["event"]["title"], "machine host1 is unreachable");
    assert_eq!(told[0]["event"]["subject"], "host1");
    // It bounces within the damping time: nothing more is sent.
    setup.fleet.hosts_mut()[0].restart().unwrap();
    verify().await;
    setup.fleet.hosts_mut()[0].stop();
    verify().await;
    setup.fleet.hosts_mut()[0].restart().unwrap();
    verify().await;
    let (_, outbox) = daemon
        .request(reqwest::Method::GET, "/api/notifications", &token, None)
        .await;
    assert_eq!(outbox["queued"], json!([]), "{outbox}");
    let kinds: Vec<Value> = receivers
        .received
        .all()
        .iter()
        .map(|r| r["event"]["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("machine_unreachable")]);
    assert_eq!(receivers.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

/// A gateway in front of the forge and the sinks that answers every request
/// with a 502 echoing its path, headers and body — as debug pages and some
/// proxies do.
async fn echoing_gateway() -> String {
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let mut echo = format!("bad gateway: {} {}\n", parts.method, parts.uri);
        for (name, value) in &parts.headers {
            echo += &format!("{name}: {}\n", value.to_str().unwrap_or(""));
        }
        echo += &String::from_utf8_lossy(&body);
        (StatusCode::BAD_GATEWAY, echo)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    url
}

#[tokio::test]
async fn an_answer_that_echoes_a_secret_is_kept_redacted_and_shown_to_admins_only() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let gateway = echoing_gateway().await;
    let slack_path = "/services/T0/B0/slack-path-secret";
    let mut config = setup.config();
    forgejo(&mut config, &gateway);
    write_secret(&config, "forge_token", TOKEN);
    write_secret(&config, "ntfy_token", NTFY_TOKEN);
    let sink = |name: &str, kind, url: String, token_file: Option<String>| SinkConfig {
        name: name.into(),
        kind,
        url: url.into(),
        secret_file: None,
        token_file,
        events: vec![linkops_reconcilers::outbox::EventKind::OperationFailed],
        allow_plain_http: false,
    };
    config.notify.sinks = vec![
        sink(
            "chat",
            SinkKind::Slack,
            format!("{gateway}{slack_path}"),
            None,
        ),
        sink(
            "ntfy",
            SinkKind::Ntfy,
            format!("{gateway}/alerts"),
            Some("ntfy_token".into()),
        ),
    ];
    let daemon = setup.start_with(config).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    failed_on_host1(&daemon, &admin).await;
    let outbox = eventually("every channel to have failed once", || async {
        let (_, outbox) = daemon
            .request(reqwest::Method::GET, "/api/notifications", &admin, None)
            .await;
        let queued = outbox["queued"].as_array().cloned().unwrap_or_default();
        let failed: BTreeMap<String, String> = queued
            .iter()
            .filter_map(|q| {
                Some((
                    q["channel"].as_str()?.into(),
                    q["last_error"].as_str()?.into(),
                ))
            })
            .collect();
        (failed.len() == 3).then_some(failed)
    })
    .await;
    for (channel, error) in &outbox {
        assert!(error.contains("502"), "{channel}: {error}");
        assert!(error.contains("[redacted]"), "{channel}: {error}");
        for secret in [TOKEN, NTFY_TOKEN, slack_path] {
            assert!(!error.contains(secret), "{channel}: {error}");
        }
    }
    // Viewers see that statuses wait, not what the forge answered.
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;
    let (status, _) = daemon
        .request(reqwest::Method::GET, "/api/notifications", &viewer, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, git) = daemon
        .request(reqwest::Method::GET, "/api/git/status", &viewer, None)
        .await;
    let waiting = git["statuses_queued"].as_array().unwrap();
    assert!(!waiting.is_empty(), "{git}");
    assert!(waiting.iter().all(|q| q["last_error"].is_null()), "{git}");
    let (_, git) = daemon
        .request(reqwest::Method::GET, "/api/git/status", &admin, None)
        .await;
    assert!(git["statuses_queued"][0]["last_error"].is_string(), "{git}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_sink_that_stays_down_holds_at_most_its_bound_and_the_outbox_pages() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let receivers = TestSinks::start().await;
    receivers.received.down.store(true, Ordering::SeqCst);
    let mut config = setup.config();
    config.notify.sinks = sinks(&receivers.url)
        .into_iter()
        .filter(|sink| sink.name == "chat")
        .collect();
    config.notify.max_queued = 3;
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let mut failed = Vec::new();
    for _ in 0..6 {
        failed.push(failed_on_host1(&daemon, &token).await.to_string());
    }
    let outbox = |query: &'static str| {
        let (daemon, token) = (&daemon, &token);
        async move {
            let path = format!("/api/notifications{query}");
            let (status, outbox) = daemon
                .request(reqwest::Method::GET, &path, token, None)
                .await;
            assert_eq!(status, StatusCode::OK, "{outbox}");
            outbox
        }
    };
    let subjects = |messages: &Value| -> Vec<String> {
        messages
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["message"]["subject"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = outbox("?channel=chat").await;
    assert_eq!(all["queued_total"], 3, "{all}");
    assert_eq!(
        subjects(&all["queued"]),
        failed[3..],
        "the newest three wait"
    );
    assert_eq!(
        subjects(&all["dead"]),
        failed[..3],
        "the oldest three were dropped"
    );
    for dead in all["dead"].as_array().unwrap() {
        let why = dead["last_error"].as_str().unwrap();
        assert!(why.contains("[notify] max_queued"), "{why}");
    }
    // Paged: two, then the one after them.
    let first = outbox("?channel=chat&limit=2").await;
    assert_eq!(subjects(&first["queued"]), failed[3..5]);
    let last_seq = first["queued"][1]["seq"].as_u64().unwrap();
    let path = format!("/api/notifications?channel=chat&after={last_seq}");
    let (_, rest) = daemon
        .request(reqwest::Method::GET, &path, &token, None)
        .await;
    assert_eq!(subjects(&rest["queued"]), failed[5..]);
    daemon.stop().await;
}
