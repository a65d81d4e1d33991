//! Schedules' fires: each (schedule, due time) recorded once — started with
//! its operation (`operations.rs` claims it in the operation's transaction)
//! or passed — and when each schedule was first seen.

use linkops_reconcilers::outbox::Outgoing;
use linkops_reconcilers::schedule::{FireOutcome, FireRecord};

use super::engine::{Read, Write, WriteTx};
use super::schema::{SCHEDULE_FIRES, SCHEDULE_SINCE};
use super::{Error, Result, Store};

/// Records `fire` unless the fire (schedule, due time) has a record already.
pub(super) fn claim_fire(tx: &mut WriteTx, fire: &FireRecord) -> Result<()> {
    let key = (fire.schedule.as_str(), fire.due_ms);
    if let Some(recorded) = tx.get(SCHEDULE_FIRES, key)? {
        return Err(Error::AlreadyFired {
            schedule: fire.schedule.clone(),
            due_ms: fire.due_ms,
            outcome: recorded.outcome.name(),
        });
    }
    tx.insert(SCHEDULE_FIRES, key, fire)
}

impl Store {
    /// When `schedule` was first seen: `now_ms` the first time it is asked.
    pub fn schedule_since(&self, schedule: &str, now_ms: i64) -> Result<i64> {
        if let Some(since) = self.read_one(SCHEDULE_SINCE, schedule)? {
            return Ok(since);
        }
        let mut tx = self.write()?;
        let since = match tx.get(SCHEDULE_SINCE, schedule)? {
            Some(since) => since,
            None => {
                tx.insert(SCHEDULE_SINCE, schedule, &now_ms)?;
                now_ms
            }
        };
        tx.commit()?;
        Ok(since)
    }

    /// When `schedule` was first seen, if its reconcile has seen it.
    pub fn schedule_since_if_seen(&self, schedule: &str) -> Result<Option<i64>> {
        self.read_one(SCHEDULE_SINCE, schedule)
    }

    /// Records a fire that did not run (missed, skipped), with what it
    /// tells the outside (`outgoing`), unless the fire has a record already.
    pub fn record_passed_fire(&self, fire: &FireRecord, outgoing: &[Outgoing]) -> Result<()> {
        debug_assert!(!matches!(fire.outcome, FireOutcome::Started { .. }));
        let mut tx = self.write()?;
        claim_fire(&mut tx, fire)?;
        super::outbox::enqueue(&mut tx, outgoing, self.outbox_bound)?;
        tx.commit()
    }

    /// An approved fire's operation: its record says it started.
    pub fn set_fire_started(&self, schedule: &str, due_ms: i64, operation_id: u64) -> Result<()> {
        let mut tx = self.write()?;
        if let Some(mut fire) = tx.get(SCHEDULE_FIRES, (schedule, due_ms))? {
            fire.outcome = FireOutcome::Started { operation_id };
            tx.insert(SCHEDULE_FIRES, (schedule, due_ms), &fire)?;
        }
        tx.commit()
    }

    /// A schedule's fires, newest first, at most `limit`.
    pub fn schedule_fires(&self, schedule: &str, limit: usize) -> Result<Vec<FireRecord>> {
        let read = self.read()?;
        read.range_rev(SCHEDULE_FIRES, (schedule, i64::MIN)..=(schedule, i64::MAX))
            .take(limit)
            .map(|entry| entry.map(|(_, fire)| fire))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    fn fire(due_ms: i64, outcome: FireOutcome) -> FireRecord {
        FireRecord {
            schedule: "nightly".into(),
            due_ms,
            digest: "d".into(),
            revision: "r".into(),
            at_ms: due_ms,
            outcome,
        }
    }

    #[test]
    fn a_fire_is_recorded_once_and_the_newest_comes_first() {
        for backing in testing::backings() {
            let store = backing.open();
            assert_eq!(store.schedule_since("nightly", 5).unwrap(), 5);
            assert_eq!(
                store.schedule_since("nightly", 9).unwrap(),
                5,
                "the first sight stays"
            );
            let missed = FireOutcome::Missed {
                reason: "down".into(),
            };
            store
                .record_passed_fire(&fire(100, missed.clone()), &[])
                .unwrap();
            store
                .record_passed_fire(&fire(200, missed.clone()), &[])
                .unwrap();
            let again = store
                .record_passed_fire(&fire(100, missed), &[])
                .unwrap_err();
            assert!(
                matches!(
                    again,
                    Error::AlreadyFired {
                        outcome: "missed",
                        ..
                    }
                ),
                "{again}"
            );
            let fires = store.schedule_fires("nightly", 10).unwrap();
            assert_eq!(
                fires.iter().map(|f| f.due_ms).collect::<Vec<_>>(),
                [200, 100]
            );
        }
    }
}
