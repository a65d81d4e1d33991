//! Declared states as observed: each state's status and rollout, its record
//! on every target machine, and a bounded history of check results.
//!
//! A state's applies are written with the operation that runs them
//! (`Store::create_operation` with a [`super::Claim::StateApply`]): after a
//! crash the target's record names the interrupted operation, so the machine
//! is checked again before anything is applied again.

use std::collections::BTreeMap;

use linkops_reconcilers::state::{CHECK_HISTORY, CheckRecord, StateStatus, Target};
use redb::{ReadableDatabase, ReadableTable};

use super::audit::{self, Audit};
use super::codec::{decode, encode, get_str};
use super::schema::{STATE_CHECKS, STATE_STATUS, STATE_TARGETS};
use super::{Result, Store};

/// What one state reconcile records, in one transaction.
#[derive(Debug)]
pub struct StateWrite {
    pub status: StateStatus,
    /// Targets whose record changed.
    pub targets: Vec<Target>,
    /// Checks that ran, also kept in the history: (machine id, result).
    pub checks: Vec<(String, CheckRecord)>,
    pub audits: Vec<Audit>,
    /// What the outside is told of it, queued with it.
    pub outgoing: Vec<linkops_reconcilers::outbox::Outgoing>,
}

impl Store {
    /// A state's status, if it was ever reconciled.
    pub fn state_status(&self, id: &str) -> Result<Option<StateStatus>> {
        self.read_one(STATE_STATUS, "state_status", id)
    }

    /// Every state's status, by state id.
    pub fn state_statuses(&self) -> Result<Vec<StateStatus>> {
        self.read_all(STATE_STATUS, "state_status")
    }

    /// A state's records on its machines, by machine id.
    pub fn state_targets(&self, state_id: &str) -> Result<BTreeMap<String, Target>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STATE_TARGETS)?;
        let mut targets = BTreeMap::new();
        for entry in table.range((state_id, "")..)? {
            let (key, value) = entry?;
            let (state, machine) = key.value();
            if state != state_id {
                break;
            }
            let target: Target = decode("state_targets", machine, value.value())?;
            targets.insert(machine.to_owned(), target);
        }
        Ok(targets)
    }

    /// Every state's record on every machine, by (state, machine), for table queries.
    pub fn scan_state_targets(&self, mut visit: impl FnMut(Target)) -> Result<()> {
        let tx = self.db.begin_read()?;
        for entry in tx.open_table(STATE_TARGETS)?.iter()? {
            let (key, value) = entry?;
            visit(decode("state_targets", key.value().1, value.value())?);
        }
        Ok(())
    }

    /// Every kept check result as (state, machine, result), for table queries.
    pub fn scan_state_checks(&self, mut visit: impl FnMut(&str, &str, CheckRecord)) -> Result<()> {
        let tx = self.db.begin_read()?;
        for entry in tx.open_table(STATE_CHECKS)?.iter()? {
            let (key, value) = entry?;
            let (state, machine, at) = key.value();
            visit(state, machine, decode("state_checks", at, value.value())?);
        }
        Ok(())
    }

    /// The newest check results of a state on a machine, newest first.
    pub fn state_checks(&self, state_id: &str, machine_id: &str) -> Result<Vec<CheckRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STATE_CHECKS)?;
        table
            .range((state_id, machine_id, i64::MIN)..=(state_id, machine_id, i64::MAX))?
            .rev()
            .take(CHECK_HISTORY)
            .map(|entry| {
                let (key, value) = entry?;
                decode("state_checks", key.value().2, value.value())
            })
            .collect()
    }

    /// Records what a state reconcile saw and decided: its status, the
    /// targets that changed, the checks (the history trimmed to
    /// [`CHECK_HISTORY`] per machine) and the audit entries, in one transaction.
    pub fn put_state(&self, write: StateWrite) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let state = write.status.state_id.as_str();
            let mut statuses = tx.open_table(STATE_STATUS)?;
            statuses.insert(state, encode(&write.status).as_slice())?;
            put_targets(&tx, &write.targets)?;
            let mut history = tx.open_table(STATE_CHECKS)?;
            for (machine, check) in &write.checks {
                history.insert(
                    (state, machine.as_str(), check.at_ms),
                    encode(check).as_slice(),
                )?;
                let stale: Vec<i64> = history
                    .range(
                        (state, machine.as_str(), i64::MIN)..=(state, machine.as_str(), i64::MAX),
                    )?
                    .rev()
                    .skip(CHECK_HISTORY)
                    .map(|entry| entry.map(|(key, _)| key.value().2))
                    .collect::<std::result::Result<_, _>>()?;
                for at in stale {
                    history.remove((state, machine.as_str(), at))?;
                }
            }
        }
        for entry in &write.audits {
            audit::append_audit(&tx, entry)?;
        }
        super::outbox::enqueue(&tx, &write.outgoing)?;
        tx.commit()?;
        Ok(())
    }

    /// Resumes a state's halted rollout, audited with it; the new status, or
    /// `None` when the state was never reconciled.
    pub fn resume_state_rollout(
        &self,
        id: &str,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Option<StateStatus>> {
        let tx = self.db.begin_write()?;
        let resumed = {
            let mut statuses = tx.open_table(STATE_STATUS)?;
            let current: Option<StateStatus> = get_str(&statuses, "state_status", id)?;
            match current {
                None => None,
                Some(mut status) => {
                    status.resume(now_ms);
                    statuses.insert(id, encode(&status).as_slice())?;
                    Some(status)
                }
            }
        };
        if resumed.is_some() {
            audit::append_audit(&tx, audit)?;
        }
        tx.commit()?;
        Ok(resumed)
    }
}

/// Writes targets' records in `tx`.
pub(super) fn put_targets(tx: &redb::WriteTransaction, targets: &[Target]) -> Result<()> {
    let mut table = tx.open_table(STATE_TARGETS)?;
    for target in targets {
        let key = (target.state_id.as_str(), target.machine_id.as_str());
        table.insert(key, encode(target).as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use linkops_reconcilers::operation::{
        HostResult, HostState, Operation, OperationState, Requester,
    };
    use linkops_reconcilers::state::{ApplyRecord, ApplyResult, CheckOutcome, Standing};

    use super::*;

    /// An apply is recorded with its operation, in one transaction: the
    /// target names the operation the store numbered, and the change is audited.
    #[test]
    fn a_state_s_apply_is_claimed_with_its_operation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut target = Target::new("motd", "web1", 0);
        target.apply = Some(ApplyRecord {
            digest: "d".into(),
            operation_id: 0,
            started_at_ms: 5,
            finished_at_ms: None,
            result: ApplyResult::Running,
        });
        let operation = Operation {
            id: 0,
            script: "motd".into(),
            params: Default::default(),
            machines: vec!["web1".into()],
            requested_by: Requester::State {
                id: "motd".into(),
                revision: "abc".into(),
            },
            state: OperationState::Pending,
            created_at_ms: 5,
            finished_at_ms: None,
            rollout: None,
            retry_of: None,
        };
        let host = HostResult {
            machine_id: "web1".into(),
            state: HostState::Pending,
            started_at_ms: None,
            finished_at_ms: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
        };
        let claim = super::super::Claim::StateApply {
            status: StateStatus::new("motd", "d", "abc", 5),
            targets: vec![target],
        };
        let created = store
            .create_operation(&operation, &[host], Some(claim), |_| Vec::new())
            .unwrap();
        let stored = &store.state_targets("motd").unwrap()["web1"];
        assert_eq!(
            stored.standing,
            Standing::Applying {
                operation_id: created.id
            }
        );
        assert_eq!(stored.apply.as_ref().unwrap().operation_id, created.id);
        assert!(store.state_status("motd").unwrap().is_some());
        let audit = store.audit_entries(0, 10).unwrap();
        let applied = audit.iter().find(|e| e.action == "state.apply").unwrap();
        assert_eq!(
            (applied.actor.as_str(), applied.target.as_str()),
            ("git@abc", "motd")
        );
    }

    #[test]
    fn check_history_keeps_the_newest_per_machine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let check = |at_ms| CheckRecord {
            digest: "d".into(),
            at_ms,
            duration_ms: 1,
            outcome: CheckOutcome::Holds,
            output: format!("check at {at_ms}"),
        };
        let status = StateStatus::new("motd", "d", "r", 0);
        for at in 0..(CHECK_HISTORY as i64 + 5) {
            store
                .put_state(StateWrite {
                    status: status.clone(),
                    targets: vec![Target::new("motd", "web1", at)],
                    checks: vec![("web1".into(), check(at)), ("web2".into(), check(at * 10))],
                    audits: vec![],
                    outgoing: vec![],
                })
                .unwrap();
        }
        let kept = store.state_checks("motd", "web1").unwrap();
        assert_eq!(kept.len(), CHECK_HISTORY);
        assert_eq!(kept[0].at_ms, CHECK_HISTORY as i64 + 4, "newest first");
        assert_eq!(kept.last().unwrap().at_ms, 5);
        assert_eq!(
            store.state_checks("motd", "web2").unwrap().len(),
            CHECK_HISTORY
        );
        assert!(store.state_checks("other", "web1").unwrap().is_empty());
        let targets = store.state_targets("motd").unwrap();
        assert_eq!(targets.keys().collect::<Vec<_>>(), ["web1"]);
        assert!(store.state_targets("mot").unwrap().is_empty());
    }
}
