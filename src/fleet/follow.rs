//! The fleet followed live: a snapshot of the machines a client asks for,
//! then what changed of them, each event with a position the client can
//! resume from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{Place, Sight};
use linkops_reconcilers::machine::Machine;
use tokio::sync::watch;

use super::Fleet;
use crate::contract::{FleetChanges, FleetSnapshot, MachineQuery};
use crate::store::{self, Changed};

/// How long a burst of changes is gathered into one event: a sync touches
/// every machine, and a sweep checks them one after another.
const COALESCE: Duration = Duration::from_millis(200);

/// What a client following the fleet is sent; `id` is the position to resume from.
pub enum FleetEvent {
    /// Every machine asked for.
    Snapshot { id: String, snapshot: FleetSnapshot },
    /// Machines whose shown state changed, and ids no longer among those asked for.
    Changes { id: String, changes: FleetChanges },
}

impl Fleet {
    /// The machines `query` asks for (paging aside) and `sight` sees, as a snapshot and then
    /// their changes, gathered over [`COALESCE`]. A client resuming after
    /// event `resume` gets only what changed since, when that can be told.
    /// Ends when `until` completes, or when the store cannot be read.
    pub fn follow<Until: Future<Output = ()> + Send + 'static>(
        &self,
        query: MachineQuery,
        sight: Sight,
        resume: Option<&str>,
        until: Until,
    ) -> impl Stream<Item = FleetEvent> + Send + use<Until> {
        let follower = FleetFollower {
            until: Box::pin(until),
            version: self.store.fleet_version(),
            desired: self.desired.clone(),
            resume: resume.and_then(FleetPosition::parse),
            incarnation: self.store.fleet_incarnation(),
            views: Some(FleetViews {
                query: MachineQuery {
                    limit: None,
                    after: None,
                    ..query
                },
                sight,
                position: None,
                sent: HashMap::new(),
                sent_all: false,
                fleet: self.clone(),
            }),
        };
        futures::stream::unfold(follower, FleetFollower::next)
    }
}

/// Where a client following the fleet stands: the event id it last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FleetPosition {
    incarnation: u32,
    version: u64,
    /// The revision whose inventory it has.
    revision: String,
}

impl FleetPosition {
    fn parse(id: &str) -> Option<FleetPosition> {
        let mut parts = id.splitn(3, '.');
        Some(FleetPosition {
            incarnation: parts.next()?.parse().ok()?,
            version: parts.next()?.parse().ok()?,
            revision: parts.next()?.to_owned(),
        })
    }
}

impl std::fmt::Display for FleetPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.incarnation, self.version, self.revision)
    }
}

/// One client following the fleet: the waiting, on the async runtime.
struct FleetFollower {
    /// Builds the events; lent to the blocking pool for each one.
    views: Option<FleetViews>,
    version: watch::Receiver<u64>,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
    /// Where a reconnecting client says it stood.
    resume: Option<FleetPosition>,
    /// Completes when the stream is to end (the daemon stops, the token is revoked).
    until: BoxFuture<'static, ()>,
    incarnation: u32,
}

/// What one client following the fleet has been sent, and the building of
/// what it is sent next (store reads: off the async runtime).
struct FleetViews {
    fleet: Fleet,
    query: MachineQuery,
    /// The machines its grants let the client see.
    sight: Sight,
    /// What the client has seen; `None` before the first event.
    position: Option<FleetPosition>,
    /// What each machine sent looked like (`MachineView::shown`): a check
    /// that flips a condition and back, or moves only times, is not sent.
    sent: HashMap<String, u64>,
    /// `sent` holds every machine the client has (since a snapshot); after a
    /// resume it does not, so a machine that stopped matching is always removed.
    sent_all: bool,
}

impl FleetFollower {
    /// The next event; `None` ends the stream.
    async fn next(mut self) -> Option<(FleetEvent, Self)> {
        loop {
            let started = self.views.as_ref()?.position.is_some();
            if started && !self.wait().await {
                return None;
            }
            let desired = self.desired.borrow().clone();
            let now = FleetPosition {
                incarnation: self.incarnation,
                version: *self.version.borrow(),
                revision: desired
                    .as_ref()
                    .map(|d| d.revision.clone())
                    .unwrap_or_default(),
            };
            let resume = self.resume.take();
            let mut views = self.views.take()?;
            let (views, event) = crate::blocking::run(move || {
                let event = match views.position.take() {
                    None => views.first(resume, desired, now),
                    Some(position) => views.after(position, desired, now),
                };
                (views, event)
            })
            .await
            .ok()?;
            self.views = Some(views);
            match event {
                Ok(Some(event)) => return Some((event, self)),
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "the fleet stream could not read the machines");
                    return None;
                }
            }
        }
    }

    /// Waits for a change, then gathers the burst; false when the stream ends.
    async fn wait(&mut self) -> bool {
        tokio::select! {
            () = &mut self.until => return false,
            changed = self.version.changed() => if changed.is_err() { return false },
            changed = self.desired.changed() => if changed.is_err() { return false },
        }
        tokio::select! {
            () = &mut self.until => return false,
            _ = tokio::time::sleep(COALESCE) => {}
        }
        self.version.mark_unchanged();
        self.desired.mark_unchanged();
        true
    }
}

impl FleetViews {
    /// The first event: what changed since a reconnecting client's position
    /// when that can be told, else a snapshot.
    fn first(
        &mut self,
        resume: Option<FleetPosition>,
        desired: Option<Arc<DesiredState>>,
        now: FleetPosition,
    ) -> Result<Option<FleetEvent>, store::Error> {
        if let Some(from) = resume
            && from.incarnation == now.incarnation
            && from.revision == now.revision
        {
            return self.after(from, desired, now);
        }
        self.snapshot(desired, now).map(Some)
    }

    /// What changed after `from`; `None` when nothing the client sees did.
    fn after(
        &mut self,
        from: FleetPosition,
        desired: Option<Arc<DesiredState>>,
        now: FleetPosition,
    ) -> Result<Option<FleetEvent>, store::Error> {
        if from.revision != now.revision {
            return self.snapshot(desired, now).map(Some);
        }
        let changed = match self.fleet.store.fleet_changed_since(from.version) {
            Some((_, Changed::Machines(ids))) => ids,
            _ => return self.snapshot(desired, now).map(Some),
        };
        let position = FleetPosition {
            version: now.version.max(from.version),
            ..now
        };
        let machines = desired.as_ref().map_or(&[][..], |d| d.machines.as_slice());
        let in_inventory: Vec<&Machine> = machines
            .iter()
            .filter(|m| changed.contains(&m.id) && self.sight.sees(Place::from(*m)))
            .collect();
        let mut changes = FleetChanges {
            changed: Vec::new(),
            removed: Vec::new(),
        };
        let held = self.fleet.controller.held_now()?;
        for view in self.fleet.views(&in_inventory, &held)? {
            let id = view.spec.id.clone();
            if !self.query.matches(&view) {
                if self.sent.remove(&id).is_some() || !self.sent_all {
                    changes.removed.push(id);
                }
                continue;
            }
            let shown = view.shown();
            if self.sent.insert(id, shown) != Some(shown) {
                changes.changed.push(view);
            }
        }
        let event = match changes.changed.is_empty() && changes.removed.is_empty() {
            true => None,
            false => Some(FleetEvent::Changes {
                id: position.to_string(),
                changes,
            }),
        };
        self.position = Some(position);
        Ok(event)
    }

    fn snapshot(
        &mut self,
        desired: Option<Arc<DesiredState>>,
        position: FleetPosition,
    ) -> Result<FleetEvent, store::Error> {
        let machines = desired.as_ref().map_or(&[][..], |d| d.machines.as_slice());
        let machines = self.fleet.matching(machines, &self.query, &self.sight)?;
        self.sent = machines
            .iter()
            .map(|view| (view.spec.id.clone(), view.shown()))
            .collect();
        self.sent_all = true;
        let event = FleetEvent::Snapshot {
            id: position.to_string(),
            snapshot: FleetSnapshot { machines },
        };
        self.position = Some(position);
        Ok(event)
    }
}
