//! The fleet's pictures against the real sshd fleet: the leader's samples
//! of machines by health and of a declared state's machines by standing, a
//! machine's reachability and latency, operation durations per script,
//! facts' distributions and the states grid by tag.

use std::time::Duration;

use linkops::contract::{FleetPicture, MachinePicture, StateByTag};
use serde_json::json;

use crate::support::{ADMIN, FleetSetup, eventually};

const SCRIPTS: &str = "scripts:\n  - {id: hello, name: Hello, body: echo hello}\n  - {id: present, name: Present, body: 'true', check: 'true'}\n";

#[tokio::test]
async fn the_daemon_draws_the_fleet_from_its_samples_histories_operations_and_facts() {
    let setup = FleetSetup::new(2, &[], SCRIPTS);
    let links = setup.fleet.inventory("test", &[], "health_interval: 1s");
    setup.work.write("links.yaml", &links);
    setup.work.write(
        "states/present.yaml",
        "id: present\nscript: present\ntargets: {tags: [test]}\ninterval: 10s\n",
    );
    setup.work.commit("two machines and a state");
    let mut config = setup.config();
    config.pictures.interval = Duration::from_secs(1);
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let ran = crate::operations::started(
        &daemon,
        &token,
        json!({"script": "hello", "targets": {"tags": ["test"]}}),
    )
    .await;
    crate::support::read_events(&daemon, &token, ran, None).await;

    // Sampled every second: the current hour soon has both machines
    // reachable and the state in sync on both, among its earlier samples.
    let fleet = eventually("the fleet's picture", || async {
        let picture: FleetPicture = daemon.read("/api/pictures/fleet", &token).await;
        let now = picture.availability.as_ref()?.last()?.values.clone()?;
        let state = picture.compliance.first()?.points.last()?.values.clone()?;
        let facts = picture.facts.iter().find(|d| d.fact == "os")?;
        let sampled = now["reachable"] > 0.0 && state.get("in_sync").is_some_and(|n| *n > 0.0);
        (sampled && facts.values.iter().map(|(_, n)| n).sum::<u32>() == 2).then_some(picture)
    })
    .await;
    assert_eq!(fleet.machines, 2);
    let availability = fleet.availability.as_ref().unwrap();
    assert_eq!(availability.len(), 24, "a day of hours");
    assert!(
        availability[..23].iter().all(|p| p.values.is_none()),
        "nothing sampled before the daemon ran"
    );
    let now = availability[23].values.as_ref().unwrap();
    let total: f64 = now.values().sum();
    assert!(
        (total - 2.0).abs() < 1e-9,
        "each sample counts both machines: {now:?}"
    );
    assert_eq!(fleet.compliance[0].state, "present");
    let hello = fleet
        .durations
        .iter()
        .find(|d| d.script == "hello")
        .unwrap();
    assert_eq!((hello.operations, hello.failed), (1, 0));
    assert!(hello.max_ms >= hello.median_ms);
    let week: FleetPicture = daemon.read("/api/pictures/fleet?span=week", &token).await;
    assert_eq!(week.availability.unwrap().len(), 168);
    let (status, _) = daemon
        .request(
            reqwest::Method::GET,
            "/api/pictures/fleet?span=year",
            &token,
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);

    let host1: MachinePicture = daemon.read("/api/pictures/machines/host1", &token).await;
    assert_eq!(host1.points.len(), 48);
    let checks: u32 = host1.points.iter().map(|p| p.checks).sum();
    let reachable: u32 = host1.points.iter().map(|p| p.reachable).sum();
    assert!(checks >= 1 && reachable >= 1, "{host1:?}");
    let answered = host1.points.iter().rev().find(|p| p.reachable > 0).unwrap();
    assert!(answered.latency_ms.is_some() && answered.latency_max_ms.is_some());
    let (status, _) = daemon
        .request(
            reqwest::Method::GET,
            "/api/pictures/machines/nope",
            &token,
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);

    let grid = eventually("the states grid", || async {
        let grid: Vec<StateByTag> = daemon.read("/api/pictures/states", &token).await;
        let in_sync = grid.first()?.tags.get("test")?.get("in_sync").copied();
        (in_sync == Some(2)).then_some(grid)
    })
    .await;
    assert_eq!(grid[0].state, "present");
    daemon.stop().await;
}
