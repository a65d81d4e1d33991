//! Approval requests as the API shows them.

use linkops_reconcilers::approval::{Request, RequestState};
use serde::{Deserialize, Serialize};

/// A request and where it stands now (one past its expiry has expired).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalView {
    pub request: Request,
    pub state: RequestState,
    /// Approvals so far, of `request.approvers`.
    pub approvals: usize,
}

impl ApprovalView {
    pub fn at(request: Request, now_ms: i64) -> ApprovalView {
        ApprovalView {
            state: request.state_at(now_ms),
            approvals: request.approvals(),
            request,
        }
    }
}

/// What `POST /api/operations/run` (or a retry) answers: the operation
/// started (`202`), or the request it waits on (`201`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunAnswer {
    Started(Box<super::OperationView>),
    Awaiting(Box<ApprovalView>),
}

/// `POST /api/approvals/{id}/approve` and `/reject`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VoteBody {
    /// Why (kept with the vote; at most 500 characters).
    #[serde(default)]
    pub comment: String,
}
