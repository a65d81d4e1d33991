//! `/api/notifications`: the outbox of commit statuses and notifications.

use axum::extract::State;

use super::extract::{Json, Query};

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::contract::{OutboxQuery, OutboxView};

/// `GET /api/notifications`
#[utoipa::path(get, path = "/api/notifications", tag = "daemon", params(OutboxQuery), responses((status = 200, description = "Commit statuses and notifications waiting for delivery, and the dead letters (admin)", body = OutboxView)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
    Query(query): Query<OutboxQuery>,
) -> Result<Json<OutboxView>, ApiError> {
    // Admin: what the forge and sinks answered is theirs, whatever it says.
    caller.administers(&state)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let view = state.store.run(move |store| {
        let channel = query.channel.as_deref();
        let (queued_total, dead_total) = store.outbox_counts()?;
        Ok(OutboxView {
            queued: store.queued(channel, query.after.unwrap_or(0), limit)?,
            dead: store.dead_letters(channel, limit)?,
            queued_total,
            dead_total,
        })
    });
    Ok(Json(view.await?))
}
