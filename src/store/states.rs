//! Declared states as observed: each state's status and rollout, its record
//! on every target machine, and a bounded history of check results.
//!
//! A state's applies are written with the operation that runs them
//! (`Store::create_operation` with a [`super::Claim::StateApply`]): after a
//! crash the target's record names the interrupted operation, so the machine
//! is checked again before anything is applied again.

use std::collections::BTreeMap;

use linkops_reconcilers::state::{CHECK_HISTORY, CheckRecord, StateStatus, Target};

use super::audit::{self, Audit};
use super::engine::{Read, Write, WriteTx};
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
        self.read_one(STATE_STATUS, id)
    }

    /// Every state's status, by state id.
    pub fn state_statuses(&self) -> Result<Vec<StateStatus>> {
        self.read_all(STATE_STATUS)
    }

    /// A state's records on its machines, by machine id.
    pub fn state_targets(&self, state_id: &str) -> Result<BTreeMap<String, Target>> {
        targets_of(&self.read()?, state_id)
    }

    /// A state's status and its records on its machines, read together: the
    /// counts are those of the records.
    pub fn state_detail(
        &self,
        state_id: &str,
    ) -> Result<(Option<StateStatus>, BTreeMap<String, Target>)> {
        let tx = self.read()?;
        Ok((tx.get(STATE_STATUS, state_id)?, targets_of(&tx, state_id)?))
    }

    /// Every state's record on every machine, by (state, machine), for table queries.
    pub fn scan_state_targets(&self, mut visit: impl FnMut(Target)) -> Result<()> {
        for entry in self.read()?.all(STATE_TARGETS, false) {
            visit(entry?.1);
        }
        Ok(())
    }

    /// Every kept check result as (state, machine, result), for table queries.
    pub fn scan_state_checks(&self, mut visit: impl FnMut(&str, &str, CheckRecord)) -> Result<()> {
        for entry in self.read()?.all(STATE_CHECKS, false) {
            let ((state, machine, _), check) = entry?;
            visit(&state, &machine, check);
        }
        Ok(())
    }

    /// The newest check results of a state on a machine, newest first.
    pub fn state_checks(&self, state_id: &str, machine_id: &str) -> Result<Vec<CheckRecord>> {
        self.read()?
            .range_rev(
                STATE_CHECKS,
                (state_id, machine_id, i64::MIN)..=(state_id, machine_id, i64::MAX),
            )
            .take(CHECK_HISTORY)
            .map(|entry| entry.map(|(_, check)| check))
            .collect()
    }

    /// Records what a state reconcile saw and decided: its status, the
    /// targets that changed, the checks (the history trimmed to
    /// [`CHECK_HISTORY`] per machine) and the audit entries, in one transaction.
    pub fn put_state(&self, write: StateWrite) -> Result<()> {
        let mut tx = self.write()?;
        let state = write.status.state_id.as_str();
        tx.insert(STATE_STATUS, state, &write.status)?;
        put_targets(&mut tx, &write.targets)?;
        for (machine, check) in &write.checks {
            let machine = machine.as_str();
            tx.insert(STATE_CHECKS, (state, machine, check.at_ms), check)?;
            let stale: Vec<i64> = tx
                .range_rev(
                    STATE_CHECKS,
                    (state, machine, i64::MIN)..=(state, machine, i64::MAX),
                )
                .skip(CHECK_HISTORY)
                .map(|entry| entry.map(|((_, _, at), _)| at))
                .collect::<Result<_>>()?;
            for at in stale {
                tx.remove(STATE_CHECKS, (state, machine, at))?;
            }
        }
        for entry in &write.audits {
            audit::append_audit(&mut tx, entry)?;
        }
        super::outbox::enqueue(&mut tx, &write.outgoing, self.outbox_bound)?;
        tx.commit()
    }

    /// Resumes a state's halted rollout, audited with it; the new status, or
    /// `None` when the state was never reconciled.
    pub fn resume_state_rollout(
        &self,
        id: &str,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Option<StateStatus>> {
        let mut tx = self.write()?;
        let Some(mut status) = tx.get(STATE_STATUS, id)? else {
            return Ok(None);
        };
        status.resume(now_ms);
        tx.insert(STATE_STATUS, id, &status)?;
        audit::append_audit(&mut tx, audit)?;
        tx.commit()?;
        Ok(Some(status))
    }
}

/// Writes targets' records in `tx`.
pub(super) fn put_targets(tx: &mut WriteTx, targets: &[Target]) -> Result<()> {
    for target in targets {
        let key = (target.state_id.as_str(), target.machine_id.as_str());
        tx.insert(STATE_TARGETS, key, target)?;
    }
    Ok(())
}

/// The records of state `state_id` on its machines, by machine id.
fn targets_of(tx: &impl Read, state_id: &str) -> Result<BTreeMap<String, Target>> {
    let mut targets = BTreeMap::new();
    for entry in tx.range(STATE_TARGETS, (state_id, "")..) {
        let ((state, machine), target) = entry?;
        if state != state_id {
            break;
        }
        targets.insert(machine, target);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use crate::store::testing;
    use linkops_reconcilers::operation::{
        HostResult, HostState, Operation, OperationState, Requester,
    };
    use linkops_reconcilers::state::{ApplyRecord, ApplyResult, CheckOutcome, Standing};

    use super::*;

    /// An apply is recorded with its operation, in one transaction: the
    /// target names the operation the store numbered, and the change is audited.
    #[test]
    fn a_state_s_apply_is_claimed_with_its_operation() {
        for backing in testing::backings() {
            let store = backing.open();
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
                secrets: Vec::new(),
            };
            let host = HostResult {
                machine_id: "web1".into(),
                state: HostState::Pending,
                started_at_ms: None,
                finished_at_ms: None,
                stdout_bytes: 0,
                stderr_bytes: 0,
                certificate: None,
            };
            let claim = super::super::Claim::StateApply {
                status: StateStatus::new("motd", "d", "abc", 5),
                targets: vec![target],
            };
            let created = store
                .create_operation(&operation, "local", &[host], Some(claim), |_| Vec::new())
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
            // The detail the API shows reads both at once.
            let (status, targets) = store.state_detail("motd").unwrap();
            assert_eq!(status, store.state_status("motd").unwrap());
            assert_eq!(targets["web1"].standing, stored.standing);
            let audit = store.audit_entries(0, 10).unwrap();
            let applied = audit.iter().find(|e| e.action == "state.apply").unwrap();
            assert_eq!(
                (applied.actor.as_str(), applied.target.as_str()),
                ("git@abc", "motd")
            );
        }
    }

    #[test]
    fn check_history_keeps_the_newest_per_machine() {
        for backing in testing::backings() {
            let store = backing.open();
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
}
