//! `/api/links`: the machines of the fleet, as desired and as observed; and
//! `/api/fleet/events`, the same list followed live.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::machine::{Machine, MachineStatus};
use linkops_reconcilers::operation::Operation;
use tokio::sync::watch;

use super::auth::Authenticated;
use super::extract::{Json, Path, Query};
use super::{ApiError, AppState, at};
use crate::contract::{
    ConditionView, HealthPoint, MachineDetail, MachineQuery, MachineView, OperationSummary,
};
use crate::metrics::Open;
use crate::store::{Actor, AuditAction, HealthSample, Role};

/// `GET /api/links`
#[utoipa::path(get, path = "/api/links", tag = "machines", params(MachineQuery), responses((status = 200, description = "Machines of the applied inventory with health, enrollment and conditions", body = Vec<MachineView>)))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Authenticated,
    Query(query): Query<MachineQuery>,
) -> Result<Json<Vec<MachineView>>, ApiError> {
    Ok(Json(machine_views(&state, query.tag.as_deref())?))
}

/// The machines of the applied inventory (those with `tag`, if given) as observed now.
fn machine_views(state: &AppState, tag: Option<&str>) -> Result<Vec<MachineView>, ApiError> {
    let desired = state.git.desired().borrow().clone();
    let machines = desired
        .as_ref()
        .map(|d| d.machines.clone())
        .unwrap_or_default();
    machines
        .into_iter()
        .filter(|machine| tag.is_none_or(|tag| machine.tags.iter().any(|t| t == tag)))
        .map(|machine| view(state, machine))
        .collect()
}

/// How long a burst of changes is gathered into one event: a check writes a
/// machine twice, and a sync touches every machine.
const COALESCE: Duration = Duration::from_millis(200);

/// `GET /api/fleet/events`: the fleet live, as Server-Sent Events.
#[utoipa::path(get, path = "/api/fleet/events", tag = "machines", params(MachineQuery), responses((status = 200, description = "Server-Sent Events `machines`: the list exactly as `GET /api/links` answers it, at once and again after every change to a machine's health, enrollment, conditions or suspension, or to the inventory (changes within 200 ms make one event). EventSource cannot send headers: pass ?access_token=. The stream ends when the daemon stops.", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Authenticated,
    Query(query): Query<MachineQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let follower = FleetFollower {
        revoked: Box::pin(state.auth.revoked(caller.1, Role::Viewer)),
        changes: state.store.fleet_changes(),
        desired: state.git.desired(),
        first: true,
        _open: Open::new(&state.metrics.sse_clients),
        tag: query.tag,
        state,
    };
    Sse::new(futures::stream::unfold(follower, FleetFollower::next))
        .keep_alive(KeepAlive::default())
}

/// One client following the fleet.
struct FleetFollower {
    state: AppState,
    tag: Option<String>,
    changes: watch::Receiver<u64>,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
    /// The first event is sent at once.
    first: bool,
    /// Completes when the user is deleted or the token revoked: the stream ends.
    revoked: futures::future::BoxFuture<'static, ()>,
    _open: Open,
}

impl FleetFollower {
    /// The next `machines` event; `None` ends the stream.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if !std::mem::take(&mut self.first) {
            tokio::select! {
                _ = self.state.draining.cancelled() => return None,
                () = &mut self.revoked => return None,
                changed = self.changes.changed() => changed.ok()?,
                changed = self.desired.changed() => changed.ok()?,
            }
            tokio::select! {
                _ = self.state.draining.cancelled() => return None,
                () = &mut self.revoked => return None,
                _ = tokio::time::sleep(COALESCE) => {}
            }
            self.changes.mark_unchanged();
            self.desired.mark_unchanged();
        }
        let views = match machine_views(&self.state, self.tag.as_deref()) {
            Ok(views) => views,
            Err(error) => {
                tracing::warn!(?error, "the fleet stream could not read the machines");
                return None;
            }
        };
        let event = Event::default()
            .event("machines")
            .json_data(&views)
            .expect("machine views serialise");
        Some((Ok(event), self))
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
    Ok(Json(MachineDetail {
        machine: view(&state, machine)?,
        recent_operations: state
            .store
            .operations_for_machine(&id, 10)?
            .into_iter()
            .map(Into::into)
            .collect(),
        health_history: state
            .store
            .health_history(&id, 50)?
            .into_iter()
            .map(Into::into)
            .collect(),
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
    if state.controller.suspended(Some(&id))? {
        return Err(ApiError::NotConfigured(format!(
            "reconciliation of {id} is suspended; resume it first"
        )));
    }
    state.controller.verify(&id).await?;
    let view = view(&state, machine)?;
    let outcome = if view.enrollment == Enrollment::Enrolled {
        crate::store::Outcome::Success
    } else {
        crate::store::Outcome::Failure
    };
    state.store.audit(
        &Actor::user(&user.name),
        AuditAction::MachineVerify,
        &id,
        outcome,
        Some(format!("{:?}", view.enrollment)),
    )?;
    Ok(Json(view))
}

fn desired_machine(state: &AppState, id: &str) -> Result<Machine, ApiError> {
    let desired = state.git.desired().borrow().clone();
    desired
        .and_then(|d| d.machine(id).cloned())
        .ok_or_else(|| ApiError::NotFound(format!("no machine {id:?} in the applied inventory")))
}

fn view(state: &AppState, machine: Machine) -> Result<MachineView, ApiError> {
    let status = state
        .store
        .machine_status(&machine.id)?
        .unwrap_or_else(|| MachineStatus::new(&machine.id));
    let suspended = state.controller.suspended(Some(&machine.id))?;
    Ok(MachineView {
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
    })
}
