//! What the store keeps, as it keeps it: the record types of its own that
//! its tables hold as JSON (the domain's records — machines' statuses,
//! operations, states — are `linkops_reconcilers`'). A renamed or retyped
//! field here changes what is on disk: `tests/records/` holds a stored
//! example of each kind, which the tests decode.

use linkops_reconcilers::desired::Problem;
use linkops_reconcilers::machine::{Health, Machine};
use linkops_reconcilers::outbox::CommitStatus;
use linkops_reconcilers::role::Role;
use linkops_reconcilers::script::Script;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Refused by policy (lockout, permissions, host key).
    Denied,
}

/// One audit record. Never holds a password or a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: i64,
    /// [`Actor`] as text.
    pub actor: String,
    /// [`AuditAction::name`].
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: Option<String>,
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
    /// The outcome's name, as stored and as metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            SyncOutcome::Applied { .. } => "applied",
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Invalid { .. } => "invalid",
            SyncOutcome::Failed { .. } => "failed",
        }
    }
}

/// One sync attempt. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub seq: u64,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    /// What asked for it: `interval`, `startup`, `api:<user>`, `webhook`, `watch`.
    pub trigger: String,
    /// The commit fetched, when the fetch got that far.
    pub revision: Option<String>,
    /// The revision in force before this attempt.
    pub previous: Option<String>,
    pub outcome: SyncOutcome,
}

/// What a replica that does not lead asks the leader for (it alone fetches Git).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncAsk {
    /// A sync, recorded with this trigger.
    Sync { trigger: String },
    /// A plan of another branch's head.
    Plan { branch: String },
    /// Another branch was deleted: forget what was fetched of it.
    Forget { branch: String },
}

/// Something a revision declares, or declared: a machine or a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared<T> {
    pub spec: T,
    /// The revision that last declared it.
    pub revision: String,
    /// Set when a later revision dropped it; its history is kept.
    pub removed_at_ms: Option<i64>,
}

/// A machine the inventory declares, or declared.
pub type MachineRecord = Declared<Machine>;

/// A script of the catalog, current or removed.
pub type ScriptRecord = Declared<Script>;

/// A user account. Only the argon2 hash of the password is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at_ms: i64,
    /// Tokens issued before this instant are no longer accepted.
    pub password_changed_at_ms: i64,
}

/// Consecutive failed logins for one user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFailures {
    pub count: u32,
    pub last_failure_ms: i64,
    /// While in the future, every login for the name is refused.
    pub locked_until_ms: Option<i64>,
}

/// One health check, as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSample {
    pub at_ms: i64,
    pub health: Health,
    pub enrolled: bool,
}

/// A commit status the forge accepted, with when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedStatus {
    pub status: CommitStatus,
    pub posted_at_ms: i64,
}
