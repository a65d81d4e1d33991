//! Operations through the API against a real fleet: run, live SSE, stop, limits, failures.

use linkops::contract::{ErrorBody, ErrorCode, OperationView, RunView, TablePage};
use linkops_reconcilers::operation::{HostResult, HostState, OperationState};
use linkops_reconcilers::rollout::Rollout;
use linkops_reconcilers::run::RunState;
use linkops_reconcilers::script::ParamValue;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    self, ADMIN, FleetSetup, TestDaemon, VIEWER, answer, operation, output_text, read_events,
};

const SCRIPTS: &str = r#"scripts:
  - id: talk
    name: Talk on both streams and exit with a code
    params:
      - {name: code, type: int, default: 0}
    body: |
      for i in 1 2 3; do echo "out $i"; echo "err $i" >&2; done
      exit "$LINKOPS_PARAM_CODE"
  - id: signal
    name: Die of a signal
    body: kill -KILL $$
  - id: sleeper
    name: Sleep for a long time
    params:
      - {name: tag, type: string, required: true, pattern: "[0-9]+"}
    body: |
      echo started
      sleep 600.$LINKOPS_PARAM_TAG & wait
  - id: overrun
    name: Take longer than allowed
    timeout: 1s
    params:
      - {name: tag, type: string, required: true, pattern: "[0-9]+"}
    body: |
      echo started
      sleep 600.$LINKOPS_PARAM_TAG & wait
  - id: nap
    name: Say so, then nap
    body: |
      echo started
      sleep 2
  - id: window
    name: Record when it ran
    body: |
      date +%s.%N > $MARKS/$(cat /etc/linkops/client_id).start
      sleep 0.3
      date +%s.%N > $MARKS/$(cat /etc/linkops/client_id).end
  - id: flood
    name: Print a lot
    params:
      - {name: bytes, type: int, required: true}
    body: head -c "$LINKOPS_PARAM_BYTES" /dev/zero | tr '\0' 'x'
  - id: echo
    name: Echo a parameter
    params:
      - {name: text, type: string, required: true}
    body: printf '%s' "$LINKOPS_PARAM_TEXT"
  - id: flaky
    name: Fail where a host is marked broken
    params:
      - {name: note, type: string, default: first}
    body: |
      me=$MARKS/$(cat /etc/linkops/client_id)
      [ -f "$me.broken" ] && { echo "broken" >&2; exit 4; }
      echo "$LINKOPS_PARAM_NOTE" >> "$me.ran"
"#;

async fn run(daemon: &TestDaemon, token: &str, body: Value) -> reqwest::Response {
    daemon
        .client()
        .post(format!("{}/api/operations/run", daemon.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn started(daemon: &TestDaemon, token: &str, body: Value) -> u64 {
    let response = run(daemon, token, body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let operation: OperationView = response.json().await.unwrap();
    operation.operation.id
}

/// Machine `id`'s part in `operation`.
fn host<'a>(operation: &'a OperationView, id: &str) -> &'a HostResult {
    let hosts = &operation.hosts;
    hosts.iter().find(|h| h.machine_id == id).unwrap()
}

/// The exit code machine `id` failed with.
fn exit_code(operation: &OperationView, id: &str) -> Option<u32> {
    match &host(operation, id).state {
        HostState::Failed { exit_code, .. } => *exit_code,
        other => panic!("{id} did not fail: {other:?}"),
    }
}

/// Why machine `id` was skipped.
fn skipped(operation: &OperationView, id: &str) -> String {
    match &host(operation, id).state {
        HostState::Skipped { reason } => reason.clone(),
        other => panic!("{id} was not skipped: {other:?}"),
    }
}

/// The parameters as an operation records them.
fn params<const N: usize>(
    given: [(&str, ParamValue); N],
) -> std::collections::BTreeMap<String, ParamValue> {
    given.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

async fn verified(setup: &FleetSetup) -> (TestDaemon, String) {
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for host in setup.fleet.hosts() {
        let response = daemon
            .post(&format!("/api/links/{}/verify", host.name()), Some(&token))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    (daemon, token)
}

#[tokio::test]
async fn output_streams_live_in_order_and_results_are_recorded() {
    let setup = FleetSetup::new(3, &[2], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let id = started(&daemon, &token, json!({ "script": "talk", "targets": { "tags": ["test"], "machines": ["ghost"] }, "params": { "code": "3" } })).await;
    let events = read_events(&daemon, &token, id, None).await;

    // Ids are the log's sequence numbers: 1, 2, 3, … with no gap.
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().event, "end");
    for machine in ["host1", "host2"] {
        assert_eq!(
            output_text(&events, machine, "stdout"),
            "out 1\nout 2\nout 3\n"
        );
        assert_eq!(
            output_text(&events, machine, "stderr"),
            "err 1\nerr 2\nerr 3\n"
        );
    }
    let recorded = operation(&daemon, &token, id).await;
    let state = recorded.operation.state;
    assert_eq!(state, OperationState::Failed, "{recorded:?}");
    // Given as "3", recorded as the int the catalog declares.
    assert_eq!(
        recorded.operation.params,
        params([("code", ParamValue::Int(3))])
    );
    assert_eq!(
        host(&recorded, "host1").state,
        HostState::Failed {
            exit_code: Some(3),
            signal: None,
            error: None
        }
    );
    assert_eq!(host(&recorded, "host1").stdout_bytes, 18);
    assert!(skipped(&recorded, "host3").starts_with("not enrolled"));
    assert_eq!(
        skipped(&recorded, "ghost"),
        "unknown machine: not in links.yaml"
    );

    // A replay after the end is the same log.
    let replay = read_events(&daemon, &token, id, None).await;
    assert_eq!(replay.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    // Resuming mid-stream gets exactly the rest.
    let resumed = read_events(&daemon, &token, id, Some(5)).await;
    assert_eq!(resumed.first().unwrap().id, 6);
    assert_eq!(resumed.iter().map(|e| e.id).collect::<Vec<_>>(), ids[5..]);

    // Signals are recorded as such.
    let id = started(
        &daemon,
        &token,
        json!({ "script": "signal", "targets": { "machines": ["host1"] } }),
    )
    .await;
    read_events(&daemon, &token, id, None).await;
    let killed = operation(&daemon, &token, id).await;
    let HostState::Failed { signal, .. } = &host(&killed, "host1").state else {
        panic!("not failed: {killed:?}");
    };
    assert_eq!(signal.as_deref(), Some("KILL"), "{killed:?}");

    // History lists them, newest first, filtered.
    let history: Vec<OperationView> = daemon.read("/api/operations?script=talk", &token).await;
    assert_eq!(history.len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_problem() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let cases = [
        (
            json!({ "script": "nope", "targets": { "tags": ["test"] } }),
            "script",
        ),
        (
            json!({ "script": "sleeper", "targets": { "tags": ["test"] } }),
            "params.tag",
        ),
        (
            json!({ "script": "sleeper", "targets": { "tags": ["test"] }, "params": { "tag": "1; reboot" } }),
            "params.tag",
        ),
        (
            json!({ "script": "talk", "targets": { "tags": ["test"] }, "params": { "code": 1.5 } }),
            "params.code",
        ),
        (
            json!({ "script": "talk", "targets": { "tags": ["test"] }, "params": { "colour": "red" } }),
            "params.colour",
        ),
        (json!({ "script": "talk" }), "targets"),
        (
            json!({ "script": "talk", "targets": { "tags": ["test", "nosuch"] } }),
            "targets.tags",
        ),
    ];
    for (body, field) in cases {
        let response = run(&daemon, &token, body.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let error: ErrorBody = response.json().await.unwrap();
        assert_eq!(error.error.code, ErrorCode::Invalid, "{body}: {error:?}");
        let details = error.error.details.unwrap_or_default();
        assert_eq!(details["field"], field, "{body}: {details}");
    }
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;
    let response = run(
        &daemon,
        &viewer,
        json!({ "script": "talk", "targets": { "tags": ["test"] } }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    daemon.stop().await;
}

#[tokio::test]
async fn parameters_never_execute() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let pwned = setup.marks.join("pwned");
    for text in [
        format!("$(touch {}); x", pwned.display()),
        format!("line one\nline two `touch {}`", pwned.display()),
    ] {
        let id = started(&daemon, &token, json!({ "script": "echo", "targets": { "machines": ["host1"] }, "params": { "text": text } })).await;
        let events = read_events(&daemon, &token, id, None).await;
        assert_eq!(output_text(&events, "host1", "stdout"), text);
    }
    assert!(!pwned.exists());
    daemon.stop().await;
}

#[tokio::test]
async fn stop_ends_every_remote_process_and_unstarted_hosts_never_start() {
    let setup = FleetSetup::new(10, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let tag = format!("{}{}", std::process::id(), 7);
    let id = started(&daemon, &token, json!({ "script": "sleeper", "targets": { "tags": ["test"] }, "params": { "tag": tag }, "concurrency": 8 })).await;
    let pattern = format!("^sleep 600\\.{tag}$");
    // Wait until the eight that may run have all said they started.
    support::wait_for_output(&daemon, &token, id, 8).await;
    let sleeping = std::process::Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sleeping.stdout).lines().count(),
        8,
        "eight sleeps run before the stop"
    );

    let response = daemon
        .post(&format!("/api/operations/{id}/stop"), Some(&token))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let events = read_events(&daemon, &token, id, None).await;
    assert_eq!(events.last().unwrap().state(), OperationState::Stopped);
    let stopped = operation(&daemon, &token, id).await;
    assert_eq!(stopped.operation.state, OperationState::Stopped);
    let states: Vec<&str> = stopped.hosts.iter().map(|h| h.state.name()).collect();
    assert!(states.iter().all(|s| *s == "stopped"), "{states:?}");
    // Verified on the hosts' side: no sleep is left anywhere.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    // A second stop has nothing to stop.
    assert_eq!(
        daemon
            .post(&format!("/api/operations/{id}/stop"), Some(&token))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    daemon.stop().await;
}

#[tokio::test]
async fn concurrency_is_bounded_as_the_hosts_see_it() {
    let setup = FleetSetup::new(20, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let id = started(
        &daemon,
        &token,
        json!({ "script": "window", "targets": { "tags": ["test"] }, "concurrency": 5 }),
    )
    .await;
    read_events(&daemon, &token, id, None).await;
    let recorded = operation(&daemon, &token, id).await;
    let state = recorded.operation.state;
    assert_eq!(state, OperationState::Succeeded, "{recorded:?}");
    let mut windows = Vec::new();
    for host in setup.fleet.hosts() {
        let read = |suffix: &str| -> f64 {
            let path = setup
                .marks
                .join(format!("LINKOPS-{}.{suffix}", host.uuid()));
            std::fs::read_to_string(path)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        windows.push((read("start"), read("end")));
    }
    let most = windows
        .iter()
        .map(|(start, _)| {
            windows
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= 5, "{most} scripts ran at once");
    assert!(most >= 2, "the limit was not even approached: {most}");
    daemon.stop().await;
}

#[tokio::test]
async fn large_output_arrives_intact() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let bytes = 2 << 20;
    let id = started(&daemon, &token, json!({ "script": "flood", "targets": { "machines": ["host1"] }, "params": { "bytes": bytes } })).await;
    let events = read_events(&daemon, &token, id, None).await;
    let text = output_text(&events, "host1", "stdout");
    assert_eq!(text.len(), bytes);
    assert!(text.bytes().all(|b| b == b'x'));
    let recorded = operation(&daemon, &token, id).await;
    assert_eq!(host(&recorded, "host1").stdout_bytes, bytes as u64);
    daemon.stop().await;
}

#[tokio::test]
async fn a_host_that_goes_down_mid_operation_fails_alone() {
    let mut setup = FleetSetup::new(3, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let id = started(
        &daemon,
        &token,
        json!({ "script": "nap", "targets": { "tags": ["test"] } }),
    )
    .await;
    support::wait_for_output(&daemon, &token, id, 3).await;
    // host2 goes down with its script running.
    setup.fleet.hosts_mut()[1].stop();
    let events = read_events(&daemon, &token, id, None).await;
    let ended = events.last().unwrap().state();
    assert_eq!(ended, OperationState::PartiallyFailed);
    let recorded = operation(&daemon, &token, id).await;
    let HostState::Failed { error, .. } = &host(&recorded, "host2").state else {
        panic!("host2 did not fail: {recorded:?}");
    };
    let error = error.as_deref().unwrap_or_default();
    assert!(error.contains("closed without an exit status"), "{error}");
    assert_eq!(host(&recorded, "host1").state, HostState::Succeeded);
    assert_eq!(host(&recorded, "host3").state, HostState::Succeeded);
    daemon.stop().await;
}

#[tokio::test]
async fn a_timeout_kills_the_script_and_says_so() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let tag = format!("{}{}", std::process::id(), 3);
    let id = started(
        &daemon,
        &token,
        json!({ "script": "overrun", "targets": { "tags": ["test"] }, "params": { "tag": tag } }),
    )
    .await;
    let events = read_events(&daemon, &token, id, None).await;
    assert_eq!(events.last().unwrap().state(), OperationState::Failed);
    let recorded = operation(&daemon, &token, id).await;
    for machine in ["host1", "host2"] {
        // Reached over a working network: the end was confirmed.
        assert_eq!(
            host(&recorded, machine).state,
            HostState::Timeout { unconfirmed: false },
            "{recorded:?}"
        );
    }
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("^sleep 600\\.{tag}$")])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    daemon.stop().await;
}

/// Defect 17: a run started before the first health check checks its targets
/// instead of skipping them as "not checked yet"; defect 8: a parameter too big
/// for the remote is a 422 naming the limit.
#[tokio::test]
async fn a_run_before_the_first_check_checks_its_machines_first() {
    let setup = FleetSetup::new(2, &[1], SCRIPTS);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let id = started(
        &daemon,
        &token,
        json!({ "script": "echo", "targets": { "tags": ["test"] }, "params": { "text": "hello" } }),
    )
    .await;
    let events = read_events(&daemon, &token, id, None).await;
    assert_eq!(output_text(&events, "host1", "stdout"), "hello");
    let result = operation(&daemon, &token, id).await;
    let reason = skipped(&result, "host2");
    assert!(reason.contains("client_id reads"), "{reason}");

    let huge = "x".repeat(40 << 10);
    let response = run(
        &daemon,
        &token,
        json!({ "script": "echo", "targets": { "tags": ["test"] }, "params": { "text": huge } }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: ErrorBody = response.json().await.unwrap();
    let message = body.error.message;
    assert!(message.contains("at most 32768"), "{message}");
    daemon.stop().await;
}

/// Defect 16: over a silent partition a host's part still ends soon after its
/// timeout (before: the stop was sent over the dead connection and waited for).
#[tokio::test]
async fn a_silent_partition_does_not_stretch_a_timeout() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    // Keepalives far apart: the bound must come from the stop itself.
    let mut config = setup.config();
    config.ssh.keepalive_interval = std::time::Duration::from_secs(300);
    config.ssh.connect_timeout = std::time::Duration::from_secs(2);
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let verified = daemon.post("/api/links/host1/verify", Some(&token)).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let tag = format!("{}{}", std::process::id(), 9);
    let id = started(
        &daemon,
        &token,
        json!({ "script": "overrun", "targets": { "tags": ["test"] }, "params": { "tag": tag } }),
    )
    .await;
    support::wait_for_output(&daemon, &token, id, 1).await;
    let partition = testbed::Partition::cut(setup.fleet.hosts()[0].address());
    // Bounded well below what waiting on the dead connection takes (its keepalives').
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        read_events(&daemon, &token, id, None),
    )
    .await
    .expect("the operation ended despite the partition");
    assert_eq!(ended.last().unwrap().state(), OperationState::Failed);
    let recorded = operation(&daemon, &token, id).await;
    let state = &host(&recorded, "host1").state;
    assert_eq!(state.name(), "timeout", "{recorded:?}");
    drop(partition);
    daemon.stop().await;
}

#[tokio::test]
async fn a_rollout_halts_after_its_failures_and_a_retry_reruns_exactly_the_failed_hosts() {
    let setup = FleetSetup::new(4, &[], SCRIPTS);
    let (daemon, token) = verified(&setup).await;
    let mark = |host: usize, suffix: &str| {
        let uuid = setup.fleet.hosts()[host].uuid();
        setup.marks.join(format!("LINKOPS-{uuid}.{suffix}"))
    };
    for broken in [1, 2] {
        std::fs::write(mark(broken, "broken"), "").unwrap();
    }
    let rollout = json!({"canary": 1, "batch": 2, "max_failures": 1});
    let body = json!({"script": "flaky", "targets": {"tags": ["test"]}, "params": {"note": "v1"}, "rollout": rollout});
    let first = started(&daemon, &token, body).await;
    let events = read_events(&daemon, &token, first, None).await;
    let ended = events.last().unwrap().state();
    assert_eq!(ended, OperationState::PartiallyFailed);
    let ran = operation(&daemon, &token, first).await;
    assert_eq!(ran.operation.rollout, Some(answer::<Rollout>(&rollout)));
    assert_eq!(host(&ran, "host1").state, HostState::Succeeded);
    for failed in ["host2", "host3"] {
        assert_eq!(exit_code(&ran, failed), Some(4), "{ran:?}");
    }
    // The canary passed, the next batch failed twice: host4 was never reached.
    assert_eq!(
        host(&ran, "host4").state,
        HostState::Held {
            reason: "the rollout halted: 2 machine(s) failed, max_failures is 1".into()
        }
    );
    assert!(!mark(3, "ran").exists());

    // A run-request takes the same policy: the canary passes, host2 fails, the rest is held.
    setup.work.write(
        "runs/careful.yaml",
        "id: careful\nscript: flaky\ntargets: {tags: [test]}\nparams: {note: careful}\nrollout: {canary: 1, batch: 1, max_failures: 1}\n",
    );
    setup.work.commit("a careful run-request");
    let synced = daemon.post("/api/git/sync", Some(&token)).await;
    assert_eq!(synced.status(), StatusCode::OK);
    let careful = support::eventually("the run-request to start", || async {
        let run: RunView = daemon.read("/api/runs/careful", &token).await;
        match run.state? {
            RunState::Started { operation_id } => Some(operation_id),
            _ => None,
        }
    })
    .await;
    read_events(&daemon, &token, careful, None).await;
    let ran = operation(&daemon, &token, careful).await;
    let batch = ran.operation.rollout.as_ref().map(|r| r.batch);
    assert_eq!(batch, Some(1), "{ran:?}");
    assert_eq!(host(&ran, "host1").state, HostState::Succeeded);
    assert_eq!(exit_code(&ran, "host2"), Some(4));
    for held in ["host3", "host4"] {
        assert_eq!(host(&ran, held).state.name(), "held", "{ran:?}");
    }

    // Still running: no retry yet; nothing failed: nothing to retry.
    let sleeper = started(
        &daemon,
        &token,
        json!({"script": "sleeper", "targets": {"machines": ["host1"]}, "params": {"tag": "7"}}),
    )
    .await;
    let (status, refused) = daemon
        .request(
            reqwest::Method::POST,
            &format!("/api/operations/{sleeper}/retry"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    daemon
        .post(&format!("/api/operations/{sleeper}/stop"), Some(&token))
        .await;
    let clean = started(
        &daemon,
        &token,
        json!({"script": "flaky", "targets": {"machines": ["host1"]}}),
    )
    .await;
    read_events(&daemon, &token, clean, None).await;
    let (status, refused) = daemon
        .request(
            reqwest::Method::POST,
            &format!("/api/operations/{clean}/retry"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let says = answer::<ErrorBody>(&refused).error.message;
    assert!(says.contains("nothing to retry"), "{says}");

    // host2 is mended; the retry runs host2 and host3 only, with the same parameters.
    std::fs::remove_file(mark(1, "broken")).unwrap();
    let (status, retried) = daemon
        .request(
            reqwest::Method::POST,
            &format!("/api/operations/{first}/retry"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    let retried = answer::<OperationView>(&retried).operation;
    assert_eq!(retried.retry_of, Some(first));
    assert_eq!(retried.machines, ["host2", "host3"]);
    let note = ParamValue::String("v1".into());
    assert_eq!(retried.params, params([("note", note)]));
    let second = retried.id;
    let events = read_events(&daemon, &token, second, None).await;
    let ended = events.last().unwrap().state();
    assert_eq!(ended, OperationState::PartiallyFailed);
    let ran = operation(&daemon, &token, second).await;
    assert_eq!(host(&ran, "host2").state, HostState::Succeeded);
    assert_eq!(exit_code(&ran, "host3"), Some(4));
    assert_eq!(
        std::fs::read_to_string(mark(0, "ran")).unwrap(),
        "v1\ncareful\nfirst\n"
    );
    assert_eq!(std::fs::read_to_string(mark(1, "ran")).unwrap(), "v1\n");
    let query = json!({"table": "audit_log", "filter": [{"column": "target", "op": "eq", "value": second.to_string()}]});
    let (_, page) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &token,
            Some(query),
        )
        .await;
    // Rows are free-form: each table has its own columns.
    let page: TablePage = answer(&page);
    assert_eq!(
        page.rows[0]["detail"],
        format!("script flaky (retry of operation {first})"),
        "{page:?}"
    );
    daemon.stop().await;
}
