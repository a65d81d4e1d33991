//! The audit log: who did what to which thing, and how it went. Append-only.

use super::engine::{Read, Write, WriteTx};
use super::records::{AuditEntry, Outcome};
use super::schema::AUDIT_LOG;
use super::{Result, Store, now_ms};

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A user, through the API.
    User(String),
    /// An operator on the daemon's machine, through `linkops user …` (no daemon running).
    Cli,
    /// The daemon itself: a check, the first start.
    System,
    /// A revision of the config repository: what its run-requests started.
    Git { revision: String },
    /// A sync, named by what triggered it (`timer`, `webhook`, `api:<user>`, …).
    Sync(String),
    /// Whoever holds an inbound trigger's token or key, named by the trigger.
    Trigger(String),
}

impl Actor {
    pub fn user(name: impl Into<String>) -> Actor {
        Actor::User(name.into())
    }
}

impl std::fmt::Display for Actor {
    /// As the log stores it: the name, `cli`, `system`, `git@<revision>`, the trigger.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User(name) | Actor::Sync(name) => f.write_str(name),
            Actor::Cli => f.write_str("cli"),
            Actor::System => f.write_str("system"),
            Actor::Git { revision } => write!(f, "git@{revision}"),
            Actor::Trigger(name) => write!(f, "trigger:{name}"),
        }
    }
}

/// What was done: a closed set, stored by its dotted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    AuthLogin,
    AuthSso,
    UserCreate,
    UserDisable,
    UserEnable,
    TokenCreate,
    TokenRevoke,
    UserSecondFactor,
    AuthStepUp,
    UserPasswd,
    UserRole,
    UserDelete,
    OperationRun,
    OperationStop,
    MachineVerify,
    ReconcileSuspend,
    ReconcileResume,
    RunStart,
    StateApply,
    ScheduleFire,
    TriggerRun,
    TriggerRefused,
    ApprovalRequest,
    ApprovalApprove,
    ApprovalReject,
    StateRolloutHalted,
    StateRolloutResume,
    TerminalOpen,
    TerminalClose,
    TerminalRecordingRead,
    SshHostKeyLearned,
    SshHostKeyRefused,
    CaHostCertificate,
    CaRevoke,
    CaRotate,
    GitSync,
}

impl AuditAction {
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::AuthLogin => "auth.login",
            AuditAction::AuthSso => "auth.sso",
            AuditAction::UserDisable => "user.disable",
            AuditAction::UserEnable => "user.enable",
            AuditAction::TokenCreate => "token.create",
            AuditAction::TokenRevoke => "token.revoke",
            AuditAction::UserSecondFactor => "user.second_factor",
            AuditAction::AuthStepUp => "auth.step_up",
            AuditAction::UserCreate => "user.create",
            AuditAction::UserPasswd => "user.passwd",
            AuditAction::UserRole => "user.role",
            AuditAction::UserDelete => "user.delete",
            AuditAction::OperationRun => "operation.run",
            AuditAction::OperationStop => "operation.stop",
            AuditAction::MachineVerify => "machine.verify",
            AuditAction::ReconcileSuspend => "reconcile.suspend",
            AuditAction::ReconcileResume => "reconcile.resume",
            AuditAction::RunStart => "run.start",
            AuditAction::StateApply => "state.apply",
            AuditAction::ScheduleFire => "schedule.fire",
            AuditAction::TriggerRun => "trigger.run",
            AuditAction::TriggerRefused => "trigger.refused",
            AuditAction::ApprovalRequest => "approval.request",
            AuditAction::ApprovalApprove => "approval.approve",
            AuditAction::ApprovalReject => "approval.reject",
            AuditAction::StateRolloutHalted => "state.rollout_halted",
            AuditAction::StateRolloutResume => "state.rollout_resume",
            AuditAction::TerminalOpen => "terminal.open",
            AuditAction::TerminalClose => "terminal.close",
            AuditAction::TerminalRecordingRead => "terminal.recording.read",
            AuditAction::SshHostKeyLearned => "ssh.host_key_learned",
            AuditAction::SshHostKeyRefused => "ssh.host_key_refused",
            AuditAction::CaHostCertificate => "ca.host_certificate",
            AuditAction::CaRevoke => "ca.revoke",
            AuditAction::CaRotate => "ca.rotate",
            AuditAction::GitSync => "git.sync",
        }
    }
}

/// The audit entry of a change, handed to the store function that makes the
/// change so that both are one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub actor: Actor,
    pub action: AuditAction,
    pub target: String,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

impl Store {
    /// Appends an entry stamped with the next sequence number and the current time.
    pub fn audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        target: &str,
        outcome: Outcome,
        detail: Option<String>,
    ) -> Result<AuditEntry> {
        let mut tx = self.write()?;
        let entry = append(&mut tx, actor, action, target, outcome, detail)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Up to `limit` entries with a sequence number above `after`, oldest first.
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.read()?
            .range(AUDIT_LOG, after.saturating_add(1)..)
            .take(limit)
            .map(|entry| entry.map(|(_, entry)| entry))
            .collect()
    }
}

/// Appends an entry in `tx`: with the change it records, so that the change
/// is never committed without its audit, nor the audit without the change.
pub(super) fn append(
    tx: &mut WriteTx,
    actor: &Actor,
    action: AuditAction,
    target: &str,
    outcome: Outcome,
    detail: Option<String>,
) -> Result<AuditEntry> {
    let seq = tx.last(AUDIT_LOG)?.map_or(1, |(seq, _)| seq + 1);
    let entry = AuditEntry {
        seq,
        at_ms: now_ms(),
        actor: actor.to_string(),
        action: action.name().to_owned(),
        target: target.to_owned(),
        outcome,
        detail,
    };
    tx.insert(AUDIT_LOG, seq, &entry)?;
    Ok(entry)
}

/// Appends `audit` in `tx`, as [`append`] does.
pub(super) fn append_audit(tx: &mut WriteTx, audit: &Audit) -> Result<AuditEntry> {
    append(
        tx,
        &audit.actor,
        audit.action,
        &audit.target,
        audit.outcome,
        audit.detail.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_numbered_in_order_and_survive_reopen() {
        for backing in crate::store::testing::backings() {
            let store = backing.open();
            store
                .audit(
                    &Actor::user("ada"),
                    AuditAction::AuthLogin,
                    "ada",
                    Outcome::Success,
                    None,
                )
                .unwrap();
            store
                .audit(
                    &Actor::user("bob"),
                    AuditAction::AuthLogin,
                    "bob",
                    Outcome::Failure,
                    Some("bad password".into()),
                )
                .unwrap();
            drop(store);
            let store = backing.open();
            let entries = store.audit_entries(0, 10).unwrap();
            assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(entries[1].actor, "bob");
            assert_eq!(store.audit_entries(1, 10).unwrap().len(), 1);
        }
    }
}
