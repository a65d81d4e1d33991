//! The store's two engines behind one transactional interface: embedded redb
//! (the default) and PostgreSQL (several daemons sharing one fleet).
//!
//! Both hold the same tables: ordered maps from [`key`]-encoded bytes to
//! encoded records, as Teleport's and Vault's SQL backends keep key-value
//! rows. The typed functions of the store's other modules are written once,
//! against [`Read`] and [`Write`]; only this module and its two engines know
//! redb or PostgreSQL. Semantics are redb's: a read transaction sees one
//! snapshot, write transactions run one at a time and see what the previous
//! one committed, and a write transaction dropped without `commit` leaves
//! nothing behind.

pub mod doorbell;
pub mod key;
pub mod postgres;
pub mod redb;

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use key::{Decode, Key};

use super::{Error, Result};

/// A table of records of codec `C` under keys whose owned form is `K`.
pub struct Table<K, C> {
    pub name: &'static str,
    types: PhantomData<fn() -> (K, C)>,
}

impl<K, C> Table<K, C> {
    pub const fn new(name: &'static str) -> Self {
        Table {
            name,
            types: PhantomData,
        }
    }
}

impl<K, C> Clone for Table<K, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, C> Copy for Table<K, C> {}

/// How a table's records are written as bytes.
pub trait Codec {
    type Item;
    fn encode(item: &Self::Item) -> Vec<u8>;
    fn decode(bytes: Vec<u8>) -> serde_json::Result<Self::Item>;
}

/// Records as JSON, so that later versions can add fields.
pub struct Json<T>(PhantomData<T>);

impl<T: Serialize + DeserializeOwned> Codec for Json<T> {
    type Item = T;
    fn encode(item: &T) -> Vec<u8> {
        // Serialising plain data structs to JSON cannot fail.
        serde_json::to_vec(item).expect("store records serialise to JSON")
    }
    fn decode(bytes: Vec<u8>) -> serde_json::Result<T> {
        serde_json::from_slice(&bytes)
    }
}

/// Records that are bytes already (recording chunks).
pub struct Raw;

impl Codec for Raw {
    type Item = Vec<u8>;
    fn encode(item: &Vec<u8>) -> Vec<u8> {
        item.clone()
    }
    fn decode(bytes: Vec<u8>) -> serde_json::Result<Vec<u8>> {
        Ok(bytes)
    }
}

/// No record: the key is the whole entry (index tables).
pub struct Unit;

impl Codec for Unit {
    type Item = ();
    fn encode(_: &()) -> Vec<u8> {
        Vec::new()
    }
    fn decode(_: Vec<u8>) -> serde_json::Result<()> {
        Ok(())
    }
}

/// A range of encoded keys.
#[derive(Debug, Clone)]
pub struct Span {
    pub low: Bound<Vec<u8>>,
    pub high: Bound<Vec<u8>>,
}

impl Span {
    fn of<Q: Key>(range: &impl RangeBounds<Q>) -> Span {
        let encode = |bound: Bound<&Q>| match bound {
            Bound::Included(key) => Bound::Included(key.encode()),
            Bound::Excluded(key) => Bound::Excluded(key.encode()),
            Bound::Unbounded => Bound::Unbounded,
        };
        Span {
            low: encode(range.start_bound()),
            high: encode(range.end_bound()),
        }
    }

    /// Whether no key can lie in the span (ranges do not panic on it).
    fn is_empty(&self) -> bool {
        match (&self.low, &self.high) {
            (Bound::Included(low), Bound::Included(high)) => low > high,
            (Bound::Included(low), Bound::Excluded(high))
            | (Bound::Excluded(low), Bound::Included(high))
            | (Bound::Excluded(low), Bound::Excluded(high)) => low >= high,
            _ => false,
        }
    }

    fn everything() -> Span {
        Span {
            low: Bound::Unbounded,
            high: Bound::Unbounded,
        }
    }
}

/// An open store: one of the two engines.
pub enum Engine {
    Redb(redb::Redb),
    Postgres(postgres::Postgres),
}

impl Engine {
    /// A snapshot to read from.
    pub fn read(&self) -> Result<ReadTx> {
        Ok(match self {
            Engine::Redb(db) => ReadTx::Redb(db.begin_read()?),
            Engine::Postgres(db) => ReadTx::Postgres(db.begin_read()?),
        })
    }

    /// The write transaction, once the previous one ended.
    pub fn write(&self) -> Result<WriteTx> {
        Ok(match self {
            Engine::Redb(db) => WriteTx::Redb(Box::new(db.begin_write()?)),
            Engine::Postgres(db) => WriteTx::Postgres(db.begin_write()?),
        })
    }

    /// The writes the store refused: redb's file keeps its refusals (a full
    /// disk); a PostgreSQL database away is noticed by reading it.
    pub fn refusals(&self) -> Option<&redb::Refusals> {
        match self {
            Engine::Redb(db) => Some(db.refusals()),
            Engine::Postgres(_) => None,
        }
    }

    /// Bytes each table holds, largest first.
    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>> {
        let mut sizes = match self {
            Engine::Redb(db) => db.table_sizes()?,
            Engine::Postgres(db) => db.table_sizes()?,
        };
        sizes.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        Ok(sizes)
    }
}

pub enum ReadTx {
    Redb(::redb::ReadTransaction),
    Postgres(postgres::ReadTx),
}

pub enum WriteTx {
    /// Boxed: redb's transaction is large beside a PostgreSQL one.
    Redb(Box<redb::WriteTx>),
    Postgres(postgres::WriteTx),
}

impl WriteTx {
    /// Makes every write of the transaction durable, or none of them.
    pub fn commit(self) -> Result<()> {
        match self {
            WriteTx::Redb(tx) => tx.commit(),
            WriteTx::Postgres(tx) => tx.commit(),
        }
    }
}

macro_rules! dispatch_read {
    ($($tx:ident),*) => {$(
        impl Read for $tx {
            fn get_bytes(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
                match self {
                    $tx::Redb(tx, ..) => tx.get_bytes(table, key),
                    $tx::Postgres(tx) => tx.get_bytes(table, key),
                }
            }
            fn page(
                &self,
                table: &'static str,
                span: &Span,
                reverse: bool,
                limit: usize,
            ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                if span.is_empty() {
                    return Ok(Vec::new());
                }
                match self {
                    $tx::Redb(tx, ..) => tx.page(table, span, reverse, limit),
                    $tx::Postgres(tx) => tx.page(table, span, reverse, limit),
                }
            }
            fn count(&self, table: &'static str) -> Result<u64> {
                match self {
                    $tx::Redb(tx, ..) => tx.count(table),
                    $tx::Postgres(tx) => tx.count(table),
                }
            }
        }
    )*};
}
dispatch_read!(ReadTx, WriteTx);

impl Write for WriteTx {
    fn put_bytes(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        match self {
            WriteTx::Redb(tx) => tx.put_bytes(table, key, value),
            WriteTx::Postgres(tx) => tx.put_bytes(table, key, value),
        }
    }
    fn delete_bytes(&mut self, table: &'static str, key: &[u8]) -> Result<bool> {
        match self {
            WriteTx::Redb(tx) => tx.delete_bytes(table, key),
            WriteTx::Postgres(tx) => tx.delete_bytes(table, key),
        }
    }
    fn discard_bytes(&mut self, table: &'static str, key: Vec<u8>) -> Result<()> {
        match self {
            WriteTx::Redb(tx) => tx.discard_bytes(table, key),
            WriteTx::Postgres(tx) => tx.discard_bytes(table, key),
        }
    }
}

/// Entries a scan fetches from its engine at once: a scan that stops early
/// reads little, and a long one holds one page in memory.
const PAGE: usize = 256;

/// What both kinds of transaction can read; the typed readers are provided.
pub trait Read {
    fn get_bytes(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// At most `limit` entries of `span` in key order (descending with `reverse`).
    fn page(
        &self,
        table: &'static str,
        span: &Span,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn count(&self, table: &'static str) -> Result<u64>;

    fn get<K: std::fmt::Debug, C: Codec, Q: Key<Owned = K> + std::fmt::Debug>(
        &self,
        table: Table<K, C>,
        key: Q,
    ) -> Result<Option<C::Item>> {
        match self.get_bytes(table.name, &key.encode())? {
            Some(bytes) => decode::<C>(table.name, &key, bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The entries of `range` in key order, read a page at a time.
    fn range<K: Decode, C: Codec, Q: Key<Owned = K>>(
        &self,
        table: Table<K, C>,
        range: impl RangeBounds<Q>,
    ) -> Scan<'_, Self, K, C>
    where
        Self: Sized,
    {
        Scan::new(self, table, Span::of(&range), false)
    }

    /// The entries of `range`, last key first.
    fn range_rev<K: Decode, C: Codec, Q: Key<Owned = K>>(
        &self,
        table: Table<K, C>,
        range: impl RangeBounds<Q>,
    ) -> Scan<'_, Self, K, C>
    where
        Self: Sized,
    {
        Scan::new(self, table, Span::of(&range), true)
    }

    /// Every entry of `table` in key order (last first with `reverse`).
    fn all<K: Decode, C: Codec>(&self, table: Table<K, C>, reverse: bool) -> Scan<'_, Self, K, C>
    where
        Self: Sized,
    {
        Scan::new(self, table, Span::everything(), reverse)
    }

    /// The entry with the greatest key of `table`.
    fn last<K: Decode + std::fmt::Debug, C: Codec>(
        &self,
        table: Table<K, C>,
    ) -> Result<Option<(K, C::Item)>>
    where
        Self: Sized,
    {
        self.all(table, true).paged(1).next().transpose()
    }

    /// The entry with the least key of `table`.
    fn first<K: Decode + std::fmt::Debug, C: Codec>(
        &self,
        table: Table<K, C>,
    ) -> Result<Option<(K, C::Item)>>
    where
        Self: Sized,
    {
        self.all(table, false).paged(1).next().transpose()
    }

    fn len<K, C>(&self, table: Table<K, C>) -> Result<u64> {
        self.count(table.name)
    }
}

/// What a write transaction can change; the typed writers are provided.
pub trait Write: Read {
    fn put_bytes(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) -> Result<()>;
    /// Whether there was an entry to delete.
    fn delete_bytes(&mut self, table: &'static str, key: &[u8]) -> Result<bool>;
    /// Deletes an entry, if any, without saying whether there was one (so
    /// an engine may send it with the next statement).
    fn discard_bytes(&mut self, table: &'static str, key: Vec<u8>) -> Result<()> {
        self.delete_bytes(table, &key).map(drop)
    }

    fn insert<K, C: Codec, Q: Key<Owned = K>>(
        &mut self,
        table: Table<K, C>,
        key: Q,
        item: &C::Item,
    ) -> Result<()> {
        self.put_bytes(table.name, key.encode(), C::encode(item))
    }

    /// Deletes the entry under `key`, if any.
    fn remove<K, C, Q: Key<Owned = K>>(&mut self, table: Table<K, C>, key: Q) -> Result<()> {
        self.discard_bytes(table.name, key.encode())
    }

    /// Deletes the entry under `key`; whether there was one.
    fn delete<K, C, Q: Key<Owned = K>>(&mut self, table: Table<K, C>, key: Q) -> Result<bool> {
        self.delete_bytes(table.name, &key.encode())
    }

    /// Deletes the entries of `table` for which `keep` says false.
    fn retain<K: Key + Decode + std::fmt::Debug, C: Codec>(
        &mut self,
        table: Table<K, C>,
        mut keep: impl FnMut(&K, &C::Item) -> bool,
    ) -> Result<()>
    where
        Self: Sized,
    {
        let mut doomed = Vec::new();
        for entry in self.all(table, false) {
            let (key, item) = entry?;
            if !keep(&key, &item) {
                doomed.push(key.encode());
            }
        }
        for key in doomed {
            self.discard_bytes(table.name, key)?;
        }
        Ok(())
    }
}

fn decode<C: Codec>(
    table: &'static str,
    key: &impl std::fmt::Debug,
    bytes: Vec<u8>,
) -> Result<C::Item> {
    C::decode(bytes).map_err(|source| Error::Corrupt {
        table,
        key: format!("{key:?}"),
        source,
    })
}

/// A lazy scan over a range of one table, a [`PAGE`] at a time.
pub struct Scan<'tx, T: ?Sized, K, C> {
    tx: &'tx T,
    table: &'static str,
    span: Span,
    reverse: bool,
    buffered: VecDeque<(Vec<u8>, Vec<u8>)>,
    page: usize,
    exhausted: bool,
    types: PhantomData<fn() -> (K, C)>,
}

impl<'tx, T: Read + ?Sized, K, C> Scan<'tx, T, K, C> {
    fn new(tx: &'tx T, table: Table<K, C>, span: Span, reverse: bool) -> Self {
        Scan {
            tx,
            table: table.name,
            span,
            reverse,
            buffered: VecDeque::new(),
            page: PAGE,
            exhausted: false,
            types: PhantomData,
        }
    }
}

impl<T: Read + ?Sized, K, C> Scan<'_, T, K, C> {
    /// Fetches `entries` at a time rather than [`PAGE`]: for large records,
    /// or a scan that wants one.
    pub fn paged(mut self, entries: usize) -> Self {
        self.page = entries.max(1);
        self
    }
}

impl<T: Read + ?Sized, K: Decode + std::fmt::Debug, C: Codec> Iterator for Scan<'_, T, K, C> {
    type Item = Result<(K, C::Item)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffered.is_empty() && !self.exhausted {
            let page = match self
                .tx
                .page(self.table, &self.span, self.reverse, self.page)
            {
                Ok(page) => page,
                Err(error) => {
                    self.exhausted = true;
                    return Some(Err(error));
                }
            };
            self.exhausted = page.len() < self.page;
            if let Some((last, _)) = page.last() {
                let after = Bound::Excluded(last.clone());
                if self.reverse {
                    self.span.high = after;
                } else {
                    self.span.low = after;
                }
            }
            self.buffered = page.into();
        }
        let (key, value) = self.buffered.pop_front()?;
        let Some(decoded) = K::decode(&key) else {
            return Some(Err(Error::CorruptKey {
                table: self.table,
                key: hex::encode(key),
            }));
        };
        Some(decode::<C>(self.table, &decoded, value).map(|item| (decoded, item)))
    }
}
