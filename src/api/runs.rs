//! `/api/runs`: run-requests from Git and where each stands.

use axum::extract::State;

use super::extract::{Json, Path};

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::contract::RunView;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::run::RunRecord;

/// `GET /api/runs`: every run-request in Git or in the store.
#[utoipa::path(get, path = "/api/runs", tag = "runs", responses((status = 200, description = "Run-requests in Git or in the store", body = Vec<RunView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<RunView>>, ApiError> {
    // Run-requests are the repository's, read alike by everyone; what they
    // did is their operations', read as far as the caller sees.
    caller.signed_in();
    let desired = state.git.desired().borrow().clone();
    let mut ids: Vec<String> = desired
        .as_ref()
        .map(|d| d.runs.keys().cloned().collect())
        .unwrap_or_default();
    let mut records: std::collections::BTreeMap<String, RunRecord> = state
        .store
        .run(|store| store.run_records())
        .await?
        .into_iter()
        .map(|record| (record.id.clone(), record))
        .collect();
    for id in records.keys() {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    ids.sort();
    let views = ids.into_iter().map(|id| {
        let record = records.remove(&id);
        view(desired.as_deref(), id, record)
    });
    Ok(Json(views.collect()))
}

/// `GET /api/runs/{id}`
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs", params(("id" = String, Path, description = "Run-request id")), responses((status = 200, description = "One run-request", body = RunView)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    caller.signed_in();
    let desired = state.git.desired().borrow().clone();
    let asked = id.clone();
    let record = state
        .store
        .run(move |store| store.run_record(&asked))
        .await?;
    let view = view(desired.as_deref(), id.clone(), record);
    if view.request.is_none() && view.state.is_none() {
        return Err(ApiError::NotFound(format!("no run-request {id:?}")));
    }
    Ok(Json(view))
}

/// A run-request as Git declares it and the store recorded it.
fn view(desired: Option<&DesiredState>, id: String, record: Option<RunRecord>) -> RunView {
    let request = desired.and_then(|d| d.runs.get(&id).cloned());
    RunView {
        id,
        request,
        changed_after_run: record.as_ref().is_some_and(|r| r.changed_after_run),
        revision: record.as_ref().map(|r| r.revision.clone()),
        updated_at: record.as_ref().and_then(|r| at(r.updated_at_ms)),
        conditions: record
            .as_ref()
            .map(|r| r.conditions.clone())
            .unwrap_or_default(),
        state: record.map(|r| r.state),
    }
}
