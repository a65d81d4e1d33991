//! `/api/states`: declared states, where each stands on its machines, and
//! resuming a halted rollout.

use axum::extract::State;

use super::extract::{Json, Path};

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::contract::{ApplyView, CheckView, HaltView, StateDetail, StateMachineView, StateView};
use crate::store::Actor;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::state::{DeclaredState, StateStatus, Target};

/// `GET /api/states`: every state of the applied revision.
#[utoipa::path(get, path = "/api/states", tag = "states", responses((status = 200, description = "Declared states of the applied revision, by id", body = Vec<StateView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<StateView>>, ApiError> {
    // States are the repository's, read alike by everyone; where each stands
    // per machine, as far as the caller sees (`GET /api/states/{id}`).
    caller.signed_in();
    let desired = state.git.desired().borrow().clone();
    let Some(desired) = desired else {
        return Ok(Json(Vec::new()));
    };
    let mut statuses: std::collections::BTreeMap<String, StateStatus> = state
        .store
        .run(|store| store.state_statuses())
        .await?
        .into_iter()
        .map(|s| (s.state_id.clone(), s))
        .collect();
    let views = desired
        .states
        .values()
        .map(|declared| view(declared, statuses.remove(&declared.id)))
        .collect();
    Ok(Json(views))
}

/// `GET /api/states/{id}`
#[utoipa::path(get, path = "/api/states/{id}", tag = "states", params(("id" = String, Path, description = "State id")), responses((status = 200, description = "The state and each of its machines", body = StateDetail)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<StateDetail>, ApiError> {
    let reach = caller.reach(&state);
    let desired = state.git.desired().borrow().clone();
    let desired = desired.unwrap_or_default();
    let declared = declared(Some(&desired), &id)?;
    let asked = id.clone();
    let (status, mut targets) = state
        .store
        .run(move |store| store.state_detail(&asked))
        .await?;
    let machines = declared
        .targets
        .select(&desired.machines)
        .into_iter()
        .filter(|machine| reach.sees(machine))
        .map(|machine| {
            let target = targets
                .remove(&machine)
                .unwrap_or_else(|| Target::new(&id, &machine, 0));
            machine_view(target)
        })
        .collect();
    Ok(Json(StateDetail {
        state: view(declared, status),
        machines,
    }))
}

/// `POST /api/states/{id}/resume`: resumes a halted rollout (operator).
#[utoipa::path(post, path = "/api/states/{id}/resume", tag = "states", params(("id" = String, Path, description = "State id")), responses((status = 200, description = "Resumed: failures so far no longer count, and machines whose apply failed are applied again", body = StateView), (status = 409, description = "The rollout is not halted", body = crate::contract::ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<StateView>, ApiError> {
    let desired = state.git.desired().borrow().clone();
    let declared = declared(desired.as_deref(), &id)?.clone();
    let machines = desired
        .as_ref()
        .map(|d| declared.targets.select(&d.machines));
    (caller.reach(&state)).may_run(&declared.script, &machines.unwrap_or_default())?;
    let user = caller.signed_in();
    let asked = id.clone();
    let halted = state
        .store
        .run(move |store| store.state_status(&asked))
        .await?
        .is_some_and(|status| status.halted.is_some());
    if !halted {
        return Err(ApiError::Conflict(format!(
            "the rollout of state {id:?} is not halted"
        )));
    }
    let status = state
        .controller
        .resume_state(&id, &Actor::user(&user.name))
        .await?;
    Ok(Json(view(&declared, status)))
}

fn declared<'a>(
    desired: Option<&'a DesiredState>,
    id: &str,
) -> Result<&'a DeclaredState, ApiError> {
    desired
        .and_then(|d| d.states.get(id))
        .ok_or_else(|| ApiError::NotFound(format!("no state {id:?} in the applied revision")))
}

fn view(declared: &DeclaredState, status: Option<StateStatus>) -> StateView {
    let status = status.as_ref();
    StateView {
        id: declared.id.clone(),
        declared: declared.clone(),
        digest: status.map(|s| s.digest.clone()),
        revision: status.map(|s| s.revision.clone()),
        counts: status.map(|s| s.counts).unwrap_or_default(),
        progress: status.map(|s| s.progress).unwrap_or_default(),
        halted: status.and_then(|s| s.halted.as_ref()).map(|halt| HaltView {
            reason: halt.reason.clone(),
            at: at(halt.at_ms),
        }),
        conditions: status.map(|s| s.conditions.clone()).unwrap_or_default(),
        updated_at: status.and_then(|s| at(s.updated_at_ms)),
    }
}

fn machine_view(target: Target) -> StateMachineView {
    StateMachineView {
        since: (target.since_ms > 0).then(|| at(target.since_ms)).flatten(),
        drifted_since: target.drifted_since_ms.and_then(at),
        check: target.check.map(|check| CheckView {
            digest: check.digest,
            at: at(check.at_ms),
            duration_ms: check.duration_ms,
            outcome: check.outcome,
            output: check.output,
        }),
        apply: target.apply.map(|apply| ApplyView {
            digest: apply.digest,
            operation_id: apply.operation_id,
            started_at: at(apply.started_at_ms),
            finished_at: apply.finished_at_ms.and_then(at),
            result: apply.result,
        }),
        machine_id: target.machine_id,
        standing: target.standing,
    }
}
