//! `/api/notifications`: the outbox of commit statuses and notifications.

use axum::extract::State;

use super::extract::Json;

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::contract::OutboxView;

/// `GET /api/notifications`
#[utoipa::path(get, path = "/api/notifications", tag = "daemon", responses((status = 200, description = "Commit statuses and notifications waiting for delivery, and the dead letters", body = OutboxView)))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<OutboxView>, ApiError> {
    Ok(Json(OutboxView {
        queued: state.store.queued()?,
        dead: state.store.dead_letters()?,
    }))
}
