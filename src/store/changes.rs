//! Which machines changed in what the fleet's views show, numbered, for
//! clients that follow the fleet live (`/api/fleet/events`): a bounded log in
//! memory beside a `watch` of its newest number. A client that fell further
//! behind than the log reaches reads the whole fleet again.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

/// Changes the log keeps: more than one sweep of a 10,000-machine fleet.
const LOG_LEN: usize = 20_000;

/// What changed since a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Something every machine's view shows (the fleet's suspension).
    All,
    Machines(BTreeSet<String>),
}

/// The log; cheap to share behind the store's `Arc`.
pub struct FleetChanges {
    /// Tells this process's versions from an earlier one's (they restart at 0).
    incarnation: u32,
    version: watch::Sender<u64>,
    /// `(version, machine)`, oldest first; `None` is every machine.
    log: Mutex<VecDeque<(u64, Option<String>)>>,
}

impl FleetChanges {
    pub fn new() -> FleetChanges {
        FleetChanges {
            incarnation: rand::random(),
            version: watch::Sender::new(0),
            log: Mutex::new(VecDeque::with_capacity(LOG_LEN)),
        }
    }

    /// Records a committed change of `machine` (`None`: of every machine).
    pub fn record(&self, machine: Option<&str>) {
        let mut log = self.log.lock().expect("the fleet log is never poisoned");
        let version = self.version.borrow().wrapping_add(1);
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back((version, machine.map(str::to_owned)));
        self.version.send_replace(version);
    }

    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The newest version, changing after every record.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// What changed after `version`, and the newest version it covers; `None`
    /// when the log no longer reaches back that far.
    pub fn since(&self, version: u64) -> Option<(u64, Changed)> {
        let log = self.log.lock().expect("the fleet log is never poisoned");
        let newest = log.back().map_or(0, |(v, _)| *v);
        let oldest = log.front().map_or(newest, |(v, _)| *v);
        if version > newest || (version + 1 < oldest) {
            return None;
        }
        let mut machines = BTreeSet::new();
        for (_, machine) in log.iter().filter(|(v, _)| *v > version) {
            match machine {
                Some(id) => {
                    machines.insert(id.clone());
                }
                None => return Some((newest, Changed::All)),
            }
        }
        Some((newest, Changed::Machines(machines)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_reads_what_changed_since_its_version_or_hears_it_is_too_far_behind() {
        let changes = FleetChanges::new();
        assert_eq!(
            changes.since(0),
            Some((0, Changed::Machines(BTreeSet::new())))
        );
        changes.record(Some("a"));
        changes.record(Some("b"));
        changes.record(Some("a"));
        let ab = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(changes.since(0), Some((3, Changed::Machines(ab))));
        let a = BTreeSet::from(["a".to_owned()]);
        assert_eq!(changes.since(2), Some((3, Changed::Machines(a))));
        changes.record(None);
        assert_eq!(changes.since(3), Some((4, Changed::All)));
        // A version from the future (another incarnation of the daemon): read everything.
        assert_eq!(changes.since(9), None);
        for _ in 0..LOG_LEN {
            changes.record(Some("c"));
        }
        assert_eq!(changes.since(1), None);
        let newest = *changes.subscribe().borrow();
        let c = BTreeSet::from(["c".to_owned()]);
        assert_eq!(
            changes.since(newest - 1),
            Some((newest, Changed::Machines(c)))
        );
    }
}
