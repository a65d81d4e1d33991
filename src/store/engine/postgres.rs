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

    /// Joins, or renews this replica's member lease for `ttl_ms`; returns its
    /// epoch, a new one when the lease had passed (a paused replica rejoins
    /// as a new member, its old epoch fenced).
    pub fn renew_member(&self, replica: &str, address: &str, ttl_ms: i64) -> Result<i64, Error> {
        let rows = self.autocommit(
            "renew the member lease",
            "INSERT INTO linkops_members (replica, epoch, address, valid_until) \
             VALUES ($1, nextval('linkops_epochs'), $2, now() + $3 * interval '1 millisecond') \
             ON CONFLICT (replica) DO UPDATE SET \
               epoch = CASE WHEN linkops_members.valid_until > now() \
                 THEN linkops_members.epoch ELSE EXCLUDED.epoch END, \
               address = EXCLUDED.address, valid_until = EXCLUDED.valid_until \
             RETURNING epoch",
            vec![
                Param::Text(replica.to_owned()),
                Param::Text(address.to_owned()),
                Param::Int(ttl_ms),
            ],
        )?;
        Ok(rows.first().map_or(0, |row| row.get(0)))
    }

    /// Takes the leader lease if nobody holds it, or renews it if this
    /// replica does; its epoch while held (a new one after a lapse).
    pub fn renew_leadership(&self, replica: &str, ttl_ms: i64) -> Result<Option<i64>, Error> {
        let rows = self.autocommit(
            "renew the leader lease",
            "INSERT INTO linkops_leases (name, holder, epoch, valid_until) \
             VALUES ('leader', $1, nextval('linkops_epochs'), now() + $2 * interval '1 millisecond') \
             ON CONFLICT (name) DO UPDATE SET \
               epoch = CASE WHEN linkops_leases.holder = EXCLUDED.holder \
                   AND linkops_leases.valid_until > now() \
                 THEN linkops_leases.epoch ELSE EXCLUDED.epoch END, \
               holder = EXCLUDED.holder, valid_until = EXCLUDED.valid_until \
             WHERE linkops_leases.holder = EXCLUDED.holder OR linkops_leases.valid_until <= now() \
             RETURNING epoch",
            vec![Param::Text(replica.to_owned()), Param::Int(ttl_ms)],
        )?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    /// Members whose lease has not passed, by replica id.
    pub fn live_members(&self) -> Result<Vec<Member>, Error> {
        let rows = self.autocommit(
            "read the members",
            "SELECT replica, epoch, address, \
               (extract(epoch FROM valid_until - now()) * 1000)::bigint \
             FROM linkops_members WHERE valid_until > now() ORDER BY replica",
            Vec::new(),
        )?;
        Ok(rows
            .iter()
            .map(|row| Member {
                replica: row.get(0),
                epoch: row.get(1),
                address: row.get(2),
                valid_for_ms: row.get(3),
            })
            .collect())
    }

    /// The replica whose leader lease has not passed, if any.
    pub fn leader(&self) -> Result<Option<String>, Error> {
        let rows = self.autocommit(
            "read the leader",
            "SELECT holder FROM linkops_leases WHERE name = 'leader' AND valid_until > now()",
            Vec::new(),
        )?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    /// Gives up this replica's leases (a clean shutdown): the others take
    /// over at once rather than when the leases pass.
    pub fn leave(&self, replica: &str) -> Result<(), Error> {
        self.autocommit(
            "leave",
            "WITH gone AS (DELETE FROM linkops_members WHERE replica = $1) \
             DELETE FROM linkops_leases WHERE holder = $1",
            vec![Param::Text(replica.to_owned())],
        )?;
        Ok(())
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

/// What a fenced write acts as: the leader, or a live member (a machine's
/// owner), each at the epoch its lease had when its work began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    Leader { replica: String, epoch: i64 },
    Member { replica: String, epoch: i64 },
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::Leader { replica, epoch } => write!(f, "leader {replica} at epoch {epoch}"),
            Fence::Member { replica, epoch } => write!(f, "member {replica} at epoch {epoch}"),
        }
    }
}

/// A live member as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub replica: String,
    pub epoch: i64,
    /// Where the other replicas reach it (`host:port` of its API).
    pub address: String,
    /// How much longer its lease lasts, on the database's clock.
    pub valid_for_ms: i64,
}

/// One pooled connection inside one transaction, begun with its first statement.
///
/// Writes whose answer nobody needs wait in `pending` and go out with the
/// next statement that needs one (a read, a delete, the commit), all queued
/// on the connection at once: a transaction of many writes costs a round
/// trip per read, not per write.
struct Conn {
    link: Link,
    client: Option<Arc<Object>>,
    /// The statement that opens the transaction, sent in the same round trip
    /// as the first one; `None` once sent.
    begin: Cell<Option<String>>,
    pending: RefCell<Vec<Statement>>,
    /// A statement failed or timed out: the connection is not given back.
    broken: Cell<bool>,
}

async fn typed(
    client: &Object,
    sql: &str,
    params: &[Vec<u8>],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = prepared(client, sql, params.len()).await?;
    execute(client, &statement, params).await
}

/// `sql` prepared on this connection: once per connection (a few dozen
/// statements in all), so the server plans each only once; a cached one
/// costs no round trip.
async fn prepared(
    client: &Object,
    sql: &str,
    params: usize,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    client
        .prepare_typed_cached(sql, &vec![Type::BYTEA; params])
        .await
}

/// Runs a prepared statement; it is queued on the connection when first polled.
async fn execute(
    client: &Object,
    statement: &tokio_postgres::Statement,
    params: &[Vec<u8>],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|param| param as &(dyn ToSql + Sync))
        .collect();
    client.query(statement, &params).await
}

impl Conn {
    fn new(link: &Link, begin: impl Into<String>) -> Result<Conn, Error> {
        Ok(Conn {
            link: link.clone(),
            client: Some(Arc::new(link.connection()?)),
            begin: Cell::new(Some(begin.into())),
            pending: RefCell::default(),
            broken: Cell::new(false),
        })
    }

    /// Whether nothing was sent or queued: the transaction has done nothing.
    fn untouched(&mut self) -> bool {
        self.begin.get_mut().is_some() && self.pending.get_mut().is_empty()
    }

    /// Queues a write, sent with the next statement (or once
    /// [`MOST_PENDING`] wait, so that a large transaction's writes are not
    /// all held in memory).
    fn defer(&self, sql: String, params: Vec<Vec<u8>>) -> Result<(), Error> {
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.push((sql, params));
            pending.len() >= MOST_PENDING
        };
        if full {
            self.simple("write", "SELECT 1".to_owned())?;
        }
        Ok(())
    }

    /// A statement with typed (not `bytea`) parameters.
    fn query_with(
        &self,
        what: &'static str,
        sql: String,
        params: Vec<Param>,
    ) -> Result<Vec<tokio_postgres::Row>, Error> {
        self.statement(what, sql, Vec::new(), move |client, sql, _| async move {
            let typed: Vec<_> = params.iter().map(Param::typed).collect();
            client.query_typed(&sql, &typed).await
        })
    }

    fn query(
        &self,
        what: &'static str,
        sql: String,
        params: Vec<Vec<u8>>,
    ) -> Result<Vec<tokio_postgres::Row>, Error> {
        self.statement(what, sql, params, |client, sql, params| async move {
            typed(&client, &sql, &params).await
        })
    }

    /// A statement without parameters, in the simple protocol (several may be `;`-joined).
    fn simple(&self, what: &'static str, sql: String) -> Result<(), Error> {
        self.statement(what, sql, Vec::new(), |client, sql, _| async move {
            client.batch_execute(&sql).await
        })
    }

    /// Sends one statement, after the transaction's `BEGIN` (the first time)
    /// and the writes queued before it.
    fn statement<T: Send + 'static, F>(
        &self,
        what: &'static str,
        sql: String,
        params: Vec<Vec<u8>>,
        send: impl FnOnce(Arc<Object>, String, Vec<Vec<u8>>) -> F + Send + 'static,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let client = self.client.clone().ok_or(Error::Closed)?;
        let begin = self.begin.take();
        let pending = self.pending.take();
        let store = self.link.store.to_string();
        let result = self.link.run(what, async move {
            let begun = async {
                match &begin {
                    Some(begin) => client.batch_execute(begin).await,
                    None => Ok(()),
                }
            };
            // Prepared first: a statement waiting for its preparation would
            // let the ones after it overtake it.
            let mut statements = Vec::with_capacity(pending.len());
            for (sql, params) in &pending {
                match prepared(&client, sql, params.len()).await {
                    Ok(statement) => statements.push(statement),
                    Err(source) => {
                        return Err(Error::Statement {
                            store,
                            what,
                            source,
                        });
                    }
                }
            }
            let writes = futures::future::try_join_all(
                statements
                    .iter()
                    .zip(&pending)
                    .map(|(statement, (_, params))| execute(&client, statement, params)),
            );
            // Each is queued on the connection when first polled, in this
            // order, the statement that needs an answer last: one round trip.
            let (begun, written, result) =
                futures::join!(begun, writes, send(client.clone(), sql, params));
            begun
                .and(written.map(drop))
                .and(result)
                .map_err(|source| Error::Statement {
                    store,
                    what,
                    source,
                })
        });
        if result.is_err() {
            self.broken.set(true);
        }
        result
    }
}

pub struct ReadTx {
    conn: Conn,
}

pub struct WriteTx {
    conn: Conn,
    /// The tables written, for the commit to ring their followers' doorbell.
    written: std::collections::BTreeSet<&'static str>,
}

impl WriteTx {
    pub fn commit(mut self) -> crate::store::Result<()> {
        if self.conn.untouched() {
            // Nothing was read or written: there is nothing to commit.
            return Ok(());
        }
        // Delivered at the commit, and only if it commits; the names are the
        // schema's own (`[a-z_]`), so they are written into the statement as they are.
        let notify = match self.written.is_empty() {
            true => String::new(),
            false => {
                let tables = Vec::from_iter(self.written.iter().copied()).join(",");
                format!("SELECT pg_notify('{}', '{tables}'); ", doorbell::CHANNEL)
            }
        };
        self.conn.simple("commit", format!("{notify}COMMIT"))?;
        // Committed: the connection goes back to the pool as it is.
        drop(self.conn.client.take());
        Ok(())
    }

    /// Creates the tables that do not exist yet (in this transaction).
    pub fn create_tables(&mut self, names: &[&str]) -> crate::store::Result<()> {
        for name in names {
            self.conn.simple(
                "create tables",
                format!(
                    "CREATE TABLE IF NOT EXISTS kv_{name} (key bytea PRIMARY KEY, value bytea NOT NULL)"
                ),
            )?;
        }
        // Leases are rows on the database's clock; epochs only grow.
        self.conn.simple(
            "create lease tables",
            "CREATE SEQUENCE IF NOT EXISTS linkops_epochs; \
             CREATE TABLE IF NOT EXISTS linkops_members (replica text PRIMARY KEY, \
                 epoch bigint NOT NULL, address text NOT NULL, valid_until timestamptz NOT NULL); \
             CREATE TABLE IF NOT EXISTS linkops_leases (name text PRIMARY KEY, \
                 holder text NOT NULL, epoch bigint NOT NULL, valid_until timestamptz NOT NULL)"
                .to_owned(),
        )?;
        Ok(())
    }

    /// Makes the transaction fail at commit unless `fence` still holds then:
    /// checked in the transaction, its row share-locked, so a takeover waits
    /// for this transaction or this transaction sees the takeover.
    pub fn fence(&mut self, fence: &Fence) -> crate::store::Result<()> {
        let (table, key, holder) = match fence {
            Fence::Leader { .. } => ("linkops_leases", "name", "holder = $2 AND "),
            Fence::Member { .. } => ("linkops_members", "replica", ""),
        };
        let (name, replica, epoch) = match fence {
            Fence::Leader { replica, epoch } => ("leader", replica.as_str(), *epoch),
            Fence::Member { replica, epoch } => (replica.as_str(), replica.as_str(), *epoch),
        };
        let rows = self.conn.query_with(
            "fence",
            format!(
                "SELECT 1 FROM {table} WHERE {key} = $1 AND {holder}epoch = $3 \
                 AND valid_until > now() FOR SHARE"
            ),
            vec![
                Param::Text(name.to_owned()),
                Param::Text(replica.to_owned()),
                Param::Int(epoch),
            ],
        )?;
        if rows.is_empty() {
            return Err(crate::store::Error::Fenced {
                fence: fence.to_string(),
            });
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.untouched() {
            // Nothing was sent: the connection is as it came.
            return;
        }
        // Rolled back on the engine's runtime, the caller not waiting: the
        // connection returns to the pool once it has answered, or is closed.
        let broken = self.broken.get();
        self.link.handle.spawn(async move {
            let rolled_back =
                tokio::time::timeout(STATEMENT_LIMIT, client.batch_execute("ROLLBACK")).await;
            if (broken || !matches!(rolled_back, Ok(Ok(()))))
                && let Ok(object) = Arc::try_unwrap(client)
            {
                drop(Object::take(object));
            }
        });
    }
}

fn bound(
    bound: &Bound<Vec<u8>>,
    column_op: (&str, &str),
    params: &mut Vec<Vec<u8>>,
) -> Option<String> {
    let (included, excluded) = column_op;
    let (op, key) = match bound {
        Bound::Included(key) => (included, key),
        Bound::Excluded(key) => (excluded, key),
        Bound::Unbounded => return None,
    };
    params.push(key.clone());
    Some(format!("key {op} ${}", params.len()))
}

macro_rules! read_through_conn {
    ($($tx:ty),*) => {$(
        impl Read for $tx {
            fn get_bytes(&self, table: &'static str, key: &[u8]) -> crate::store::Result<Option<Vec<u8>>> {
                let rows = self.conn.query(
                    "read",
                    format!("SELECT value FROM kv_{table} WHERE key = $1"),
                    vec![key.to_vec()],
                )?;
                Ok(rows.first().map(|row| row.get(0)))
            }

            fn page(
                &self,
                table: &'static str,
                span: &Span,
                reverse: bool,
                limit: usize,
            ) -> crate::store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
                let mut params = Vec::new();
                let conditions: Vec<String> = [
                    bound(&span.low, (">=", ">"), &mut params),
                    bound(&span.high, ("<=", "<"), &mut params),
                ]
                .into_iter()
                .flatten()
                .collect();
                let filter = if conditions.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", conditions.join(" AND "))
                };
                let order = if reverse { "DESC" } else { "ASC" };
                let rows = self.conn.query(
                    "scan",
                    format!("SELECT key, value FROM kv_{table} {filter} ORDER BY key {order} LIMIT {limit}"),
                    params,
                )?;
                Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
            }

            fn count(&self, table: &'static str) -> crate::store::Result<u64> {
                let rows = self.conn.query(
                    "count",
                    format!("SELECT count(*) FROM kv_{table}"),
                    Vec::new(),
                )?;
                let count: i64 = rows.first().map_or(0, |row| row.get(0));
                Ok(u64::try_from(count).unwrap_or(0))
            }
        }
    )*};
}
read_through_conn!(ReadTx, WriteTx);

impl Write for WriteTx {
    fn put_bytes(
        &mut self,
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> crate::store::Result<()> {
        self.written.insert(table);
        self.conn.defer(
            format!(
                "INSERT INTO kv_{table} (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            vec![key, value],
        )?;
        Ok(())
    }

    fn discard_bytes(&mut self, table: &'static str, key: Vec<u8>) -> crate::store::Result<()> {
        self.written.insert(table);
        self.conn
            .defer(format!("DELETE FROM kv_{table} WHERE key = $1"), vec![key])?;
        Ok(())
    }

    fn delete_bytes(&mut self, table: &'static str, key: &[u8]) -> crate::store::Result<bool> {
        self.written.insert(table);
        let deleted = self.conn.query(
            "delete",
            format!("DELETE FROM kv_{table} WHERE key = $1 RETURNING 1"),
            vec![key.to_vec()],
        )?;
        Ok(!deleted.is_empty())
    }
}
