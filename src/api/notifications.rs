//! `/api/notifications`: the outbox of commit statuses and notifications.

use axum::extract::State;

use super::extract::Json;

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::contract::OutboxView;
use crate::store::Role;

/// `GET /api/notifications`
#[utoipa::path(get, path = "/api/notifications", tag = "daemon", responses((status = 200, description = "Commit statuses and notifications waiting for delivery, and the dead letters (admin)", body = OutboxView)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<OutboxView>, ApiError> {
    // Admin: what the forge and sinks answered is theirs, whatever it says.
    caller.require(Role::Admin)?;
    Ok(Json(OutboxView {
        queued: state.store.queued()?,
        dead: state.store.dead_letters()?,
    }))
}
