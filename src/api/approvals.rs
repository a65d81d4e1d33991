//! `/api/approvals`: runs waiting for approvers — listed, read, approved or
//! rejected (the controller decides each vote and starts what is approved).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use linkops_reconcilers::approval::Request;

use super::auth::Authenticated;
use super::extract::{Json, Path};
use super::{ApiError, AppState};
use crate::contract::{ApprovalView, VoteBody};
use crate::controller::{ApprovalError, Voter};
use crate::store::now_ms;

/// Requests listed at most.
const LISTED: usize = 200;

/// `201 Created`: the run was recorded as awaiting approval, at `Location`.
pub(super) fn awaiting(request: Request) -> Response {
    let location = format!("/api/approvals/{}", request.id);
    let view = ApprovalView::at(request, now_ms());
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(view),
    )
        .into_response()
}

/// `GET /api/approvals`
#[utoipa::path(get, path = "/api/approvals", tag = "approvals", responses((status = 200, description = "Approval requests on machines the caller sees, newest first (200 at most)", body = Vec<ApprovalView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    let reach = caller.reach(&state);
    let requests = state.store.run(|store| store.approvals(LISTED)).await?;
    let now = now_ms();
    Ok(Json(
        (requests.into_iter())
            .filter(|request| request.content.machines.iter().all(|id| reach.sees(id)))
            .map(|request| ApprovalView::at(request, now))
            .collect(),
    ))
}

/// `GET /api/approvals/{id}`
#[utoipa::path(get, path = "/api/approvals/{id}", tag = "approvals", params(("id" = u64, Path, description = "Approval request id")), responses((status = 200, description = "The request, its votes and where it stands", body = ApprovalView), (status = 404, description = "No such request (or not on machines the caller sees)", body = crate::contract::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<Json<ApprovalView>, ApiError> {
    let reach = caller.reach(&state);
    let request = state.store.run(move |store| store.approval(id)).await?;
    let request = request
        .filter(|request| request.content.machines.iter().all(|id| reach.sees(id)))
        .ok_or_else(|| ApiError::NotFound(format!("no approval request {id}")))?;
    Ok(Json(ApprovalView::at(request, now_ms())))
}

/// `POST /api/approvals/{id}/approve`
#[utoipa::path(post, path = "/api/approvals/{id}/approve", tag = "approvals", params(("id" = u64, Path, description = "Approval request id")), request_body = VoteBody, responses((status = 200, description = "Counted; the last approval needed starts the run (`state: started` with its operation)", body = ApprovalView), (status = 403, description = "Not an approver: the rule's role over every machine for the script (details.required_role), or a fresh second factor for protected machines", body = crate::contract::ErrorBody), (status = 409, description = "One's own request, voted already, expired, or no longer awaiting", body = crate::contract::ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
    Json(body): Json<VoteBody>,
) -> Result<Json<ApprovalView>, ApiError> {
    let grants = caller.grants(&state);
    vote(state, caller, grants, id, true, body).await
}

/// `POST /api/approvals/{id}/reject`
#[utoipa::path(post, path = "/api/approvals/{id}/reject", tag = "approvals", params(("id" = u64, Path, description = "Approval request id")), request_body = VoteBody, responses((status = 200, description = "Rejected: it never runs", body = ApprovalView), (status = 403, description = "Not an approver", body = crate::contract::ErrorBody), (status = 409, description = "One's own request, voted already, expired, or no longer awaiting", body = crate::contract::ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
    Json(body): Json<VoteBody>,
) -> Result<Json<ApprovalView>, ApiError> {
    let grants = caller.grants(&state);
    vote(state, caller, grants, id, false, body).await
}

/// `caller`'s vote (holding `grants` now).
async fn vote(
    state: AppState,
    caller: Authenticated,
    grants: linkops_reconcilers::grant::Held,
    id: u64,
    approve: bool,
    body: VoteBody,
) -> Result<Json<ApprovalView>, ApiError> {
    let fresh = caller.stepped_up(&state, "approving a run on a protected machine");
    let voter = Voter {
        name: &caller.user.name,
        grants: &grants,
        second_factor_fresh: fresh.is_ok(),
    };
    match state
        .controller
        .vote(id, voter, approve, &body.comment)
        .await
    {
        Ok(request) => Ok(Json(ApprovalView::at(request, now_ms()))),
        Err(ApprovalError::SecondFactor(_)) if fresh.is_err() => {
            Err(ApiError::StepUpRequired(fresh.expect_err("not fresh")))
        }
        Err(error) => Err(error.into()),
    }
}

impl From<ApprovalError> for ApiError {
    fn from(error: ApprovalError) -> Self {
        use linkops_reconcilers::approval::Refusal;
        match error {
            ApprovalError::NoSuchRequest(_) => ApiError::NotFound(error.to_string()),
            ApprovalError::NothingApplied => ApiError::NotConfigured(error.to_string()),
            ApprovalError::Refused(Refusal::NotAnApprover { refusal, .. }) => {
                ApiError::NotGranted(refusal)
            }
            ApprovalError::Refused(refusal) => ApiError::Conflict(refusal.to_string()),
            ApprovalError::SecondFactor(_) => ApiError::SignInRefused(error.to_string()),
            ApprovalError::Store(error) => error.into(),
        }
    }
}
