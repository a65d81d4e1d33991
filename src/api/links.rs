//! `/api/links`: the machines of the fleet, as desired and as observed; and
//! `/api/fleet/events`, the same list followed live.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::facts;
use linkops_reconcilers::machine::{Health, Machine};
use linkops_reconcilers::operation::Operation;

use super::auth::Authenticated;
use super::extract::{Json, Path, Query};
use super::{ApiError, AppState, at};
use crate::contract::{
    FactsQuery, FactsView, FleetEventsQuery, FleetRowChanges, FleetRows, FleetShape,
    FleetStreamEvent, HealthPoint, MachineDetail, MachineQuery, MachineRow, MachineView,
    OperationSummary,
};
use crate::fleet::{self, FleetEvent, Page};
use crate::metrics::Open;
use crate::store::{Actor, HealthSample};
use linkops_reconcilers::grant::{Need, Place};

/// Most machines one page holds.
pub(super) const MAX_PAGE: usize = 1000;
/// A machine's latest fact changes its detail shows.
const FACT_CHANGES_SHOWN: usize = 20;

/// `GET /api/links`
#[utoipa::path(get, path = "/api/links", tag = "machines", params(MachineQuery), responses((status = 200, description = "Machines of the applied inventory with health, enrollment and conditions, in id order, filtered and paged as asked", body = Vec<MachineView>, headers(("X-Total-Count" = u64, description = "How many machines match, over all pages"), ("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when there is one"))), (status = 422, description = "An unknown state, or a limit out of range; details.field names it", body = crate::contract::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
    Query(query): Query<MachineQuery>,
) -> Result<(HeaderMap, Json<Vec<MachineView>>), ApiError> {
    check_query(&query)?;
    let sight = caller.reach(&state).sight().clone();
    let limit = query.limit.unwrap_or(usize::MAX);
    // Thousands of statuses decoded: off the async runtime.
    let fleet = state.fleet.clone();
    let asked = query.clone();
    let Page { total, mut views } = crate::blocking::run(move || fleet.page(&asked, &sight, limit))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    if views.len() > limit {
        views.truncate(limit);
        let next = MachineQuery {
            after: views.last().map(|view| view.spec.id.clone()),
            ..query
        };
        link_next(&mut headers, "/api/links", &next);
    }
    Ok((headers, Json(views)))
}

/// `Link: <path?next>; rel="next"`: where the next page of a paged answer is.
pub(super) fn link_next(headers: &mut HeaderMap, path: &str, next: &impl serde::Serialize) {
    let query = serde_urlencoded::to_string(next).unwrap_or_default();
    if let Ok(link) = HeaderValue::from_str(&format!("<{path}?{query}>; rel=\"next\"")) {
        headers.insert(header::LINK, link);
    }
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
    if let Some(Err(problem)) = query.where_.as_deref().map(facts::selector) {
        return Err(ApiError::Unprocessable {
            field: "where".into(),
            message: format!("where: {problem}"),
        });
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

/// `GET /api/facts`: the facts of the machines the caller sees, a page at a time.
#[utoipa::path(get, path = "/api/facts", tag = "machines", params(FactsQuery), responses((status = 200, description = "Each machine's facts as last gathered (machines never gathered from are left out), in machine id order; `Link` names the next page", body = Vec<FactsView>, headers(("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when there is one"))), (status = 422, description = "A limit out of range", body = crate::contract::ErrorBody)))]
pub async fn facts(
    State(state): State<AppState>,
    caller: Authenticated,
    Query(query): Query<FactsQuery>,
) -> Result<(HeaderMap, Json<Vec<FactsView>>), ApiError> {
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Unprocessable {
            field: "limit".into(),
            message: format!("limit must be 1 to {MAX_PAGE}; page on with `after`"),
        });
    }
    let reach = caller.reach(&state);
    let desired = state.git.desired().borrow().clone();
    let mut ids: Vec<String> = (desired.iter().flat_map(|d| d.machines.iter()))
        .filter(|m| query.tag.as_ref().is_none_or(|tag| m.tags.contains(tag)))
        .filter(|m| query.after.as_ref().is_none_or(|after| &m.id > after))
        .filter(|m| reach.sight().sees(Place::from(*m)))
        .map(|m| m.id.clone())
        .collect();
    ids.sort_unstable();
    let more = ids.len() > limit;
    ids.truncate(limit);
    let mut headers = HeaderMap::new();
    if more {
        let next = FactsQuery {
            after: ids.last().cloned(),
            ..query
        };
        link_next(&mut headers, "/api/facts", &next);
    }
    let gathered = state.store.run(move |store| store.facts_of(&ids)).await?;
    let views = (gathered.into_iter())
        .map(|facts| FactsView::of(facts, Vec::new()))
        .collect();
    Ok((headers, Json(views)))
}

/// `GET /api/fleet/events`: the fleet live, as Server-Sent Events.
#[utoipa::path(get, path = "/api/fleet/events", tag = "machines", params(MachineQuery, FleetEventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")), responses((status = 200, description = "Server-Sent Events: `snapshot` (FleetSnapshot: every machine asked for, as `GET /api/links` answers without paging) first, then `changes` (FleetChanges: machines whose health state, enrollment, conditions, revision or suspension changed — not mere check times — and ids no longer among those asked for); with `shape=rows`, FleetRows and FleetRowChanges instead, each machine a MachineRow (what a table of the fleet shows, about a fifth of the bytes); changes within 200 ms make one event. Each event's id resumes: reconnecting with Last-Event-ID sends only what changed since, or a new snapshot when that cannot be told (a restart, a new revision, a client too far behind). EventSource cannot send headers: pass ?access_token=. The stream ends when the daemon stops.", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: HeaderMap,
    Query(query): Query<MachineQuery>,
    Query(FleetEventsQuery { shape }): Query<FleetEventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    check_query(&query)?;
    if query.where_.is_some() {
        return Err(ApiError::Unprocessable {
            field: "where".into(),
            message: "`where` filters GET /api/links only: facts are gathered on an interval, not followed live; follow by tag, health, enrollment or q".into(),
        });
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let sight = caller.reach(&state).sight().clone();
    // The stream shows what the grants saw when it opened: when that changes
    // (or the user is deleted, or a password change revoked their token) it
    // ends, and the client's reconnect gets a snapshot of what it sees now.
    // All end when the daemon stops.
    let opened = sight.clone();
    let revoked = caller.lost(&state, move |held| held.sight() == opened);
    let draining = state.draining.clone().cancelled_owned();
    let until = async move {
        tokio::select! {
            () = revoked => {}
            () = draining => {}
        }
    };
    let open = Open::new(&state.metrics.sse_clients);
    let events = state
        .fleet
        .follow(query, sight, resume, until)
        .map(move |event| {
            let _open = &open;
            let rows = |views: Vec<MachineView>| -> Vec<MachineRow> {
                views.into_iter().map(MachineRow::from).collect()
            };
            let event = match (event, shape) {
                (FleetEvent::Snapshot { id, snapshot }, FleetShape::Views) => {
                    snapshot_event(id).json_data(snapshot)
                }
                (FleetEvent::Snapshot { id, snapshot }, FleetShape::Rows) => snapshot_event(id)
                    .json_data(FleetRows {
                        machines: rows(snapshot.machines),
                    }),
                (FleetEvent::Changes { id, changes }, FleetShape::Views) => {
                    changes_event(id).json_data(changes)
                }
                (FleetEvent::Changes { id, changes }, FleetShape::Rows) => changes_event(id)
                    .json_data(FleetRowChanges {
                        changed: rows(changes.changed),
                        removed: changes.removed,
                    }),
            };
            Ok(event.expect("machine views serialise"))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn snapshot_event(id: String) -> Event {
    Event::default()
        .event(FleetStreamEvent::Snapshot.name())
        .id(id)
}

fn changes_event(id: String) -> Event {
    Event::default()
        .event(FleetStreamEvent::Changes.name())
        .id(id)
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
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<MachineDetail>, ApiError> {
    let machine = desired_machine(&state, &id)?;
    caller.may(&state, Need::See(Place::from(&machine)))?;
    let held = state.controller.held().await?;
    let (status, operations, samples, facts) = state
        .store
        .run(move |store| {
            let facts = match store.machine_facts(&id)? {
                Some(gathered) => Some((gathered, store.fact_changes(&id, FACT_CHANGES_SHOWN)?)),
                None => None,
            };
            Ok((
                store.machine_status(&id)?,
                store.operations_for_machine(&id, 10)?,
                store.health_history(&id, 50)?,
                facts,
            ))
        })
        .await?;
    Ok(Json(MachineDetail {
        machine: fleet::view(machine, status, &held),
        recent_operations: operations.into_iter().map(Into::into).collect(),
        health_history: samples.into_iter().map(Into::into).collect(),
        facts: facts.map(|(gathered, changes)| FactsView::of(gathered, changes)),
    }))
}

/// `POST /api/links/{id}/verify`: checks reachability and enrollment now and answers with the result.
#[utoipa::path(post, path = "/api/links/{id}/verify", tag = "machines", params(("id" = String, Path, description = "Machine id")), responses((status = 200, description = "Checked now: reachability and enrollment (operator)", body = MachineView)))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<MachineView>, ApiError> {
    let machine = desired_machine(&state, &id)?;
    let user = caller.may(&state, Need::Check(Place::from(&machine)))?;
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
    Ok(Json(fleet::view(machine, status, &held)))
}

pub(super) fn desired_machine(state: &AppState, id: &str) -> Result<Machine, ApiError> {
    (state.fleet.machine(id))
        .ok_or_else(|| ApiError::NotFound(format!("no machine {id:?} in the applied inventory")))
}
