//! The config repository's sync status, syncs, webhook answers, and the
//! daemon's health.

use serde::{Deserialize, Serialize};

use linkops_reconcilers::desired::Problem;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GitStatus {
    /// The remote, with any password in it masked; `null` when none is configured.
    pub url: Option<String>,
    pub branch: String,
    /// The revision in force.
    pub applied_revision: Option<String>,
    /// When the sync that applied it ended.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub applied_at: Option<jiff::Timestamp>,
    pub last_attempt: Option<SyncView>,
    /// What is wrong with the last attempt, each as `file:line:col: message`.
    pub last_error: Vec<String>,
    /// The commit statuses the forge accepted for the last revision looked at.
    pub statuses: Vec<PostedStatusView>,
    /// Commit statuses waiting for the forge (with their attempts and last error), and those given up on.
    pub statuses_queued: Vec<linkops_reconcilers::outbox::Queued>,
    pub statuses_dead: Vec<linkops_reconcilers::outbox::Queued>,
}

/// A commit status the forge accepted.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PostedStatusView {
    pub status: linkops_reconcilers::outbox::CommitStatus,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub posted_at: Option<jiff::Timestamp>,
}

/// A sync record as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncView {
    pub seq: u64,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: jiff::Timestamp,
    pub duration_ms: u64,
    /// What asked for it: `interval`, `startup`, `api:<user>`, `webhook`, `watch`.
    pub trigger: String,
    pub revision: Option<String>,
    pub previous: Option<String>,
    #[serde(flatten)]
    pub outcome: SyncOutcome,
}

/// What one sync attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SyncOutcome {
    /// A new revision is in force.
    Applied {
        changed_files: Vec<String>,
        /// The previous revision is not an ancestor: the branch was force-pushed.
        forced: bool,
    },
    /// The branch still points at the applied revision.
    Unchanged,
    /// The revision has problems; the previous one stays in force.
    Invalid { problems: Vec<Problem> },
    /// Fetching or reading failed; the previous revision stays in force.
    Failed { error: String },
}

impl SyncOutcome {
    /// The outcome's name: its `result`.
    pub fn name(&self) -> &'static str {
        match self {
            SyncOutcome::Applied { .. } => "applied",
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Invalid { .. } => "invalid",
            SyncOutcome::Failed { .. } => "failed",
        }
    }
}

/// What a push delivery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAnswer {
    /// A sync is queued.
    Sync(SyncRequested),
    /// The pushed head is the revision in force: nothing to do.
    Unchanged(String),
    /// A push to another branch: what merging it would change is posted on its head (`linkops/plan`).
    Plan(String),
    /// Another branch was deleted: what was fetched of it for plans is forgotten.
    Forgotten(String),
    /// Not a push to the followed branch; the text says what it was.
    Ignored(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncRequested {
    Requested,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: Readiness,
    pub live: bool,
    pub ready: bool,
    pub store: Check,
    pub git: GitHealth,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Ready to serve.
    Ok,
    /// Alive, but the store does not answer.
    Degraded,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Check {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GitHealth {
    /// Whether a config repository is configured at all.
    pub configured: bool,
    /// The revision in force, if any.
    pub applied_revision: Option<String>,
    /// `applied`, `unchanged`, `invalid` or `failed`; `null` before the first sync.
    pub last_result: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_sync_at: Option<jiff::Timestamp>,
}
