//! Record encoding: JSON bytes in redb tables, decoded with the table and key in the error.

use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Error, Result};

/// A table whose values are JSON-encoded records.
pub type JsonTable<K> = TableDefinition<'static, K, &'static [u8]>;

pub fn encode<V: Serialize>(value: &V) -> Vec<u8> {
    // Serialising plain data structs to JSON cannot fail.
    serde_json::to_vec(value).expect("store records serialise to JSON")
}

pub fn decode<V: DeserializeOwned>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<V> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        table,
        key: key.to_string(),
        source,
    })
}

/// Reads and decodes the record under a string key.
pub fn get_str<V: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    key: &str,
) -> Result<Option<V>> {
    match table.get(key)? {
        Some(guard) => decode(name, key, guard.value()).map(Some),
        None => Ok(None),
    }
}

impl super::Store {
    /// The record under `key` in a string-keyed table.
    pub(super) fn read_one<V: DeserializeOwned>(
        &self,
        table: JsonTable<&'static str>,
        name: &'static str,
        key: &str,
    ) -> Result<Option<V>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        get_str(&tx.open_table(table)?, name, key)
    }

    /// Every record of a string-keyed table, in key order.
    pub(super) fn read_all<V: DeserializeOwned>(
        &self,
        table: JsonTable<&'static str>,
        name: &'static str,
    ) -> Result<Vec<V>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(table)?;
        table
            .range::<&str>(..)?
            .map(|entry| {
                let (key, value) = entry?;
                decode(name, key.value(), value.value())
            })
            .collect()
    }
}
