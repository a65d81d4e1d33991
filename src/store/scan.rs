//! Ordered scans for table queries: records in key order from a starting
//! point, and operations through their secondary index.
//!
//! A scan visits decoded records until the visitor says stop, so a page of a
//! large table reads about as many records as it shows.

use redb::{ReadableDatabase, ReadableTable};
use serde::de::DeserializeOwned;

use linkops_reconcilers::operation::{HostResult, Operation, OperationState};

use super::codec::{JsonTable, decode, encode};
use super::schema::{
    AUDIT_LOG, MACHINES, OPERATION_HOSTS, OPERATION_INDEX, OPERATIONS, SCRIPTS, SYNC_HISTORY,
    TERMINAL_SESSIONS,
};
use super::{MachineRecord, Result, ScriptRecord, Store};

/// Tables keyed by a sequence number (ids grow with time).
#[derive(Debug, Clone, Copy)]
pub enum SeqTable {
    Operations,
    SyncHistory,
    AuditLog,
    TerminalSessions,
}

impl SeqTable {
    fn definition(self) -> (JsonTable<u64>, &'static str) {
        match self {
            SeqTable::Operations => (OPERATIONS, "operations"),
            SeqTable::SyncHistory => (SYNC_HISTORY, "sync_history"),
            SeqTable::AuditLog => (AUDIT_LOG, "audit_log"),
            SeqTable::TerminalSessions => (TERMINAL_SESSIONS, "terminal_sessions"),
        }
    }
}

/// Secondary indexes of operations: `(column, value, operation id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationIndex {
    State,
    Script,
    Machine,
}

impl OperationIndex {
    fn name(self) -> &'static str {
        match self {
            OperationIndex::State => "state",
            OperationIndex::Script => "script",
            OperationIndex::Machine => "machine",
        }
    }
}

/// The index entries of an operation.
pub(super) fn index_entries(operation: &Operation) -> Vec<(&'static str, String)> {
    let mut entries = vec![
        (
            OperationIndex::State.name(),
            operation.state.name().to_owned(),
        ),
        (OperationIndex::Script.name(), operation.script.clone()),
    ];
    entries.extend(
        operation
            .machines
            .iter()
            .map(|m| (OperationIndex::Machine.name(), m.clone())),
    );
    entries
}

/// Adds an operation's index entries (and, with `previous`, drops a changed state's).
pub(super) fn index_operation(
    tx: &redb::WriteTransaction,
    operation: &Operation,
    previous: Option<OperationState>,
) -> Result<()> {
    let mut index = tx.open_table(OPERATION_INDEX)?;
    if let Some(previous) = previous {
        if previous == operation.state {
            return Ok(());
        }
        let old = previous.name().to_owned();
        index.remove((OperationIndex::State.name(), old.as_str(), operation.id))?;
        let new = operation.state.name().to_owned();
        index.insert(
            (OperationIndex::State.name(), new.as_str(), operation.id),
            (),
        )?;
        return Ok(());
    }
    for (column, value) in index_entries(operation) {
        index.insert((column, value.as_str(), operation.id), ())?;
    }
    Ok(())
}

/// Builds the operation index from the operations table (migration to version 3).
pub(super) fn backfill_operation_index(tx: &redb::WriteTransaction) -> Result<()> {
    let operations = tx.open_table(OPERATIONS)?;
    let mut index = tx.open_table(OPERATION_INDEX)?;
    for entry in operations.range::<u64>(..)? {
        let (key, value) = entry?;
        let operation: Operation = decode("operations", key.value(), value.value())?;
        for (column, value) in index_entries(&operation) {
            index.insert((column, value.as_str(), operation.id), ())?;
        }
    }
    Ok(())
}

/// Runs `step` on each item, backwards with `reverse`, until it returns false.
fn each<I: DoubleEndedIterator>(
    range: I,
    reverse: bool,
    mut step: impl FnMut(I::Item) -> Result<bool>,
) -> Result<()> {
    let items: Box<dyn Iterator<Item = I::Item> + '_> = if reverse {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    for item in items {
        if !step(item)? {
            break;
        }
    }
    Ok(())
}

impl Store {
    /// Visits the records of `table` in key order (newest first with
    /// `reverse`), after key `after`, until `visit` returns false.
    pub fn scan_seq<V: DeserializeOwned>(
        &self,
        table: SeqTable,
        reverse: bool,
        after: Option<u64>,
        mut visit: impl FnMut(V) -> bool,
    ) -> Result<()> {
        let (definition, name) = table.definition();
        let tx = self.db.begin_read()?;
        let table = tx.open_table(definition)?;
        let range = match (after, reverse) {
            (None, _) => table.range::<u64>(..)?,
            (Some(after), false) => table.range(after.saturating_add(1)..)?,
            (Some(after), true) => table.range(..after)?,
        };
        let step = |entry: std::result::Result<_, redb::StorageError>| -> Result<bool> {
            let (key, value): (redb::AccessGuard<u64>, redb::AccessGuard<&[u8]>) = entry?;
            Ok(visit(decode(name, key.value(), value.value())?))
        };
        each(range, reverse, step)
    }

    /// The newest records of `table` that `keep` accepts, at most `limit`.
    pub(super) fn newest<V: DeserializeOwned>(
        &self,
        table: SeqTable,
        limit: usize,
        keep: impl Fn(&V) -> bool,
    ) -> Result<Vec<V>> {
        let mut found = Vec::new();
        self.scan_seq(table, true, None, |record: V| {
            if found.len() < limit && keep(&record) {
                found.push(record);
            }
            found.len() < limit
        })?;
        Ok(found)
    }

    /// Visits the operations whose `index` column is `value`, in id order
    /// (newest first with `reverse`), after id `after`, until `visit` returns false.
    pub fn scan_operations_by(
        &self,
        index: OperationIndex,
        value: &str,
        reverse: bool,
        after: Option<u64>,
        mut visit: impl FnMut(Operation) -> bool,
    ) -> Result<()> {
        let tx = self.db.begin_read()?;
        let entries = tx.open_table(OPERATION_INDEX)?;
        let operations = tx.open_table(OPERATIONS)?;
        let column = index.name();
        let (low, high) = match (after, reverse) {
            (Some(after), false) => (after.saturating_add(1), u64::MAX),
            (Some(after), true) => (0, after.saturating_sub(1)),
            (None, _) => (0, u64::MAX),
        };
        let range = entries.range((column, value, low)..=(column, value, high))?;
        let step = |entry: std::result::Result<_, redb::StorageError>| -> Result<bool> {
            let (key, _): (redb::AccessGuard<(&str, &str, u64)>, redb::AccessGuard<()>) = entry?;
            let id = key.value().2;
            match operations.get(id)? {
                Some(value) => Ok(visit(decode("operations", id, value.value())?)),
                None => Ok(true),
            }
        };
        each(range, reverse, step)
    }

    /// Visits per-machine results (of one operation, or of all) in
    /// (operation id, machine) order until `visit` returns false.
    pub fn scan_operation_hosts(
        &self,
        operation: Option<u64>,
        mut visit: impl FnMut(u64, HostResult) -> bool,
    ) -> Result<()> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OPERATION_HOSTS)?;
        let range = match operation {
            Some(id) => table.range((id, "")..(id.saturating_add(1), ""))?,
            None => table.range::<(u64, &str)>(..)?,
        };
        let step = |entry: std::result::Result<_, redb::StorageError>| -> Result<bool> {
            let (key, value): (redb::AccessGuard<(u64, &str)>, redb::AccessGuard<&[u8]>) = entry?;
            let (id, machine) = key.value();
            Ok(visit(
                id,
                decode("operation_hosts", machine, value.value())?,
            ))
        };
        each(range, false, step)
    }

    /// Every machine the inventory declares or declared.
    pub fn machines(&self) -> Result<Vec<MachineRecord>> {
        self.read_all(MACHINES, "machines")
    }

    /// Every script of the catalog, removed ones included.
    pub fn scripts(&self) -> Result<Vec<ScriptRecord>> {
        self.read_all(SCRIPTS, "scripts")
    }

    /// Creates many operations with their hosts in one transaction (imports
    /// and benchmarks; the daemon creates them one by one with their claims).
    pub fn import_operations(&self, operations: &[(Operation, Vec<HostResult>)]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(OPERATIONS)?;
            let mut hosts = tx.open_table(OPERATION_HOSTS)?;
            let first = table.last()?.map_or(1, |(key, _)| key.value() + 1);
            for (id, (operation, results)) in (first..).zip(operations) {
                let operation = Operation {
                    id,
                    ..operation.clone()
                };
                table.insert(id, encode(&operation).as_slice())?;
                for result in results {
                    hosts.insert((id, result.machine_id.as_str()), encode(result).as_slice())?;
                }
                index_operation(&tx, &operation, None)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
