//! A declared state on every machine of the simulated fleet: a check
//! (`test -f`) that finds every machine drifted, an apply (`touch`) rolled out
//! with a canary and batches of 500, then a cycle of checks every 60 s.
//!
//! Figures: how soon the state's counts show every machine (`pending` before
//! its first wave), how soon the fleet converges, whether each machine was
//! applied exactly once, the longest gap between a machine's two checks
//! (interval and jitter) over three cycles, the daemon's CPU over them and
//! its memory after each (does it creep?).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use linkops::contract::{StateDetail, StateView};
use testbed::WorkRepo;
use testbed::measure::{cpu_time, status_kib};
use testbed::simulated::Spec;

use crate::common;

/// The state's file: every machine, its check every minute, a canary then 500 at a time.
const STATE: &str = "id: bench\nscript: touched\ntargets: {tags: [bench]}\ninterval: 1m\nrollout: {canary: 1, batch: 500, max_failures: 50}\n";

/// Cycles of checks measured after the rollout.
const CYCLES: usize = 3;

/// Its machines read per page of `GET /api/states/bench`.
const PAGE: usize = 1000;

/// What the state's rollout and its next cycle measured.
pub struct StateFigures {
    /// From the push until the counts name every selected machine.
    pub counted: Duration,
    /// From the push until every reachable machine is in sync.
    pub converged: Duration,
    /// Applies that succeeded, and the machines that could take one.
    pub applied: (u32, usize),
    /// The gaps between a machine's two checks over the cycles: p50, p99, longest.
    pub gaps: [Duration; 3],
    pub cpu_per_check: Duration,
    /// The daemon's RSS after each cycle.
    pub rss_kib: Vec<u64>,
}

/// Commits the state, pushes it, and follows the rollout and the next cycle of checks.
pub async fn rollout_and_cycle(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    repo: &WorkRepo,
    spec: &Spec,
    pid: u32,
) -> StateFigures {
    let reachable = (0..spec.count)
        .filter(|&i| !spec.is_down(i) && !spec.is_rekeyed(i))
        .count();
    repo.write("states/bench.yaml", STATE);
    let revision = repo.commit("a state on every machine");
    let synced = Instant::now();
    crate::push(client, url, &revision, "state").await;
    let mut counted = None;
    let converged = loop {
        let Some(state) = state(client, url, token).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let counts = state.counts;
        let named = counts.pending
            + counts.in_sync
            + counts.drifted
            + counts.applying
            + counts.failed
            + counts.held
            + counts.check_error;
        if counted.is_none() && named as usize == spec.count {
            counted = Some(synced.elapsed());
        }
        if counts.in_sync as usize >= reachable {
            break synced.elapsed();
        }
        assert!(
            state.halted.is_none(),
            "the rollout halted: {:?}",
            state.halted
        );
        assert!(
            synced.elapsed() < Duration::from_secs(600),
            "not converged in 600 s: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let progress = (state(client, url, token).await)
        .expect("the state converged")
        .progress;
    println!(
        "{} machines, a state on each: counted after {:?}, converged after {converged:?}, {} applies for {reachable} reachable machines",
        spec.count, counted, progress.succeeded
    );

    // The next cycles: every machine checked again within its interval and
    // jitter each time, and the daemon's memory after each.
    let cpu_before = cpu_time(pid);
    let mut gaps = Vec::new();
    let mut checks = 0;
    let mut rss_kib = Vec::new();
    let mut first = checked_at(client, url, token).await;
    for cycle in 1..=CYCLES {
        let (next, cycle_gaps) = next_cycle(client, url, token, &first).await;
        checks += cycle_gaps.len();
        gaps.extend(cycle_gaps);
        rss_kib.push(status_kib(pid, "VmRSS:"));
        println!(
            "{} machines, a state on each: cycle {cycle}, {} of {} checked again, RSS {} MiB",
            spec.count,
            next.len(),
            first.len(),
            rss_kib.last().copied().unwrap_or_default() / 1024
        );
        first = next;
    }
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    gaps.sort();
    let at = |q: f64| gaps[((gaps.len() - 1) as f64 * q) as usize];
    // The health sweep runs beside it: a state check and a health check per machine.
    let checks = (2 * checks).max(1) as u32;
    StateFigures {
        counted: counted.unwrap_or(converged),
        converged,
        applied: (progress.succeeded, reachable),
        gaps: [at(0.5), at(0.99), at(1.0)],
        cpu_per_check: cpu / checks,
        rss_kib,
    }
}

/// Waits a cycle, then until every machine of `first` was checked again
/// (or a minute more): the latest check times, and the gaps.
async fn next_cycle(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    first: &BTreeMap<String, jiff::Timestamp>,
) -> (BTreeMap<String, jiff::Timestamp>, Vec<Duration>) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = checked_at(client, url, token).await;
        let gaps: Vec<Duration> = (first.iter())
            .filter_map(|(id, before)| {
                let after = now.get(id).filter(|after| *after > before)?;
                Duration::try_from(after.duration_since(*before)).ok()
            })
            .collect();
        if gaps.len() == first.len() || Instant::now() > deadline {
            return (now, gaps);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The state as the API shows it; `None` before the daemon has applied its revision.
async fn state(client: &reqwest::Client, url: &str, token: &str) -> Option<StateView> {
    let answer = client
        .get(format!("{url}/api/states/bench?limit=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    if answer.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(answer.status().is_success(), "{}", answer.status());
    Some(answer.json::<StateDetail>().await.unwrap().state)
}

/// When each machine's latest check of the state ran, paged as the console reads it.
async fn checked_at(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> BTreeMap<String, jiff::Timestamp> {
    let mut at = BTreeMap::new();
    let mut page_url = format!("{url}/api/states/bench?limit={PAGE}");
    loop {
        let page: StateDetail = common::get_json(client, &page_url, token).await;
        let Some(last) = page.machines.last() else {
            return at;
        };
        page_url = format!(
            "{url}/api/states/bench?limit={PAGE}&after={}",
            last.machine_id
        );
        for machine in page.machines {
            if let Some(check) = machine.check.and_then(|check| check.at) {
                at.insert(machine.machine_id, check);
            }
        }
    }
}
