//! The store: observed state and history, in one redb file or in PostgreSQL.
//!
//! This module is the only place that knows either engine ([`engine`]).
//! Records are serde types encoded as JSON (so that later versions can add
//! fields), kept in typed tables declared in [`schema`]; the rest of the
//! daemon uses the typed functions of the submodules, written once for both
//! engines. Every write is one transaction: a crash at any point leaves the
//! last committed state.

mod approvals;
pub use approvals::Owner;
mod audit;
mod ca;
mod changes;
mod cluster;
mod copy;
pub mod engine;
mod facts;
mod group_commit;
mod migrations;
mod observed;
mod operations;
mod outbox;
mod pictures;
mod records;
mod retention;
mod scan;
mod schedules;
mod schema;
mod states;
mod sync;
mod terminals;
mod tokens;
mod users;
mod webhook;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{Engine, Read, Write};

pub use audit::{Actor, Audit, AuditAction};
pub use changes::Changed;
pub use cluster::{Fence, Followed, Member, Ring};
pub use copy::TableDigest;
pub use group_commit::StatusWriter;
pub use observed::StatusWrite;
pub use operations::Claim;
pub use operations::OperationUpdate;
pub use records::{
    ApiToken, AuditEntry, Declared, HealthSample, LoginFailures, MachineRecord, Outcome,
    PostedStatus, ScriptRecord, SecondFactor, SsoIdentity, SyncAsk, SyncOutcome, SyncRecord, User,
};
pub use retention::{Pruned, Retention};
pub use scan::{OperationIndex, SeqTable};
pub use schema::SCHEMA_VERSION;
pub use states::StateWrite;
pub use tokens::MAX_TOKENS_PER_OWNER;
pub use users::{Agreement, DeletedUser, SharedKey};
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
        "store {store} was written by a newer linkops (store schema version {found}; this binary understands up to {supported}); upgrade linkops, or restore a backup made with this version"
    )]
    TooNew {
        store: String,
        found: u64,
        supported: u64,
    },
    #[error("store record {table}[{key}] cannot be decoded: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("store table {table} holds a key that is not one of its keys (hex {key})")]
    CorruptKey { table: &'static str, key: String },
    #[error("run-request {run:?} already started operation {operation_id}; run-requests run once")]
    AlreadyClaimed { run: String, operation_id: u64 },
    #[error(
        "schedule {schedule:?}'s fire due at {due_ms} is recorded already ({outcome}): a fire runs at most once"
    )]
    AlreadyFired {
        schedule: String,
        due_ms: i64,
        outcome: &'static str,
    },
    #[error(
        "approval request {id} changed as this vote was counted (another vote, or its end): vote again"
    )]
    VoteRaced { id: u64 },
    #[error("trigger {trigger:?} started nothing: {refusal}")]
    TriggerRefused {
        trigger: String,
        refusal: linkops_reconcilers::trigger::Refusal,
    },
    #[error(
        "state {state:?} is being applied on {machine:?} by operation {operation_id} (another replica owned the state a moment ago); it is looked at again after that"
    )]
    AlreadyApplying {
        state: String,
        machine: String,
        operation_id: u64,
    },
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error(
        "the name {0:?} belonged to a deleted account and stays retired, so that the audit log, operations and recordings naming it keep meaning one person; choose another name"
    )]
    NameRetired(String),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error(
        "the name {name:?} is {holder}; an identity provider's sign-in never takes over another account: have the provider send another name, or delete the account first"
    )]
    NameTaken { name: String, holder: String },
    #[error("you already have an API token named {0:?}: revoke it, or choose another name")]
    TokenExists(String),
    #[error("at most {0} API tokens per user (and {0} service tokens): revoke some first")]
    TooManyTokens(usize),
    #[error("no API token {0:?}")]
    NoSuchToken(String),
    #[error(
        "{0:?} has a second factor already: an admin removes it first (DELETE /api/users/{0}/second-factor)"
    )]
    SecondFactorEnrolled(String),
    #[error("{0:?} is enrolling no second factor: begin again (POST /api/auth/second-factor)")]
    NoSecondFactor(String),
    #[error("user {0:?} is disabled: an admin enables them again (PUT /api/users/{0}/disabled)")]
    Disabled(String),
    #[error(
        "user {0:?} is the last admin; make another user admin first, so that someone can still manage users"
    )]
    LastAdmin(String),
    #[error(
        "the target store {store} already holds records (table {table}); migrate into an empty database"
    )]
    TargetNotEmpty { store: String, table: &'static str },
    #[error(
        "the copy in {store} differs from the original in table {table}; the target is left as it is: drop its database and migrate again"
    )]
    CopyDiffers { store: String, table: &'static str },
    #[error(
        "this replica's lease as {fence} no longer holds (it passed, or another replica took over): nothing was written"
    )]
    Fenced { fence: String },
    #[error("store I/O failed: {0}")]
    Redb(#[from] redb::Error),
    #[error(transparent)]
    Postgres(#[from] engine::postgres::Error),
    #[error(
        "the store refuses writes since {at}: {reason} (a full disk? free space; the daemon restarts to reopen it, and keeps everything committed)"
    )]
    WritesFailing { at: String, reason: String },
    #[error("the store's status writer has stopped (the daemon is shutting down)")]
    WriterStopped,
    #[error("the daemon is shutting down: the store call did not run")]
    ShuttingDown,
}

impl Error {
    /// Whether trying again later may succeed: the database is unreachable
    /// or restarting (PostgreSQL). A refusal, a fence, a full disk are not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Postgres(error) if error.is_transient())
    }
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for Error {
            fn from(error: $error) -> Self {
                Error::Redb(error.into())
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
/// Both engines serialise write transactions themselves and let reads run
/// beside them, so the handle needs no lock of its own.
#[derive(Clone)]
pub struct Store {
    engine: Arc<Engine>,
    /// The file, or the database URL without its password: for messages.
    name: Arc<str>,
    /// Which machines changed in what `/api/links` shows of them (state,
    /// suspension), for clients that follow the fleet live.
    fleet_changes: Arc<changes::FleetChanges>,
    /// Bumped after every committed change to an account (password, role,
    /// deletion): long-lived connections re-check their user on it.
    user_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// The lease every write of this handle is checked against (see [`Store::fenced`]).
    fence: Option<Arc<engine::postgres::Fence>>,
    /// Messages an outbox channel holds at most (`[notify] max_queued`).
    outbox_bound: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

/// Where a store lives: what `[store]` says.
#[derive(Debug, Clone)]
pub enum Location {
    Redb(PathBuf),
    Postgres(engine::postgres::Options),
}

impl Location {
    /// Where `config`'s `[store]` section says the store is, the PostgreSQL
    /// password read (from its 0600 file in the keys directory).
    pub fn of(config: &crate::config::Config) -> Result<Location, crate::config::Error> {
        use crate::config::{Error, StoreBackend};
        let invalid = |message: &str| Error::Invalid {
            origin: "[store]".into(),
            message: message.into(),
        };
        match config.store.backend {
            StoreBackend::Redb => Ok(Location::Redb(config.store_path())),
            StoreBackend::Postgres => {
                let url = config.store.url.clone().ok_or_else(|| {
                    invalid(
                        "backend \"postgres\" needs url = \"postgres://USER@HOST:PORT/DATABASE\"",
                    )
                })?;
                engine::postgres::check_url(&url).map_err(|message| invalid(&message))?;
                let path = config.keys_dir().join(&config.store.password_file);
                let password = match path.exists() {
                    true => Some(secrecy::SecretString::from(crate::secrets::read_private(
                        &path,
                    )?)),
                    false => None,
                };
                Ok(Location::Postgres(engine::postgres::Options {
                    url,
                    password,
                    pool_size: config.store.pool_size.max(2),
                }))
            }
        }
    }

    /// The file, or the database (never its password), for messages.
    pub fn shown(&self) -> String {
        match self {
            Location::Redb(path) => path.display().to_string(),
            Location::Postgres(options) => options.shown(),
        }
    }
}

impl Store {
    /// Opens the store at `location` (blocking; see [`Store::open`]).
    pub fn open_at(location: &Location) -> Result<Store> {
        match location {
            Location::Redb(path) => Store::open(path),
            Location::Postgres(options) => Store::connect(options),
        }
    }

    /// Opens (or creates) the redb store at `path` and brings its schema up to
    /// date; refuses with [`Error::InUse`] when another process keeps it.
    ///
    /// Blocking: call it from `Store::run` or before the runtime serves.
    pub fn open(path: &Path) -> Result<Store> {
        let engine = Engine::Redb(engine::redb::Redb::open(path)?);
        Store::with_engine(engine, &path.display().to_string())
    }

    /// Rewrites the redb store at `path` without the space retention freed
    /// inside it: its size in bytes before and after ([`Error::InUse`] while
    /// the daemon holds it). Blocking.
    pub fn compact(path: &Path) -> Result<(u64, u64)> {
        engine::redb::Redb::compact(path)
    }

    /// Connects to the PostgreSQL store and brings its schema up to date.
    pub fn connect(options: &engine::postgres::Options) -> Result<Store> {
        let engine = Engine::Postgres(engine::postgres::Postgres::connect(options)?);
        Store::with_engine(engine, &options.shown())
    }

    fn with_engine(engine: Engine, name: &str) -> Result<Store> {
        migrations::migrate(&engine, name)?;
        Ok(Store {
            engine: Arc::new(engine),
            name: name.into(),
            fleet_changes: Arc::new(changes::FleetChanges::new()),
            user_changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            fence: None,
            outbox_bound: crate::config::MAX_QUEUED,
        })
    }

    /// This store, each outbox channel holding at most `bound` messages.
    pub fn bounding_outbox(self, bound: usize) -> Store {
        Store {
            outbox_bound: bound.max(1),
            ..self
        }
    }

    /// Runs `work` with this store on the blocking pool: how async code
    /// calls the store (see [`crate::blocking`]). A panic in `work` is the
    /// caller's, as if it ran inline.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        match crate::blocking::run(move || work(&store)).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    #[track_caller]
    fn read(&self) -> Result<engine::ReadTx> {
        crate::blocking::check_may_block("a store read");
        self.engine.read()
    }

    #[track_caller]
    fn write(&self) -> Result<engine::WriteTx> {
        crate::blocking::check_may_block("a store write");
        let mut tx = self.engine.write()?;
        if let (Some(fence), engine::WriteTx::Postgres(postgres)) = (&self.fence, &mut tx) {
            postgres.fence(fence)?;
        }
        Ok(tx)
    }

    /// The record under `key`, in one read.
    fn read_one<K: std::fmt::Debug, C: engine::Codec, Q>(
        &self,
        table: engine::Table<K, C>,
        key: Q,
    ) -> Result<Option<C::Item>>
    where
        Q: engine::Key<Owned = K> + std::fmt::Debug,
    {
        self.read()?.get(table, key)
    }

    /// Every record of a table, in key order.
    fn read_all<K: engine::Decode + std::fmt::Debug, C: engine::Codec>(
        &self,
        table: engine::Table<K, C>,
    ) -> Result<Vec<C::Item>> {
        self.read()?
            .all(table, false)
            .map(|entry| entry.map(|(_, item)| item))
            .collect()
    }

    /// Whether the store answers a read and has refused no write: the
    /// readiness check of `/health`. A refused write (any, not only the
    /// probe's) fails it at once: redb refuses every later one until reopened.
    pub fn ping(&self) -> Result<()> {
        if let Some(refused) = self.refused() {
            let at = refused.at_ms;
            return Err(Error::WritesFailing {
                at: jiff::Timestamp::from_millisecond(at).map_or(at.to_string(), |t| t.to_string()),
                reason: refused.reason,
            });
        }
        self.read()?.get(schema::META, schema::VERSION_KEY)?;
        Ok(())
    }

    /// The first write the store refused, if it keeps refusals (redb).
    pub fn refused(&self) -> Option<engine::redb::Refused> {
        self.engine.refusals()?.first()
    }

    /// Follows the store's refused writes; `None` for PostgreSQL, whose
    /// absence reads show.
    pub fn refusals(&self) -> Option<tokio::sync::watch::Receiver<Option<engine::redb::Refused>>> {
        Some(self.engine.refusals()?.subscribe())
    }

    /// Commits a tiny durable write, for quiet periods: a refusal is kept
    /// (as every refused commit is) and makes [`Store::ping`] fail.
    pub fn probe_write(&self) -> Result<()> {
        let mut tx = self.write()?;
        tx.insert(
            schema::META,
            "write_probe_ms",
            &u64::try_from(now_ms()).unwrap_or(0),
        )?;
        tx.commit()
    }

    /// Bytes each table stores (keys and values, redb's pages not counted),
    /// largest first. Walks every table: for benchmarks and diagnostics, not
    /// for every scrape.
    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>> {
        self.engine.table_sizes()
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

/// Stores of both engines for the store's own tests: each test runs against
/// a redb file and a PostgreSQL database (one server per test process).
/// Without PostgreSQL's server binaries the PostgreSQL side is skipped, said
/// once on stderr — unless `TEST_POSTGRES=required` (as `cargo xtask
/// test` sets), when it fails instead.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, OnceLock};

    use super::Store;
    use testbed::postgres::{self, TestPostgres};

    /// One store's backing, which can be opened again (as after a restart).
    pub struct Backing {
        open: Box<dyn Fn() -> Store>,
    }

    impl Backing {
        pub fn open(&self) -> Store {
            (self.open)()
        }
    }

    fn server() -> Option<&'static TestPostgres> {
        static SERVER: OnceLock<Option<TestPostgres>> = OnceLock::new();
        let started = SERVER.get_or_init(|| match TestPostgres::start() {
            Ok(server) => Some(server),
            Err(postgres::Error::NoServer)
                if std::env::var("TEST_POSTGRES").as_deref() != Ok("required") =>
            {
                // Past the test harness's capture: a skip must be seen.
                use std::io::Write;
                writeln!(
                    std::io::stderr(),
                    "store tests: {}; their PostgreSQL side is skipped",
                    postgres::Error::NoServer
                )
                .ok();
                None
            }
            Err(error) => panic!("the test PostgreSQL server does not start: {error}"),
        });
        started.as_ref()
    }

    /// A fresh redb file.
    pub fn redb() -> Backing {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let path = dir.path().join("s.redb");
        Backing {
            open: Box::new(move || {
                let _kept = &dir;
                Store::open(&path).unwrap()
            }),
        }
    }

    /// A fresh PostgreSQL database, when the server runs.
    pub fn postgres() -> Option<Backing> {
        let database = server()?.database().unwrap();
        let options =
            super::engine::postgres::Options::with_password(database.url, database.password);
        Some(Backing {
            open: Box::new(move || Store::connect(&options).unwrap()),
        })
    }

    /// A fresh redb file and a fresh PostgreSQL database (when the server runs).
    pub fn backings() -> Vec<Backing> {
        std::iter::once(redb()).chain(postgres()).collect()
    }
}
