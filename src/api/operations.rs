//! `/api/operations`: operations and their per-machine results.

use axum::Json;
use axum::extract::{Path, State};
use linkops_reconcilers::operation::{HostResult, Operation};
use serde::Serialize;

use super::auth::Authenticated;
use super::{ApiError, AppState};

#[derive(Serialize)]
pub struct OperationView {
    #[serde(flatten)]
    operation: Operation,
    hosts: Vec<HostResult>,
}

/// `GET /api/operations/{id}`
pub async fn get(
    State(state): State<AppState>,
    _caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<Json<OperationView>, ApiError> {
    let (operation, hosts) = state
        .store
        .operation(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no operation {id}")))?;
    Ok(Json(OperationView { operation, hosts }))
}
