//! Sync history, and applying a valid revision's inventory and catalog.
//!
//! Applying and recording happen in one transaction: the store never shows a
//! revision as applied without its machines and scripts, nor the reverse.

use std::collections::BTreeMap;

use linkops_reconcilers::desired::DesiredState;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::audit::{self, Audit};
use super::engine::{Json, Read, Table, Write, WriteTx};
use super::records::{Declared, MachineRecord, SyncAsk, SyncOutcome, SyncRecord};
use super::schema::{APPLIED_STATE, MACHINES, SCRIPTS, SYNC_ASKS, SYNC_HISTORY};
use super::{Result, Store};

impl Store {
    /// Records a sync attempt; when `desired` is given (outcome `Applied`),
    /// also applies its machines and scripts, in the same transaction.
    /// The attempt `keep` before it goes (`[retention] sync_records`), unless
    /// it applied a revision: those are the deploy history and stay.
    pub fn record_sync(
        &self,
        mut record: SyncRecord,
        desired: Option<&DesiredState>,
        audit: Option<&Audit>,
        keep: u64,
        outgoing: &[linkops_reconcilers::outbox::Outgoing],
    ) -> Result<SyncRecord> {
        let mut tx = self.write()?;
        super::outbox::enqueue(&mut tx, outgoing, self.outbox_bound)?;
        if let Some(entry) = audit {
            audit::append_audit(&mut tx, entry)?;
        }
        record.seq = tx.last(SYNC_HISTORY)?.map_or(1, |(seq, _)| seq + 1);
        tx.insert(SYNC_HISTORY, record.seq, &record)?;
        if let Some(old) = record.seq.checked_sub(keep) {
            let applied = match tx.get(SYNC_HISTORY, old)? {
                Some(old) => matches!(old.outcome, SyncOutcome::Applied { .. }),
                None => true,
            };
            if !applied {
                tx.remove(SYNC_HISTORY, old)?;
            }
        }
        if let Some(desired) = desired {
            let now = record.started_at_ms + i64::try_from(record.duration_ms).unwrap_or(0);
            apply(&mut tx, desired, now)?;
            put_applied_state(&mut tx, desired)?;
        }
        tx.commit()?;
        Ok(record)
    }

    /// The desired state applied at `revision`, if it is the one in force.
    pub fn applied_state(&self, revision: &str) -> Result<Option<DesiredState>> {
        self.read_one(APPLIED_STATE, revision)
    }

    /// Makes `desired` the state in force that replicas follow, unless it
    /// already is (a store written before they followed it).
    pub fn keep_applied_state(&self, desired: &DesiredState) -> Result<()> {
        if self.applied_state(&desired.revision)?.is_some() {
            return Ok(());
        }
        let mut tx = self.write()?;
        put_applied_state(&mut tx, desired)?;
        tx.commit()
    }

    /// The first sync attempt after `seq` that `trigger` asked for.
    pub fn sync_by(&self, seq: u64, trigger: &str) -> Result<Option<SyncRecord>> {
        for entry in self.read()?.range(SYNC_HISTORY, seq + 1..) {
            let (_, record) = entry?;
            if record.trigger == trigger {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Asks the replica that leads for a sync or a plan; the number of the
    /// newest attempt at the time: a sync's record comes after it.
    pub fn ask_sync(&self, ask: &SyncAsk) -> Result<u64> {
        let mut tx = self.write()?;
        let seq = tx.last(SYNC_HISTORY)?.map_or(0, |(seq, _)| seq);
        let number = tx.last(SYNC_ASKS)?.map_or(1, |(number, _)| number + 1);
        tx.insert(SYNC_ASKS, number, ask)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Takes what was asked for through other replicas, oldest first.
    pub fn take_sync_asks(&self) -> Result<Vec<SyncAsk>> {
        if self.read()?.first(SYNC_ASKS)?.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.write()?;
        let asks: Vec<(u64, SyncAsk)> = tx.all(SYNC_ASKS, false).collect::<Result<_>>()?;
        for (ask, _) in &asks {
            tx.remove(SYNC_ASKS, *ask)?;
        }
        tx.commit()?;
        Ok(asks.into_iter().map(|(_, ask)| ask).collect())
    }

    /// The most recent sync attempts, newest first.
    pub fn recent_syncs(&self, limit: usize) -> Result<Vec<SyncRecord>> {
        self.read()?
            .all(SYNC_HISTORY, true)
            .take(limit)
            .map(|entry| entry.map(|(_, record)| record))
            .collect()
    }

    /// The latest attempt that applied a revision.
    pub fn last_applied_sync(&self) -> Result<Option<SyncRecord>> {
        for entry in self.read()?.all(SYNC_HISTORY, true) {
            let (_, record) = entry?;
            if matches!(record.outcome, SyncOutcome::Applied { .. }) {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    pub fn machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        self.read_one(MACHINES, id)
    }
}

/// Replaces the state in force with `desired`.
fn put_applied_state(tx: &mut WriteTx, desired: &DesiredState) -> Result<()> {
    tx.retain(APPLIED_STATE, |revision, _| *revision == desired.revision)?;
    tx.insert(APPLIED_STATE, &desired.revision, desired)
}

/// Upserts the revision's machines and scripts and marks the ones it dropped as removed.
fn apply(tx: &mut WriteTx, desired: &DesiredState, now_ms: i64) -> Result<()> {
    let machines = desired.machines.iter().map(|m| (m.id.as_str(), m));
    declare(tx, MACHINES, machines, &desired.revision, now_ms)?;
    let scripts = desired.scripts.iter().map(|(id, s)| (id.as_str(), s));
    declare(tx, SCRIPTS, scripts, &desired.revision, now_ms)
}

/// Makes `table` hold exactly `current` as declared by `revision`, keeping
/// the records of what it no longer declares, marked removed.
fn declare<'a, T: Clone + Serialize + DeserializeOwned + 'a>(
    tx: &mut WriteTx,
    table: Table<String, Json<Declared<T>>>,
    current: impl Iterator<Item = (&'a str, &'a T)>,
    revision: &str,
    now_ms: i64,
) -> Result<()> {
    let current: BTreeMap<&str, &T> = current.collect();
    let mut dropped = Vec::new();
    for entry in tx.all(table, false) {
        let (id, mut record) = entry?;
        if !current.contains_key(id.as_str()) && record.removed_at_ms.is_none() {
            record.removed_at_ms = Some(now_ms);
            dropped.push((id, record));
        }
    }
    for (id, record) in dropped {
        tx.insert(table, &id, &record)?;
    }
    for (id, spec) in current {
        let record = Declared {
            spec: spec.clone(),
            revision: revision.to_owned(),
            removed_at_ms: None,
        };
        tx.insert(table, id, &record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    #[test]
    fn old_attempts_go_but_applied_revisions_stay() {
        for backing in testing::backings() {
            let store = backing.open();
            let record = |outcome| SyncRecord {
                seq: 0,
                started_at_ms: 0,
                duration_ms: 0,
                trigger: "interval".into(),
                revision: None,
                previous: None,
                outcome,
            };
            let applied = SyncOutcome::Applied {
                changed_files: vec![],
                forced: false,
            };
            const KEEP: u64 = 20;
            store
                .record_sync(record(applied), None, None, KEEP, &[])
                .unwrap();
            for _ in 0..KEEP + 5 {
                store
                    .record_sync(record(SyncOutcome::Unchanged), None, None, KEEP, &[])
                    .unwrap();
            }
            let kept = store.recent_syncs(usize::MAX).unwrap();
            // The newest KEEP, and the applied first one.
            assert_eq!(kept.len() as u64, KEEP + 1);
            assert_eq!(store.last_applied_sync().unwrap().unwrap().seq, 1);
        }
    }
}
