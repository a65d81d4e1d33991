//! Schedules against the real sshd fleet: a fire due runs on the machines
//! its targets name; fires missed while the daemon was down run once or not
//! as `catch_up` says; a fire recorded is never run again after a restart;
//! the API and `linkops schedules` show the next fire in the schedule's zone.

use linkops::contract::{OperationView, ScheduleDetail, ScheduleView};
use linkops_reconcilers::schedule::FireOutcome;

use crate::cli::{linkops_with, logged_in};
use crate::support::{self, ADMIN, FleetSetup, eventually};

const SCRIPTS: &str = "scripts:\n  - {id: hello, name: Hello, body: echo hello from a schedule}\n";
const MINUTE_MS: i64 = 60_000;

/// The operations a schedule started.
async fn fired_operations(
    daemon: &support::TestDaemon,
    token: &str,
    name: &str,
) -> Vec<OperationView> {
    let operations: Vec<OperationView> = daemon.read("/api/operations", token).await;
    operations
        .into_iter()
        .filter(|o| o.operation.requested_by.label() == format!("schedule:{name}"))
        .collect()
}

/// Waits until schedules have been reconciled `count` times (the metric counts them).
async fn schedules_reconciled(daemon: &support::TestDaemon, count: f64) {
    eventually("the schedules' reconciles", || async {
        let metrics = daemon.get("/metrics", None).await.text().await.unwrap();
        let line = metrics.lines().find(|l| {
            l.starts_with("linkops_reconciles_total{kind=\"schedule\",result=\"success\"}")
        })?;
        let seen: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (seen >= count).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_due_fire_runs_missed_ones_run_once_or_not_and_a_restart_runs_nothing_again() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let now = jiff::Timestamp::now();
    // Fixed minutes half an hour from now: their latest fire is long past, whatever the time.
    let minute = (now.to_zoned(jiff::tz::TimeZone::UTC).minute() + 30) % 60;
    let schedule = |name: &str, cron: &str, extra: &str| {
        format!(
            "name: {name}\nscript: hello\ntargets: {{tags: [test]}}\ncron: \"{cron}\"\nzone: Europe/Berlin\n{extra}"
        )
    };
    setup.work.write(
        "schedules/every-minute.yaml",
        &schedule("every-minute", "* * * * *", ""),
    );
    setup.work.write(
        "schedules/skipper.yaml",
        &schedule("skipper", &format!("{minute} * * * *"), "catch_up: skip\n"),
    );
    setup.work.write(
        "schedules/catcher.yaml",
        &schedule("catcher", &format!("{minute} * * * *"), "catch_up: once\n"),
    );
    setup.work.commit("three schedules");
    // As if the daemon had known them for three hours and been down since:
    // every-minute's fire at the last minute's start is due, the others' missed.
    let config = setup.config();
    {
        let store = support::open_store(&config);
        let now_ms = now.as_millisecond();
        let just_before = now_ms - now_ms.rem_euclid(MINUTE_MS) - 10_000;
        support::as_the_cli(|| {
            store.schedule_since("every-minute", just_before).unwrap();
            store
                .schedule_since("skipper", now_ms - 180 * MINUTE_MS)
                .unwrap();
            store
                .schedule_since("catcher", now_ms - 180 * MINUTE_MS)
                .unwrap();
        });
    }
    let daemon = setup.start_with(config.clone()).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    // The due fire runs on both machines, the catcher's once, the skipper's not.
    let ran = eventually("every-minute's fire", || async {
        let fired = fired_operations(&daemon, &token, "every-minute").await;
        fired.into_iter().find(|o| o.operation.state.is_finished())
    })
    .await;
    assert_eq!(ran.operation.machines, ["host1", "host2"]);
    assert_eq!(ran.operation.state.name(), "succeeded", "{ran:?}");
    let caught = eventually("the catcher's one fire", || async {
        let fired = fired_operations(&daemon, &token, "catcher").await;
        (fired.len() == 1).then_some(fired)
    })
    .await;
    assert_eq!(caught.len(), 1);
    let skipper = eventually("the skipper's missed fire", || async {
        let detail: ScheduleDetail = daemon.read("/api/schedules/skipper", &token).await;
        (!detail.fires.is_empty()).then_some(detail)
    })
    .await;
    assert_eq!(
        skipper.fires.len(),
        1,
        "three hours missed, one decision: {skipper:?}"
    );
    let FireOutcome::Missed { reason } = &skipper.fires[0].outcome else {
        panic!("{skipper:?}");
    };
    assert!(
        reason.starts_with("not fired at ") && reason.ends_with("catch_up is skip"),
        "{reason}"
    );
    assert!(
        fired_operations(&daemon, &token, "skipper")
            .await
            .is_empty()
    );
    let listed: Vec<ScheduleView> = daemon.read("/api/schedules", &token).await;
    let catcher = listed
        .iter()
        .find(|v| v.schedule.name == "catcher")
        .unwrap();
    let next = catcher.next_fire.unwrap();
    assert!(next > now, "{catcher:?}");
    let in_zone = catcher.next_fire_in_zone.as_deref().unwrap();
    assert!(
        in_zone.ends_with(" CET") || in_zone.ends_with(" CEST"),
        "{in_zone}"
    );
    assert!(in_zone.contains(&format!(":{minute:02} ")), "{in_zone}");

    // The CLI says the same, in the schedule's zone and here.
    let home = logged_in(&daemon).await;
    let out = linkops_with(home.path(), &["schedules"], None, &[]).await;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("catcher") && out.contains(in_zone), "{out}");

    // A restart runs none of the recorded fires again.
    let before: Vec<u64> = fired_operations(&daemon, &token, "catcher")
        .await
        .iter()
        .map(|o| o.operation.id)
        .collect();
    daemon.stop().await;
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    // Each of the three schedules reconciled at start.
    schedules_reconciled(&daemon, 3.0).await;
    let after: Vec<u64> = fired_operations(&daemon, &token, "catcher")
        .await
        .iter()
        .map(|o| o.operation.id)
        .collect();
    assert_eq!(after, before);
    daemon.stop().await;
}

#[tokio::test]
async fn a_schedule_applies_a_reporting_state_once_a_suspension_lets_it() {
    use crate::states::{self, in_sync, until_state};
    use reqwest::{Method, StatusCode};

    let setup = states::setup(2, &[0, 1], &states::state_file("v1", "mode: report\n"));
    setup.work.write(
        "schedules/apply-config.yaml",
        "name: apply-config\nstate: app-config\ncron: \"* * * * *\"\ncatch_up: once\n",
    );
    setup.work.commit("apply the reported state every minute");
    // Known since just before this minute's fire, the fleet held since before the daemon starts.
    let config = setup.config();
    {
        let store = support::open_store(&config);
        let now_ms = jiff::Timestamp::now().as_millisecond();
        support::as_the_cli(|| {
            let since = now_ms - now_ms.rem_euclid(MINUTE_MS) - 10_000;
            store.schedule_since("apply-config", since).unwrap();
            let fleet = linkops_reconcilers::suspension::Scope::Fleet;
            (store.set_suspended(&fleet, true, &linkops::store::Actor::Cli)).unwrap();
        });
    }
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;

    // The suspension holds the fire: reconciled, nothing recorded, nothing run.
    schedules_reconciled(&daemon, 1.0).await;
    let detail: ScheduleDetail = daemon.read("/api/schedules/apply-config", &token).await;
    assert!(detail.fires.is_empty(), "{detail:?}");
    let held = detail.view.held.as_deref().unwrap_or_default();
    assert!(held.contains("suspended"), "{detail:?}");
    assert_eq!(detail.view.schedule.script, "config-file");
    assert!(
        fired_operations(&daemon, &token, "apply-config")
            .await
            .is_empty()
    );

    // Resumed: the fire runs (on time, or caught up once), and the state holds after it.
    let (status, answer) = daemon
        .request(
            Method::POST,
            "/api/reconcile/resume",
            &token,
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let ran = eventually("the state's scheduled apply", || async {
        let fired = fired_operations(&daemon, &token, "apply-config").await;
        fired.into_iter().find(|o| o.operation.state.is_finished())
    })
    .await;
    assert_eq!(ran.operation.state.name(), "succeeded", "{ran:?}");
    assert_eq!(ran.operation.script, "config-file");
    assert_eq!(ran.operation.machines, ["host1", "host2"]);
    until_state(&daemon, &token, "both in sync after the apply", |d| {
        in_sync(d, 2)
    })
    .await;
    daemon.stop().await;
}
