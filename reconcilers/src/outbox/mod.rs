//! What the daemon tells the outside: commit statuses on the forge and
//! notifications to people's sinks, decided from what happened.
//!
//! The daemon queues these in the store in the transaction of the event they
//! are about, and delivers them later (retried, one at a time per channel);
//! this module decides *what* to say (`tell`), and when to try again.

mod tell;
#[cfg(test)]
mod tests;

pub use tell::{
    MACHINE_DAMPING_MS, SyncEnd, Told, for_approval, for_fire_not_started, for_machine,
    for_operation, for_plan, for_restart, for_run_started, for_state, for_sync, run_context,
    schedule_context, state_context, tally,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::enrollment::Enrollment;
use crate::machine::MachineStatus;
use crate::operation::{HostResult, HostState, Operation, OperationState, Requester};
use crate::state::StateStatus;

/// The channel of the forge's commit statuses.
pub const FORGE: &str = "forge";
/// The longest description a commit status carries (Forgejo and GitHub cut longer ones).
pub const STATUS_DESCRIPTION_CHARS: usize = 140;
/// Attempts before a message goes to the dead letters.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 5 * 60_000;

/// A commit status's state, as Forgejo, Gitea and GitHub name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Error,
    Failure,
    Warning,
}

/// A status on one commit, in one context (`linkops/sync`, `linkops/run/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitStatus {
    /// The full commit id.
    pub sha: String,
    pub context: String,
    pub state: CommitState,
    pub description: String,
    pub target_url: Option<String>,
}

/// What a notification is about; sinks choose by these.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A revision has problems; the last good one stays in force.
    RevisionRefused,
    /// A revision applied after one or more were refused.
    RevisionRecovered,
    /// An operation ended failed, partially failed, stopped or interrupted
    /// (a machine timed out, failed or never confirmed its end).
    OperationFailed,
    /// A run-request's operation ended, however it ended.
    RunRequestDone,
    /// The daemon started and found operations a previous process left running.
    DaemonRecovered,
    /// Machines that held a declared state's content no longer do (a hand change?).
    StateDrifted,
    /// A declared state's rollout halted (a failed canary, too many failures).
    RolloutHalted,
    /// A machine stopped answering over SSH.
    MachineUnreachable,
    /// A machine answers but is not the one the inventory means (its client id differs or is missing).
    MachineUnenrolled,
    /// A machine's host key is not the one known: refused, as always.
    MachineHostKeyChanged,
    /// A machine is reachable and enrolled again.
    MachineRecovered,
    /// A run waits for approvers (a link to approve it in the console).
    ApprovalRequested,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::RevisionRefused,
        EventKind::RevisionRecovered,
        EventKind::OperationFailed,
        EventKind::RunRequestDone,
        EventKind::DaemonRecovered,
        EventKind::StateDrifted,
        EventKind::RolloutHalted,
        EventKind::MachineUnreachable,
        EventKind::MachineUnenrolled,
        EventKind::MachineHostKeyChanged,
        EventKind::MachineRecovered,
        EventKind::ApprovalRequested,
    ];
}
/// The current version of [`Notification`]'s shape; receivers check it.
pub const NOTIFICATION_VERSION: u32 = 1;

/// A notification as every sink receives it (webhooks: this JSON; ntfy and
/// Slack: `title` and `text`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    pub version: u32,
    pub kind: EventKind,
    /// When it happened (Unix ms).
    pub at_ms: i64,
    /// One line for people.
    pub title: String,
    /// A few lines for people.
    pub text: String,
    /// What it is about: a revision, an operation id.
    pub subject: String,
    /// The console's page about it, when the daemon knows its address.
    pub url: Option<String>,
}

/// What notifications about one thing share: the thing, its page, the time.
struct About {
    subject: String,
    url: Option<String>,
    at_ms: i64,
}

impl About {
    fn tell(&self, kind: EventKind, title: String, text: String) -> Notification {
        Notification {
            version: NOTIFICATION_VERSION,
            kind,
            at_ms: self.at_ms,
            title,
            text,
            subject: self.subject.clone(),
            url: self.url.clone(),
        }
    }
}

/// One message to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    CommitStatus(CommitStatus),
    Notification(Notification),
}

/// A message bound for a channel: [`FORGE`] or a sink's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outgoing {
    pub channel: String,
    pub message: Message,
}

/// A message in the queue, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Queued {
    pub seq: u64,
    pub channel: String,
    pub message: Message,
    pub created_at_ms: i64,
    pub attempts: u32,
    /// Not before this (Unix ms).
    pub next_at_ms: i64,
    pub last_error: Option<String>,
}

/// Whether `message` tells how one machine stands (and so can be replaced
/// by a newer standing of it, [`supersedes`]).
pub fn tells_a_machine_s_standing(message: &Message) -> bool {
    matches!(
        message,
        Message::Notification(Notification {
            kind: EventKind::MachineUnreachable
                | EventKind::MachineUnenrolled
                | EventKind::MachineHostKeyChanged
                | EventKind::MachineRecovered,
            ..
        })
    )
}

/// Whether `newer`, queued for a channel, makes `older` — queued for the
/// same channel and not delivered yet — redundant: both tell how one
/// machine stands, and the newer is how it stands now. While a sink is down,
/// a bouncing machine then waits as one message, not one per change.
pub fn supersedes(newer: &Message, older: &Message) -> bool {
    match (newer, older) {
        (Message::Notification(newer_event), Message::Notification(older_event)) => {
            tells_a_machine_s_standing(newer)
                && tells_a_machine_s_standing(older)
                && newer_event.subject == older_event.subject
        }
        _ => false,
    }
}

/// After `attempts` failed attempts: when to try again, or `None` to give up
/// (the message goes to the dead letters). 1 s, 2 s, 4 s … at most 5 min.
pub fn retry_after_ms(attempts: u32) -> Option<i64> {
    (attempts < MAX_ATTEMPTS).then(|| (1_000i64 << attempts.min(20)).min(MAX_BACKOFF_MS))
}

/// Cut to what a commit status shows, on a character boundary.
pub fn short(text: &str) -> String {
    cut(text, STATUS_DESCRIPTION_CHARS)
}

/// `text` in at most `chars` characters, the last one `…` when it was cut.
pub fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
