//! Observed machine status, health history, and run-request records.

use linkops_reconcilers::machine::{self, MachineStatus};
use linkops_reconcilers::run::{RunRecord, Statuses};
use linkops_reconcilers::suspension::Scope;

use super::audit::{self, Actor, Audit, AuditAction};
use super::engine::{Read, Write, WriteTx};
use super::records::HealthSample;
use super::records::Outcome;
use super::schema::{FLEET_CHANGES, HEALTH_HISTORY, MACHINE_STATUS, RUN_REQUESTS, SUSPENSIONS};
use super::{Result, Store};

/// One machine's status to store, with the health sample of the check that
/// observed it and the audit entries the change means.
#[derive(Debug, Clone)]
pub struct StatusWrite {
    pub status: MachineStatus,
    pub sample: Option<HealthSample>,
    pub audits: Vec<Audit>,
    /// What the sinks are told of it, queued with it.
    pub outgoing: Vec<linkops_reconcilers::outbox::Outgoing>,
}

/// The suspensions table's key of the fleet-wide hold (schema version 5): no
/// machine id can be it, as ids start with a letter or digit.
pub(super) const FLEET_KEY: &str = "*";

fn scope_key(scope: &Scope) -> &str {
    scope.machine().unwrap_or(FLEET_KEY)
}

/// Changes the store's shared log keeps (the in-memory one keeps 20,000).
const SHARED_FLEET_CHANGES: u64 = 20_000;

/// Changes a replica reads from the shared log at a time.
const FLEET_CHANGES_PAGE: usize = 4_096;

impl Store {
    /// Suspends (or resumes) reconciliation of `scope`, audited as done `by`
    /// (the fleet's target is `*`, which no machine id can be).
    pub fn set_suspended(&self, scope: &Scope, suspended: bool, by: &Actor) -> Result<()> {
        let key = scope_key(scope);
        let mut tx = self.write()?;
        if suspended {
            if tx.get(SUSPENSIONS, key)?.is_none() {
                tx.insert(SUSPENSIONS, key, &super::now_ms())?;
            }
        } else {
            tx.remove(SUSPENSIONS, key)?;
        }
        let action = match suspended {
            true => AuditAction::ReconcileSuspend,
            false => AuditAction::ReconcileResume,
        };
        audit::append(&mut tx, by, action, key, Outcome::Success, None)?;
        let changed = [scope.machine()];
        self.share_fleet_changes(&mut tx, &changed)?;
        tx.commit()?;
        self.record_fleet_changes(&changed);
        Ok(())
    }

    /// Suspended scopes with since when (ms).
    pub fn suspensions(&self) -> Result<Vec<(Scope, i64)>> {
        self.read()?
            .all(SUSPENSIONS, false)
            .map(|entry| {
                let (key, since) = entry?;
                let scope = match key.as_str() {
                    FLEET_KEY => Scope::Fleet,
                    _ => Scope::Machine(key),
                };
                Ok((scope, since))
            })
            .collect()
    }

    pub fn machine_status(&self, id: &str) -> Result<Option<MachineStatus>> {
        self.read_one(MACHINE_STATUS, id)
    }

    /// The statuses the store has of `ids` (one read), for a decision to take as a value.
    pub fn machine_statuses(&self, ids: &[String]) -> Result<Statuses> {
        let tx = self.read()?;
        let mut statuses = Statuses::new();
        for id in ids {
            if let Some(status) = tx.get(MACHINE_STATUS, id)? {
                statuses.insert(id.clone(), status);
            }
        }
        Ok(statuses)
    }

    /// Stores machines' statuses in one transaction: each status, with its
    /// sample appended to the health history and its audits (what the change
    /// means: a host key refused), in order.
    pub fn put_machine_statuses(&self, writes: &[StatusWrite]) -> Result<()> {
        let mut tx = self.write()?;
        let mut shown = Vec::new();
        for write in writes {
            for entry in &write.audits {
                audit::append_audit(&mut tx, entry)?;
            }
            super::outbox::enqueue(&mut tx, &write.outgoing, self.outbox_bound)?;
            let id = write.status.machine_id.as_str();
            let before = tx.get(MACHINE_STATUS, id)?;
            tx.insert(MACHINE_STATUS, id, &write.status)?;
            if let Some(sample) = &write.sample {
                // Thinned by the retention pass (`retention.rs`), not here:
                // a check's write stays one insert.
                tx.insert(HEALTH_HISTORY, (id, sample.at_ms), sample)?;
            }
            if machine::shown_change(before.as_ref(), &write.status) {
                shown.push(Some(id));
            }
        }
        self.share_fleet_changes(&mut tx, &shown)?;
        tx.commit()?;
        self.record_fleet_changes(&shown);
        Ok(())
    }

    /// On a shared store, numbers `changed` in the store's change log, in
    /// the transaction that changes them; every replica's log is fed from it
    /// ([`Store::follow_fleet_changes`]).
    fn share_fleet_changes(&self, tx: &mut WriteTx, changed: &[Option<&str>]) -> Result<()> {
        if !self.is_shared() || changed.is_empty() {
            return Ok(());
        }
        let mut seq = tx.last(FLEET_CHANGES)?.map_or(0, |(seq, _)| seq);
        for machine in changed {
            seq += 1;
            tx.insert(FLEET_CHANGES, seq, &machine.map(str::to_owned))?;
            if let Some(old) = seq.checked_sub(SHARED_FLEET_CHANGES) {
                tx.remove(FLEET_CHANGES, old)?;
            }
        }
        Ok(())
    }

    /// Tells this process's followers of the fleet of `changed` at once (an
    /// unshared store's only log; a shared one's come through the store).
    fn record_fleet_changes(&self, changed: &[Option<&str>]) {
        if self.is_shared() {
            return;
        }
        for machine in changed {
            self.fleet_changes.record(*machine);
        }
    }

    /// Brings this replica's log of fleet changes up to the store's: what
    /// any replica changed after `seen` (updated), which starts at the
    /// newest when `None`. Reads a page at most; called again, it goes on.
    pub fn follow_fleet_changes(&self, seen: &mut Option<u64>) -> Result<()> {
        let tx = self.read()?;
        let Some(after) = *seen else {
            *seen = Some(tx.last(FLEET_CHANGES)?.map_or(0, |(seq, _)| seq));
            return Ok(());
        };
        let newer: Vec<(u64, Option<String>)> = tx
            .range(FLEET_CHANGES, after + 1..)
            .take(FLEET_CHANGES_PAGE)
            .collect::<Result<_>>()?;
        if let Some(oldest) = newer.first().map(|(seq, _)| *seq)
            && oldest > after + 1
        {
            // Fell behind what the store keeps: every view may have changed.
            self.fleet_changes.record(None);
        }
        for (seq, machine) in newer {
            self.fleet_changes.record(machine.as_deref());
            *seen = Some(seq);
        }
        Ok(())
    }

    /// The newest version of the fleet's change log: it changes after each
    /// commit that changes what a machine's view shows.
    pub fn fleet_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.fleet_changes.subscribe()
    }

    /// Which process's versions [`Store::fleet_version`] counts.
    pub fn fleet_incarnation(&self) -> u32 {
        self.fleet_changes.incarnation()
    }

    /// Which machines' views changed after `version` (see [`super::Changed`]),
    /// and the version that covers; `None` when the log no longer reaches back.
    pub fn fleet_changed_since(&self, version: u64) -> Option<(u64, super::Changed)> {
        self.fleet_changes.since(version)
    }

    /// The newest `limit` health samples of a machine, newest first.
    pub fn health_history(&self, id: &str, limit: usize) -> Result<Vec<HealthSample>> {
        self.read()?
            .range_rev(HEALTH_HISTORY, (id, i64::MIN)..=(id, i64::MAX))
            .take(limit)
            .map(|entry| entry.map(|(_, sample)| sample))
            .collect()
    }

    pub fn run_record(&self, id: &str) -> Result<Option<RunRecord>> {
        self.read_one(RUN_REQUESTS, id)
    }

    /// Updates a run-request's record. A record that is `Started` is never
    /// overwritten with another state: the claim is forever.
    pub fn put_run_record(&self, record: &RunRecord) -> Result<()> {
        use linkops_reconcilers::run::RunState;
        let mut tx = self.write()?;
        {
            let current = tx.get(RUN_REQUESTS, &record.id)?;
            let keeps_claim = match (&current, &record.state) {
                (
                    Some(RunRecord {
                        state: RunState::Started { operation_id },
                        ..
                    }),
                    RunState::Started { operation_id: new },
                ) => operation_id == new,
                (
                    Some(RunRecord {
                        state: RunState::Started { .. },
                        ..
                    }),
                    _,
                ) => false,
                _ => true,
            };
            if keeps_claim {
                tx.insert(RUN_REQUESTS, &record.id, record)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every run-request record, by id.
    pub fn run_records(&self) -> Result<Vec<RunRecord>> {
        self.read_all(RUN_REQUESTS)
    }
}
