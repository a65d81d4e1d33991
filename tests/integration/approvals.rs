//! Approvals against the real sshd fleet: a run on `prod` waits for two
//! approvers other than the requester — the requester's own approval, a
//! viewer's and a second vote by one approver refused — and starts exactly
//! what was asked once the second approves (through the CLI); a run
//! elsewhere starts at once; a request not approved in time never runs.

use linkops::contract::{ApprovalView, OperationView};
use linkops_reconcilers::approval::RequestState;
use linkops_reconcilers::role::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::cli::{linkops_with, logged_in};
use crate::support::{self, ADMIN, FleetSetup, VIEWER, eventually, read_events};

const SCRIPTS: &str = "scripts:\n  - {id: hello, name: Hello, body: echo hello from $(cat /etc/linkops/client_id)}\n  - {id: slow, name: Slow, body: echo slow}\n";
const OLGA: (&str, &str) = ("olga", "pw-olga-1");
const BOB: (&str, &str) = ("bob", "pw-bob-1");

/// Two hosts, host1 tagged `prod`; `access` as access.yaml, `files` beside
/// it, committed; bob an operator.
fn prod_fleet(access: &str, files: &[(&str, &str)]) -> FleetSetup {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let links = setup.fleet.inventory("test", &[], "");
    let links = links.replacen("    tags: [test]\n", "    tags: [test, prod]\n", 1);
    setup.work.write("links.yaml", &links);
    setup.work.write("access.yaml", access);
    for (path, text) in files {
        setup.work.write(path, text);
    }
    setup.work.commit("runs on prod need approvers");
    support::add_users(setup.data.path(), &[(BOB.0, Role::Operator, BOB.1)]);
    setup
}

async fn run(
    daemon: &support::TestDaemon,
    token: &str,
    script: &str,
    machine: &str,
) -> (StatusCode, serde_json::Value) {
    let body = json!({"script": script, "targets": {"machines": [machine]}});
    (daemon.request(Method::POST, "/api/operations/run", token, Some(body))).await
}

async fn vote(
    daemon: &support::TestDaemon,
    token: &str,
    id: u64,
    verb: &str,
) -> (StatusCode, serde_json::Value) {
    let path = format!("/api/approvals/{id}/{verb}");
    let body = json!({"comment": "checked"});
    daemon.request(Method::POST, &path, token, Some(body)).await
}

#[tokio::test]
async fn a_run_on_prod_waits_for_two_approvers_other_than_its_requester() {
    let setup = prod_fleet(
        "approvals:\n  - {name: prod, tags: [prod], approvers: 2, expires: 1h}\n  - {name: slow-prod, tags: [prod], scripts: [slow], approvers: 1, expires: 1s}\n",
        &[],
    );
    support::add_users(setup.data.path(), &[(OLGA.0, Role::Operator, OLGA.1)]);
    let daemon = setup.start().await;
    let olga = daemon.token(OLGA.0, OLGA.1).await;
    let bob = daemon.token(BOB.0, BOB.1).await;
    let vic = daemon.token(VIEWER.0, VIEWER.1).await;
    // On prod: recorded as awaiting approval, nothing runs.
    let (status, answer) = run(&daemon, &olga, "hello", "host1").await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let asked: ApprovalView = support::answer(&answer);
    let id = asked.request.id;
    assert_eq!(asked.state, RequestState::AwaitingApproval);
    assert_eq!((asked.request.approvers, asked.approvals), (2, 0));
    assert_eq!(asked.request.content.machines, ["host1"]);
    let operations: Vec<OperationView> = daemon.read("/api/operations", &olga).await;
    assert!(operations.is_empty(), "{operations:?}");

    // The requester's own approval, a viewer's, and a second vote are refused.
    let (status, answer) = vote(&daemon, &olga, id, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never approves their own")
    );
    let (status, answer) = vote(&daemon, &vic, id, "approve").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) = vote(&daemon, &bob, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let counted: ApprovalView = support::answer(&answer);
    assert_eq!(
        (counted.approvals, &counted.state),
        (1, &RequestState::AwaitingApproval)
    );
    let (status, _) = vote(&daemon, &bob, id, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The second approver, through the CLI: the run starts, exactly as asked.
    let home = logged_in(&daemon).await;
    let approved = linkops_with(
        home.path(),
        &["approve", &id.to_string(), "--comment", "go"],
        None,
        &[],
    )
    .await;
    let said = String::from_utf8_lossy(&approved.stderr);
    assert!(approved.status.success(), "{said}");
    assert!(said.contains("approved: operation "), "{said}");
    let view: ApprovalView = daemon.read(&format!("/api/approvals/{id}"), &olga).await;
    let RequestState::Started { operation_id } = view.state else {
        panic!("{view:?}");
    };
    let events = read_events(&daemon, &olga, operation_id, None).await;
    assert_eq!(events.last().unwrap().state().name(), "succeeded");
    let ran = support::operation(&daemon, &olga, operation_id).await;
    assert_eq!(ran.operation.machines, ["host1"]);
    assert_eq!(ran.operation.requested_by.label(), "olga");
    let voters: Vec<&str> = view.request.votes.iter().map(|v| v.by.as_str()).collect();
    assert_eq!(voters, ["bob", ADMIN.0]);

    // Off prod, a run starts at once.
    let (status, answer) = run(&daemon, &olga, "hello", "host2").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    // A request not approved within its expiry never runs.
    let (status, answer) = run(&daemon, &olga, "slow", "host1").await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let late: ApprovalView = support::answer(&answer);
    let path = format!("/api/approvals/{}", late.request.id);
    eventually("the request's expiry", || async {
        let view: ApprovalView = daemon.read(&path, &olga).await;
        (view.state == RequestState::Expired).then_some(())
    })
    .await;
    let (status, answer) = vote(&daemon, &bob, late.request.id, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let slow: Vec<OperationView> = daemon.read("/api/operations", &olga).await;
    assert!(
        slow.iter().all(|o| o.operation.script != "slow"),
        "{slow:?}"
    );
    daemon.stop().await;

    // Every step is in the audit log.
    let audit = support::audit_log(setup.data.path(), 10_000);
    let steps: Vec<(&str, &str)> = (audit.iter())
        .filter(|entry| entry.action.starts_with("approval."))
        .map(|entry| (entry.action.as_str(), entry.actor.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("approval.request", "olga"),
            ("approval.approve", "bob"),
            ("approval.approve", ADMIN.0),
            ("approval.request", "olga"),
        ]
    );
}

#[tokio::test]
async fn a_run_request_on_prod_waits_for_its_approvers_then_runs_once() {
    use linkops::contract::RunView;
    use linkops_reconcilers::run::RunState;

    let setup = prod_fleet(
        "approvals:\n  - {name: prod, tags: [prod], approvers: 2, expires: 1h}\n",
        &[(
            "runs/greet-prod.yaml",
            "id: greet-prod\nscript: hello\ntargets: {machines: [host1]}\n",
        )],
    );
    let daemon = setup.start().await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let bob = daemon.token(BOB.0, BOB.1).await;

    // It waits, saying for which request; the request is the commit's.
    let waiting = eventually("the run-request waiting for approval", || async {
        let view: RunView = daemon.read("/api/runs/greet-prod", &admin).await;
        match view.state {
            Some(RunState::Waiting { reason }) if reason.starts_with("awaiting approval") => {
                Some(reason)
            }
            _ => None,
        }
    })
    .await;
    let requests: Vec<ApprovalView> = daemon.read("/api/approvals", &admin).await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    let id = requests[0].request.id;
    assert!(waiting.contains(&format!("request {id}")), "{waiting}");
    assert_eq!(requests[0].request.requested_by.label(), "run:greet-prod");

    // Two approvals: its reconcile starts it, once.
    let (status, answer) = vote(&daemon, &bob, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = vote(&daemon, &admin, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let operation_id = eventually("the approved run-request's start", || async {
        let view: RunView = daemon.read("/api/runs/greet-prod", &admin).await;
        match view.state {
            Some(RunState::Started { operation_id }) => Some(operation_id),
            _ => None,
        }
    })
    .await;
    let events = read_events(&daemon, &admin, operation_id, None).await;
    assert_eq!(events.last().unwrap().state().name(), "succeeded");
    let view: ApprovalView = daemon.read(&format!("/api/approvals/{id}"), &admin).await;
    assert_eq!(view.state, RequestState::Started { operation_id });
    daemon.stop().await;
}

#[tokio::test]
async fn a_schedule_s_fire_on_prod_waits_for_its_approver() {
    use linkops::contract::ScheduleDetail;
    use linkops_reconcilers::schedule::FireOutcome;

    // Hourly, half an hour from now: its latest fire is long past, caught up
    // once as the daemon starts, and no other falls due during the test.
    let now = jiff::Timestamp::now();
    let minute = (now.to_zoned(jiff::tz::TimeZone::UTC).minute() + 30) % 60;
    let schedule = format!(
        "name: greet\nscript: hello\ntargets: {{machines: [host1]}}\ncron: \"{minute} * * * *\"\ncatch_up: once\n"
    );
    let setup = prod_fleet(
        "approvals:\n  - {name: prod, tags: [prod], approvers: 1, expires: 1h}\n",
        &[("schedules/greet.yaml", &schedule)],
    );
    let config = setup.config();
    {
        let store = support::open_store(&config);
        let since = now.as_millisecond() - 3 * 3_600_000;
        support::as_the_cli(|| store.schedule_since("greet", since).unwrap());
    }
    let daemon = setup.start_with(config).await;
    let bob = daemon.token(BOB.0, BOB.1).await;

    // The fire is claimed as awaiting approval; nothing runs.
    let approval = eventually("the fire awaiting approval", || async {
        let detail: ScheduleDetail = daemon.read("/api/schedules/greet", &bob).await;
        detail.fires.iter().find_map(|fire| match fire.outcome {
            FireOutcome::AwaitingApproval { approval } => Some(approval),
            _ => None,
        })
    })
    .await;
    let operations: Vec<OperationView> = daemon.read("/api/operations", &bob).await;
    assert!(operations.is_empty(), "{operations:?}");
    let asked: ApprovalView = daemon
        .read(&format!("/api/approvals/{approval}"), &bob)
        .await;
    assert_eq!(asked.request.requested_by.label(), "schedule:greet");

    // Approved: the fire runs, and its record says so.
    let (status, answer) = vote(&daemon, &bob, approval, "approve").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let approved: ApprovalView = support::answer(&answer);
    let RequestState::Started { operation_id } = approved.state else {
        panic!("{approved:?}");
    };
    let events = read_events(&daemon, &bob, operation_id, None).await;
    assert_eq!(events.last().unwrap().state().name(), "succeeded");
    let detail: ScheduleDetail = daemon.read("/api/schedules/greet", &bob).await;
    let started = FireOutcome::Started { operation_id };
    assert!(
        detail.fires.iter().any(|fire| fire.outcome == started),
        "{detail:?}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_state_touching_prod_applies_only_once_its_content_is_approved() {
    use crate::states::{self, in_sync, until_state};
    use linkops_reconcilers::state::Standing;

    let setup = states::setup(2, &[0, 1], &states::state_file("v1", ""));
    let links =
        states::links(&setup, &[0, 1]).replacen("tags: [test, web]", "tags: [test, web, prod]", 1);
    setup.work.write("links.yaml", &links);
    setup.work.write(
        "access.yaml",
        "approvals:\n  - {name: prod, tags: [prod], approvers: 1, expires: 1h}\n",
    );
    setup.work.commit("applies on prod need an approver");
    support::add_users(setup.data.path(), &[(BOB.0, Role::Operator, BOB.1)]);
    let daemon = setup.start().await;
    let bob = daemon.token(BOB.0, BOB.1).await;

    // Checked and found drifted, held for approvers; one request asked.
    let held = until_state(&daemon, &bob, "both held for approval", |d| {
        d.machines.iter().all(|m| {
            matches!(&m.standing, Standing::Held { reason } if reason.starts_with("awaiting approval: request"))
        }) && d.machines.len() == 2
    })
    .await;
    let requests: Vec<ApprovalView> = daemon.read("/api/approvals", &bob).await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].request.requested_by.label(), "state:app-config");
    assert_eq!(requests[0].request.content.machines, ["host1", "host2"]);
    assert!(held.machines.iter().all(|m| m.apply.is_none()), "{held:?}");

    // Approved: the state applies its content, in its rollout's batches.
    let (status, answer) = vote(&daemon, &bob, requests[0].request.id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    until_state(&daemon, &bob, "both in sync once approved", |d| {
        in_sync(d, 2)
    })
    .await;
    let view: ApprovalView = daemon
        .read(&format!("/api/approvals/{}", requests[0].request.id), &bob)
        .await;
    assert_eq!(view.state, RequestState::Approved);
    daemon.stop().await;
}
