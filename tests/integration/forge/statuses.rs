//! Commit statuses: each revision's, a run-request's and a state's, on their commits.

use super::*;

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
    assert_eq!(synced.outcome.name(), "invalid", "{synced:?}");
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
    let shown = |status: &GitStatus| -> Vec<CommitState> {
        let posted = status.statuses.iter();
        posted.map(|posted| posted.status.state).collect()
    };
    let status = eventually("the refusal recorded as posted", || async {
        let status: GitStatus = daemon.read("/api/git/status", &token).await;
        let shown = shown(&status);
        (!shown.is_empty() && shown != [CommitState::Pending]).then_some(status)
    })
    .await;
    assert_eq!(shown(&status), [CommitState::Failure], "{status:?}");
    let waiting_on_it = (status.statuses_queued.iter())
        .filter(|q| matches!(&q.message, Message::CommitStatus(s) if s.sha == broken))
        .count();
    assert_eq!(waiting_on_it, 0, "{status:?}");
    // Nothing new for the revision in force, and nothing outside the API description.
    let sync_statuses = statuses_of(&forge.received.all(), &first)
        .into_iter()
        .filter(|(context, _, _)| context == "linkops/sync")
        .count();
    assert_eq!(sync_statuses, 2);
    assert_eq!(forge.received.violations(), Vec::<String>::new());
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
