//! Ordered scans for table queries: records in key order from a starting
//! point, and operations through their secondary index.
//!
//! A scan visits decoded records until the visitor says stop, so a page of a
//! large table reads about as many records as it shows.

use serde::Serialize;
use serde::de::DeserializeOwned;

use linkops_reconcilers::operation::{HostResult, Operation, OperationState};

use super::engine::{Json, Read, Table, Write, WriteTx};
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
    /// The table, its records read as `V` (the caller's view of them).
    fn view<V>(self) -> Table<u64, Json<V>> {
        Table::new(match self {
            SeqTable::Operations => OPERATIONS.name,
            SeqTable::SyncHistory => SYNC_HISTORY.name,
            SeqTable::AuditLog => AUDIT_LOG.name,
            SeqTable::TerminalSessions => TERMINAL_SESSIONS.name,
        })
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
    tx: &mut WriteTx,
    operation: &Operation,
    previous: Option<OperationState>,
) -> Result<()> {
    let state = OperationIndex::State.name();
    if let Some(previous) = previous {
        if previous == operation.state {
            return Ok(());
        }
        tx.remove(OPERATION_INDEX, (state, previous.name(), operation.id))?;
        let entry = (state, operation.state.name(), operation.id);
        return tx.insert(OPERATION_INDEX, entry, &());
    }
    for (column, value) in index_entries(operation) {
        tx.insert(OPERATION_INDEX, (column, value.as_str(), operation.id), &())?;
    }
    Ok(())
}

/// Drops an operation's index entries (its record goes).
pub(super) fn unindex_operation(tx: &mut WriteTx, operation: &Operation) -> Result<()> {
    for (column, value) in index_entries(operation) {
        tx.remove(OPERATION_INDEX, (column, value.as_str(), operation.id))?;
    }
    Ok(())
}

/// Builds the operation index from the operations table (migration to version 3).
pub(super) fn backfill_operation_index(tx: &mut WriteTx) -> Result<()> {
    let mut entries = Vec::new();
    for entry in tx.all(OPERATIONS, false) {
        let (id, operation) = entry?;
        entries.extend(
            index_entries(&operation)
                .into_iter()
                .map(|(column, value)| (column, value, id)),
        );
    }
    for entry in entries {
        tx.insert(OPERATION_INDEX, entry, &())?;
    }
    Ok(())
}

/// Runs `step` on each entry until it returns false.
fn each<T>(
    entries: impl Iterator<Item = Result<T>>,
    mut step: impl FnMut(T) -> Result<bool>,
) -> Result<()> {
    for entry in entries {
        if !step(entry?)? {
            break;
        }
    }
    Ok(())
}

impl Store {
    /// Visits the records of `table` in key order (newest first with
    /// `reverse`), after key `after`, until `visit` returns false.
    pub fn scan_seq<V: Serialize + DeserializeOwned>(
        &self,
        table: SeqTable,
        reverse: bool,
        after: Option<u64>,
        mut visit: impl FnMut(V) -> bool,
    ) -> Result<()> {
        let table = table.view::<V>();
        let tx = self.read()?;
        let range = match (after, reverse) {
            (None, reverse) => tx.all(table, reverse),
            (Some(after), false) => tx.range(table, after.saturating_add(1)..),
            (Some(after), true) => tx.range_rev(table, ..after),
        };
        each(range, |(_, record)| Ok(visit(record)))
    }

    /// The newest records of `table` that `keep` accepts, at most `limit`.
    pub(super) fn newest<V: Serialize + DeserializeOwned>(
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
        let tx = self.read()?;
        let column = index.name();
        let (low, high) = match (after, reverse) {
            (Some(after), false) => (after.saturating_add(1), u64::MAX),
            (Some(after), true) => (0, after.saturating_sub(1)),
            (None, _) => (0, u64::MAX),
        };
        let span = (column, value, low)..=(column, value, high);
        let entries = match reverse {
            false => tx.range(OPERATION_INDEX, span),
            true => tx.range_rev(OPERATION_INDEX, span),
        };
        each(entries, |((_, _, id), ())| {
            match tx.get(OPERATIONS, id)? {
                Some(operation) => Ok(visit(operation)),
                None => Ok(true),
            }
        })
    }

    /// Visits per-machine results (of one operation, or of all) in
    /// (operation id, machine) order until `visit` returns false.
    pub fn scan_operation_hosts(
        &self,
        operation: Option<u64>,
        mut visit: impl FnMut(u64, HostResult) -> bool,
    ) -> Result<()> {
        let tx = self.read()?;
        let entries = match operation {
            Some(id) => tx.range(OPERATION_HOSTS, (id, "")..(id.saturating_add(1), "")),
            None => tx.all(OPERATION_HOSTS, false),
        };
        each(entries, |((id, _), host)| Ok(visit(id, host)))
    }

    /// Every machine the inventory declares or declared.
    pub fn machines(&self) -> Result<Vec<MachineRecord>> {
        self.read_all(MACHINES)
    }

    /// Every script of the catalog, removed ones included.
    pub fn scripts(&self) -> Result<Vec<ScriptRecord>> {
        self.read_all(SCRIPTS)
    }

    /// Creates many operations with their hosts in one transaction (imports
    /// and benchmarks; the daemon creates them one by one with their claims).
    pub fn import_operations(&self, operations: &[(Operation, Vec<HostResult>)]) -> Result<()> {
        let mut tx = self.write()?;
        let first = tx.last(OPERATIONS)?.map_or(1, |(id, _)| id + 1);
        for (id, (operation, results)) in (first..).zip(operations) {
            let operation = Operation {
                id,
                ..operation.clone()
            };
            tx.insert(OPERATIONS, id, &operation)?;
            for result in results {
                tx.insert(OPERATION_HOSTS, (id, result.machine_id.as_str()), result)?;
            }
            index_operation(&mut tx, &operation, None)?;
        }
        tx.commit()
    }
}
