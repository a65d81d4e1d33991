//! The reconcile loop against a real fleet: health, enrollment, verify, run-requests.

use linkops::contract::{
    ErrorBody, ErrorCode, FleetChanges, FleetRowChanges, FleetRows, FleetSnapshot,
    FleetStreamEvent, MachineDetail, MachineRow, MachineView, OperationView, RunView,
    SuspensionView,
};
use linkops_reconcilers::condition::{Condition, ConditionKind, ConditionStatus};
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::operation::{HostState, OperationState};
use linkops_reconcilers::run::RunState;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{self, ADMIN, FleetSetup, TestDaemon, answer, eventually};
const SCRIPTS: &str = r#"scripts:
  - id: mark
    name: Leave a mark
    body: |
      echo "$LINKOPS_PARAM_NOTE from $(cat /etc/linkops/client_id)"
      echo "$LINKOPS_PARAM_NOTE" >> "$MARKS/$(cat /etc/linkops/client_id)"
    params:
      - name: note
        type: string
        default: hello
  - id: fail
    name: Fail
    body: exit 3
"#;

fn setup(hosts: usize, wrong_uuid: &[usize]) -> FleetSetup {
    FleetSetup::new(hosts, wrong_uuid, SCRIPTS)
}

async fn verify(daemon: &TestDaemon, token: &str, id: &str) -> MachineView {
    let response = daemon
        .post(&format!("/api/links/{id}/verify"), Some(token))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn condition(machine: &MachineView, kind: ConditionKind) -> &Condition {
    &machine.condition(kind).unwrap().condition
}

#[tokio::test]
async fn links_show_health_and_enrollment_that_match_reality() {
    let setup = setup(3, &[2]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for id in ["host1", "host2", "host3"] {
        verify(&daemon, &token, id).await;
    }
    let links: Vec<MachineView> = daemon.read("/api/links", &token).await;
    assert_eq!(links.len(), 3);
    for machine in &links[..2] {
        assert_eq!(machine.health.name(), "reachable", "{machine:?}");
        assert_eq!(machine.enrollment, Enrollment::Enrolled, "{machine:?}");
        assert_eq!(
            condition(machine, ConditionKind::Ready).status,
            ConditionStatus::True
        );
        assert!(machine.revision.is_some());
    }
    // host3 answers, but with its own id, not the inventory's.
    let wrong = &links[2];
    assert_eq!(wrong.health.name(), "reachable");
    assert_eq!(
        wrong.enrollment,
        Enrollment::Mismatch {
            expected: "LINKOPS-00000000-0000-4000-8000-000000000000".into(),
            found: format!("LINKOPS-{}", setup.fleet.host(2).uuid()),
        }
    );
    assert_eq!(
        condition(wrong, ConditionKind::Ready).reason,
        "ClientIdMismatch"
    );
    assert_eq!(
        condition(wrong, ConditionKind::Stalled).status,
        ConditionStatus::True
    );

    // Filter by tag; details carry health history.
    let none: Vec<MachineView> = daemon.read("/api/links?tag=web", &token).await;
    assert!(none.is_empty(), "{none:?}");
    let detail: MachineDetail = daemon.read("/api/links/host1", &token).await;
    assert!(!detail.health_history.is_empty());
    assert_eq!(
        daemon.get("/api/links/nope", Some(&token)).await.status(),
        StatusCode::NOT_FOUND
    );

    // Viewers read but do not verify.
    let viewer = daemon.token("vic", "pw-vic-1").await;
    assert_eq!(
        daemon
            .post("/api/links/host1/verify", Some(&viewer))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_stopped_host_goes_offline_and_comes_back() {
    let mut setup = setup(1, &[]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let online = verify(&daemon, &token, "host1").await;
    assert_eq!(online.health.name(), "reachable");
    let seen = online.last_seen;

    setup.fleet.hosts_mut()[0].stop();
    let offline = verify(&daemon, &token, "host1").await;
    assert_eq!(offline.health.name(), "unreachable", "{offline:?}");
    assert_eq!(
        condition(&offline, ConditionKind::Ready).reason,
        "Unreachable"
    );
    assert_eq!(
        offline.last_seen, seen,
        "last seen is when it last answered"
    );

    setup.fleet.hosts_mut()[0].restart().unwrap();
    let back = verify(&daemon, &token, "host1").await;
    assert_eq!(back.health.name(), "reachable", "{back:?}");
    assert_eq!(
        condition(&back, ConditionKind::Ready).status,
        ConditionStatus::True
    );
    daemon.stop().await;
}

/// An SSE stream as the fleet tests read it.
type Events = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>,
>;

/// Follows `/api/fleet/events`, folding its snapshots and changes into the
/// list the client holds.
struct FleetStream {
    events: Events,
    machines: std::collections::BTreeMap<String, MachineView>,
    last_id: String,
}

impl FleetStream {
    async fn open(daemon: &TestDaemon, token: &str, last_id: Option<&str>) -> FleetStream {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut request = daemon.client().get(format!(
            "{}/api/fleet/events?access_token={token}",
            daemon.url
        ));
        if let Some(id) = last_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|error| error.to_string()));
        FleetStream {
            events: Box::pin(events),
            machines: Default::default(),
            last_id: String::new(),
        }
    }

    /// The next event, folded in; its data as sent.
    async fn next(&mut self) -> FleetEvent {
        use futures::StreamExt;
        let event = self.events.next().await.expect("the stream ended").unwrap();
        let data: Value = serde_json::from_str(&event.data).unwrap();
        let kind: FleetStreamEvent = answer(&Value::String(event.event.clone()));
        let folded = match kind {
            FleetStreamEvent::Snapshot => {
                let snapshot: FleetSnapshot = answer(&data);
                self.machines = (snapshot.machines.iter())
                    .map(|m| (m.spec.id.clone(), m.clone()))
                    .collect();
                FleetEvent::Snapshot(snapshot, data)
            }
            FleetStreamEvent::Changes => {
                let changes: FleetChanges = answer(&data);
                for machine in &changes.changed {
                    (self.machines).insert(machine.spec.id.clone(), machine.clone());
                }
                for id in &changes.removed {
                    self.machines.remove(id);
                }
                FleetEvent::Changes(changes)
            }
        };
        self.last_id = event.id;
        folded
    }
}

/// `/api/fleet/events?shape=rows`, as the console's fleet page follows it.
async fn rows_stream(daemon: &TestDaemon, token: &str) -> Events {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let url = format!(
        "{}/api/fleet/events?shape=rows&access_token={token}",
        daemon.url
    );
    let response = daemon.client().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = (response.bytes_stream().eventsource())
        .map(|event| event.map_err(|error| error.to_string()));
    Box::pin(events)
}

/// The next event's kind and data.
async fn next_event(events: &mut Events) -> (FleetStreamEvent, Value) {
    use futures::StreamExt;
    let event = events.next().await.expect("the stream ended").unwrap();
    let kind = answer(&Value::String(event.event));
    (kind, serde_json::from_str(&event.data).unwrap())
}

/// An event of `/api/fleet/events` read as the contract has it; a snapshot
/// also as sent, for its field names.
#[derive(Debug)]
enum FleetEvent {
    Snapshot(FleetSnapshot, Value),
    Changes(FleetChanges),
}

#[tokio::test]
async fn the_fleet_stream_sends_a_snapshot_then_only_what_changed_and_resumes() {
    let mut setup = setup(2, &[]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for id in ["host1", "host2"] {
        verify(&daemon, &token, id).await;
    }
    let mut stream = FleetStream::open(&daemon, &token, None).await;
    // At once: every machine, in the shape GET /api/links has it.
    let FleetEvent::Snapshot(first, sent) = stream.next().await else {
        panic!("the first event is no snapshot");
    };
    assert_eq!(first.machines.len(), 2);
    let listed: Value = daemon
        .get("/api/links", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let fields = |machine: &Value| {
        machine
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&sent["machines"][0]), fields(&listed[0]));
    // The same machines as rows (what the console's table reads): each what its view says.
    let mut rows = rows_stream(&daemon, &token).await;
    let (kind, snapshot) = next_event(&mut rows).await;
    assert_eq!(kind, FleetStreamEvent::Snapshot);
    let snapshot: FleetRows = answer(&snapshot);
    let as_rows: Vec<MachineRow> = first
        .machines
        .iter()
        .cloned()
        .map(MachineRow::from)
        .collect();
    assert_eq!(snapshot.machines, as_rows);
    assert_eq!(snapshot.machines[0].health, "reachable");
    assert_eq!(snapshot.machines[0].ready, Some(ConditionStatus::True));
    let unknown = daemon
        .get("/api/fleet/events?shape=columns", Some(&token))
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let refusal: ErrorBody = unknown.json().await.unwrap();
    // It names what was asked and what can be.
    let message = &refusal.error.message;
    assert!(
        message.contains("columns") && message.contains("`rows`"),
        "{refusal:?}"
    );

    // A check that changes only times says nothing: the next event is host1 going down, alone.
    verify(&daemon, &token, "host2").await;
    setup.fleet.hosts_mut()[0].stop();
    verify(&daemon, &token, "host1").await;
    let FleetEvent::Changes(changes) = stream.next().await else {
        panic!("a snapshot where changes were due");
    };
    assert_eq!(changes.changed.len(), 1, "{changes:?}");
    assert_eq!(changes.changed[0].spec.id, "host1");
    let down = &stream.machines["host1"];
    assert_eq!(down.health.name(), "unreachable");
    assert_eq!(condition(down, ConditionKind::Ready).reason, "Unreachable");
    let (kind, changed) = next_event(&mut rows).await;
    assert_eq!(kind, FleetStreamEvent::Changes);
    let changed: FleetRowChanges = answer(&changed);
    assert_eq!(changed.changed, [MachineRow::from(down.clone())]);
    assert_eq!(changed.changed[0].ready, Some(ConditionStatus::False));
    drop(rows);

    // Disconnected, host1 comes back; reconnecting resumes with just that.
    let last = stream.last_id.clone();
    drop(stream);
    setup.fleet.hosts_mut()[0].restart().unwrap();
    verify(&daemon, &token, "host1").await;
    let mut resumed = FleetStream::open(&daemon, &token, Some(&last)).await;
    let FleetEvent::Changes(changes) = resumed.next().await else {
        panic!("a snapshot where the stream should resume");
    };
    assert_eq!(changes.changed[0].spec.id, "host1");
    assert_eq!(changes.changed[0].health.name(), "reachable");
    // A position it cannot place (another daemon's, a garbled one) starts over.
    let mut fresh = FleetStream::open(&daemon, &token, Some("7.1.nope")).await;
    let restarted = fresh.next().await;
    assert!(
        matches!(restarted, FleetEvent::Snapshot(..)),
        "{restarted:?}"
    );
    drop((resumed, fresh));

    // A stopping daemon ends a stream cleanly.
    let mut events = FleetStream::open(&daemon, &token, None).await;
    events.next().await;
    let stopping = tokio::spawn(daemon.stop());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        use futures::StreamExt;
        while let Some(event) = events.events.next().await {
            event.expect("a clean end, not a cut connection");
        }
    });
    ended.await.expect("the stream outlived the daemon");
    stopping.await.unwrap();
}

#[tokio::test]
async fn the_machine_list_filters_and_pages_in_id_order_with_a_total() {
    let mut setup = setup(3, &[]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for id in ["host1", "host2", "host3"] {
        verify(&daemon, &token, id).await;
    }
    setup.fleet.hosts_mut()[1].stop();
    verify(&daemon, &token, "host2").await;
    let list = async |query: &str| {
        let response = daemon
            .get(&format!("/api/links?{query}"), Some(&token))
            .await;
        let status = response.status();
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap();
        (status, headers, body)
    };
    let ids = |body: &Value| -> Vec<String> {
        let machines: Vec<MachineView> = answer(body);
        machines.into_iter().map(|m| m.spec.id).collect()
    };
    let (_, headers, body) = list("health=unreachable").await;
    assert_eq!(ids(&body), ["host2"]);
    assert_eq!(headers["x-total-count"], "1");
    let (_, _, body) = list("q=HOST3").await;
    assert_eq!(ids(&body), ["host3"], "text matches ignoring case");
    let (_, _, body) = list("enrollment=enrolled").await;
    assert_eq!(ids(&body), ["host1", "host3"]);

    // Pages of two, in id order, the total over all of them, a link to the next.
    let (_, headers, body) = list("limit=2").await;
    assert_eq!(ids(&body), ["host1", "host2"]);
    assert_eq!(headers["x-total-count"], "3");
    let link = headers[reqwest::header::LINK].to_str().unwrap().to_owned();
    assert!(
        link.contains("after=host2") && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let (_, headers, body) = list("limit=2&after=host2").await;
    assert_eq!(ids(&body), ["host3"]);
    assert_eq!(headers["x-total-count"], "3");
    assert!(
        headers.get(reqwest::header::LINK).is_none(),
        "the last page"
    );

    for (query, field) in [
        ("health=sleepy", "health"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let (status, _, body) = list(query).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let refused: ErrorBody = answer(&body);
        assert_eq!(refused.error.code, ErrorCode::Invalid, "{query}: {body}");
        assert_eq!(
            refused.error.details.unwrap()["field"],
            field,
            "{query}: {body}"
        );
    }
    daemon.stop().await;
}

/// The run-request `id`, once the daemon has seen it.
async fn run_state(daemon: &TestDaemon, token: &str, id: &str) -> Option<RunView> {
    let response = daemon.get(&format!("/api/runs/{id}"), Some(token)).await;
    match response.status() {
        StatusCode::NOT_FOUND => None,
        _ => Some(answer(&response.json().await.unwrap())),
    }
}

/// The state of run-request `id` once the daemon has looked at it.
async fn run_looked_at(daemon: &TestDaemon, token: &str, id: &str) -> Option<(RunView, RunState)> {
    let view = run_state(daemon, token, id).await?;
    let state = view.state.clone()?;
    Some((view, state))
}

/// Waits for the run-request's claim (polled: run-requests have no event
/// stream), then follows its operation's events to the end.
async fn finished_operation(daemon: &TestDaemon, token: &str, run: &str) -> OperationView {
    let id = eventually("the run-request to start", || async {
        match run_looked_at(daemon, token, run).await?.1 {
            RunState::Started { operation_id } => Some(operation_id),
            _ => None,
        }
    })
    .await;
    ended(daemon, token, id).await
}

#[tokio::test]
async fn a_run_request_runs_once_on_enrolled_machines_and_skips_the_rest() {
    let setup = setup(3, &[2]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    // A parameter that would be code if it were spliced into shell text.
    setup.work.write("runs/mark-1.yaml", "id: mark-1\nscript: mark\ntargets:\n  tags: [test]\nparams:\n  note: \"x'; touch /tmp/pwned; echo '\"\n");
    let revision = setup.work.commit("run mark-1");
    daemon
        .daemon()
        .git()
        .desired()
        .wait_for(|d| d.as_ref().is_some_and(|d| d.revision == revision))
        .await
        .unwrap();

    let operation = finished_operation(&daemon, &token, "mark-1").await;
    let state = operation.operation.state;
    assert_eq!(state, OperationState::PartiallyFailed, "{operation:?}");
    let by_id = |id: &str| {
        let hosts = &operation.hosts;
        hosts.iter().find(|h| h.machine_id == id).unwrap().clone()
    };
    assert_eq!(by_id("host1").state, HostState::Succeeded);
    assert_eq!(by_id("host2").state, HostState::Succeeded);
    let skipped = by_id("host3");
    let HostState::Skipped { reason } = &skipped.state else {
        panic!("host3 not skipped: {skipped:?}");
    };
    assert!(
        reason.starts_with("not enrolled: client_id reads"),
        "{reason}"
    );

    // Exactly one mark per enrolled host, with the parameter intact.
    let note = "x'; touch /tmp/pwned; echo '";
    for host in &setup.fleet.hosts()[..2] {
        let marks =
            std::fs::read_to_string(setup.marks.join(format!("LINKOPS-{}", host.uuid()))).unwrap();
        assert_eq!(marks, format!("{note}\n"));
    }
    assert!(
        !setup
            .marks
            .join(format!("LINKOPS-{}", setup.fleet.host(2).uuid()))
            .exists()
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());

    // Editing it after it ran does not run it again; the status says so.
    setup.work.write(
        "runs/mark-1.yaml",
        "id: mark-1\nscript: mark\ntargets:\n  tags: [test]\nparams:\n  note: again\n",
    );
    let edited = setup.work.commit("edit mark-1");
    daemon
        .daemon()
        .git()
        .desired()
        .wait_for(|d| d.as_ref().is_some_and(|d| d.revision == edited))
        .await
        .unwrap();
    let state = eventually("the edit to be noticed", || async {
        let state = run_state(&daemon, &token, "mark-1").await?;
        state.changed_after_run.then_some(state)
    })
    .await;
    assert_eq!(
        state.state,
        Some(RunState::Started {
            operation_id: operation.operation.id
        })
    );
    let run_condition = |kind: ConditionKind| {
        let conditions = &state.conditions;
        conditions
            .iter()
            .find(|c| c.kind == kind)
            .unwrap()
            .reason
            .clone()
    };
    assert_eq!(run_condition(ConditionKind::Ready), "Started");
    assert_eq!(run_condition(ConditionKind::Stalled), "ChangedAfterRun");
    daemon.stop().await;
    for host in &setup.fleet.hosts()[..2] {
        let marks =
            std::fs::read_to_string(setup.marks.join(format!("LINKOPS-{}", host.uuid()))).unwrap();
        assert_eq!(marks.lines().count(), 1);
    }
}

#[tokio::test]
async fn a_run_request_removed_before_its_time_is_cancelled() {
    let setup = setup(1, &[]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    setup.work.write("runs/later.yaml", "id: later\nscript: mark\ntargets:\n  machines: [host1]\nnot_before: 2999-01-01T00:00:00Z\n");
    setup.work.commit("later");
    let reason = eventually("the run-request to wait", || async {
        match run_looked_at(&daemon, &token, "later").await?.1 {
            RunState::Waiting { reason } => Some(reason),
            _ => None,
        }
    })
    .await;
    assert!(reason.contains("2999-01-01"), "{reason}");

    setup.work.remove("runs/later.yaml");
    setup.work.commit("never mind");
    eventually("the run-request to be cancelled", || async {
        let (_, state) = run_looked_at(&daemon, &token, "later").await?;
        (state == RunState::Cancelled).then_some(())
    })
    .await;
    daemon.stop().await;
}

/// Starts `script` on `machines` by hand: the answer's status and body.
async fn run_by_hand(
    daemon: &TestDaemon,
    token: &str,
    script: &str,
    machines: &[&str],
) -> (StatusCode, Value) {
    let body = json!({"script": script, "targets": {"machines": machines}});
    daemon
        .request(
            reqwest::Method::POST,
            "/api/operations/run",
            token,
            Some(body),
        )
        .await
}

/// The operation `id` once it has ended.
async fn ended(daemon: &TestDaemon, token: &str, id: u64) -> OperationView {
    let events = support::read_events(daemon, token, id, None).await;
    assert_eq!(events.last().unwrap().event, "end");
    support::operation(daemon, token, id).await
}

#[tokio::test]
async fn a_suspension_holds_every_start_naming_itself_until_resumed() {
    let setup = setup(2, &[]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let scope = |verb: &'static str, body: Value| {
        let (daemon, token) = (&daemon, &token);
        async move {
            let path = format!("/api/reconcile/{verb}");
            let (status, body) = daemon
                .request(reqwest::Method::POST, &path, token, Some(body))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            answer::<SuspensionView>(&body)
        }
    };
    let (status, failed) = run_by_hand(&daemon, &token, "fail", &["host1"]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{failed}");
    let failed = answer::<OperationView>(&failed).operation.id;
    let state = ended(&daemon, &token, failed).await.operation.state;
    assert_eq!(state, OperationState::Failed);
    let retry = format!("/api/operations/{failed}/retry");

    // The fleet held: no run, no retry, no run-request.
    let suspended = scope("suspend", json!({})).await;
    assert!(suspended.fleet.is_some(), "{suspended:?}");
    let links: Vec<MachineView> = daemon.read("/api/links", &token).await;
    assert!(links[0].suspended);
    let (status, refused) = run_by_hand(&daemon, &token, "mark", &["host1", "host2"]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let says = answer::<ErrorBody>(&refused).error.message;
    assert!(
        says.contains("reconciliation of the fleet is suspended"),
        "{says}"
    );
    let (status, refused) = daemon
        .request(reqwest::Method::POST, &retry, &token, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    setup.work.write(
        "runs/held.yaml",
        "id: held\nscript: mark\ntargets:\n  machines: [host1]\n",
    );
    setup.work.commit("held");
    let reason = eventually("the run-request to be held", || async {
        match run_looked_at(&daemon, &token, "held").await?.1 {
            RunState::Waiting { reason } => Some(reason),
            _ => None,
        }
    })
    .await;
    assert!(
        reason.contains("reconciliation of the fleet is suspended"),
        "{reason}"
    );

    // Only host1 held: the run-request waits for it, a run skips it, naming
    // the suspension, and a run or retry on host1 alone is refused.
    scope("suspend", json!({"machine": "host1"})).await;
    let resumed = scope("resume", json!({})).await;
    assert!(resumed.fleet.is_none(), "{resumed:?}");
    eventually("the run-request to wait for host1", || async {
        match run_looked_at(&daemon, &token, "held").await?.1 {
            RunState::Waiting { reason } => {
                reason.contains("machine host1 is suspended").then_some(())
            }
            _ => None,
        }
    })
    .await;
    let (status, started) = run_by_hand(&daemon, &token, "mark", &["host1", "host2"]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let started = answer::<OperationView>(&started).operation.id;
    let operation = ended(&daemon, &token, started).await;
    let host1 = &operation.hosts[0];
    assert_eq!(host1.machine_id, "host1", "{operation:?}");
    let HostState::Skipped { reason } = &host1.state else {
        panic!("host1 not skipped: {operation:?}");
    };
    assert!(reason.contains("machine host1 is suspended"), "{reason}");
    assert_eq!(operation.hosts[1].state, HostState::Succeeded);
    let (status, refused) = run_by_hand(&daemon, &token, "mark", &["host1"]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, refused) = daemon
        .request(reqwest::Method::POST, &retry, &token, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let says = answer::<ErrorBody>(&refused).error.message;
    assert!(says.contains("machine host1 is suspended"), "{says}");
    // host1 has no mark: nothing ran there.
    let host1_marks = setup
        .marks
        .join(format!("LINKOPS-{}", setup.fleet.host(0).uuid()));
    assert!(!host1_marks.exists());

    // Resuming host1 releases the run-request that waited for it.
    scope("resume", json!({"machine": "host1"})).await;
    let operation = finished_operation(&daemon, &token, "held").await;
    let state = operation.operation.state;
    assert_eq!(state, OperationState::Succeeded, "{operation:?}");
    let (status, retried) = daemon
        .request(reqwest::Method::POST, &retry, &token, None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    daemon.stop().await;
}
