//! The embedded store: observed state and history, in one redb file.
//!
//! This module is the only place that knows redb. Records are serde types
//! encoded as JSON (so that later versions can add fields), kept in typed
//! tables declared in [`schema`]; the rest of the daemon uses the typed
//! functions of the submodules. Every write is one redb transaction: a crash
//! at any point leaves the last committed state.

mod audit;
mod changes;
mod codec;
mod group_commit;
mod observed;
mod operations;
mod outbox;
mod retention;
mod scan;
mod schema;
mod states;
mod sync;
mod terminals;
mod users;
mod webhook;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use audit::{Actor, Audit, AuditAction, AuditEntry, Outcome};
pub use changes::Changed;
pub use group_commit::StatusWriter;
pub use observed::{HealthSample, StatusWrite};
pub use operations::Claim;
pub use operations::OperationUpdate;
pub use retention::{Pruned, Retention};
pub use scan::{OperationIndex, SeqTable};
pub use schema::SCHEMA_VERSION;
pub use states::StateWrite;
pub use sync::{MachineRecord, ScriptRecord, SyncOutcome, SyncRecord};
pub use users::{DeletedUser, LoginFailures, Role, User};
pub use webhook::DeliveryClaim;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "store {path} is in use by another process; is another `linkops serve` running on this data dir?"
    )]
    InUse { path: PathBuf },
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error(
        "store {path} was written by a newer linkops (store schema version {found}; this binary understands up to {supported}); upgrade linkops, or restore a backup made with this version"
    )]
    TooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("store record {table}[{key}] cannot be decoded: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("run-request {run:?} already started operation {operation_id}; run-requests run once")]
    AlreadyClaimed { run: String, operation_id: u64 },
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error(
        "the name {0:?} belonged to a deleted account and stays retired, so that the audit log, operations and recordings naming it keep meaning one person; choose another name"
    )]
    NameRetired(String),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error(
        "user {0:?} is the last admin; make another user admin first, so that someone can still manage users"
    )]
    LastAdmin(String),
    #[error("store I/O failed: {0}")]
    Backend(#[from] redb::Error),
    #[error(
        "the store refuses writes since {at}: {reason} (a full disk? free space; the daemon restarts to reopen it, and keeps everything committed)"
    )]
    WritesFailing { at: String, reason: String },
    #[error("the store's status writer has stopped (the daemon is shutting down)")]
    WriterStopped,
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for Error {
            fn from(error: $error) -> Self {
                Error::Backend(error.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A cheap-to-clone handle on the open store.
///
/// redb serialises write transactions itself and lets reads run beside them,
/// so the handle needs no lock of its own.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
    path: Arc<Path>,
    /// Which machines changed in what `/api/links` shows of them (state,
    /// suspension), for clients that follow the fleet live.
    fleet_changes: Arc<changes::FleetChanges>,
    /// Bumped after every committed change to an account (password, role,
    /// deletion): long-lived connections re-check their user on it.
    user_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// The first failed write probe, if any: redb refuses every later write
    /// until reopened, so the store is not ready from then on.
    write_failure: Arc<std::sync::Mutex<Option<(i64, String)>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

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

impl Store {
    /// Opens (or creates) the store at `path` and brings its schema up to date;
    /// refuses with [`Error::InUse`] when another process keeps it for [`LOCK_WAIT`].
    ///
    /// Blocking: call it from `spawn_blocking` or before the runtime serves.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::Backend(redb::Error::Io(e)))?;
        }
        create_private(path).map_err(|e| Error::Backend(redb::Error::Io(e)))?;
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
        let db = db.map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse {
                path: path.to_owned(),
            },
            source => Error::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        let store = Store {
            db: Arc::new(db),
            path: path.into(),
            fleet_changes: Arc::new(changes::FleetChanges::new()),
            user_changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            write_failure: Arc::default(),
        };
        schema::migrate(&store.db, path)?;
        Ok(store)
    }

    /// Whether the store answers a read and took the last write probe: the
    /// readiness check of `/health`.
    pub fn ping(&self) -> Result<()> {
        use redb::ReadableDatabase;
        if let Some((at, reason)) = self.write_failure.lock().expect("never poisoned").clone() {
            return Err(Error::WritesFailing {
                at: jiff::Timestamp::from_millisecond(at).map_or(at.to_string(), |t| t.to_string()),
                reason,
            });
        }
        let tx = self.db.begin_read()?;
        tx.open_table(schema::META)?;
        Ok(())
    }

    /// Commits a tiny durable write; a failure is kept and makes [`Store::ping`] fail.
    pub fn probe_write(&self) -> Result<()> {
        let write = || -> Result<()> {
            let tx = self.db.begin_write()?;
            tx.open_table(schema::META)?
                .insert("write_probe_ms", u64::try_from(now_ms()).unwrap_or(0))?;
            tx.commit()?;
            Ok(())
        };
        let result = write();
        if let Err(error) = &result {
            self.write_failure
                .lock()
                .expect("never poisoned")
                .get_or_insert_with(|| (now_ms(), error.to_string()));
        }
        result
    }

    /// Bytes each table stores (keys and values, redb's pages not counted),
    /// largest first. Walks every table: for benchmarks and diagnostics, not
    /// for every scrape.
    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>> {
        use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
        let tx = self.db.begin_read()?;
        let mut sizes = Vec::new();
        for handle in tx.list_tables()? {
            let table = tx.open_untyped_table(handle)?;
            sizes.push((table.name().to_owned(), table.stats()?.stored_bytes()));
        }
        sizes.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        Ok(sizes)
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

/// Milliseconds since the Unix epoch, the time unit of every stored record.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_name_each_table_and_grow_with_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("linkops.redb")).unwrap();
        let size = |store: &Store, name: &str| {
            let sizes = store.table_sizes().unwrap();
            sizes
                .iter()
                .find(|(table, _)| table == name)
                .map(|(_, bytes)| *bytes)
        };
        let before = size(&store, "audit_log").expect("every table exists once migrated");
        let entry = Audit {
            actor: Actor::System,
            action: AuditAction::SshHostKeyRefused,
            target: "web1".into(),
            outcome: Outcome::Denied,
            detail: Some("x".repeat(10_000)),
        };
        let status = StatusWrite {
            status: linkops_reconcilers::machine::MachineStatus::new("web1"),
            sample: None,
            audits: vec![entry],
            outgoing: Vec::new(),
        };
        store.put_machine_statuses(&[status]).unwrap();
        assert!(size(&store, "audit_log").unwrap() >= before + 10_000);
        let sizes = store.table_sizes().unwrap();
        assert!(sizes.windows(2).all(|w| w[0].1 >= w[1].1), "largest first");
    }

    #[test]
    fn the_store_file_is_owner_only_even_in_an_open_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("linkops.redb");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        drop(Store::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linkops.redb");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
    }
}
