//! Transactions on one pooled connection: statements pipelined until one
//! needs an answer, reads and writes of the byte tables, the commit that
//! rings the doorbell.

use super::*;

/// One pooled connection inside one transaction, begun with its first statement.
///
/// Writes whose answer nobody needs wait in `pending` and go out with the
/// next statement that needs one (a read, a delete, the commit), all queued
/// on the connection at once: a transaction of many writes costs a round
/// trip per read, not per write.
pub(super) struct Conn {
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
    pub(super) fn new(link: &Link, begin: impl Into<String>) -> Result<Conn, Error> {
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

    pub(super) fn query(
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
    pub(super) conn: Conn,
}

pub struct WriteTx {
    pub(super) conn: Conn,
    /// The tables written, for the commit to ring their followers' doorbell.
    pub(super) written: std::collections::BTreeSet<&'static str>,
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
