//! The PostgreSQL engine: each table is `kv_<name> (key bytea PRIMARY KEY,
//! value bytea)`, so the same typed functions run on it as on redb.
//!
//! The store's interface is synchronous (redb's is, and the daemon calls it
//! from async code as it calls redb). The connections therefore live on a
//! small runtime of the engine's own: every statement is spawned there, under
//! a time bound, and the calling thread waits for it — never on the caller's
//! runtime, which may have one thread. Write transactions take one
//! transaction-scoped advisory lock, so they run one at a time across every
//! daemon sharing the database, as redb's do in one process; the lock ends
//! with the transaction, including when PostgreSQL ends the backend (a
//! session lock would outlive neither safely, nor be held by a transaction
//! that was rolled back). Reads are REPEATABLE READ snapshots.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::types::{ToSql, Type};

use super::doorbell::{self, Doorbell, Ring};
use super::{Read, Span, Write};

mod leases;
mod transaction;

pub use leases::{Fence, Member};
use transaction::Conn;
pub use transaction::{ReadTx, WriteTx};

/// Every statement's bound, the pool's wait and a connection's set-up.
const STATEMENT_LIMIT: Duration = Duration::from_secs(30);

/// Writes queued before they are sent without waiting for a read.
const MOST_PENDING: usize = 1024;

/// The advisory lock every write transaction holds ("linkops" in ASCII).
const WRITE_LOCK: i64 = 0x006c_696e_6b6f_7073;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "[store] url {url:?} is not a PostgreSQL connection URL ({source}); write postgres://USER@HOST:PORT/DATABASE"
    )]
    Url {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot start the PostgreSQL store's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "cannot get a connection to PostgreSQL at {store}: {detail} (is the server up, and the [store] url, user and password file right?)"
    )]
    Connect { store: String, detail: String },
    #[error("PostgreSQL at {store}: {what} failed: {source}")]
    Statement {
        store: String,
        what: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "PostgreSQL at {store}: {what} got no answer within {after:?}; the connection is dropped"
    )]
    TimedOut {
        store: String,
        what: &'static str,
        after: Duration,
    },
    #[error("the PostgreSQL store is closing")]
    Closed,
}

impl Error {
    /// Whether the same statement may succeed later: the server is
    /// unreachable or restarting, or the connection broke — not a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::TimedOut { .. } => true,
            Error::Statement { source, .. } => match source.code() {
                None => true,
                Some(code) => {
                    let code = code.code();
                    // Connection exceptions; the server shutting down or
                    // starting; a serialization failure or deadlock.
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || code == "40001"
                        || code == "40P01"
                }
            },
            Error::Url { .. } | Error::Runtime(_) | Error::Closed => false,
        }
    }
}

/// How to reach the database.
#[derive(Clone)]
pub struct Options {
    /// `postgres://user@host:port/database`, without a password.
    pub url: String,
    /// Read from `[store] password_file` (0600).
    pub password: Option<SecretString>,
    /// Connections kept at most.
    pub pool_size: usize,
}

impl Options {
    /// The database at `url` (no password in it), reached with `password`
    /// through a small pool: what a tool or a test needs (the daemon sizes
    /// its pool from `[store] pool_size`).
    pub fn with_password(url: String, password: String) -> Options {
        Options {
            url,
            password: Some(SecretString::from(password)),
            pool_size: 8,
        }
    }

    /// The server and database, for messages: never the password.
    pub fn shown(&self) -> String {
        match self.url.parse::<tokio_postgres::Config>() {
            Ok(config) => {
                let host = config
                    .get_hosts()
                    .first()
                    .map(|host| match host {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .unwrap_or_default();
                let port = config.get_ports().first().copied().unwrap_or(5432);
                let database = config.get_dbname().unwrap_or("postgres");
                format!("postgres://{host}:{port}/{database}")
            }
            Err(_) => "postgres (unparsable url)".to_owned(),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.shown())
            .finish()
    }
}

/// Why `url` cannot be `[store] url`, if it cannot: not a PostgreSQL URL,
/// or one that carries a password (which logs and messages would show).
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed: tokio_postgres::Config = url.parse().map_err(|error| {
        format!("url is not a PostgreSQL URL ({error}); write postgres://USER@HOST:PORT/DATABASE")
    })?;
    match parsed.get_password() {
        Some(_) => Err("url carries a password; put it in password_file (mode 0600 in the keys directory) and drop it from the url, which logs and messages show".into()),
        None => Ok(()),
    }
}

/// The engine: a pool on its own runtime.
pub struct Postgres {
    runtime: Option<tokio::runtime::Runtime>,
    link: Link,
    /// For the doorbell's connection of its own (boxed: the engine enum stays small).
    config: Box<tokio_postgres::Config>,
    doorbell: Arc<Doorbell>,
    /// Listening from the first follower on.
    listening: std::sync::Once,
}

/// What a transaction needs of the engine: where to run, the pool, a name.
#[derive(Clone)]
struct Link {
    handle: tokio::runtime::Handle,
    pool: Pool,
    store: Arc<str>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Not `drop`: a runtime dropped in async code would panic there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Postgres {
    /// Builds the pool and proves a connection works.
    pub fn connect(options: &Options) -> Result<Postgres, Error> {
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|source| Error::Url {
                url: options.shown(),
                source,
            })?;
        if let Some(password) = &options.password {
            config.password(password.expose_secret());
        }
        config
            .application_name("linkops")
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(15))
            // A paused daemon's open transaction must not hold the write lock
            // for long; nor may a lock or a statement wait without a bound.
            .options(
                "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=20000 -c statement_timeout=25000",
            );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("linkops-postgres")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(STATEMENT_LIMIT))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .expect("a pool with a runtime builds");
        let link = Link {
            handle: runtime.handle().clone(),
            pool,
            store: options.shown().into(),
        };
        drop(link.connection()?);
        Ok(Postgres {
            runtime: Some(runtime),
            link,
            config: Box::new(config),
            doorbell: Arc::default(),
            listening: std::sync::Once::new(),
        })
    }

    /// What wakes a follower of `tables` when any replica commits a write to one.
    pub fn ring_for(&self, tables: &[&str]) -> Ring {
        // Subscribed before the listener starts: the first follower hears its first ring.
        let ring = self.doorbell.ring_for(tables);
        self.listening.call_once(|| {
            let listening = doorbell::listen(
                (*self.config).clone(),
                self.doorbell.clone(),
                self.link.store.clone(),
            );
            self.link.handle.spawn(listening);
        });
        ring
    }

    /// Runs `sql` as it is (tests reach behind the store's back with it).
    #[cfg(test)]
    pub fn execute(&self, sql: &'static str) -> Result<(), Error> {
        self.autocommit("a test's statement", sql, Vec::new())
            .map(drop)
    }

    pub fn begin_read(&self) -> Result<ReadTx, Error> {
        Ok(ReadTx {
            conn: Conn::new(
                &self.link,
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            )?,
        })
    }

    pub fn begin_write(&self) -> Result<WriteTx, Error> {
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})");
        Ok(WriteTx {
            conn: Conn::new(&self.link, begin)?,
            written: Default::default(),
        })
    }
    /// One statement in a transaction of its own, not behind the write lock.
    fn autocommit(
        &self,
        what: &'static str,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<Vec<tokio_postgres::Row>, Error> {
        let client = self.link.connection()?;
        let store = self.link.store.to_string();
        self.link.run(what, async move {
            let typed: Vec<_> = params.iter().map(Param::typed).collect();
            client
                .query_typed(sql, &typed)
                .await
                .map_err(|source| Error::Statement {
                    store,
                    what,
                    source,
                })
        })
    }

    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>, Error> {
        let tx = self.begin_read()?;
        let rows = tx.conn.query(
            "measure tables",
            "SELECT substr(relname, 4), pg_total_relation_size(oid) FROM pg_class \
             WHERE relkind = 'r' AND relname LIKE 'kv\\_%'"
                .to_owned(),
            Vec::new(),
        )?;
        Ok(rows
            .iter()
            .map(|row| {
                let bytes: i64 = row.get(1);
                (row.get(0), u64::try_from(bytes).unwrap_or(0))
            })
            .collect())
    }
}

impl Link {
    /// Runs `future` on the engine's runtime within [`STATEMENT_LIMIT`] and waits for it here.
    fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        future: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        // Answered over a std channel: a tokio `JoinHandle` waited on here
        // could be parked by the caller's task budget and never woken.
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            // The timer is made inside the task: only the engine's runtime has one.
            let _ = answer.send(tokio::time::timeout(STATEMENT_LIMIT, future).await);
        });
        // The caller is off the daemon's runtime (`blocking::run`, which
        // debug builds hold) or outside any: it may wait here, up to the
        // statement's bound, while the engine's own runtime does the work.
        match answered.recv() {
            Ok(Ok(result)) => result,
            Ok(Err(_elapsed)) => Err(Error::TimedOut {
                store: self.store.to_string(),
                what,
                after: STATEMENT_LIMIT,
            }),
            // The runtime is gone, the task with it.
            Err(_) => Err(Error::Closed),
        }
    }

    fn connection(&self) -> Result<Object, Error> {
        let pool = self.pool.clone();
        let store = self.store.to_string();
        self.run("connect", async move {
            pool.get().await.map_err(|error| Error::Connect {
                store,
                detail: error.to_string(),
            })
        })
    }
}

/// A statement and its `bytea` parameters.
type Statement = (String, Vec<Vec<u8>>);

/// A parameter of the lease statements.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Int(i64),
}

impl Param {
    fn typed(&self) -> (&(dyn ToSql + Sync), Type) {
        match self {
            Param::Text(text) => (text as &(dyn ToSql + Sync), Type::TEXT),
            Param::Int(number) => (number as &(dyn ToSql + Sync), Type::INT8),
        }
    }
}
