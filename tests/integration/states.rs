//! Declared states against real sshd hosts: a state converges its targets, a
//! machine joining the tag converges without a commit to the state, a hand
//! change is corrected (enforce) or reported (report), new content rolls out
//! in batches behind a canary, a failed canary halts the rest, and nothing is
//! applied outside the maintenance windows.
//!
//! The state is a config file per host under the shared marks directory
//! (`<marks>/<client id>.conf`), so the test reads what each host has.

use std::ffi::OsStr;
use std::process::Command;

use linkops::contract::{OperationView, StateDetail, StateMachineView, TablePage};
use linkops_reconcilers::condition::{ConditionKind, ConditionStatus};
use linkops_reconcilers::operation::{OperationState, Requester};
use linkops_reconcilers::state::{ApplyResult, CheckOutcome, Standing};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testbed::ServeProcess;

use crate::support::{ADMIN, FleetSetup, TestDaemon, answer, eventually, run_to_end};

pub(crate) const SCRIPTS: &str = r#"scripts:
  - id: config-file
    name: A config file with its content
    params:
      - {name: content, type: string, required: true}
      - {name: linger, type: int, default: 0, description: Seconds the apply takes after writing}
    body: |
      f=$MARKS/$(cat /etc/linkops/client_id).conf
      [ "$LINKOPS_PARAM_CONTENT" = fail ] && { echo "refusing to write $f" >&2; exit 3; }
      printf '%s\n' "$LINKOPS_PARAM_CONTENT" > "$f"
      echo "$LINKOPS_PARAM_CONTENT" >> "$f.applies"
      sleep "$LINKOPS_PARAM_LINGER"
    check: |
      f=$MARKS/$(cat /etc/linkops/client_id).conf
      [ -f "$f" ] || { echo "$f is missing"; exit 1; }
      [ "$(cat "$f")" = "$LINKOPS_PARAM_CONTENT" ] || { echo "$f reads $(cat "$f")"; exit 1; }
    timeout: 30s
  - id: hand-edit
    name: Someone edits the file by hand
    body: |
      echo edited-by-hand > $MARKS/$(cat /etc/linkops/client_id).conf
"#;

/// The fleet's links with `web` added to the tags of the hosts at `web`.
pub(crate) fn links(setup: &FleetSetup, web: &[usize]) -> String {
    let mut links = String::new();
    for (index, entry) in setup
        .fleet
        .inventory("test", &[], "")
        .split("  - id: ")
        .enumerate()
    {
        if index == 0 {
            links.push_str(entry);
            continue;
        }
        links.push_str("  - id: ");
        match web.contains(&(index - 1)) {
            true => links.push_str(&entry.replace("tags: [test]", "tags: [test, web]")),
            false => links.push_str(entry),
        }
    }
    links
}

pub(crate) fn state_file(content: &str, extra: &str) -> String {
    format!(
        "id: app-config\nscript: config-file\ntargets: {{tags: [web]}}\nparams: {{content: {content}}}\ninterval: 10s\nrollout: {{canary: 1, batch: 2, max_failures: 1}}\n{extra}"
    )
}

/// A fleet of `hosts`, those at `web` tagged `web`, with the state committed.
pub(crate) fn setup(hosts: usize, web: &[usize], state: &str) -> FleetSetup {
    let setup = FleetSetup::new(hosts, &[], SCRIPTS);
    setup.work.write("links.yaml", &links(&setup, web));
    setup.work.write("states/app-config.yaml", state);
    setup.work.commit("the app's config file, declared");
    setup
}

/// What host `index` has in its config file, if it has one.
fn config_of(setup: &FleetSetup, index: usize) -> Option<String> {
    let uuid = setup.fleet.hosts()[index].uuid();
    std::fs::read_to_string(setup.marks.join(format!("LINKOPS-{uuid}.conf")))
        .ok()
        .map(|text| text.trim_end().to_owned())
}

/// How many times the state was applied on host `index`.
fn applies_on(setup: &FleetSetup, index: usize) -> usize {
    let uuid = setup.fleet.hosts()[index].uuid();
    std::fs::read_to_string(setup.marks.join(format!("LINKOPS-{uuid}.conf.applies")))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

async fn detail(daemon: &TestDaemon, token: &str) -> StateDetail {
    daemon.read("/api/states/app-config", token).await
}

/// Waits until `check` holds for the state's detail; returns that detail.
pub(crate) async fn until_state(
    daemon: &TestDaemon,
    token: &str,
    what: &str,
    check: impl Fn(&StateDetail) -> bool,
) -> StateDetail {
    eventually(what, || async {
        let detail = detail(daemon, token).await;
        check(&detail).then_some(detail)
    })
    .await
}

/// The name of machine `id`'s standing: `in_sync`, `held`, …
fn standing(detail: &StateDetail, id: &str) -> &'static str {
    machine(detail, id).standing.name()
}

/// Why machine `id` is held.
fn held_because(detail: &StateDetail, id: &str) -> String {
    match &machine(detail, id).standing {
        Standing::Held { reason } => reason.clone(),
        other => panic!("{id} is not held: {other:?}"),
    }
}

/// The state's apply operations, oldest first, as the machines each ran on.
async fn applies(daemon: &TestDaemon, token: &str) -> Vec<Vec<String>> {
    let path = "/api/operations?script=config-file&limit=100";
    let operations: Vec<OperationView> = daemon.read(path, token).await;
    let mut batches: Vec<(u64, Vec<String>)> = (operations.into_iter())
        .map(|view| view.operation)
        .filter(|o| matches!(o.requested_by, Requester::State { .. }))
        .map(|o| (o.id, o.machines))
        .collect();
    batches.sort();
    batches.into_iter().map(|(_, machines)| machines).collect()
}

/// Edits a host's config file by hand, over SSH (an operation of the
/// `hand-edit` script), and waits until that is done.
pub(crate) async fn hand_edit(daemon: &TestDaemon, token: &str, machine: &str) {
    let (_, ended) = run_to_end(daemon, token, "hand-edit", &[machine]).await;
    assert_eq!(ended, OperationState::Succeeded);
}

pub(crate) async fn sync(daemon: &TestDaemon, token: &str) {
    let response = daemon.post("/api/git/sync", Some(token)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

pub(crate) fn in_sync(detail: &StateDetail, machines: u32) -> bool {
    detail.state.counts.in_sync == machines
}

/// Whether the detail is of the reconcile of `revision` or later.
pub(crate) fn of(detail: &StateDetail, revision: &str) -> bool {
    detail.state.revision.as_deref() == Some(revision)
}

fn machine<'a>(detail: &'a StateDetail, id: &str) -> &'a StateMachineView {
    let machines = &detail.machines;
    (machines.iter().find(|m| m.machine_id == id))
        .unwrap_or_else(|| panic!("no {id} in {detail:?}"))
}

/// The rows of a `POST /api/tables/query` (free-form: each table has its columns).
async fn table_rows(daemon: &TestDaemon, token: &str, query: Value) -> Vec<Value> {
    let (status, page) = daemon
        .request(Method::POST, "/api/tables/query", token, Some(query))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    answer::<TablePage>(&page).rows
}

#[tokio::test]
async fn a_state_converges_its_tag_and_a_machine_joining_it() {
    let setup = setup(3, &[0, 1], &state_file("v1", ""));
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let converged = until_state(&daemon, &token, "both web hosts in sync", |d| in_sync(d, 2)).await;
    assert_eq!(config_of(&setup, 0).as_deref(), Some("v1"));
    assert_eq!(config_of(&setup, 1).as_deref(), Some("v1"));
    assert_eq!(config_of(&setup, 2), None, "host3 is not a web host");
    assert_eq!(converged.machines.len(), 2);
    let ready = &converged.state.conditions[0];
    assert_eq!(
        (ready.kind, ready.status),
        (ConditionKind::Ready, ConditionStatus::True)
    );
    // The canary alone first, then the rest.
    assert_eq!(
        applies(&daemon, &token).await,
        [vec!["host1"], vec!["host2"]]
    );
    // Each apply is audited for the revision that declared it.
    let query = json!({ "table": "audit_log", "filter": [{ "column": "action", "op": "eq", "value": "state.apply" }] });
    let applied = table_rows(&daemon, &token, query).await;
    let revision = setup.work.head();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(
        applied
            .iter()
            .all(|e| e["actor"] == format!("git@{revision}"))
    );
    // Tables and metrics say the same.
    let query = json!({ "table": "state_machines", "filter": [{ "column": "state", "op": "eq", "value": "app-config" }] });
    let rows = table_rows(&daemon, &token, query).await;
    let standings: Vec<&Value> = rows.iter().map(|r| &r["standing"]).collect();
    assert_eq!(
        standings,
        [&json!("in_sync"), &json!("in_sync")],
        "{rows:?}"
    );
    let query = json!({ "table": "state_checks", "filter": [{ "column": "machine", "op": "eq", "value": "host1" }], "sort": [{ "column": "at", "dir": "asc" }] });
    let rows = table_rows(&daemon, &token, query).await;
    let results: Vec<&Value> = rows.iter().map(|r| &r["result"]).collect();
    assert_eq!(results, [&json!("drifted"), &json!("holds")], "{rows:?}");
    let metrics = daemon.get("/metrics", None).await.text().await.unwrap();
    for line in [
        "linkops_state_machines{state=\"app-config\",standing=\"in_sync\"} 2",
        "linkops_state_machines{state=\"app-config\",standing=\"drifted\"} 0",
        "linkops_state_rollout_halted{state=\"app-config\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }

    // host3 joins the tag: only links.yaml changes.
    setup.work.write("links.yaml", &links(&setup, &[0, 1, 2]));
    setup.work.commit("host3 serves the app too");
    sync(&daemon, &token).await;
    until_state(&daemon, &token, "host3 in sync", |d| in_sync(d, 3)).await;
    assert_eq!(config_of(&setup, 2).as_deref(), Some("v1"));
    assert_eq!((applies_on(&setup, 0), applies_on(&setup, 2)), (1, 1));
    daemon.stop().await;
}

#[tokio::test]
async fn a_hand_change_is_corrected_when_enforced_and_only_reported_otherwise() {
    let setup = setup(2, &[0, 1], &state_file("v1", ""));
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    until_state(&daemon, &token, "in sync", |d| in_sync(d, 2)).await;

    hand_edit(&daemon, &token, "host1").await;
    // Detected at its next check, corrected, checked again.
    until_state(&daemon, &token, "host1 corrected", |d| {
        in_sync(d, 2) && applies_on(&setup, 0) == 2
    })
    .await;
    assert_eq!(config_of(&setup, 0).as_deref(), Some("v1"));
    assert_eq!(applies_on(&setup, 1), 1, "host2 was left alone");

    // In report mode the same edit is reported, with what the check printed, and left.
    setup.work.write(
        "states/app-config.yaml",
        &state_file("v1", "mode: report\n"),
    );
    let report = setup.work.commit("only report drift");
    sync(&daemon, &token).await;
    until_state(&daemon, &token, "report mode", |d| of(d, &report)).await;
    hand_edit(&daemon, &token, "host1").await;
    let reported = until_state(&daemon, &token, "host1 reported drifted", |d| {
        standing(d, "host1") == "drifted"
    })
    .await;
    let host1 = machine(&reported, "host1");
    let output = &host1.check.as_ref().unwrap().output;
    assert!(
        output.ends_with(".conf reads edited-by-hand\n"),
        "{host1:?}"
    );
    assert!(host1.drifted_since.is_some(), "{host1:?}");
    assert_eq!(reported.state.conditions[0].reason, "DriftReported");
    assert_eq!(config_of(&setup, 0).as_deref(), Some("edited-by-hand"));
    assert_eq!(applies_on(&setup, 0), 2);
    daemon.stop().await;
}

#[tokio::test]
async fn new_content_rolls_out_in_batches_and_a_failed_canary_halts_the_rest() {
    let setup = setup(4, &[0, 1, 2, 3], &state_file("v1", ""));
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    until_state(&daemon, &token, "v1 everywhere", |d| in_sync(d, 4)).await;
    let v1 = applies(&daemon, &token).await;
    assert_eq!(v1, [vec!["host1"], vec!["host2", "host3"], vec!["host4"]]);

    setup
        .work
        .write("states/app-config.yaml", &state_file("v2", ""));
    let v2_revision = setup.work.commit("v2");
    sync(&daemon, &token).await;
    until_state(&daemon, &token, "v2 everywhere", |d| {
        of(d, &v2_revision) && in_sync(d, 4)
    })
    .await;
    let v2 = applies(&daemon, &token).await.split_off(v1.len());
    assert_eq!(v2, [vec!["host1"], vec!["host2", "host3"], vec!["host4"]]);
    assert!((0..4).all(|host| config_of(&setup, host).as_deref() == Some("v2")));

    // A new revision of the script (a new file format): its check fails everywhere, and it re-applies in batches.
    let revised = SCRIPTS
        .replace(
            r#"printf '%s\n' "$LINKOPS_PARAM_CONTENT" > "$f""#,
            r#"printf 'content=%s\n' "$LINKOPS_PARAM_CONTENT" > "$f""#,
        )
        .replace(
            r#"= "$LINKOPS_PARAM_CONTENT" ]"#,
            r#"= "content=$LINKOPS_PARAM_CONTENT" ]"#,
        );
    assert_ne!(revised, SCRIPTS);
    let marks = setup.marks.to_str().unwrap();
    setup
        .work
        .write("scripts.yaml", &revised.replace("$MARKS", marks));
    let v3_revision = setup.work.commit("the config file's new format");
    sync(&daemon, &token).await;
    until_state(&daemon, &token, "the new format everywhere", |d| {
        of(d, &v3_revision) && in_sync(d, 4)
    })
    .await;
    let v3 = applies(&daemon, &token)
        .await
        .split_off(v1.len() + v2.len());
    assert_eq!(v3, [vec!["host1"], vec!["host2", "host3"], vec!["host4"]]);
    let done = v1.len() + v2.len() + v3.len();
    assert!((0..4).all(|host| config_of(&setup, host).as_deref() == Some("content=v2")));

    // The canary's apply fails: the rollout halts and nothing else is touched.
    setup
        .work
        .write("states/app-config.yaml", &state_file("fail", ""));
    let broken = setup.work.commit("a broken release");
    sync(&daemon, &token).await;
    let halted = until_state(&daemon, &token, "the rollout halted", |d| {
        of(d, &broken) && d.state.halted.is_some()
    })
    .await;
    assert_eq!(standing(&halted, "host1"), "failed", "{halted:?}");
    for other in ["host2", "host3", "host4"] {
        assert_eq!(standing(&halted, other), "held", "{halted:?}");
    }
    let reason = &halted.state.halted.as_ref().unwrap().reason;
    assert!(reason.starts_with("a canary failed"), "{reason}");

    // Its machines in pages, filtered by standing, the total over all pages.
    let page = |query: &'static str| {
        let (daemon, token) = (&daemon, &token);
        async move {
            let path = format!("/api/states/app-config?{query}");
            let response = daemon.get(&path, Some(token)).await;
            let status = response.status();
            let headers = response.headers().clone();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, headers, body)
        }
    };
    let ids = |body: &serde_json::Value| -> Vec<String> {
        let detail: StateDetail = answer(body);
        detail.machines.into_iter().map(|m| m.machine_id).collect()
    };
    let (_, headers, body) = page("standing=held&limit=2").await;
    assert_eq!(ids(&body), ["host2", "host3"]);
    assert_eq!(headers["x-total-count"], "3");
    let link = headers[reqwest::header::LINK].to_str().unwrap().to_owned();
    assert!(link.contains("after=host3"), "{link}");
    let (_, headers, body) = page("standing=held&limit=2&after=host3").await;
    assert_eq!(ids(&body), ["host4"]);
    assert!(
        headers.get(reqwest::header::LINK).is_none(),
        "the last page"
    );
    let (_, headers, body) = page("tag=web&standing=failed").await;
    assert_eq!(ids(&body), ["host1"]);
    assert_eq!(headers["x-total-count"], "1");
    for (query, field) in [("standing=asleep", "standing"), ("limit=0", "limit")] {
        let (status, _, body) = page(query).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        let refused: linkops::contract::ErrorBody = answer(&body);
        assert_eq!(refused.error.details.unwrap()["field"], field, "{body}");
    }
    assert_eq!(applies(&daemon, &token).await.len(), done + 1);
    assert!((1..4).all(|host| config_of(&setup, host).as_deref() == Some("content=v2")));

    // It stays halted until an operator resumes it (or new content comes).
    let (status, answer) = daemon
        .request(Method::POST, "/api/states/app-config/resume", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let first = machine(&halted, "host1")
        .apply
        .as_ref()
        .unwrap()
        .operation_id;
    let again = until_state(&daemon, &token, "the canary failed again", |d| {
        let apply = machine(d, "host1").apply.as_ref().unwrap();
        d.state.halted.is_some()
            && apply.operation_id != first
            && matches!(apply.result, ApplyResult::Failed { .. })
    })
    .await;
    assert_eq!(standing(&again, "host2"), "held");
    assert_eq!(applies(&daemon, &token).await.len(), done + 2);
    let (status, _) = daemon
        .request(Method::POST, "/api/states/missing/resume", &token, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    daemon.stop().await;
}

#[tokio::test]
async fn outside_its_windows_a_state_is_checked_but_never_applied() {
    // A window that closed an hour ago and opens again tomorrow.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let from = now
        .checked_sub(jiff::SignedDuration::from_hours(2))
        .unwrap();
    let to = now
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap();
    let window = format!(
        "windows:\n  - {{from: \"{}\", to: \"{}\"}}\n",
        from.strftime("%H:%M"),
        to.strftime("%H:%M")
    );
    let setup = setup(2, &[0, 1], &state_file("v1", &window));
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let held = until_state(&daemon, &token, "both held", |d| d.state.counts.held == 2).await;
    let reason = held_because(&held, "host1");
    assert!(
        reason.starts_with("outside the maintenance windows; the next opens at "),
        "{reason}"
    );
    let check = held.machines[0].check.as_ref().unwrap();
    assert_eq!(check.outcome, CheckOutcome::Drifted);
    assert!(applies(&daemon, &token).await.is_empty());
    assert_eq!((config_of(&setup, 0), config_of(&setup, 1)), (None, None));
    daemon.stop().await;
}

#[tokio::test]
async fn a_daemon_killed_mid_apply_checks_again_before_applying_again() {
    let state = "id: app-config\nscript: config-file\ntargets: {tags: [web]}\nparams: {content: v1, linger: 25}\ninterval: 1h\n";
    let setup = setup(1, &[0], state);
    let data = setup.data.path();
    let store = crate::support::store_toml(&setup.config());
    let config = data.join("config.toml");
    let toml = format!(
        "data_dir = {data:?}\n[git]\nurl = {:?}\n{store}",
        setup.work.dir
    );
    std::fs::write(&config, toml).unwrap();
    let serve = || {
        let binary = Command::new(env!("CARGO_BIN_EXE_linkops"));
        let (mut process, _) =
            ServeProcess::spawn(binary, [OsStr::new("--config"), config.as_os_str()]).unwrap();
        process.drain_log();
        process
    };
    let get = |process: &ServeProcess, token: &str, path: &str| {
        let request = reqwest::Client::new()
            .get(format!("{}{path}", process.url))
            .bearer_auth(token);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };

    let daemon = serve();
    let token = daemon.login(ADMIN.0, ADMIN.1).await.unwrap();
    // The apply has written the file and lingers: kill the daemon under it.
    let operation = eventually("the apply to be under way", || async {
        let detail: StateDetail = answer(&get(&daemon, &token, "/api/states/app-config").await);
        let apply = machine(&detail, "host1").apply.clone()?;
        (applies_on(&setup, 0) == 1 && apply.result == ApplyResult::Running)
            .then_some(apply.operation_id)
    })
    .await;
    daemon.kill_9();

    let daemon = serve();
    let token = daemon.login(ADMIN.0, ADMIN.1).await.unwrap();
    let detail = eventually("host1 checked again", || async {
        let detail: StateDetail = answer(&get(&daemon, &token, "/api/states/app-config").await);
        (standing(&detail, "host1") == "in_sync").then_some(detail)
    })
    .await;
    let host1 = machine(&detail, "host1");
    let apply = host1.apply.as_ref().unwrap();
    assert_eq!(apply.operation_id, operation);
    assert_eq!(apply.result, ApplyResult::Interrupted, "{host1:?}");
    let checked = host1.check.as_ref().unwrap().at.unwrap();
    assert!(checked > apply.started_at.unwrap(), "{host1:?}");
    // The check proved the interrupted apply's work: it was not applied again.
    assert_eq!(applies_on(&setup, 0), 1);
    let path = format!("/api/operations/{operation}");
    let recorded: OperationView = answer(&get(&daemon, &token, &path).await);
    assert_eq!(recorded.operation.state, OperationState::Interrupted);
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status:?} {log}");
}

#[tokio::test]
async fn a_suspended_machine_holds_its_states_until_resumed() {
    let setup = setup(2, &[0, 1], &state_file("v1", ""));
    let daemon = setup.start().await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    until_state(&daemon, &token, "in sync", |d| in_sync(d, 2)).await;
    let suspend = |verb: &'static str| {
        let (daemon, token) = (&daemon, &token);
        async move {
            let path = format!("/api/reconcile/{verb}");
            let (status, answer) = daemon
                .request(
                    Method::POST,
                    &path,
                    token,
                    Some(json!({"machine": "host1"})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    };
    suspend("suspend").await;
    setup
        .work
        .write("states/app-config.yaml", &state_file("v2", ""));
    let v2 = setup.work.commit("v2");
    sync(&daemon, &token).await;
    let held = until_state(&daemon, &token, "host2 on v2, host1 held", |d| {
        of(d, &v2) && standing(d, "host2") == "in_sync" && standing(d, "host1") == "held"
    })
    .await;
    let reason = held_because(&held, "host1");
    assert!(reason.contains("machine host1 is suspended"), "{reason}");
    assert_eq!(config_of(&setup, 0).as_deref(), Some("v1"));
    assert_eq!(config_of(&setup, 1).as_deref(), Some("v2"));
    // The resume reconciles the state at once.
    suspend("resume").await;
    until_state(&daemon, &token, "host1 on v2", |d| in_sync(d, 2)).await;
    assert_eq!(config_of(&setup, 0).as_deref(), Some("v2"));
    daemon.stop().await;
}
