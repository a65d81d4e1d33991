//! The fleet's pictures: the leader samples machines by health and each
//! declared state's machines by standing into hourly rollups, and the API's
//! pictures are aggregated here from them, from machines' health histories,
//! operations and facts — a fleet of 10,000 machines is a few hundred
//! numbers, never 10,000 series. Blocking functions: call them off the runtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{Place, Sight};
use linkops_reconcilers::machine::Machine;
use linkops_reconcilers::picture::{self, Check, Span};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::contract::{FleetPicture, MachinePicture, StateByTag, StateCompliance};
use crate::store::{self, Store};

/// How many machines' statuses or facts one read takes.
const CHUNK: usize = 256;

/// Samples the fleet every `interval` (the first once a revision is
/// applied), as the leader.
pub async fn sample(
    store: Store,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut desired = desired;
    loop {
        // Nothing is sampled before the first applied revision: it comes at once.
        let applied = tokio::select! {
            () = stop.cancelled() => return,
            applied = desired.wait_for(Option::is_some) => match applied {
                Ok(applied) => applied.clone(),
                Err(_) => return,
            },
        };
        if let Some(applied) = applied {
            let store = store.clone();
            let sampled =
                crate::blocking::run(move || sample_now(&store, &applied, store::now_ms())).await;
            match sampled {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot sample the fleet's pictures"),
                Err(error) => tracing::warn!(%error, "the pictures' sampling stopped"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One sample: the inventory's machines by health, each declared state's
/// machines by standing.
fn sample_now(store: &Store, desired: &DesiredState, now_ms: i64) -> store::Result<()> {
    let mut health: BTreeMap<String, u64> = ["reachable", "unreachable", "unknown"]
        .into_iter()
        .map(|name| (name.to_owned(), 0))
        .collect();
    let ids: Vec<String> = desired.machines.iter().map(|m| m.id.clone()).collect();
    for chunk in ids.chunks(CHUNK) {
        let statuses = store.machine_statuses(chunk)?;
        for id in chunk {
            let name = statuses.get(id).map_or("unknown", |s| s.health.name());
            *health.entry(name.to_owned()).or_default() += 1;
        }
    }
    let mut samples = vec![(picture::AVAILABILITY.to_owned(), health)];
    for status in store.state_statuses()? {
        if !desired.states.contains_key(&status.state_id) {
            continue;
        }
        let counts = match serde_json::to_value(status.counts) {
            Ok(serde_json::Value::Object(counts)) => counts,
            _ => continue,
        };
        let counts = (counts.into_iter())
            .map(|(standing, n)| (standing, n.as_u64().unwrap_or(0)))
            .collect();
        samples.push((picture::compliance_series(&status.state_id), counts));
    }
    store.add_samples(now_ms, &samples)
}

/// The fleet's picture over `span` as `sight` may see it.
pub fn fleet(
    store: &Store,
    desired: &DesiredState,
    sight: &Sight,
    span: Span,
    now_ms: i64,
) -> store::Result<FleetPicture> {
    let since = now_ms - span.ms();
    let seen: Vec<&Machine> = (desired.machines.iter())
        .filter(|m| sight.sees(Place::from(*m)))
        .collect();
    // The rollups count every machine: they are shown to whole-fleet callers only.
    let whole = matches!(sight, Sight::Fleet);
    let availability = match whole {
        true => Some(picture::hourly(
            &store.rollups(picture::AVAILABILITY, since)?,
            span,
            now_ms,
        )),
        false => None,
    };
    let mut compliance = Vec::new();
    if whole {
        for state in desired.states.keys() {
            let rollups = store.rollups(&picture::compliance_series(state), since)?;
            compliance.push(StateCompliance {
                state: state.clone(),
                points: picture::hourly(&rollups, span, now_ms),
            });
        }
    }
    let operations = store.operations_since(since)?;
    let seen_ids: std::collections::HashSet<&str> = seen.iter().map(|m| m.id.as_str()).collect();
    let visible = (operations.iter())
        .filter(|o| whole || o.machines.iter().any(|m| seen_ids.contains(m.as_str())));
    let durations = picture::durations(visible, since);
    // A machine never gathered from (not enrolled yet) counts as `unknown`.
    let mut facts = Vec::with_capacity(seen.len());
    let ids: Vec<String> = seen.iter().map(|m| m.id.clone()).collect();
    for chunk in ids.chunks(CHUNK) {
        let gathered = store.facts_of(chunk)?;
        let never = chunk.len() - gathered.len();
        facts.extend(gathered.into_iter().map(|gathered| gathered.facts));
        facts.extend(std::iter::repeat_with(Default::default).take(never));
    }
    Ok(FleetPicture {
        span,
        machines: u32::try_from(seen.len()).unwrap_or(u32::MAX),
        availability,
        compliance,
        durations,
        facts: picture::distributions(&facts),
    })
}

/// One machine's reachability and latency over `span`.
pub fn machine(
    store: &Store,
    machine_id: &str,
    span: Span,
    now_ms: i64,
) -> store::Result<MachinePicture> {
    let checks: Vec<Check> = (store.health_history(machine_id, usize::MAX)?.into_iter())
        .map(|sample| Check {
            at_ms: sample.at_ms,
            latency_ms: match sample.health {
                linkops_reconcilers::machine::Health::Reachable { latency_ms } => Some(latency_ms),
                _ => None,
            },
        })
        .collect();
    Ok(MachinePicture {
        machine: machine_id.to_owned(),
        span,
        points: picture::machine_series(&checks, span, now_ms),
    })
}

/// Each declared state's machines that `sight` sees, by tag then standing.
pub fn states_by_tag(
    store: &Store,
    desired: &DesiredState,
    sight: &Sight,
) -> store::Result<Vec<StateByTag>> {
    let mut standings: BTreeMap<String, Vec<(String, &'static str)>> = BTreeMap::new();
    store.scan_state_targets(|target| {
        let seen = desired
            .machine(&target.machine_id)
            .is_some_and(|m| sight.sees(Place::from(m)));
        if seen && desired.states.contains_key(&target.state_id) {
            (standings.entry(target.state_id))
                .or_default()
                .push((target.machine_id, target.standing.name()));
        }
    })?;
    Ok(desired
        .states
        .keys()
        .map(|state| {
            let of_state = standings.get(state).map_or(&[][..], Vec::as_slice);
            let pairs = of_state
                .iter()
                .map(|(machine, standing)| (machine.as_str(), *standing));
            StateByTag {
                state: state.clone(),
                tags: picture::by_tag(pairs, |id| desired.machine(id)),
            }
        })
        .collect())
}
