//! What the fleet's pictures read: the hourly rollups the leader samples
//! into (kept [`picture::KEEP_MS`], pruned as samples are added), and the
//! operations of a span.

use std::collections::BTreeMap;

use linkops_reconcilers::operation::Operation;
use linkops_reconcilers::picture::{self, Rollup};

use super::engine::{Read, Write};
use super::schema::ROLLUPS;
use super::{Result, SeqTable, Store};

impl Store {
    /// Adds one sample of each series (its counts by category) to the rollup
    /// of the hour `at_ms` falls in, and lets go of rollups older than kept.
    pub fn add_samples(
        &self,
        at_ms: i64,
        samples: &[(String, BTreeMap<String, u64>)],
    ) -> Result<()> {
        let hour = picture::hour_of(at_ms);
        let mut tx = self.write()?;
        for (series, counts) in samples {
            let mut rollup = tx
                .get(ROLLUPS, (series.as_str(), hour))?
                .unwrap_or_default();
            rollup.add(counts);
            tx.insert(ROLLUPS, (series.as_str(), hour), &rollup)?;
        }
        let expired: Vec<(String, i64)> = (tx.all(ROLLUPS, false))
            .filter(|entry| {
                entry
                    .as_ref()
                    .map_or(true, |((_, at), _)| *at < hour - picture::KEEP_MS)
            })
            .map(|entry| entry.map(|(key, _)| key))
            .collect::<Result<_>>()?;
        for (series, at) in expired {
            tx.remove(ROLLUPS, (series.as_str(), at))?;
        }
        tx.commit()
    }

    /// A series' rollups from the hour of `since_ms` on, by hour.
    pub fn rollups(&self, series: &str, since_ms: i64) -> Result<BTreeMap<i64, Rollup>> {
        let read = self.read()?;
        read.range(
            ROLLUPS,
            (series, picture::hour_of(since_ms))..=(series, i64::MAX),
        )
        .map(|entry| entry.map(|((_, at), rollup)| (at, rollup)))
        .collect()
    }

    /// The operations that finished since `since_ms`, newest first, at most
    /// [`picture::MAX_OPERATIONS`] (older ones that still run are left out).
    pub fn operations_since(&self, since_ms: i64) -> Result<Vec<Operation>> {
        let mut found = Vec::new();
        // Ids grow with creation: past a day before the span, nothing finishes in it.
        let oldest_created = since_ms - picture::Span::Week.ms();
        self.scan_seq(SeqTable::Operations, true, None, |operation: Operation| {
            if operation.created_at_ms < oldest_created {
                return false;
            }
            if operation.finished_at_ms.is_some_and(|at| at >= since_ms) {
                found.push(operation);
            }
            found.len() < picture::MAX_OPERATIONS
        })?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    #[test]
    fn samples_add_up_per_hour_and_old_hours_go() {
        let hour = picture::HOUR_MS;
        let now = 1_800_000_000_000;
        for backing in testing::backings() {
            let store = backing.open();
            let counts = |reachable| BTreeMap::from([("reachable".to_owned(), reachable)]);
            store
                .add_samples(
                    now - picture::KEEP_MS - hour,
                    &[("availability".into(), counts(1))],
                )
                .unwrap();
            store
                .add_samples(now, &[("availability".into(), counts(4))])
                .unwrap();
            store
                .add_samples(
                    now + 60_000,
                    &[
                        ("availability".into(), counts(6)),
                        ("state/motd".into(), counts(2)),
                    ],
                )
                .unwrap();
            let kept = store.rollups("availability", 0).unwrap();
            assert_eq!(kept.len(), 1, "the hour older than kept went: {kept:?}");
            let rollup = &kept[&picture::hour_of(now)];
            assert_eq!((rollup.samples, rollup.sums["reachable"]), (2, 10));
            assert_eq!(store.rollups("state/motd", now).unwrap().len(), 1);
        }
    }
}
