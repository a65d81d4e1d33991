//! Machines' facts: the last gathering of each (`machine_facts`) and what
//! each gathering changed (`fact_changes`, the newest
//! [`facts::MAX_CHANGES`] per machine), written in one transaction.

use linkops_reconcilers::facts::{self, FactChange, Facts, MachineFacts};
use linkops_reconcilers::machine::Machine;
use linkops_reconcilers::script::Targets;

use super::engine::{Read, Write};
use super::schema::{FACT_CHANGES, MACHINE_FACTS};
use super::{Result, Store};

impl Store {
    /// Records a gathering: the machine's facts now, and a change when any fact
    /// differs from the last gathering's (the oldest changes beyond the bound go).
    pub fn record_facts(&self, gathered: &MachineFacts) -> Result<()> {
        let mut tx = self.write()?;
        let id = gathered.machine_id.as_str();
        let before = tx.get(MACHINE_FACTS, id)?;
        let changed = match &before {
            Some(before) => facts::changes(&before.facts, &gathered.facts),
            // The first gathering is no change: the history starts with it.
            None => Default::default(),
        };
        if !changed.is_empty() {
            let at_ms = gathered.gathered_at_ms;
            tx.insert(FACT_CHANGES, (id, at_ms), &FactChange { at_ms, changed })?;
            let kept: Vec<i64> = tx
                .range_rev(FACT_CHANGES, (id, i64::MIN)..=(id, i64::MAX))
                .skip(facts::MAX_CHANGES)
                .map(|entry| entry.map(|((_, at), _)| at))
                .collect::<Result<_>>()?;
            for at in kept {
                tx.remove(FACT_CHANGES, (id, at))?;
            }
        }
        tx.insert(MACHINE_FACTS, id, gathered)?;
        tx.commit()
    }

    /// A gathering that failed: the last good facts stay, with the error beside them.
    pub fn record_facts_error(&self, machine_id: &str, error: &str, at_ms: i64) -> Result<()> {
        let mut tx = self.write()?;
        let mut kept = tx.get(MACHINE_FACTS, machine_id)?.unwrap_or(MachineFacts {
            machine_id: machine_id.to_owned(),
            gathered_at_ms: at_ms,
            facts: Default::default(),
            error: None,
        });
        kept.error = Some(error.to_owned());
        kept.gathered_at_ms = at_ms;
        tx.insert(MACHINE_FACTS, machine_id, &kept)?;
        tx.commit()
    }

    pub fn machine_facts(&self, machine_id: &str) -> Result<Option<MachineFacts>> {
        self.read_one(MACHINE_FACTS, machine_id)
    }

    /// The facts of each of `ids` that has some, in their order (one read).
    pub fn facts_of(&self, ids: &[String]) -> Result<Vec<MachineFacts>> {
        let read = self.read()?;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(read.get(MACHINE_FACTS, id.as_str())?);
        }
        Ok(found)
    }

    /// Every machine's facts, for table queries and the fleet's pictures.
    pub fn scan_facts(&self, mut visit: impl FnMut(MachineFacts)) -> Result<()> {
        for entry in self.read()?.all(MACHINE_FACTS, false) {
            visit(entry?.1);
        }
        Ok(())
    }

    /// `targets` resolved on the facts of `machines` as they are now: the
    /// machines they select, named (one read of every machine's facts).
    pub fn on_facts(&self, targets: &Targets, machines: &[Machine]) -> Result<Targets> {
        let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
        let known: std::collections::HashMap<String, Facts> = (self.facts_of(&ids)?.into_iter())
            .map(|gathered| (gathered.machine_id, gathered.facts))
            .collect();
        Ok(targets.on_facts(machines, |id| known.get(id)))
    }

    /// A machine's fact changes, newest first, at most `limit`.
    pub fn fact_changes(&self, machine_id: &str, limit: usize) -> Result<Vec<FactChange>> {
        let read = self.read()?;
        read.range_rev(
            FACT_CHANGES,
            (machine_id, i64::MIN)..=(machine_id, i64::MAX),
        )
        .take(limit)
        .map(|entry| entry.map(|(_, change)| change))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use linkops_reconcilers::facts::FactValue;

    use super::*;
    use crate::store::testing;

    fn gathered(at_ms: i64, kernel: &str) -> MachineFacts {
        let facts: Facts = [("kernel".to_owned(), FactValue::Text(kernel.into()))].into();
        MachineFacts {
            machine_id: "web1".into(),
            gathered_at_ms: at_ms,
            facts,
            error: None,
        }
    }

    #[test]
    fn a_gathering_keeps_the_facts_and_only_changes_grow_the_bounded_history() {
        for backing in testing::backings() {
            let store = backing.open();
            store.record_facts(&gathered(1, "6.1")).unwrap();
            // The same facts again: no change recorded.
            store.record_facts(&gathered(2, "6.1")).unwrap();
            assert!(store.fact_changes("web1", 10).unwrap().is_empty());
            for n in 0..facts::MAX_CHANGES as i64 + 5 {
                store
                    .record_facts(&gathered(10 + n, &format!("6.{n}")))
                    .unwrap();
            }
            let changes = store.fact_changes("web1", 1000).unwrap();
            assert_eq!(changes.len(), facts::MAX_CHANGES);
            assert_eq!(
                changes[0].at_ms,
                10 + facts::MAX_CHANGES as i64 + 4,
                "newest first"
            );
            // A failed gathering keeps the last good facts beside its error.
            store.record_facts_error("web1", "timed out", 500).unwrap();
            let kept = store.machine_facts("web1").unwrap().unwrap();
            assert_eq!(kept.error.as_deref(), Some("timed out"));
            assert_eq!(kept.facts["kernel"], FactValue::Text("6.104".into()));
            let listed = store.facts_of(&["nope".into(), "web1".into()]).unwrap();
            assert_eq!(listed.len(), 1);
            let mut scanned = Vec::new();
            store.scan_facts(|f| scanned.push(f.machine_id)).unwrap();
            assert_eq!(scanned, ["web1"]);
        }
    }
}
