//! `/api/reconcile`: suspend and resume reconciliation, fleet-wide or per machine.

use axum::extract::State;

use super::extract::Json;

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::contract::{SuspensionScope, SuspensionView};
use crate::store::{Actor, User};
use linkops_reconcilers::suspension;

/// `GET /api/reconcile`
#[utoipa::path(get, path = "/api/reconcile", tag = "reconcile", responses((status = 200, description = "Suspensions in force (admin)", body = SuspensionView)))]
pub async fn status(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<SuspensionView>, ApiError> {
    caller.administers(&state)?;
    Ok(Json(suspensions(&state).await?))
}

/// `POST /api/reconcile/suspend` `{"machine"?}`
#[utoipa::path(post, path = "/api/reconcile/suspend", tag = "reconcile", request_body = SuspensionScope, responses((status = 200, description = "Suspended (admin): the fleet (`{}`) or one machine", body = SuspensionView)))]
pub async fn suspend(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(scope): Json<SuspensionScope>,
) -> Result<Json<SuspensionView>, ApiError> {
    let admin = caller.administers(&state)?;
    set(&state, admin, scope, true).await
}

/// `POST /api/reconcile/resume` `{"machine"?}`: resumes, and reconciles what was held back.
#[utoipa::path(post, path = "/api/reconcile/resume", tag = "reconcile", request_body = SuspensionScope, responses((status = 200, description = "Resumed (admin)", body = SuspensionView)))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(scope): Json<SuspensionScope>,
) -> Result<Json<SuspensionView>, ApiError> {
    let admin = caller.administers(&state)?;
    set(&state, admin, scope, false).await
}

async fn set(
    state: &AppState,
    admin: &User,
    scope: SuspensionScope,
    suspended: bool,
) -> Result<Json<SuspensionView>, ApiError> {
    let held = suspension::Scope::of(scope.machine.clone());
    state
        .controller
        .set_suspended(&held, suspended, &Actor::user(&admin.name))
        .await?;
    Ok(Json(suspensions(state).await?))
}

async fn suspensions(state: &AppState) -> Result<SuspensionView, ApiError> {
    let scopes = state.store.run(|store| store.suspensions()).await?;
    Ok(SuspensionView {
        by_config: state.config.reconcile.suspended,
        fleet: scopes
            .iter()
            .find(|(scope, _)| *scope == suspension::Scope::Fleet)
            .and_then(|(_, since)| at(*since)),
        machines: scopes
            .into_iter()
            .filter_map(|(scope, since)| match scope {
                suspension::Scope::Machine(id) => Some((id, at(since))),
                suspension::Scope::Fleet => None,
            })
            .collect(),
    })
}
