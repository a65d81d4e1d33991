//! Desired state from real Git remotes: a bare repository served over SSH by a
//! test sshd host, and a local path; manual syncs, webhooks, bad commits.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkops::config::Config;
use linkops::contract::{
    ErrorBody, ErrorCode, GitStatus, SyncOutcome, SyncRequested, SyncView, TablePage, WebhookAnswer,
};
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::role::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testbed::{BareRepo, TestFleet};

use crate::support::{self, TestDaemon, add_users, answer, example_repo};
use testbed::WorkRepo;

const ADMIN: (&str, &str) = ("ada", "pw-ada-1");
pub(crate) const WEBHOOK_SECRET: &str = "hook-secret-1";
/// A safety net for waits that end on an event; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(20);

/// A daemon following `url`, its data dir holding the fleet's key and known_hosts.
pub(crate) fn ssh_config(data_dir: &Path, fleet: &TestFleet, url: &str) -> Config {
    let mut config = support::config(data_dir);
    std::fs::create_dir_all(config.keys_dir()).unwrap();
    let key = config.keys_dir().join("deploy_key");
    std::fs::copy(fleet.client_key(), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(config.known_hosts_path().parent().unwrap()).unwrap();
    std::fs::copy(fleet.known_hosts(), config.known_hosts_path()).unwrap();
    config.git.url = Some(linkops::config::RepoUrl::parse(url));
    config.git.deploy_key = Some("deploy_key".into());
    config.webhook.secret = Some(WEBHOOK_SECRET.to_owned().into());
    config
}

/// Waits until the daemon's desired state is at `revision`.
pub(crate) async fn applied(daemon: &TestDaemon, revision: &str) -> Arc<DesiredState> {
    let mut desired = daemon.daemon().git().desired();
    let wait = desired.wait_for(|d| d.as_ref().is_some_and(|d| d.revision == revision));
    let state = tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("revision applied")
        .unwrap();
    state.clone().unwrap()
}

pub(crate) async fn sync(daemon: &TestDaemon, token: &str) -> SyncView {
    let response = daemon.post("/api/git/sync", Some(token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn git_status(daemon: &TestDaemon, token: &str) -> GitStatus {
    daemon
        .get("/api/git/status", Some(token))
        .await
        .json()
        .await
        .unwrap()
}

pub(crate) struct SshSetup {
    pub fleet: TestFleet,
    pub remote: BareRepo,
    pub work: WorkRepo,
    pub data: tempfile::TempDir,
}

pub(crate) fn ssh_setup() -> SshSetup {
    let fleet = TestFleet::start(1).unwrap();
    let remote = fleet.bare_repo(0, "linkops-config").unwrap();
    let work = WorkRepo::new(&fleet.dir().join("work"), Some(&example_repo()))
        .with_ssh(fleet.client_key(), fleet.known_hosts());
    work.push(&remote.url);
    let data = testbed::private_dir();
    add_users(
        data.path(),
        &[
            (ADMIN.0, Role::Admin, ADMIN.1),
            ("vic", Role::Viewer, "pw-vic-1"),
        ],
    );
    SshSetup {
        fleet,
        remote,
        work,
        data,
    }
}

#[tokio::test]
async fn follows_a_remote_over_ssh_through_manual_syncs() {
    let setup = ssh_setup();
    let first = setup.work.head();
    let daemon = TestDaemon::start(ssh_config(
        setup.data.path(),
        &setup.fleet,
        &setup.remote.url,
    ))
    .await;
    let state = applied(&daemon, &first).await;
    assert_eq!(state.machines.len(), 6);
    assert_eq!(state.scripts.len(), 12);
    assert_eq!(state.states.len(), 5);
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    let status = git_status(&daemon, &token).await;
    assert_eq!(status.applied_revision.as_deref(), Some(first.as_str()));
    assert_eq!(status.url.as_deref(), Some(setup.remote.url.as_str()));
    assert_eq!(status.last_error, Vec::<String>::new());

    // A new commit is picked up by POST /api/git/sync, which answers with the result.
    let text = setup
        .work
        .read("scripts.yaml")
        .replace("Shows how long", "Tells how long");
    setup.work.write("scripts.yaml", &text);
    let second = setup.work.commit("reword uptime");
    setup.work.push(&setup.remote.url);
    let record = sync(&daemon, &token).await;
    assert_eq!(
        record.outcome,
        SyncOutcome::Applied {
            changed_files: vec!["scripts.yaml".into()],
            forced: false
        },
        "{record:?}"
    );
    assert_eq!(record.revision.as_deref(), Some(second.as_str()));
    assert_eq!(record.previous.as_deref(), Some(first.as_str()));
    assert_eq!(
        applied(&daemon, &second).await.scripts["uptime"].description,
        "Tells how long each machine has been up and its load."
    );

    // Nothing new: unchanged.
    assert_eq!(sync(&daemon, &token).await.outcome, SyncOutcome::Unchanged);

    // Only admins may sync.
    let viewer = daemon.token("vic", "pw-vic-1").await;
    assert_eq!(
        daemon.post("/api/git/sync", Some(&viewer)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        daemon.get("/api/git/status", Some(&viewer)).await.status(),
        StatusCode::OK
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_bad_commit_keeps_the_last_good_state_until_fixed() {
    let setup = ssh_setup();
    let good = setup.work.head();
    let daemon = TestDaemon::start(ssh_config(
        setup.data.path(),
        &setup.fleet,
        &setup.remote.url,
    ))
    .await;
    applied(&daemon, &good).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    // Break the YAML: a key given twice, on line 9.
    let links = setup.work.read("links.yaml");
    setup.work.write(
        "links.yaml",
        &links.replace(
            "    name: Forgejo (git server)\n",
            "    name: Forgejo (git server)\n    name: Forgejo again\n",
        ),
    );
    let bad = setup.work.commit("typo");
    setup.work.push(&setup.remote.url);
    let record = sync(&daemon, &token).await;
    let SyncOutcome::Invalid { problems } = &record.outcome else {
        panic!("not invalid: {record:?}");
    };
    assert_eq!(record.revision.as_deref(), Some(bad.as_str()));
    assert_eq!(
        (problems[0].file.as_str(), problems[0].line),
        ("links.yaml", 9),
        "{record:?}"
    );
    assert_eq!(problems.len(), 1, "no follow-on noise: {record:?}");

    let status = git_status(&daemon, &token).await;
    assert_eq!(
        status.applied_revision.as_deref(),
        Some(good.as_str()),
        "the good revision stays in force"
    );
    let last = status.last_attempt.as_ref().unwrap();
    assert_eq!(last.revision.as_deref(), Some(bad.as_str()));
    let error = &status.last_error[0];
    assert!(
        error.starts_with("links.yaml:9:5: duplicate mapping key"),
        "{error}"
    );
    let desired = daemon.daemon().git().desired();
    assert_eq!(desired.borrow().as_ref().unwrap().revision, good);

    // A restart serves the last good revision, even with the bad one at the remote.
    daemon.stop().await;
    let daemon = TestDaemon::start(ssh_config(
        setup.data.path(),
        &setup.fleet,
        &setup.remote.url,
    ))
    .await;
    assert_eq!(
        daemon
            .daemon()
            .git()
            .desired()
            .borrow()
            .as_ref()
            .map(|d| d.revision.clone()),
        Some(good.clone())
    );

    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    // Syncing again (after the restart's own sync) finds the same bad revision.
    let again = sync(&daemon, &token).await;
    assert!(
        matches!(again.outcome, SyncOutcome::Invalid { .. }),
        "{again:?}"
    );

    // The fix applies.
    setup.work.write("links.yaml", &links);
    let fixed = setup.work.commit("fix the typo");
    setup.work.push(&setup.remote.url);
    let record = sync(&daemon, &token).await;
    assert!(
        matches!(record.outcome, SyncOutcome::Applied { .. }),
        "{record:?}"
    );
    applied(&daemon, &fixed).await;
    assert_eq!(
        git_status(&daemon, &token).await.last_error,
        Vec::<String>::new()
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_removed_machine_is_marked_removed_and_a_force_push_is_recorded() {
    let setup = ssh_setup();
    let first = setup.work.head();
    let daemon = TestDaemon::start(ssh_config(
        setup.data.path(),
        &setup.fleet,
        &setup.remote.url,
    ))
    .await;
    applied(&daemon, &first).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    // Drop `backup` from the inventory (the last entry) and rewrite history.
    let links = setup.work.read("links.yaml");
    let cut = links.find("  - id: backup").unwrap();
    setup.work.write("links.yaml", &links[..cut]);
    let scripts = setup.work.read("scripts.yaml");
    setup.work.write(
        "scripts.yaml",
        &scripts.replace("tags: [debian, backup]", "tags: [debian]"),
    );
    setup.work.git(&["add", "-A"]);
    setup.work.git(&[
        "-c",
        "user.name=T",
        "-c",
        "user.email=t@e.invalid",
        "commit",
        "-q",
        "--amend",
        "-m",
        "rewritten",
    ]);
    let rewritten = setup.work.head();
    setup.work.push(&setup.remote.url);
    let record = sync(&daemon, &token).await;
    assert!(
        matches!(record.outcome, SyncOutcome::Applied { forced: true, .. }),
        "{record:?}"
    );
    assert_eq!(applied(&daemon, &rewritten).await.machines.len(), 5);
    daemon.stop().await;

    let store = support::open_store(&support::config(setup.data.path()));
    let (backup, web) = support::as_the_cli(|| {
        let machine = |id| store.machine(id).unwrap().expect("history kept");
        (machine("backup"), machine("web-1"))
    });
    assert!(backup.removed_at_ms.is_some());
    assert_eq!(backup.revision, first);
    assert!(web.removed_at_ms.is_none());
}

#[tokio::test]
async fn an_unknown_host_key_fails_the_sync_and_says_why() {
    let setup = ssh_setup();
    let config = ssh_config(setup.data.path(), &setup.fleet, &setup.remote.url);
    std::fs::write(config.known_hosts_path(), "").unwrap();
    let daemon = TestDaemon::start(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let record = sync(&daemon, &token).await;
    let SyncOutcome::Failed { error } = &record.outcome else {
        panic!("not failed: {record:?}");
    };
    assert!(
        error.contains("Host key verification failed")
            || error.contains("No ED25519 host key is known"),
        "{error}"
    );
    assert!(daemon.daemon().git().desired().borrow().is_none());
    daemon.stop().await;
}

fn signed(body: &str, secret: &str) -> String {
    linkops::git::webhook::sign(body.as_bytes(), secret.as_bytes())
}

#[tokio::test]
async fn a_signed_push_webhook_applies_the_new_revision() {
    let setup = ssh_setup();
    let first = setup.work.head();
    let daemon = TestDaemon::start(ssh_config(
        setup.data.path(),
        &setup.fleet,
        &setup.remote.url,
    ))
    .await;
    applied(&daemon, &first).await;

    let text = setup
        .work
        .read("scripts.yaml")
        .replace("timeout: 30s", "timeout: 45s");
    setup.work.write("scripts.yaml", &text);
    let second = setup.work.commit("longer uptime timeout");
    setup.work.push(&setup.remote.url);

    let body = json!({ "ref": "refs/heads/main", "after": second }).to_string();
    let sent = Instant::now();
    let response = daemon
        .client()
        .post(format!("{}/api/git/webhook", daemon.url))
        .header("content-type", "application/json")
        .header("x-forgejo-event", "push")
        .header("x-forgejo-delivery", "delivery-1")
        .header("x-forgejo-signature", signed(&body, WEBHOOK_SECRET))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let state = applied(&daemon, &second).await;
    eprintln!("webhook to applied revision: {:?}", sent.elapsed());
    assert_eq!(state.scripts["uptime"].timeout, Duration::from_secs(45));
    daemon.stop().await;
}

#[tokio::test]
async fn webhook_deliveries_are_authenticated_and_checked() {
    let setup = ssh_setup();
    let daemon = TestDaemon::start(ssh_config(
        setup.data.path(),
        &setup.fleet,
        &setup.remote.url,
    ))
    .await;
    applied(&daemon, &setup.work.head()).await;
    let push = json!({ "ref": "refs/heads/main" }).to_string();
    let send = |headers: Vec<(&'static str, String)>, body: String| {
        let mut request = daemon
            .client()
            .post(format!("{}/api/git/webhook", daemon.url))
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let json_type = ("content-type", "application/json".to_owned());

    // Valid Forgejo and GitHub deliveries.
    let (status, body) = send(
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-1".into()),
            ("x-forgejo-signature", signed(&push, WEBHOOK_SECRET)),
        ],
        push.clone(),
    )
    .await;
    let requested = WebhookAnswer::Sync(SyncRequested::Requested);
    assert_eq!(
        (status, answer::<WebhookAnswer>(&body)),
        (StatusCode::ACCEPTED, requested.clone())
    );
    let github_push = json!({ "ref": "refs/heads/main", "after": "0".repeat(40) }).to_string();
    let github_signature = format!("sha256={}", signed(&github_push, WEBHOOK_SECRET));
    let (status, body) = send(
        vec![
            json_type.clone(),
            ("x-github-event", "push".into()),
            ("x-github-delivery", "g-1".into()),
            ("x-hub-signature-256", github_signature),
        ],
        github_push,
    )
    .await;
    assert_eq!(
        (status, answer::<WebhookAnswer>(&body)),
        (StatusCode::ACCEPTED, requested)
    );

    // Wrong secret, tampered body, no signature: 401.
    let (status, _) = send(
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-2".into()),
            ("x-forgejo-signature", signed(&push, "guess")),
        ],
        push.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let tampered = json!({ "ref": "refs/heads/main", "evil": true }).to_string();
    let (status, _) = send(
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-3".into()),
            ("x-forgejo-signature", signed(&push, WEBHOOK_SECRET)),
        ],
        tampered,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = send(
        vec![json_type.clone(), ("x-forgejo-delivery", "f-4".into())],
        push.clone(),
    )
    .await;
    assert_eq!(
        (status, answer::<ErrorBody>(&body).error.code),
        (StatusCode::UNAUTHORIZED, ErrorCode::BadSignature)
    );

    // Replay of an accepted delivery: 409.
    let (status, body) = send(
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-1".into()),
            ("x-forgejo-signature", signed(&push, WEBHOOK_SECRET)),
        ],
        push.clone(),
    )
    .await;
    assert_eq!(
        (status, answer::<ErrorBody>(&body).error.code),
        (StatusCode::CONFLICT, ErrorCode::Replayed)
    );
    // The id is not signed: the same signed body under a new id, or as GitHub, is a replay too.
    let github_signature = format!("sha256={}", signed(&push, WEBHOOK_SECRET));
    for headers in [
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-1-again".into()),
            ("x-forgejo-signature", signed(&push, WEBHOOK_SECRET)),
        ],
        vec![
            json_type.clone(),
            ("x-github-delivery", "g-2".into()),
            ("x-hub-signature-256", github_signature),
        ],
    ] {
        let (status, body) = send(headers, push.clone()).await;
        assert_eq!(
            (status, answer::<ErrorBody>(&body).error.code),
            (StatusCode::CONFLICT, ErrorCode::Replayed),
            "{body}"
        );
    }
    // A push of the revision in force changes nothing, and says so.
    let head = setup.work.head();
    let same = json!({ "ref": "refs/heads/main", "after": head }).to_string();
    let (status, body) = send(
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-8".into()),
            ("x-forgejo-signature", signed(&same, WEBHOOK_SECRET)),
        ],
        same,
    )
    .await;
    assert_eq!(
        (status, answer::<WebhookAnswer>(&body)),
        (StatusCode::ACCEPTED, WebhookAnswer::Unchanged(head))
    );

    // A push to another branch is accepted and ignored, saying so.
    let other = json!({ "ref": "refs/heads/feature" }).to_string();
    let (status, body) = send(
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-5".into()),
            ("x-forgejo-signature", signed(&other, WEBHOOK_SECRET)),
        ],
        other,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let WebhookAnswer::Ignored(why) = answer(&body) else {
        panic!("not ignored: {body}");
    };
    assert!(why.contains("feature"), "{why}");

    // Not JSON: 415. Too large: 413.
    let (status, _) = send(
        vec![
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("x-forgejo-delivery", "f-6".into()),
            ("x-forgejo-signature", signed(&push, WEBHOOK_SECRET)),
        ],
        push.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!(
        "{{\"ref\":\"refs/heads/main\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let (status, _) = send(
        vec![
            json_type.clone(),
            ("x-forgejo-delivery", "f-7".into()),
            ("x-forgejo-signature", signed(&huge, WEBHOOK_SECRET)),
        ],
        huge,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    daemon.stop().await;
}

#[tokio::test]
async fn a_local_repository_is_watched_and_synced_on_commit() {
    let dir = testbed::private_dir();
    let work = WorkRepo::new(&dir.path().join("config"), Some(&example_repo()));
    let first = work.head();
    let data = dir.path().join("data");
    let mut config = support::config(&data);
    config.git.url = Some(linkops::config::RepoUrl::parse(work.dir.to_str().unwrap()));
    let daemon = TestDaemon::start(config).await;
    applied(&daemon, &first).await;

    // No API call: committing is enough.
    work.remove("runs/2026-11-25-upgrade-web.yaml");
    let second = work.commit("drop the run-request");
    let runs = applied(&daemon, &second).await.runs.clone();
    assert!(!runs.contains_key("2026-11-25-upgrade-web"), "{runs:?}");
    daemon.stop().await;
}

/// Defect 9: looks that find the ref where it was (the timer, the daemon's own
/// reads seen by the file watch) record nothing: no sync row, no audit entry,
/// also while the head is a bad commit.
#[tokio::test]
async fn an_idle_local_repository_records_nothing_even_with_a_bad_head() {
    let dir = testbed::private_dir();
    let work = WorkRepo::new(&dir.path().join("config"), Some(&example_repo()));
    let first = work.head();
    let data_dir = testbed::private_dir();
    let data = data_dir.path();
    let mut config = support::config(data);
    config.git.url = Some(linkops::config::RepoUrl::parse(work.dir.to_str().unwrap()));
    config.git.interval = Duration::from_millis(50);
    add_users(data, &[("ada", Role::Admin, "pw-ada-1")]);
    let daemon = TestDaemon::start(config).await;
    applied(&daemon, &first).await;
    let token = daemon.token("ada", "pw-ada-1").await;
    let not_moved = || async {
        let metrics = daemon.get("/metrics", None).await.text().await.unwrap();
        metrics
            .lines()
            .find(|line| line.starts_with("linkops_syncs_total{result=\"not_moved\"}"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Sync attempts recorded, and their audit entries.
    let recorded = || {
        let (daemon, token) = (&daemon, &token);
        async move {
            let query = async |body: Value| {
                let (_, page) = daemon
                    .request(
                        reqwest::Method::POST,
                        "/api/tables/query",
                        token,
                        Some(body),
                    )
                    .await;
                answer::<TablePage>(&page).rows.len()
            };
            let audit = json!({ "table": "audit_log", "filter": [{ "column": "action", "op": "eq", "value": "git.sync" }] });
            (
                query(json!({ "table": "sync_history" })).await,
                query(audit).await,
            )
        }
    };
    let wait_for_looks = |from: u64| {
        let not_moved = &not_moved;
        support::eventually("ten timer looks", move || async move {
            (not_moved().await >= from + 10).then_some(())
        })
    };
    wait_for_looks(0).await;
    assert_eq!(recorded().await, (1, 1));

    work.write("links.yaml", "machines: [oops");
    let bad = work.commit("a broken inventory");
    let record = sync(&daemon, &token).await;
    assert_eq!(
        (record.revision.as_deref(), record.outcome.name()),
        (Some(bad.as_str()), "invalid")
    );
    // Recorded once, or twice when a timer look found the new head before
    // the asked sync did; then idle looks add nothing.
    let with_the_bad_head = recorded().await;
    assert!(
        [(2, 2), (3, 3)].contains(&with_the_bad_head),
        "{with_the_bad_head:?}"
    );
    let looked = not_moved().await;
    wait_for_looks(looked).await;
    assert_eq!(recorded().await, with_the_bad_head);
    daemon.stop().await;
}
