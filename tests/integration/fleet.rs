//! The reconcile loop against a real fleet: health, enrollment, verify, run-requests.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{self, ADMIN, FleetSetup, TestDaemon, eventually};
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

async fn verify(daemon: &TestDaemon, token: &str, id: &str) -> Value {
    let response = daemon
        .post(&format!("/api/links/{id}/verify"), Some(token))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn condition<'a>(machine: &'a Value, kind: &str) -> &'a Value {
    machine["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
}

#[tokio::test]
async fn links_show_health_and_enrollment_that_match_reality() {
    let setup = setup(3, &[2]);
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    for id in ["host1", "host2", "host3"] {
        verify(&daemon, &token, id).await;
    }
    let links: Value = daemon
        .get("/api/links", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let links = links.as_array().unwrap();
    assert_eq!(links.len(), 3);
    for machine in &links[..2] {
        assert_eq!(machine["health"]["state"], "reachable", "{machine}");
        assert_eq!(machine["enrollment"]["state"], "enrolled", "{machine}");
        assert_eq!(condition(machine, "Ready")["status"], "True");
        assert!(machine["revision"].as_str().is_some());
    }
    // host3 answers, but with its own id, not the inventory's.
    let wrong = &links[2];
    assert_eq!(wrong["health"]["state"], "reachable");
    assert_eq!(wrong["enrollment"]["state"], "mismatch");
    assert_eq!(
        wrong["enrollment"]["expected"],
        "LINKOPS-00000000-0000-4000-8000-000000000000"
    );
    assert_eq!(
        wrong["enrollment"]["found"],
        format!("LINKOPS-{}", setup.fleet.host(2).uuid())
    );
    assert_eq!(condition(wrong, "Ready")["reason"], "ClientIdMismatch");
    assert_eq!(condition(wrong, "Stalled")["status"], "True");

    // Filter by tag; details carry health history.
    let none: Value = daemon
        .get("/api/links?tag=web", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none, json!([]));
    let detail: Value = daemon
        .get("/api/links/host1", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert!(!detail["health_history"].as_array().unwrap().is_empty());
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
    assert_eq!(online["health"]["state"], "reachable");
    let seen = online["last_seen"].clone();

    setup.fleet.hosts_mut()[0].stop();
    let offline = verify(&daemon, &token, "host1").await;
    assert_eq!(offline["health"]["state"], "unreachable", "{offline}");
    assert_eq!(condition(&offline, "Ready")["reason"], "Unreachable");
    assert_eq!(
        offline["last_seen"], seen,
        "last seen is when it last answered"
    );

    setup.fleet.hosts_mut()[0].restart().unwrap();
    let back = verify(&daemon, &token, "host1").await;
    assert_eq!(back["health"]["state"], "reachable", "{back}");
    assert_eq!(condition(&back, "Ready")["status"], "True");
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
    machines: std::collections::BTreeMap<String, Value>,
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

    /// The next event's name and data, folded in.
    async fn next(&mut self) -> (String, Value) {
        use futures::StreamExt;
        let event = self.events.next().await.expect("the stream ended").unwrap();
        let data: Value = serde_json::from_str(&event.data).unwrap();
        match event.event.as_str() {
            "snapshot" => {
                self.machines = data["machines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| (m["id"].as_str().unwrap().to_owned(), m.clone()))
                    .collect();
            }
            "changes" => {
                for machine in data["changed"].as_array().unwrap() {
                    let id = machine["id"].as_str().unwrap().to_owned();
                    self.machines.insert(id, machine.clone());
                }
                for id in data["removed"].as_array().unwrap() {
                    self.machines.remove(id.as_str().unwrap());
                }
            }
            other => panic!("unexpected fleet event {other}"),
        }
        self.last_id = event.id;
        (event.event, data)
    }
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
    let (kind, first) = stream.next().await;
    assert_eq!(kind, "snapshot");
    assert_eq!(first["machines"].as_array().unwrap().len(), 2);
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
    assert_eq!(fields(&first["machines"][0]), fields(&listed[0]));

    // A check that changes only times says nothing: the next event is host1 going down, alone.
    verify(&daemon, &token, "host2").await;
    setup.fleet.hosts_mut()[0].stop();
    verify(&daemon, &token, "host1").await;
    let (kind, changes) = stream.next().await;
    assert_eq!(kind, "changes");
    assert_eq!(changes["changed"].as_array().unwrap().len(), 1, "{changes}");
    assert_eq!(changes["changed"][0]["id"], "host1");
    let down = &stream.machines["host1"];
    assert_eq!(down["health"]["state"], "unreachable");
    assert_eq!(condition(down, "Ready")["reason"], "Unreachable");

    // Disconnected, host1 comes back; reconnecting resumes with just that.
    let last = stream.last_id.clone();
    drop(stream);
    setup.fleet.hosts_mut()[0].restart().unwrap();
    verify(&daemon, &token, "host1").await;
    let mut resumed = FleetStream::open(&daemon, &token, Some(&last)).await;
    let (kind, changes) = resumed.next().await;
    assert_eq!(kind, "changes", "{changes}");
    assert_eq!(changes["changed"][0]["id"], "host1");
    assert_eq!(changes["changed"][0]["health"]["state"], "reachable");
    // A position it cannot place (another daemon's, a garbled one) starts over.
    let mut fresh = FleetStream::open(&daemon, &token, Some("7.1.nope")).await;
    assert_eq!(fresh.next().await.0, "snapshot");
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
        body.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
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
        assert_eq!(body["error"]["details"]["field"], field, "{query}: {body}");
    }
    daemon.stop().await;
}

async fn run_state(daemon: &TestDaemon, token: &str, id: &str) -> Value {
    daemon
        .get(&format!("/api/runs/{id}"), Some(token))
        .await
        .json()
        .await
        .unwrap_or_default()
}

/// Waits for the run-request's claim (polled: run-requests have no event
/// stream), then follows its operation's events to the end.
async fn finished_operation(daemon: &TestDaemon, token: &str, run: &str) -> Value {
    let id = eventually("the run-request to start", || async {
        run_state(daemon, token, run).await["state"]["operation_id"].as_u64()
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
    assert_eq!(operation["state"], "partially_failed", "{operation}");
    let hosts = operation["hosts"].as_array().unwrap();
    let by_id = |id: &str| {
        hosts
            .iter()
            .find(|h| h["machine_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("host1")["state"]["state"], "succeeded");
    assert_eq!(by_id("host2")["state"]["state"], "succeeded");
    let skipped = by_id("host3");
    assert_eq!(skipped["state"]["state"], "skipped");
    assert!(
        skipped["state"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not enrolled: client_id reads"),
        "{skipped}"
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
        let state = run_state(&daemon, &token, "mark-1").await;
        (state["changed_after_run"] == true).then_some(state)
    })
    .await;
    assert_eq!(state["state"]["operation_id"], operation["id"]);
    assert_eq!(condition(&state, "Ready")["reason"], "Started");
    assert_eq!(condition(&state, "Stalled")["reason"], "ChangedAfterRun");
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
    let waiting = eventually("the run-request to wait", || async {
        let state = run_state(&daemon, &token, "later").await;
        (state["state"]["state"] == "waiting").then_some(state)
    })
    .await;
    assert!(
        waiting["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("2999-01-01"),
        "{waiting}"
    );

    setup.work.remove("runs/later.yaml");
    setup.work.commit("never mind");
    eventually("the run-request to be cancelled", || async {
        let state = run_state(&daemon, &token, "later").await;
        (state["state"]["state"] == "cancelled").then_some(())
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
async fn ended(daemon: &TestDaemon, token: &str, id: u64) -> Value {
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
            let (status, answer) = daemon
                .request(reqwest::Method::POST, &path, token, Some(body))
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            answer
        }
    };
    let (status, failed) = run_by_hand(&daemon, &token, "fail", &["host1"]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{failed}");
    let failed = failed["id"].as_u64().unwrap();
    assert_eq!(ended(&daemon, &token, failed).await["state"], "failed");
    let retry = format!("/api/operations/{failed}/retry");

    // The fleet held: no run, no retry, no run-request.
    let suspended = scope("suspend", json!({})).await;
    assert!(suspended["fleet"].is_string(), "{suspended}");
    let links: Value = daemon
        .get("/api/links", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(links[0]["suspended"], true);
    let (status, refused) = run_by_hand(&daemon, &token, "mark", &["host1", "host2"]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let says = refused["error"]["message"].as_str().unwrap();
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
    let held = eventually("the run-request to be held", || async {
        let state = run_state(&daemon, &token, "held").await;
        (state["state"]["state"] == "waiting").then_some(state)
    })
    .await;
    let reason = held["state"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("reconciliation of the fleet is suspended"),
        "{reason}"
    );

    // Only host1 held: the run-request waits for it, a run skips it, naming
    // the suspension, and a run or retry on host1 alone is refused.
    scope("suspend", json!({"machine": "host1"})).await;
    let resumed = scope("resume", json!({})).await;
    assert!(resumed["fleet"].is_null(), "{resumed}");
    let waiting = eventually("the run-request to wait for host1", || async {
        let state = run_state(&daemon, &token, "held").await;
        let reason = state["state"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        reason
            .contains("machine host1 is suspended")
            .then_some(state)
    })
    .await;
    assert_eq!(waiting["state"]["state"], "waiting", "{waiting}");
    let (status, started) = run_by_hand(&daemon, &token, "mark", &["host1", "host2"]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let operation = ended(&daemon, &token, started["id"].as_u64().unwrap()).await;
    let host1 = &operation["hosts"][0];
    assert_eq!(host1["machine_id"], "host1", "{operation}");
    assert_eq!(host1["state"]["state"], "skipped", "{operation}");
    let reason = host1["state"]["reason"].as_str().unwrap();
    assert!(reason.contains("machine host1 is suspended"), "{reason}");
    assert_eq!(operation["hosts"][1]["state"]["state"], "succeeded");
    let (status, refused) = run_by_hand(&daemon, &token, "mark", &["host1"]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, refused) = daemon
        .request(reqwest::Method::POST, &retry, &token, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let says = refused["error"]["message"].as_str().unwrap();
    assert!(says.contains("machine host1 is suspended"), "{says}");
    // host1 has no mark: nothing ran there.
    let host1_marks = setup
        .marks
        .join(format!("LINKOPS-{}", setup.fleet.host(0).uuid()));
    assert!(!host1_marks.exists());

    // Resuming host1 releases the run-request that waited for it.
    scope("resume", json!({"machine": "host1"})).await;
    let operation = finished_operation(&daemon, &token, "held").await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    let (status, retried) = daemon
        .request(reqwest::Method::POST, &retry, &token, None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    daemon.stop().await;
}
