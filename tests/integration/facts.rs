//! Facts against the real sshd fleet: gathered from every machine once it is
//! enrolled, followed within the fact interval when the test changes a host
//! (updates made pending, a reboot-required flag raised), and shown in the
//! machine's detail with what changed, in `GET /api/facts` and `linkops facts`.

use std::time::Duration;

use linkops::contract::{FactsView, MachineDetail, MachineView};
use linkops_reconcilers::facts::FactValue;
use linkops_reconcilers::operation::HostState;

use crate::cli::{linkops_with, logged_in};
use crate::support::{ADMIN, FleetSetup, eventually};

const SCRIPTS: &str = "scripts:\n  - {id: reboot, name: Reboot, body: echo rebooting}\n";

#[tokio::test]
async fn facts_are_gathered_at_enrollment_and_follow_a_change_within_their_interval() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    // Checked every second, facts due every two: a change shows within seconds.
    let links = setup.fleet.inventory("test", &[], "health_interval: 1s");
    setup.work.write("links.yaml", &links);
    setup.work.commit("checked every second");
    let mut config = setup.config();
    config.facts.interval = Duration::from_secs(2);
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    let both = eventually("both machines' facts", || async {
        let listed: Vec<FactsView> = daemon.read("/api/facts", &token).await;
        (listed.len() == 2).then_some(listed)
    })
    .await;
    // What this computer is, as each machine (they share its kernel and OS) says.
    let release = std::fs::read_to_string("/etc/os-release").unwrap();
    let field = |name: &str| {
        (release.lines())
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let kernel = String::from_utf8(
        std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for facts in &both {
        let fact = |name: &str| facts.facts.get(name).cloned();
        assert_eq!(
            fact("os"),
            Some(FactValue::Text(format!(
                "{}-{}",
                field("ID"),
                field("VERSION_ID")
            )))
        );
        assert_eq!(
            fact("kernel"),
            Some(FactValue::Text(kernel.trim().to_owned()))
        );
        assert_eq!(fact("package_manager"), Some(FactValue::Text("apt".into())));
        assert_eq!(fact("updates"), Some(FactValue::Int(0)), "{facts:?}");
        assert_eq!(fact("reboot_required"), Some(FactValue::Bool(false)));
        assert!(matches!(fact("memory_bytes"), Some(FactValue::Int(bytes)) if bytes > 0));
        assert!(matches!(fact("cpus"), Some(FactValue::Int(cpus)) if cpus > 0));
        assert!(facts.error.is_none(), "{facts:?}");
    }

    // On host1: two updates pending (one for security), and a reboot asked for.
    let host1 = setup.fleet.host(0);
    host1
        .set_pending_updates(&[("openssl", true), ("curl", false)])
        .unwrap();
    host1.set_reboot_required(true).unwrap();
    let changed = eventually("host1's new facts", || async {
        let detail: MachineDetail = daemon.read("/api/links/host1", &token).await;
        let facts = detail.facts?;
        (facts.facts.get("reboot_required") == Some(&FactValue::Bool(true))).then_some(facts)
    })
    .await;
    assert_eq!(changed.facts["updates"], FactValue::Int(2));
    assert_eq!(changed.facts["security_updates"], FactValue::Int(1));
    let change = &changed.changes[0];
    assert_eq!(change.changed["updates"].before, Some(FactValue::Int(0)));
    assert_eq!(change.changed["updates"].after, Some(FactValue::Int(2)));
    assert_eq!(
        change.changed["reboot_required"].before,
        Some(FactValue::Bool(false))
    );
    // host2 is as it was.
    let host2: MachineDetail = daemon.read("/api/links/host2", &token).await;
    assert_eq!(host2.facts.unwrap().facts["updates"], FactValue::Int(0));

    // A run by hand `where: {reboot_required: true}` reaches exactly that machine…
    let body =
        serde_json::json!({"script": "reboot", "targets": {"where": {"reboot_required": true}}});
    let (status, started) = daemon
        .request(
            reqwest::Method::POST,
            "/api/operations/run",
            &token,
            Some(body),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["machines"], serde_json::json!(["host1"]));
    // …as does a run-request committed with it; none matching starts nothing.
    setup.work.write(
        "runs/reboot.yaml",
        "id: reboot-pending\nscript: reboot\ntargets:\n  where: {reboot_required: true}\n",
    );
    let head = setup.work.commit("reboot what asks for it");
    let synced = daemon.post("/api/git/sync", Some(&token)).await;
    assert_eq!(synced.status(), reqwest::StatusCode::OK);
    crate::git_sync::applied(&daemon, &head).await;
    let run = eventually("the run-request's operation", || async {
        let runs: serde_json::Value = daemon.read("/api/runs", &token).await;
        let run = runs
            .as_array()?
            .iter()
            .find(|r| r["id"] == "reboot-pending")?
            .clone();
        run["state"]["operation_id"].as_u64()
    })
    .await;
    let operation: serde_json::Value = daemon.read(&format!("/api/operations/{run}"), &token).await;
    assert_eq!(operation["machines"], serde_json::json!(["host1"]));
    let body = serde_json::json!({"script": "reboot", "targets": {"where": {"os": "plan9"}}});
    let (status, refused) = daemon
        .request(
            reqwest::Method::POST,
            "/api/operations/run",
            &token,
            Some(body),
        )
        .await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "{refused}"
    );

    // The CLI: the fleet a machine per line, one machine fact by fact.
    let home = logged_in(&daemon).await;
    let listed = linkops_with(home.path(), &["facts"], None, &[]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let host1_line = listed
        .lines()
        .find(|l| l.starts_with("host1"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        host1_line.contains(" 2 ") && host1_line.contains(" true "),
        "{listed}"
    );
    let one = linkops_with(home.path(), &["facts", "host1"], None, &[]).await;
    let one = String::from_utf8_lossy(&one.stdout).into_owned();
    assert!(
        one.contains("security_updates") && one.contains("updates 0 → 2"),
        "{one}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn custom_facts_from_git_are_gathered_where_they_target_and_select_machines() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let links = setup.fleet.inventory("test", &[], "health_interval: 1s");
    setup.work.write("links.yaml", &links);
    // Every machine says the address its sshd answered on; only host2 has
    // the answer; a broken one fails everywhere without losing the rest.
    setup.work.write(
        "facts/sshd.yaml",
        "name: sshd\nscript: |\n  set -- $SSH_CONNECTION\n  printf '{\"address\": \"%s\", \"port\": %s}' \"$3\" \"$4\"\n",
    );
    setup.work.write(
        "facts/only2.yaml",
        "name: only2\ntargets: {machines: [host2]}\nscript: |\n  echo '{\"answer\": 42}'\n",
    );
    setup.work.write(
        "facts/raid.yaml",
        "name: raid\ntimeout: 5s\nscript: |\n  echo 'no raid here' >&2\n  exit 3\n",
    );
    setup.work.commit("three custom facts");
    let mut config = setup.config();
    config.facts.interval = Duration::from_secs(2);
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    let both = eventually("both machines' custom facts", || async {
        let listed: Vec<FactsView> = daemon.read("/api/facts", &token).await;
        let gathered = listed.iter().all(|f| f.facts.contains_key("sshd.address"));
        (listed.len() == 2 && gathered).then_some(listed)
    })
    .await;
    for (index, facts) in both.iter().enumerate() {
        let host = setup.fleet.host(index);
        assert_eq!(facts.machine, host.name());
        assert_eq!(
            facts.facts["sshd.address"],
            FactValue::Text(host.address().to_string())
        );
        assert_eq!(facts.facts["sshd.port"], FactValue::Int(host.port().into()));
        assert!(facts.facts.contains_key("kernel"), "{facts:?}");
        assert!(!facts.facts.keys().any(|name| name.starts_with("raid.")));
        let error = facts.error.as_deref().unwrap_or_default();
        assert_eq!(error, "custom fact raid: exited with 3: no raid here");
    }
    assert!(!both[0].facts.contains_key("only2.answer"));
    assert_eq!(both[1].facts["only2.answer"], FactValue::Int(42));

    // Selecting by a custom fact: the API, the CLI, the tables API, the plan.
    let selected: Vec<MachineView> = daemon
        .read("/api/links?where=only2.answer%3D42", &token)
        .await;
    let ids: Vec<&str> = selected.iter().map(|m| m.spec.id.as_str()).collect();
    assert_eq!(ids, ["host2"]);
    let (status, refused) = daemon
        .request(
            reqwest::Method::GET,
            "/api/links?where=Not%20a%20fact",
            &token,
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["error"]["details"]["field"], "where", "{refused}");
    let home = logged_in(&daemon).await;
    let listed = linkops_with(
        home.path(),
        &["machines", "--where", "only2.answer=42"],
        None,
        &[],
    )
    .await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("host2") && !listed.contains("host1"),
        "{listed}"
    );
    let body = serde_json::json!({"table": "facts", "filter": [{"column": "machine", "op": "eq", "value": "host1"}]});
    let (status, table) = daemon
        .request(
            reqwest::Method::POST,
            "/api/tables/query",
            &token,
            Some(body),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{table}");
    let row = &table["rows"][0];
    assert_eq!(row["machine"], "host1", "{table}");
    assert_eq!(row["package_manager"], "apt");
    assert_eq!(row["reboot_required"], false);
    assert_eq!(
        row["error"],
        "custom fact raid: exited with 3: no raid here"
    );

    setup.work.write(
        "runs/ask.yaml",
        "id: ask\nscript: reboot\ntargets:\n  where: {only2.answer: 42}\n",
    );
    let checkout = setup.work.dir.to_str().unwrap().to_owned();
    let planned = linkops_with(home.path(), &["plan", &checkout], None, &[]).await;
    let planned = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert!(
        planned.contains(
            "▶ run-request ask would start script reboot on host2 (its `where` selects 1 machine(s) on their facts now)"
        ),
        "{planned}"
    );
    daemon.stop().await;
}

/// The shipped patch-day run-request, as written, on the test fleet's tag.
fn example(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config-repo");
    std::fs::read_to_string(root.join(path)).unwrap()
}

#[tokio::test]
async fn the_patch_day_example_reboots_only_what_asks_for_it_and_halts_on_a_failed_canary() {
    let scripts = "scripts:\n  - {id: reboot-if-required, name: Reboot, file: scripts/reboot-if-required.sh, timeout: 2m}\n";
    let setup = FleetSetup::new(4, &[], scripts);
    let links = setup.fleet.inventory("test", &[], "health_interval: 1s");
    setup.work.write("links.yaml", &links);
    setup.work.write(
        "scripts/reboot-if-required.sh",
        &example("scripts/reboot-if-required.sh"),
    );
    setup.work.commit("the patch-day script");
    // host1 to host3 ask for a reboot; host4 does not. host1 — the canary, the
    // first in inventory order — cannot schedule it.
    for index in 0..3 {
        setup.fleet.host(index).set_reboot_required(true).unwrap();
    }
    setup.fleet.host(0).set_shutdown_fails(true).unwrap();
    let mut config = setup.config();
    config.facts.interval = Duration::from_secs(2);
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    eventually("every machine's reboot flag", || async {
        let listed: Vec<FactsView> = daemon.read("/api/facts", &token).await;
        let flagged = (listed.iter())
            .filter(|f| f.facts.get("reboot_required") == Some(&FactValue::Bool(true)))
            .count();
        (listed.len() == 4 && flagged == 3).then_some(())
    })
    .await;

    let request = example("runs/2026-12-08-reboot-pending.yaml")
        .replace("tags: [debian]", "tags: [test]")
        .replace("not_before: 2026-12-08T05:30:00Z\n", "");
    setup.work.write("runs/reboot-pending.yaml", &request);
    let head = setup.work.commit("patch day");
    let synced = daemon.post("/api/git/sync", Some(&token)).await;
    assert_eq!(synced.status(), reqwest::StatusCode::OK);
    crate::git_sync::applied(&daemon, &head).await;
    let id = eventually("the patch day's operation", || async {
        let run: serde_json::Value = daemon
            .read("/api/runs/2026-12-08-reboot-pending", &token)
            .await;
        run["state"]["operation_id"].as_u64()
    })
    .await;
    crate::support::read_events(&daemon, &token, id, None).await;
    let ran = crate::support::operation(&daemon, &token, id).await;
    let hosts: Vec<&str> = ran.hosts.iter().map(|h| h.machine_id.as_str()).collect();
    assert_eq!(hosts, ["host1", "host2", "host3"], "{ran:?}");
    let state = |machine: &str| {
        let host = ran.hosts.iter().find(|h| h.machine_id == machine).unwrap();
        host.state.name().to_owned()
    };
    assert_eq!(state("host1"), "failed", "{ran:?}");
    let canary = (ran.hosts.iter())
        .find(|h| h.machine_id == "host1")
        .unwrap();
    assert!(
        matches!(
            canary.state,
            HostState::Failed {
                exit_code: Some(1),
                ..
            }
        ),
        "{ran:?}"
    );
    for held in ["host2", "host3"] {
        assert_eq!(state(held), "held", "{ran:?}");
    }
    for index in 0..4 {
        assert!(!setup.fleet.host(index).rebooted(), "host{}", index + 1);
    }

    // host1 fixed, the same request under a new id: exactly the three reboot.
    setup.fleet.host(0).set_shutdown_fails(false).unwrap();
    let again = request.replace("id: 2026-12-08-reboot-pending", "id: reboot-again");
    setup.work.write("runs/reboot-again.yaml", &again);
    let head = setup.work.commit("patch day, again");
    let synced = daemon.post("/api/git/sync", Some(&token)).await;
    assert_eq!(synced.status(), reqwest::StatusCode::OK);
    crate::git_sync::applied(&daemon, &head).await;
    let id = eventually("the second operation", || async {
        let run: serde_json::Value = daemon.read("/api/runs/reboot-again", &token).await;
        run["state"]["operation_id"].as_u64()
    })
    .await;
    crate::support::read_events(&daemon, &token, id, None).await;
    let ran = crate::support::operation(&daemon, &token, id).await;
    let succeeded = (ran.hosts.iter())
        .filter(|h| h.state.name() == "succeeded")
        .count();
    assert_eq!((ran.hosts.len(), succeeded), (3, 3), "{ran:?}");
    let rebooted: Vec<bool> = (0..4).map(|i| setup.fleet.host(i).rebooted()).collect();
    assert_eq!(rebooted, [true, true, true, false]);
    daemon.stop().await;
}
