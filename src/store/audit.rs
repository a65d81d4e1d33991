//! The audit log: who did what to which thing, and how it went. Append-only.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::schema::AUDIT_LOG;
use super::{Result, Store, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Refused by policy (lockout, permissions, host key).
    Denied,
}

/// One audit record. Never holds a password or a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: i64,
    /// A user name, `git@<revision>`, `webhook` or `system`.
    pub actor: String,
    /// A dotted verb such as `auth.login` or `user.create`.
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

impl Store {
    /// Appends an entry stamped with the next sequence number and the current time.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: Option<String>,
    ) -> Result<AuditEntry> {
        let tx = self.db.begin_write()?;
        let entry = {
            let mut log = tx.open_table(AUDIT_LOG)?;
            let seq = log.last()?.map_or(1, |(key, _)| key.value() + 1);
            let entry = AuditEntry {
                seq,
                at_ms: now_ms(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: target.to_owned(),
                outcome,
                detail,
            };
            log.insert(seq, encode(&entry).as_slice())?;
            entry
        };
        tx.commit()?;
        Ok(entry)
    }

    /// Up to `limit` entries with a sequence number above `after`, oldest first.
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let log = tx.open_table(AUDIT_LOG)?;
        log.range(after.saturating_add(1)..)?
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                decode("audit_log", key.value(), value.value())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_numbered_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        store
            .audit("ada", "auth.login", "ada", Outcome::Success, None)
            .unwrap();
        store
            .audit(
                "bob",
                "auth.login",
                "bob",
                Outcome::Failure,
                Some("bad password".into()),
            )
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let entries = store.audit_entries(0, 10).unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(entries[1].actor, "bob");
        assert_eq!(store.audit_entries(1, 10).unwrap().len(), 1);
    }
}
