//! Observed machine status, health history, and run-request records.

use linkops_reconcilers::machine::{self, Health, MachineStatus};
use linkops_reconcilers::run::{RunRecord, Statuses};
use linkops_reconcilers::suspension::Scope;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::audit::{self, Actor, Audit, AuditAction, Outcome};
use super::codec::{decode, encode, get_str};
use super::schema::{HEALTH_HISTORY, MACHINE_STATUS, RUN_REQUESTS, SUSPENSIONS};
use super::{Result, Store};

/// One health check, as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSample {
    pub at_ms: i64,
    pub health: Health,
    pub enrolled: bool,
}

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

impl Store {
    /// Suspends (or resumes) reconciliation of `scope`, audited as done `by`
    /// (the fleet's target is `*`, which no machine id can be).
    pub fn set_suspended(&self, scope: &Scope, suspended: bool, by: &Actor) -> Result<()> {
        let key = scope_key(scope);
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SUSPENSIONS)?;
            if suspended {
                if table.get(key)?.is_none() {
                    table.insert(key, super::now_ms())?;
                }
            } else {
                table.remove(key)?;
            }
        }
        let action = match suspended {
            true => AuditAction::ReconcileSuspend,
            false => AuditAction::ReconcileResume,
        };
        audit::append(&tx, by, action, key, Outcome::Success, None)?;
        tx.commit()?;
        self.fleet_changes.record(scope.machine());
        Ok(())
    }

    /// Suspended scopes with since when (ms).
    pub fn suspensions(&self) -> Result<Vec<(Scope, i64)>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SUSPENSIONS)?;
        table
            .range::<&str>(..)?
            .map(|entry| {
                let (key, value) = entry?;
                let scope = match key.value() {
                    FLEET_KEY => Scope::Fleet,
                    id => Scope::Machine(id.to_owned()),
                };
                Ok((scope, value.value()))
            })
            .collect()
    }

    pub fn machine_status(&self, id: &str) -> Result<Option<MachineStatus>> {
        self.read_one(MACHINE_STATUS, "machine_status", id)
    }

    /// The statuses the store has of `ids` (one read), for a decision to take as a value.
    pub fn machine_statuses(&self, ids: &[String]) -> Result<Statuses> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MACHINE_STATUS)?;
        let mut statuses = Statuses::new();
        for id in ids {
            if let Some(status) = get_str(&table, "machine_status", id)? {
                statuses.insert(id.clone(), status);
            }
        }
        Ok(statuses)
    }

    /// Stores machines' statuses in one transaction: each status, with its
    /// sample appended to the health history and its audits (what the change
    /// means: a host key refused), in order.
    pub fn put_machine_statuses(&self, writes: &[StatusWrite]) -> Result<()> {
        let tx = self.db.begin_write()?;
        let mut shown = Vec::new();
        {
            let mut table = tx.open_table(MACHINE_STATUS)?;
            let mut history = tx.open_table(HEALTH_HISTORY)?;
            for write in writes {
                for entry in &write.audits {
                    audit::append_audit(&tx, entry)?;
                }
                super::outbox::enqueue(&tx, &write.outgoing)?;
                let id = write.status.machine_id.as_str();
                let before: Option<MachineStatus> = get_str(&table, "machine_status", id)?;
                table.insert(id, encode(&write.status).as_slice())?;
                if let Some(sample) = &write.sample {
                    // Thinned by the retention pass (`retention.rs`), not here:
                    // a check's write stays one insert.
                    history.insert((id, sample.at_ms), encode(sample).as_slice())?;
                }
                if machine::shown_change(before.as_ref(), &write.status) {
                    shown.push(id);
                }
            }
        }
        tx.commit()?;
        for id in shown {
            self.fleet_changes.record(Some(id));
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
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let history = tx.open_table(HEALTH_HISTORY)?;
        history
            .range((id, i64::MIN)..=(id, i64::MAX))?
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                decode("health_history", key.value().0, value.value())
            })
            .collect()
    }

    pub fn run_record(&self, id: &str) -> Result<Option<RunRecord>> {
        self.read_one(RUN_REQUESTS, "run_requests", id)
    }

    /// Updates a run-request's record. A record that is `Started` is never
    /// overwritten with another state: the claim is forever.
    pub fn put_run_record(&self, record: &RunRecord) -> Result<()> {
        use linkops_reconcilers::run::RunState;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RUN_REQUESTS)?;
            let current: Option<RunRecord> = get_str(&table, "run_requests", &record.id)?;
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
                table.insert(record.id.as_str(), encode(record).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every run-request record, by id.
    pub fn run_records(&self) -> Result<Vec<RunRecord>> {
        self.read_all(RUN_REQUESTS, "run_requests")
    }
}
