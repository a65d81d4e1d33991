//! The embedded engine: one redb file, every table a `&[u8] → &[u8]` map.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use tokio::sync::watch;

use super::doorbell::{Doorbell, Ring};
use super::{Read, Span, Write};
use crate::store::{Error, Result};

/// How long an open waits for another process to let the store go. Once a
/// daemon is dead, the only other holders of its lock are children it was
/// starting (`git upload-pack`): they share its open file, lock included, until
/// they exec. A restart right after a crash can meet that moment (seen once in
/// CI's SIGKILL rounds: "in use" just after the killed daemon was reaped).
const LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// The most of the file redb keeps in memory (its default is 1 GiB, which a
/// 10,000-machine store's pages would fill): what the daemon reads most —
/// statuses, recent operations — fits, and the rest is read from the page
/// cache of the kernel.
const CACHE_BYTES: usize = 32 << 20;

pub struct Redb {
    db: redb::Database,
    refusals: Refusals,
    /// Rung by every commit with the tables it wrote, for this process's followers.
    doorbell: Arc<Doorbell>,
}

/// The first write the file refused (redb refuses every later one until it
/// is reopened), kept and told at once: `/health` and the daemon's watchdog
/// must not wait for the next probe while writes fail.
#[derive(Clone, Default)]
pub struct Refusals(Arc<watch::Sender<Option<Refused>>>);

/// When a write was refused (Unix ms), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub at_ms: i64,
    pub reason: String,
}

impl Refusals {
    /// Keeps the first refusal (and wakes whoever waits for one).
    pub fn mark(&self, error: &Error) {
        self.0.send_if_modified(|first| {
            let fresh = first.is_none();
            if fresh {
                *first = Some(Refused {
                    at_ms: crate::store::now_ms(),
                    reason: error.to_string(),
                });
            }
            fresh
        });
    }

    /// The first refusal, if any.
    pub fn first(&self) -> Option<Refused> {
        self.0.borrow().clone()
    }

    /// Follows the refusals (`wait_for(Option::is_some)` waits for the first).
    pub fn subscribe(&self) -> watch::Receiver<Option<Refused>> {
        self.0.subscribe()
    }
}

/// Why the file at `path` did not open: another process holds it, or `source`.
fn not_opened(path: &Path, source: redb::DatabaseError) -> Error {
    match source {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse {
            path: path.to_owned(),
        },
        source => Error::Open {
            path: path.to_owned(),
            source,
        },
    }
}

fn table(name: &'static str) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

impl Redb {
    /// Opens (or creates, owner-only) the file; [`Error::InUse`] when another
    /// process keeps it for [`LOCK_WAIT`].
    pub fn open(path: &Path) -> Result<Redb> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::Redb(redb::Error::Io(e)))?;
        }
        create_private(path).map_err(|e| Error::Redb(redb::Error::Io(e)))?;
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(path)
            {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                result => break result,
            }
        };
        let db = db.map_err(|source| not_opened(path, source))?;
        Ok(Redb {
            db,
            refusals: Refusals::default(),
            doorbell: Arc::default(),
        })
    }

    /// Rewrites the file at `path` without the free pages redb keeps for
    /// reuse (what retention let go stays inside the file until then); its
    /// size in bytes before and after. [`Error::InUse`] while the daemon
    /// holds it.
    pub fn compact(path: &Path) -> Result<(u64, u64)> {
        let size = |path: &Path| {
            (std::fs::metadata(path).map(|m| m.len())).map_err(|e| Error::Redb(redb::Error::Io(e)))
        };
        let before = size(path)?;
        let mut db = redb::Database::open(path).map_err(|source| not_opened(path, source))?;
        // Each pass moves what it can towards the start; the last finds nothing to move.
        while db.compact().map_err(redb::Error::from)? {}
        drop(db);
        Ok((before, size(path)?))
    }

    /// The writes this file refused.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    pub fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    pub fn begin_write(&self) -> Result<WriteTx> {
        Ok(WriteTx {
            tx: self.db.begin_write()?,
            refusals: self.refusals.clone(),
            doorbell: self.doorbell.clone(),
            written: Default::default(),
        })
    }

    /// What wakes a follower of `tables`: a commit that wrote one.
    pub fn ring_for(&self, tables: &[&str]) -> Ring {
        self.doorbell.ring_for(tables)
    }

    /// The file's raw database, for the migration from the typed tables of
    /// schema versions before 8.
    pub fn database(&self) -> &redb::Database {
        &self.db
    }

    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>> {
        let tx = self.db.begin_read()?;
        let mut sizes = Vec::new();
        for handle in tx.list_tables()? {
            let table = tx.open_untyped_table(handle)?;
            sizes.push((table.name().to_owned(), table.stats()?.stored_bytes()));
        }
        Ok(sizes)
    }
}

fn bounds(span: &Span) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (
        span.low.as_ref().map(Vec::as_slice),
        span.high.as_ref().map(Vec::as_slice),
    )
}

fn page_of(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    span: &Span,
    reverse: bool,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let range = table.range::<&[u8]>(bounds(span))?;
    let entry = |entry: std::result::Result<_, redb::StorageError>| {
        let (key, value): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) = entry?;
        Ok((key.value().to_vec(), value.value().to_vec()))
    };
    if reverse {
        range.rev().take(limit).map(entry).collect()
    } else {
        range.take(limit).map(entry).collect()
    }
}

/// Reading is the same in both kinds of redb transaction.
macro_rules! read_through_tables {
    ($($tx:ty),*) => {$(
        impl Read for $tx {
            fn get_bytes(&self, name: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
                Ok(self
                    .open_table(table(name))?
                    .get(key)?
                    .map(|value| value.value().to_vec()))
            }

            fn page(
                &self,
                name: &'static str,
                span: &Span,
                reverse: bool,
                limit: usize,
            ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                page_of(&self.open_table(table(name))?, span, reverse, limit)
            }

            fn count(&self, name: &'static str) -> Result<u64> {
                Ok(self.open_table(table(name))?.len()?)
            }
        }
    )*};
}
read_through_tables!(redb::ReadTransaction, redb::WriteTransaction);

/// A write transaction of the file: its commit keeps a refusal and rings
/// the doorbell of the tables it wrote.
pub struct WriteTx {
    tx: redb::WriteTransaction,
    refusals: Refusals,
    doorbell: Arc<Doorbell>,
    written: std::collections::BTreeSet<&'static str>,
}

impl WriteTx {
    /// redb's own transaction, for the conversion of older files.
    pub fn transaction(&self) -> &redb::WriteTransaction {
        &self.tx
    }

    pub fn commit(self) -> Result<()> {
        self.tx.commit().map_err(|error| {
            let error = Error::from(error);
            self.refusals.mark(&error);
            error
        })?;
        self.doorbell.ring_tables(self.written.iter().copied());
        Ok(())
    }
}

impl Read for WriteTx {
    fn get_bytes(&self, name: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.tx.get_bytes(name, key)
    }

    fn page(
        &self,
        name: &'static str,
        span: &Span,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tx.page(name, span, reverse, limit)
    }

    fn count(&self, name: &'static str) -> Result<u64> {
        self.tx.count(name)
    }
}

impl Write for WriteTx {
    fn put_bytes(&mut self, name: &'static str, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.written.insert(name);
        self.tx
            .open_table(table(name))?
            .insert(key.as_slice(), value.as_slice())?;
        Ok(())
    }

    fn delete_bytes(&mut self, name: &'static str, key: &[u8]) -> Result<bool> {
        self.written.insert(name);
        Ok(self.tx.open_table(table(name))?.remove(key)?.is_some())
    }
}

/// Makes the store file owner-only before redb writes to it: it holds password
/// hashes, output and recordings. A new file is created 0600 (redb initialises
/// an empty file); an older, looser one is tightened.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        }
        Err(error) => Err(error),
    }
}
