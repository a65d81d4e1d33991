//! `/api/users`: user accounts (admin only). Password hashes never leave the store.

use axum::extract::State;

use super::extract::Json;
use serde::Serialize;

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::store::Role;

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    username: String,
    role: Role,
    created_at: jiff::Timestamp,
}

/// `GET /api/users`
#[utoipa::path(get, path = "/api/users", tag = "users", responses((status = 200, description = "Every user (admin); never a password hash", body = Vec<UserView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<UserView>>, ApiError> {
    caller.require(Role::Admin)?;
    let users = state
        .store
        .users()?
        .into_iter()
        .map(|user| UserView {
            username: user.name,
            role: user.role,
            created_at: at(user.created_at_ms).unwrap_or_default(),
        })
        .collect();
    Ok(Json(users))
}
