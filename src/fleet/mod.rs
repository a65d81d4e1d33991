//! The fleet as operators see it: each machine of the applied inventory with
//! what was observed of it ([`MachineView`]), found, filtered and paged
//! (`GET /api/links`), and followed live ([`Fleet::follow`],
//! `GET /api/fleet/events`).

mod follow;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::facts;
use linkops_reconcilers::grant::{Place, Sight};
use linkops_reconcilers::machine::{Machine, MachineStatus};
use linkops_reconcilers::script::{ParamValue, Targets};
use linkops_reconcilers::suspension::Held;
use tokio::sync::watch;

use crate::contract::{ConditionView, MachineQuery, MachineView, at};
use crate::controller::Controller;
use crate::store::{self, Store};

pub use follow::FleetEvent;

/// The fleet's views. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    store: Store,
    controller: Controller,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
}

/// One page of machines a query asks for.
pub struct Page {
    /// How many machines match, over all pages.
    pub total: usize,
    /// The page's views, and one more when a next page exists.
    pub views: Vec<MachineView>,
}

/// How many machines' statuses a query that filters on them reads at once.
const STATUS_CHUNK: usize = 256;

impl Fleet {
    pub fn new(
        store: Store,
        controller: Controller,
        desired: watch::Receiver<Option<Arc<DesiredState>>>,
    ) -> Fleet {
        Fleet {
            store,
            controller,
            desired,
        }
    }

    /// A machine of the applied inventory.
    pub fn machine(&self, id: &str) -> Option<Machine> {
        let desired = self.desired.borrow().clone();
        desired.and_then(|d| d.machine(id).cloned())
    }

    /// The page of machines `query` asks for, at most `limit` (and one more).
    /// The inventory answers the tag and text filters and the total; statuses
    /// are read only for the page, unless the query filters on them: then a
    /// chunk at a time, only the page's views kept. Blocks: call it on the
    /// blocking pool.
    pub fn page(
        &self,
        query: &MachineQuery,
        sight: &Sight,
        limit: usize,
    ) -> Result<Page, store::Error> {
        let desired = self.desired.borrow().clone();
        let machines = desired.as_ref().map_or(&[][..], |d| d.machines.as_slice());
        let held = self.controller.held_now()?;
        let mut candidates = in_inventory(machines, query, sight);
        if let Some(Ok(wanted)) = query.where_.as_deref().map(facts::selector) {
            candidates = self.on_facts(candidates, wanted)?;
        }
        let (total, views) = paged(&candidates, query, limit, |machines| {
            self.views(machines, &held)
        })?;
        Ok(Page { total, views })
    }

    /// The views of the machines `query` asks for (paging aside) and
    /// `sight` sees, in id order.
    fn matching(
        &self,
        machines: &[Machine],
        query: &MachineQuery,
        sight: &Sight,
    ) -> Result<Vec<MachineView>, store::Error> {
        let held = self.controller.held_now()?;
        Ok(self
            .views(&in_inventory(machines, query, sight), &held)?
            .into_iter()
            .filter(|view| query.observed_matches(view))
            .collect())
    }

    /// Those of `candidates` whose facts are `wanted`, read
    /// [`STATUS_CHUNK`] machines at a time.
    fn on_facts<'m>(
        &self,
        candidates: Vec<&'m Machine>,
        wanted: BTreeMap<String, ParamValue>,
    ) -> Result<Vec<&'m Machine>, store::Error> {
        let selector = Targets {
            where_: wanted,
            ..Targets::default()
        };
        let mut kept = Vec::new();
        for chunk in candidates.chunks(STATUS_CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|m| m.id.clone()).collect();
            let matching: HashSet<String> = (self.store.facts_of(&ids)?.into_iter())
                .filter(|gathered| selector.facts_match(&gathered.facts))
                .map(|gathered| gathered.machine_id)
                .collect();
            kept.extend(chunk.iter().filter(|m| matching.contains(&m.id)));
        }
        Ok(kept)
    }

    /// The views of `machines`, with their statuses read in one transaction,
    /// suspended as `held` says.
    fn views(&self, machines: &[&Machine], held: &Held) -> Result<Vec<MachineView>, store::Error> {
        let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
        let mut statuses = self.store.machine_statuses(&ids)?;
        Ok(machines
            .iter()
            .map(|machine| view((*machine).clone(), statuses.remove(&machine.id), held))
            .collect())
    }
}

/// How many of `candidates` (the inventory's answer, in id order) `query`
/// asks for over all pages, and the views of its page: those after its
/// cursor, `limit` and one more (to tell whether a next page exists).
/// `views_of` makes views of a run of candidates; it is asked for the page
/// only, or — when the query filters on what was observed — for every
/// candidate [`STATUS_CHUNK`] at a time, so that no more views are held than
/// a chunk and the page, whatever the fleet.
fn paged<'m, E>(
    candidates: &[&'m Machine],
    query: &MachineQuery,
    limit: usize,
    mut views_of: impl FnMut(&[&'m Machine]) -> Result<Vec<MachineView>, E>,
) -> Result<(usize, Vec<MachineView>), E> {
    let after = |id: &String| query.after.as_ref().is_none_or(|after| id > after);
    let keep = limit.saturating_add(1);
    if !query.asks_observed() {
        let start = candidates.partition_point(|m| !after(&m.id));
        let end = candidates.len().min(start.saturating_add(keep));
        return Ok((candidates.len(), views_of(&candidates[start..end])?));
    }
    let (mut total, mut page) = (0, Vec::new());
    for chunk in candidates.chunks(STATUS_CHUNK) {
        for view in views_of(chunk)? {
            if !query.observed_matches(&view) {
                continue;
            }
            total += 1;
            if page.len() < keep && after(&view.spec.id) {
                page.push(view);
            }
        }
    }
    Ok((total, page))
}

/// The machines whose inventory entry `query` asks for (tag, text) and
/// `sight` sees, in id order.
fn in_inventory<'a>(
    machines: &'a [Machine],
    query: &MachineQuery,
    sight: &Sight,
) -> Vec<&'a Machine> {
    let inventory = query.inventory_filter();
    let mut selected: Vec<&Machine> = machines
        .iter()
        .filter(|m| inventory.matches(m) && sight.sees(Place::from(*m)))
        .collect();
    selected.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    selected
}

/// The view of one machine, from its status (none yet: unknown).
pub fn view(machine: Machine, status: Option<MachineStatus>, held: &Held) -> MachineView {
    let status = status.unwrap_or_else(|| MachineStatus::new(&machine.id));
    let suspended = held.holds(Some(&machine.id));
    machine_view(machine, status, suspended)
}

fn machine_view(machine: Machine, status: MachineStatus, suspended: bool) -> MachineView {
    MachineView {
        health: status.health,
        enrollment: status.enrollment,
        last_seen: status.last_seen_ms.and_then(at),
        checked_at: status.checked_at_ms.and_then(at),
        conditions: status
            .conditions
            .into_iter()
            .map(|condition| ConditionView {
                last_transition: at(condition.last_transition_ms),
                condition,
            })
            .collect(),
        revision: status.revision,
        suspended,
        spec: machine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkops_reconcilers::machine::Health;

    fn machines(count: usize) -> Vec<Machine> {
        (0..count)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "id": format!("m{i:05}"),
                    "name": format!("m{i:05}"),
                    "host": "127.0.0.1",
                    "port": 22,
                    "uuid": "7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935",
                }))
                .unwrap()
            })
            .collect()
    }

    /// Every third machine is reachable.
    fn view_of(machine: &Machine) -> MachineView {
        let mut status = MachineStatus::new(&machine.id);
        let number: usize = machine.id[1..].parse().unwrap();
        if number.is_multiple_of(3) {
            status.health = Health::Reachable { latency_ms: 1 };
        }
        machine_view(machine.clone(), status, false)
    }

    #[test]
    fn a_page_filtered_on_health_holds_a_chunk_and_its_page_whatever_the_fleet() {
        let fleet = machines(10_000);
        let candidates: Vec<&Machine> = fleet.iter().collect();
        let query = |after: Option<&str>| MachineQuery {
            health: Some("reachable".into()),
            after: after.map(str::to_owned),
            limit: Some(10),
            ..MachineQuery::default()
        };
        let mut asked = Vec::new();
        let (total, page) = paged(&candidates, &query(Some("m00100")), 10, |run| {
            asked.push(run.len());
            Ok::<_, ()>(run.iter().map(|m| view_of(m)).collect())
        })
        .unwrap();
        assert_eq!(total, 3_334, "counted over all pages");
        let ids: Vec<&str> = page.iter().map(|view| view.spec.id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"m00102"));
        assert_eq!(ids.len(), 11, "the page and one more, to tell a next page");
        assert!(asked.iter().all(|&run| run <= STATUS_CHUNK), "{asked:?}");
        assert_eq!(asked.iter().sum::<usize>(), 10_000);

        // Without a filter on statuses only the page's are read.
        let unfiltered = MachineQuery {
            health: None,
            ..query(Some("m00100"))
        };
        let mut asked = Vec::new();
        let (total, page) = paged(&candidates, &unfiltered, 10, |run| {
            asked.push(run.len());
            Ok::<_, ()>(run.iter().map(|m| view_of(m)).collect())
        })
        .unwrap();
        assert_eq!((total, page.len(), asked), (10_000, 11, vec![11]));
        assert_eq!(page[0].spec.id, "m00101");
    }
}
