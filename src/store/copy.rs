//! `linkops store migrate`: a whole store copied into another engine, in one
//! transaction on the target, then verified table by table.

use sha2::{Digest, Sha256};

use super::engine::{Raw, Read, Table, Write};
use super::schema::{META, TABLES};
use super::{Error, Result, Store};

/// One table's entries and a digest of its keys and records, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub table: &'static str,
    pub entries: u64,
    pub sha256: String,
}

/// Entries one read fetches while copying or digesting.
const BATCH: usize = 512;

/// A table read as it is stored: encoded keys and records.
fn raw(table: &'static str) -> Table<Vec<u8>, Raw> {
    Table::new(table)
}

impl Store {
    /// Copies every table of this store into `target`, which must hold no
    /// records yet, in one transaction there; then compares both stores'
    /// digests. Returns the digests (equal on both sides).
    pub fn copy_into(&self, target: &Store) -> Result<Vec<TableDigest>> {
        let source = self.read()?;
        {
            let check = target.read()?;
            for table in TABLES.iter().filter(|table| **table != META.name) {
                if check.count(table)? > 0 {
                    return Err(Error::TargetNotEmpty {
                        store: target.name.to_string(),
                        table,
                    });
                }
            }
        }
        let mut tx = target.write()?;
        for table in TABLES {
            for entry in source.all(raw(table), false).paged(BATCH) {
                let (key, value) = entry?;
                tx.put_bytes(table, key, value)?;
            }
        }
        tx.commit()?;
        let copied = self.digests()?;
        let found = target.digests()?;
        if copied != found {
            let differing = copied
                .iter()
                .zip(&found)
                .find(|(a, b)| a != b)
                .map_or("?", |(a, _)| a.table);
            return Err(Error::CopyDiffers {
                store: target.name.to_string(),
                table: differing,
            });
        }
        Ok(copied)
    }

    /// Every table's entry count and digest, from one snapshot.
    pub fn digests(&self) -> Result<Vec<TableDigest>> {
        let tx = self.read()?;
        TABLES
            .iter()
            .map(|table| {
                let mut digest = Sha256::new();
                let mut entries = 0;
                for entry in tx.all(raw(table), false).paged(BATCH) {
                    let (key, value) = entry?;
                    // Lengths first: no two different tables digest alike.
                    digest.update((key.len() as u64).to_be_bytes());
                    digest.update(&key);
                    digest.update((value.len() as u64).to_be_bytes());
                    digest.update(&value);
                    entries += 1;
                }
                Ok(TableDigest {
                    table,
                    entries,
                    sha256: hex::encode(digest.finalize()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use linkops_reconcilers::operation::{
        HostResult, HostState, Operation, OperationEvent, OperationState, Requester, Stream,
    };

    use crate::store::testing;
    use crate::store::{Actor, OperationUpdate};
    use linkops_reconcilers::role::Role;

    #[test]
    fn a_redb_store_copies_into_postgres_whole_and_verified() {
        let (redb, Some(postgres)) = (testing::redb(), testing::postgres()) else {
            return;
        };
        let source = redb.open();
        source
            .create_user("ada", Some(Role::Admin), "$argon2id$x", &Actor::Cli)
            .unwrap();
        let operation = Operation {
            id: 0,
            script: "uptime".into(),
            params: Default::default(),
            machines: vec!["web1".into()],
            requested_by: Requester::User { name: "ada".into() },
            state: OperationState::Running,
            created_at_ms: 1,
            finished_at_ms: None,
            rollout: None,
            retry_of: None,
            secrets: Vec::new(),
        };
        let host = HostResult {
            machine_id: "web1".into(),
            state: HostState::Running,
            started_at_ms: Some(1),
            finished_at_ms: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            certificate: None,
        };
        let created = source
            .create_operation(&operation, "local", &[host], None, |_| Vec::new())
            .unwrap();
        // More output events than one batch of the copy.
        for chunk in 0..1200 {
            let event = OperationEvent::Output {
                machine_id: "web1".into(),
                stream: Stream::Stdout,
                data: format!("line {chunk}\n").into_bytes(),
            };
            let update = OperationUpdate {
                events: vec![event],
                ..Default::default()
            };
            source.record_operation_update(created.id, update).unwrap();
        }
        let target = postgres.open();
        let digests = source.copy_into(&target).unwrap();
        let events = digests
            .iter()
            .find(|d| d.table == "operation_events")
            .unwrap();
        assert!(events.entries > 1200, "{events:?}");
        // The copy reads as the original does.
        assert_eq!(target.user("ada").unwrap().unwrap().role, Some(Role::Admin));
        let read = target
            .operation_events(created.id, 0, 5000, usize::MAX)
            .unwrap();
        assert_eq!(read.len() as u64, events.entries);
        assert_eq!(target.audit_entries(0, 10).unwrap().len(), 2);
        // A second copy into a store that holds records is refused.
        let err = source.copy_into(&target).unwrap_err();
        assert!(err.to_string().contains("already holds"), "{err}");
    }
}
