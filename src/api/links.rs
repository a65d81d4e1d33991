//! `/api/links`: the machines of the fleet, as desired and as observed; and
//! `/api/fleet/events`, the same list followed live.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::machine::{Health, Machine, MachineStatus};
use linkops_reconcilers::operation::Operation;
use linkops_reconcilers::suspension::Held;
use tokio::sync::watch;

use super::auth::Authenticated;
use super::extract::{Json, Path, Query};
use super::{ApiError, AppState, at};
use crate::contract::{
    ConditionView, FleetChanges, FleetSnapshot, HealthPoint, MachineDetail, MachineQuery,
    MachineView, OperationSummary,
};
use crate::metrics::Open;
use crate::store::{Actor, Changed, HealthSample};
use linkops_reconcilers::role::Role;

/// Most machines one page holds.
const MAX_PAGE: usize = 1000;

/// `GET /api/links`
#[utoipa::path(get, path = "/api/links", tag = "machines", params(MachineQuery), responses((status = 200, description = "Machines of the applied inventory with health, enrollment and conditions, in id order, filtered and paged as asked", body = Vec<MachineView>, headers(("X-Total-Count" = u64, description = "How many machines match, over all pages"), ("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when there is one"))), (status = 422, description = "An unknown state, or a limit out of range; details.field names it", body = crate::contract::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Authenticated,
    Query(query): Query<MachineQuery>,
) -> Result<(HeaderMap, Json<Vec<MachineView>>), ApiError> {
    check_query(&query)?;
    // Thousands of statuses decoded: off the async runtime.
    crate::blocking::run(move || page(&state, &query))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
}

/// A page of `GET /api/links`, with its headers. The inventory answers the
/// tag and text filters and the total; statuses are read only for the page,
/// unless the query filters on them: then a chunk at a time, only the
/// page's views kept.
fn page(
    state: &AppState,
    query: &MachineQuery,
) -> Result<(HeaderMap, Json<Vec<MachineView>>), ApiError> {
    let desired = state.git.desired().borrow().clone();
    let machines = desired.as_ref().map_or(&[][..], |d| d.machines.as_slice());
    let limit = query.limit.unwrap_or(usize::MAX);
    let held = state.controller.held_now()?;
    let candidates = in_inventory(machines, query);
    let (total, matching) = paged(&candidates, query, limit, |machines| {
        views(state, machines, &held)
    })?;
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    if matching.len() > limit {
        let last = &matching[limit - 1].spec.id;
        let next = MachineQuery {
            after: Some(last.clone()),
            ..query.clone()
        };
        let link = format!(
            "</api/links?{}>; rel=\"next\"",
            serde_urlencoded::to_string(&next).unwrap_or_default()
        );
        if let Ok(link) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, link);
        }
    }
    Ok((headers, Json(matching.into_iter().take(limit).collect())))
}

/// How many machines' statuses a query that filters on them reads at once.
const STATUS_CHUNK: usize = 256;

/// How many of `candidates` (the inventory's answer, in id order) `query`
/// asks for over all pages, and the views of its page: those after its
/// cursor, `limit` and one more (to tell whether a next page exists).
/// `views_of` makes views of a run of candidates; it is asked for the page
/// only, or — when the query filters on what was observed — for every
/// candidate [`STATUS_CHUNK`] at a time, so that no more views are held than
/// a chunk and the page, whatever the fleet.
fn paged<'m>(
    candidates: &[&'m Machine],
    query: &MachineQuery,
    limit: usize,
    mut views_of: impl FnMut(&[&'m Machine]) -> Result<Vec<MachineView>, ApiError>,
) -> Result<(usize, Vec<MachineView>), ApiError> {
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

/// The machines whose inventory entry `query` asks for (tag, text), in id order.
fn in_inventory<'a>(machines: &'a [Machine], query: &MachineQuery) -> Vec<&'a Machine> {
    let inventory = query.inventory_filter();
    let mut selected: Vec<&Machine> = machines.iter().filter(|m| inventory.matches(m)).collect();
    selected.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    selected
}

/// The views of the machines `query` asks for (paging aside), in id order.
fn matching_views(
    state: &AppState,
    machines: &[Machine],
    query: &MachineQuery,
) -> Result<Vec<MachineView>, ApiError> {
    let held = state.controller.held_now()?;
    Ok(views(state, &in_inventory(machines, query), &held)?
        .into_iter()
        .filter(|view| query.observed_matches(view))
        .collect())
}

/// Refuses a state no machine can be in, and a page size out of range.
fn check_query(query: &MachineQuery) -> Result<(), ApiError> {
    let unknown = |field: &str, value: &str, names: &[&str]| ApiError::Unprocessable {
        field: field.into(),
        message: format!("no {field} state {value:?}; one of {}", names.join(", ")),
    };
    if let Some(health) = query.health.as_deref()
        && !Health::NAMES.contains(&health)
    {
        return Err(unknown("health", health, &Health::NAMES));
    }
    if let Some(enrollment) = query.enrollment.as_deref()
        && !Enrollment::NAMES.contains(&enrollment)
    {
        return Err(unknown("enrollment", enrollment, &Enrollment::NAMES));
    }
    if query
        .limit
        .is_some_and(|limit| !(1..=MAX_PAGE).contains(&limit))
    {
        return Err(ApiError::Unprocessable {
            field: "limit".into(),
            message: format!("limit must be 1 to {MAX_PAGE}; page on with `after`"),
        });
    }
    Ok(())
}

/// The views of `machines`, with their statuses read in one transaction,
/// suspended as `held` says.
fn views(
    state: &AppState,
    machines: &[&Machine],
    held: &Held,
) -> Result<Vec<MachineView>, ApiError> {
    let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
    let mut statuses = state.store.machine_statuses(&ids)?;
    Ok(machines
        .iter()
        .map(|machine| view((*machine).clone(), statuses.remove(&machine.id), held))
        .collect())
}

/// How long a burst of changes is gathered into one event: a sync touches
/// every machine, and a sweep checks them one after another.
const COALESCE: Duration = Duration::from_millis(200);

/// `GET /api/fleet/events`: the fleet live, as Server-Sent Events.
#[utoipa::path(get, path = "/api/fleet/events", tag = "machines", params(MachineQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")), responses((status = 200, description = "Server-Sent Events: `snapshot` (FleetSnapshot: every machine asked for, as `GET /api/links` answers without paging) first, then `changes` (FleetChanges: machines whose health state, enrollment, conditions, revision or suspension changed — not mere check times — and ids no longer among those asked for); changes within 200 ms make one event. Each event's id resumes: reconnecting with Last-Event-ID sends only what changed since, or a new snapshot when that cannot be told (a restart, a new revision, a client too far behind). EventSource cannot send headers: pass ?access_token=. The stream ends when the daemon stops.", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: HeaderMap,
    Query(query): Query<MachineQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    check_query(&query)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(FleetPosition::parse);
    let follower = FleetFollower {
        revoked: Box::pin(state.auth.revoked(caller.1, Role::Viewer)),
        version: state.store.fleet_version(),
        desired: state.git.desired(),
        resume,
        draining: state.draining.clone(),
        incarnation: state.store.fleet_incarnation(),
        _open: Open::new(&state.metrics.sse_clients),
        views: Some(FleetViews {
            query: MachineQuery {
                limit: None,
                after: None,
                ..query
            },
            position: None,
            sent: HashMap::new(),
            sent_all: false,
            state,
        }),
    };
    Ok(
        Sse::new(futures::stream::unfold(follower, FleetFollower::next))
            .keep_alive(KeepAlive::default()),
    )
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
    /// Completes when the user is deleted or the token revoked: the stream ends.
    revoked: futures::future::BoxFuture<'static, ()>,
    draining: tokio_util::sync::CancellationToken,
    incarnation: u32,
    _open: Open,
}

/// What one client following the fleet has been sent, and the building of
/// what it is sent next (store reads and JSON: off the async runtime).
struct FleetViews {
    state: AppState,
    query: MachineQuery,
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
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
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
                Ok(Some(event)) => return Some((Ok(event), self)),
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(?error, "the fleet stream could not read the machines");
                    return None;
                }
            }
        }
    }

    /// Waits for a change, then gathers the burst; false when the stream ends.
    async fn wait(&mut self) -> bool {
        tokio::select! {
            _ = self.draining.cancelled() => return false,
            () = &mut self.revoked => return false,
            changed = self.version.changed() => if changed.is_err() { return false },
            changed = self.desired.changed() => if changed.is_err() { return false },
        }
        tokio::select! {
            _ = self.draining.cancelled() => return false,
            () = &mut self.revoked => return false,
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
    ) -> Result<Option<Event>, ApiError> {
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
    ) -> Result<Option<Event>, ApiError> {
        if from.revision != now.revision {
            return self.snapshot(desired, now).map(Some);
        }
        let changed = match self.state.store.fleet_changed_since(from.version) {
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
            .filter(|m| changed.contains(&m.id))
            .collect();
        let mut changes = FleetChanges {
            changed: Vec::new(),
            removed: Vec::new(),
        };
        let held = self.state.controller.held_now()?;
        for view in views(&self.state, &in_inventory, &held)? {
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
            false => Some(
                Event::default()
                    .event("changes")
                    .id(position.to_string())
                    .json_data(&changes)
                    .expect("fleet changes serialise"),
            ),
        };
        self.position = Some(position);
        Ok(event)
    }

    fn snapshot(
        &mut self,
        desired: Option<Arc<DesiredState>>,
        position: FleetPosition,
    ) -> Result<Event, ApiError> {
        let machines = desired.as_ref().map_or(&[][..], |d| d.machines.as_slice());
        let machines = matching_views(&self.state, machines, &self.query)?;
        self.sent = machines
            .iter()
            .map(|view| (view.spec.id.clone(), view.shown()))
            .collect();
        self.sent_all = true;
        let event = Event::default()
            .event("snapshot")
            .id(position.to_string())
            .json_data(FleetSnapshot { machines })
            .expect("machine views serialise");
        self.position = Some(position);
        Ok(event)
    }
}

impl From<Operation> for OperationSummary {
    fn from(operation: Operation) -> Self {
        OperationSummary {
            id: operation.id,
            script: operation.script,
            state: operation.state,
            created_at: at(operation.created_at_ms),
        }
    }
}

impl From<HealthSample> for HealthPoint {
    fn from(sample: HealthSample) -> Self {
        HealthPoint {
            at: at(sample.at_ms),
            health: sample.health,
            enrolled: sample.enrolled,
        }
    }
}

/// `GET /api/links/{id}`
#[utoipa::path(get, path = "/api/links/{id}", tag = "machines", params(("id" = String, Path, description = "Machine id")), responses((status = 200, description = "A machine with recent operations and health history", body = MachineDetail)))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<MachineDetail>, ApiError> {
    let machine = desired_machine(&state, &id)?;
    let held = state.controller.held().await?;
    let (status, operations, samples) = state
        .store
        .run(move |store| {
            Ok((
                store.machine_status(&id)?,
                store.operations_for_machine(&id, 10)?,
                store.health_history(&id, 50)?,
            ))
        })
        .await?;
    Ok(Json(MachineDetail {
        machine: view(machine, status, &held),
        recent_operations: operations.into_iter().map(Into::into).collect(),
        health_history: samples.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /api/links/{id}/verify`: checks reachability and enrollment now and answers with the result.
#[utoipa::path(post, path = "/api/links/{id}/verify", tag = "machines", params(("id" = String, Path, description = "Machine id")), responses((status = 200, description = "Checked now: reachability and enrollment (operator)", body = MachineView)))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<MachineView>, ApiError> {
    let user = caller.require(Role::Operator)?;
    let machine = desired_machine(&state, &id)?;
    if let Some(reason) = state.controller.held().await?.refusal(Some(&id)) {
        return Err(ApiError::Conflict(format!("nothing was checked: {reason}")));
    }
    // Audited by the check itself, in its record's transaction.
    let by = Actor::user(&user.name);
    state.controller.verify(&id, Some(&by)).await?;
    let held = state.controller.held().await?;
    let status = state
        .store
        .run(move |store| store.machine_status(&id))
        .await?;
    Ok(Json(view(machine, status, &held)))
}

fn desired_machine(state: &AppState, id: &str) -> Result<Machine, ApiError> {
    let desired = state.git.desired().borrow().clone();
    desired
        .and_then(|d| d.machine(id).cloned())
        .ok_or_else(|| ApiError::NotFound(format!("no machine {id:?} in the applied inventory")))
}

/// The view of one machine, from its status (none yet: unknown).
fn view(machine: Machine, status: Option<MachineStatus>, held: &Held) -> MachineView {
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
            Ok(run.iter().map(|m| view_of(m)).collect())
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
            Ok(run.iter().map(|m| view_of(m)).collect())
        })
        .unwrap();
        assert_eq!((total, page.len(), asked), (10_000, 11, vec![11]));
        assert_eq!(page[0].spec.id, "m00101");
    }
}
