//! Schedules on two replicas sharing one PostgreSQL store: each fire is
//! claimed once in the store, so each runs once, whichever replica owns
//! its schedule.

use linkops::contract::ScheduleDetail;
use linkops_reconcilers::schedule::FireOutcome;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_run_each_fire_once() {
    let (server, database, store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;
    let fleet = TestFleet::start(2).unwrap();
    let (work, _data, a, b) =
        two_replicas(&server, &database, &database.url, &fleet, None, "30s").await;
    // Six schedules, known since just before this minute began and ending
    // just after: one fire each, due now (caught up if the minute passed).
    let now = jiff::Timestamp::now().as_millisecond();
    let minute = now - now.rem_euclid(60_000);
    let until = jiff::Timestamp::from_millisecond(minute + 1_000).unwrap();
    let names: Vec<String> = (0..6).map(|n| format!("minutely-{n}")).collect();
    support::as_the_cli(|| {
        for name in &names {
            store.schedule_since(name, minute - 10_000).unwrap();
        }
    });
    for name in &names {
        work.write(
            &format!("schedules/{name}.yaml"),
            &format!("name: {name}\nscript: talk\ntargets: {{tags: [test]}}\ncron: \"* * * * *\"\nzone: Europe/Berlin\ncatch_up: once\nuntil: {until}\n"),
        );
    }
    work.commit("six schedules");
    for name in &names {
        let fires = eventually("the fire's claim", || async {
            let detail: ScheduleDetail = a.get(&format!("/api/schedules/{name}")).await?;
            let started =
                (detail.fires.iter()).any(|f| matches!(f.outcome, FireOutcome::Started { .. }));
            started.then_some(detail.fires)
        })
        .await;
        assert_eq!(fires.len(), 1, "{name}: {fires:?}");
        // Both replicas read the same record.
        let seen_by_b: ScheduleDetail = b.get(&format!("/api/schedules/{name}")).await.unwrap();
        assert_eq!(seen_by_b.fires, fires, "{name}");
    }
    // One operation per schedule, each on both machines, whichever replica ran it.
    let operations: Vec<OperationView> = a.get("/api/operations").await.unwrap();
    let fired: BTreeMap<String, usize> = operations
        .iter()
        .map(|o| o.operation.requested_by.label())
        .filter(|label| label.starts_with("schedule:"))
        .fold(BTreeMap::new(), |mut counts, label| {
            *counts.entry(label).or_default() += 1;
            counts
        });
    assert_eq!(fired.len(), names.len(), "{fired:?}");
    assert!(fired.values().all(|n| *n == 1), "{fired:?}");
}
