//! Declared states: where each stands across its machines, and on each machine.

use linkops_reconcilers::condition::Condition;
use linkops_reconcilers::rollout::Progress;
use linkops_reconcilers::state::{ApplyResult, CheckOutcome, Counts, DeclaredState, Standing};
use serde::{Deserialize, Serialize};

/// A declared state as Git declares it and as the daemon last reconciled it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateView {
    pub id: String,
    pub declared: DeclaredState,
    /// The content its checks and applies are for; `null` before its first reconcile.
    pub digest: Option<String>,
    pub revision: Option<String>,
    /// Its selected machines by standing.
    pub counts: Counts,
    /// Applies of this content since its rollout started (or was resumed).
    pub progress: Progress,
    /// Set while the rollout is halted: it starts nothing until resumed or given new content.
    pub halted: Option<HaltView>,
    pub conditions: Vec<Condition>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HaltView {
    pub reason: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<jiff::Timestamp>,
}

/// Which of a state's machines `GET /api/states/{id}` shows, in inventory order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateMachinesQuery {
    /// Only machines with this tag.
    pub tag: Option<String>,
    /// Only machines standing so: `pending`, `in_sync`, `drifted`, `applying`,
    /// `failed`, `held`, `check_error`.
    pub standing: Option<String>,
    /// At most this many (1 to 1000; every matching machine when absent). The
    /// `X-Total-Count` header says how many match, `Link` where the next page is.
    pub limit: Option<usize>,
    /// Only machines after this one in inventory order: the last id of the previous page.
    pub after: Option<String>,
}

/// `GET /api/states/{id}`: the state and each of its machines.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateDetail {
    pub state: StateView,
    /// Its selected machines the caller sees, in inventory order (a page of
    /// them, as asked).
    pub machines: Vec<StateMachineView>,
}

/// A state on one machine.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateMachineView {
    pub machine_id: String,
    pub standing: Standing,
    /// Since when it stands so.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<jiff::Timestamp>,
    /// Since when its checks have said drifted.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub drifted_since: Option<jiff::Timestamp>,
    pub check: Option<CheckView>,
    pub apply: Option<ApplyView>,
}

/// A check's result.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckView {
    pub digest: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<jiff::Timestamp>,
    pub duration_ms: u64,
    pub outcome: CheckOutcome,
    /// The start of what it printed (at most 4 KiB).
    pub output: String,
}

/// An apply: its operation has the live output and the exit code.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyView {
    pub digest: String,
    pub operation_id: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<jiff::Timestamp>,
    pub result: ApplyResult,
}
