//! Table queries: every record kind the store keeps, as typed rows that
//! `POST /api/tables/query` filters, sorts and pages ([`query`]).
//!
//! A query sorted by a table's key (or unsorted) is answered by scanning in
//! key order and stopping after the page, through the operations index when
//! it pins `state`, `script` or `machine`; other sorts read every matching
//! row, keep only the best ones for the page as they go (a query's memory is
//! bounded by its page, whatever the table holds) and count them.

pub mod query;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use linkops_reconcilers::facts::{FactValue, MachineFacts};
use linkops_reconcilers::operation::{HostResult, HostState, Operation};
use linkops_reconcilers::state::{Standing, Target};
use linkops_reconcilers::terminal::{TerminalSession, Workspace};
use serde_json::Value;

use crate::store::{self, AuditEntry, OperationIndex, SeqTable, Store, SyncRecord};
use query::{Cell, Column, Direction, Kind, Query, QueryError, QueryRequest};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// A query refused because too many run at once.
#[derive(Debug, thiserror::Error)]
#[error(
    "{running} table queries or pictures already run ({setting} = {limit}): try again when one has ended"
)]
pub struct Busy {
    running: usize,
    limit: usize,
    setting: &'static str,
}

/// Table queries and pictures running at once, bounded per user and in all:
/// each reads the store on a blocking thread, and what many viewers ask at once must
/// not take the daemon's memory or threads.
#[derive(Clone)]
pub struct Permits {
    running: Arc<Mutex<HashMap<String, usize>>>,
    per_user: usize,
    in_all: usize,
}

/// A running query's place; given back when dropped.
pub struct Permit {
    running: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Permits {
    /// `[http] table_queries` in all, `table_queries_per_user` each.
    pub fn new(in_all: usize, per_user: usize) -> Permits {
        Permits {
            running: Arc::default(),
            per_user: per_user.max(1),
            in_all: in_all.max(1),
        }
    }

    /// A place for one more query of `user`, or why not.
    pub fn take(&self, user: &str) -> Result<Permit, Busy> {
        let mut running = self.running.lock().expect("never poisoned");
        let in_all: usize = running.values().sum();
        if in_all >= self.in_all {
            return Err(Busy {
                running: in_all,
                limit: self.in_all,
                setting: "[http] table_queries",
            });
        }
        let mine = running.entry(user.to_owned()).or_default();
        if *mine >= self.per_user {
            return Err(Busy {
                running: *mine,
                limit: self.per_user,
                setting: "[http] table_queries_per_user",
            });
        }
        *mine += 1;
        Ok(Permit {
            running: self.running.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = self.running.lock().expect("never poisoned");
        if let Some(mine) = running.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                running.remove(&self.user);
            }
        }
    }
}

/// One page of a query's answer.
#[derive(Debug)]
pub struct Page {
    pub columns: &'static [Column],
    pub rows: Vec<Vec<Cell>>,
    /// Continues after the last row; `None` on the last page.
    pub next_cursor: Option<String>,
    /// Every matching row, when the query had to read them all anyway.
    pub total: Option<u64>,
}

impl Page {
    /// Rows as JSON objects, column name to value.
    pub fn rows_json(&self) -> Vec<Value> {
        self.rows
            .iter()
            .map(|row| {
                let object = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(column, cell)| (column.name.to_owned(), cell.to_json()))
                    .collect();
                Value::Object(object)
            })
            .collect()
    }
}

macro_rules! columns {
    ($($name:ident: $kind:ident),* $(,)?) => {
        &[$(Column { name: stringify!($name), kind: Kind::$kind }),*]
    };
}

/// Who may read a table's rows, as the routes would show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Anyone signed in: the repository's content and its syncs.
    Everyone,
    /// Anyone, each row only when they see its machine: this column holds
    /// its id, or a list of ids of which one seen is enough.
    SeeingMachine(usize),
    /// Admins of the whole fleet: these rows are every user's (terminal
    /// workspaces and sessions are their owner's through the routes, the
    /// audit log names every user and change, users are admins').
    Admins,
}

/// The tables, their columns (the first is the key) and who may read them.
pub const TABLES: &[(&str, &[Column], Readers)] = &[
    ("machines", MACHINES, Readers::SeeingMachine(0)),
    ("scripts", SCRIPTS, Readers::Everyone),
    ("operations", OPERATIONS, Readers::SeeingMachine(4)),
    (
        "operation_hosts",
        OPERATION_HOSTS,
        Readers::SeeingMachine(2),
    ),
    ("sync_history", SYNC_HISTORY, Readers::Everyone),
    ("state_machines", STATE_MACHINES, Readers::SeeingMachine(2)),
    ("state_checks", STATE_CHECKS, Readers::SeeingMachine(2)),
    ("terminal_workspaces", WORKSPACES, Readers::Admins),
    ("terminal_sessions", SESSIONS, Readers::Admins),
    ("audit_log", AUDIT_LOG, Readers::Admins),
    ("users", USERS, Readers::Admins),
    ("facts", FACTS, Readers::SeeingMachine(0)),
];

const MACHINES: &[Column] = columns!(id: String, name: String, host: String, port: Integer, user: String,
    tags: List, health: String, enrollment: String, last_seen: Timestamp, revision: String, removed: Boolean);
const SCRIPTS: &[Column] = columns!(id: String, name: String, description: String, interpreter: String,
    timeout_seconds: Integer, revision: String, removed: Boolean);
const OPERATIONS: &[Column] = columns!(id: Integer, script: String, state: String, requested_by: String,
    machines: List, created_at: Timestamp, finished_at: Timestamp);
const OPERATION_HOSTS: &[Column] = columns!(key: String, operation_id: Integer, machine: String, state: String,
    exit_code: Integer, started_at: Timestamp, finished_at: Timestamp, stdout_bytes: Integer, stderr_bytes: Integer);
const SYNC_HISTORY: &[Column] = columns!(seq: Integer, started_at: Timestamp, duration_ms: Integer,
    trigger: String, result: String, revision: String, previous: String);
const STATE_MACHINES: &[Column] = columns!(key: String, state: String, machine: String, standing: String,
    reason: String, since: Timestamp, drifted_since: Timestamp, checked_at: Timestamp, check: String,
    apply_operation: Integer, apply_result: String);
const STATE_CHECKS: &[Column] = columns!(key: String, state: String, machine: String, at: Timestamp,
    result: String, duration_ms: Integer, digest: String, output: String);
const WORKSPACES: &[Column] = columns!(id: String, name: String, owner: String, layout: String,
    machines: List, created_at: Timestamp, updated_at: Timestamp);
const SESSIONS: &[Column] = columns!(id: Integer, workspace_id: String, pane: Integer, machine: String,
    user: String, started_at: Timestamp, ended_at: Timestamp, end: String, recorded_bytes: Integer);
const AUDIT_LOG: &[Column] = columns!(seq: Integer, at: Timestamp, actor: String, action: String,
    target: String, outcome: String, detail: String);
const FACTS: &[Column] = columns!(machine: String, os: String, kernel: String, arch: String,
    cpus: Integer, memory_bytes: Integer, root_used_pct: Integer, package_manager: String, updates: Integer,
    security_updates: Integer, reboot_required: Boolean, booted_at: Timestamp, gathered_at: Timestamp,
    error: String);
const USERS: &[Column] =
    columns!(name: String, role: String, created_at: Timestamp, password_changed_at: Timestamp);

/// Who may read `table`; the API checks it like a route's.
pub fn readers(table: &str) -> Result<Readers, QueryError> {
    TABLES
        .iter()
        .find(|(name, _, _)| *name == table)
        .map(|(_, _, readers)| *readers)
        .ok_or_else(|| QueryError::UnknownTable(table.to_owned()))
}

/// Runs a query, the rows of a [`Readers::SeeingMachine`] table only those
/// whose machine `sees` (by id); the caller has checked [`readers`]
/// otherwise. Blocking (store reads).
pub fn run(
    store: &Store,
    request: &QueryRequest,
    sees: &dyn Fn(&str) -> bool,
) -> Result<Page, Error> {
    let (table, columns, readers) = TABLES
        .iter()
        .find(|(name, _, _)| *name == request.table)
        .copied()
        .ok_or_else(|| QueryError::UnknownTable(request.table.clone()))?;
    let query = Query::compile(table, columns, request)?;
    // Tables scanned in the order of their key column can stop after the page.
    let key_ordered = matches!(
        table,
        "operations" | "sync_history" | "audit_log" | "terminal_sessions"
    );
    let seen = |row: &[Cell]| match readers {
        Readers::SeeingMachine(column) => match &row[column] {
            Cell::Str(id) => sees(id),
            Cell::List(ids) => ids.iter().any(|id| sees(id)),
            _ => false,
        },
        Readers::Everyone | Readers::Admins => true,
    };
    let mut collector = Collector::new(&query, key_ordered, &seen);
    match table {
        "operations" => scan_operations(store, &query, &mut collector)?,
        "sync_history" => scan_seq(store, SeqTable::SyncHistory, &mut collector, sync_row)?,
        "audit_log" => scan_seq(store, SeqTable::AuditLog, &mut collector, audit_row)?,
        "terminal_sessions" => scan_seq(
            store,
            SeqTable::TerminalSessions,
            &mut collector,
            session_row,
        )?,
        "operation_hosts" => {
            // One operation's hosts are a short range; otherwise every result is read.
            let operation = match query.pinned(1) {
                Some(Cell::Int(id)) => Some(u64::try_from(*id).unwrap_or(0)),
                _ => None,
            };
            store
                .scan_operation_hosts(operation, |id, host| collector.offer(host_row(id, &host)))?
        }
        "machines" => store
            .machines()?
            .into_iter()
            .for_each(|record| collector.push(machine_row(store, record))),
        "scripts" => store.scripts()?.into_iter().for_each(|record| {
            collector.push(vec![
                Cell::Str(record.spec.id),
                Cell::Str(record.spec.name),
                Cell::Str(record.spec.description),
                Cell::Str(record.spec.interpreter),
                Cell::Int(record.spec.timeout.as_secs() as i64),
                Cell::Str(record.revision),
                Cell::Bool(record.removed_at_ms.is_some()),
            ])
        }),
        "state_machines" => store.scan_state_targets(|target| collector.push(state_row(target)))?,
        "state_checks" => store.scan_state_checks(|state, machine, check| {
            collector.push(vec![
                Cell::Str(format!("{state}/{machine}/{}", check.at_ms)),
                Cell::Str(state.to_owned()),
                Cell::Str(machine.to_owned()),
                Cell::Time(check.at_ms),
                result(&check.outcome),
                Cell::Int(i64::try_from(check.duration_ms).unwrap_or(i64::MAX)),
                Cell::Str(check.digest),
                Cell::Str(check.output),
            ])
        })?,
        "terminal_workspaces" => store
            .workspaces()?
            .into_iter()
            .for_each(|w| collector.push(workspace_row(w))),
        "users" => store.users()?.into_iter().for_each(|user| {
            // Never the password hash.
            collector.push(vec![
                Cell::Str(user.name),
                text(user.role.map(|role| role.to_string())),
                Cell::Time(user.created_at_ms),
                Cell::Time(user.password_changed_at_ms),
            ])
        }),
        "facts" => store.scan_facts(|gathered| collector.push(facts_row(gathered)))?,
        _ => unreachable!("every table in TABLES has a source"),
    }
    Ok(collector.finish(columns))
}

/// A machine's facts as the `facts` table's row: the built-in facts (custom
/// ones are in `GET /api/facts`); what the machine could not tell is null.
fn facts_row(gathered: MachineFacts) -> Vec<Cell> {
    let facts = &gathered.facts;
    let text = |name: &str| match facts.get(name) {
        Some(FactValue::Text(value)) => Cell::Str(value.clone()),
        _ => Cell::Null,
    };
    let number = |name: &str| match facts.get(name) {
        Some(FactValue::Int(value)) => Cell::Int(*value),
        _ => Cell::Null,
    };
    vec![
        Cell::Str(gathered.machine_id.clone()),
        text("os"),
        text("kernel"),
        text("arch"),
        number("cpus"),
        number("memory_bytes"),
        number("root_used_pct"),
        text("package_manager"),
        number("updates"),
        number("security_updates"),
        match facts.get("reboot_required") {
            Some(FactValue::Bool(flag)) => Cell::Bool(*flag),
            _ => Cell::Null,
        },
        match facts.get("booted_at_ms") {
            Some(FactValue::Int(at_ms)) => Cell::Time(*at_ms),
            _ => Cell::Null,
        },
        Cell::Time(gathered.gathered_at_ms),
        gathered.error.map_or(Cell::Null, Cell::Str),
    ]
}

/// Operations through the index when a filter pins an indexed column, in id order when the sort allows.
fn scan_operations(store: &Store, query: &Query, collector: &mut Collector) -> Result<(), Error> {
    let (reverse, after) = collector.seq_bounds();
    let indexed = [
        (2, OperationIndex::State),
        (1, OperationIndex::Script),
        (4, OperationIndex::Machine),
    ]
    .into_iter()
    .find_map(|(column, index)| match query.pinned(column) {
        Some(Cell::Str(value)) => Some((index, value.clone())),
        _ => None,
    });
    // Machines are a list: `contains` on them uses the index too.
    let indexed = indexed.or_else(|| {
        query
            .filter
            .iter()
            .find(|c| c.column == 4 && c.op == query::Op::Contains)
            .and_then(|c| match &c.operand[0] {
                Cell::Str(machine) => Some((OperationIndex::Machine, machine.clone())),
                _ => None,
            })
    });
    let visit = |operation: Operation| collector.offer(operation_row(operation));
    match indexed {
        Some((index, value)) => store.scan_operations_by(index, &value, reverse, after, visit)?,
        None => store.scan_seq(SeqTable::Operations, reverse, after, visit)?,
    }
    Ok(())
}

fn scan_seq<V: serde::Serialize + serde::de::DeserializeOwned>(
    store: &Store,
    table: SeqTable,
    collector: &mut Collector,
    row: fn(V) -> Vec<Cell>,
) -> Result<(), Error> {
    let (reverse, after) = collector.seq_bounds();
    store.scan_seq(table, reverse, after, |record| collector.offer(row(record)))?;
    Ok(())
}

/// Gathers the matching rows of a scan: stops a key-ordered scan after the
/// page; when the order is another column's, keeps the best rows for the
/// page as they come (never more than twice what the page needs) and counts
/// the rest.
struct Collector<'q> {
    query: &'q Query,
    /// Whether the reader may see a row at all (before it counts).
    seen: &'q dyn Fn(&[Cell]) -> bool,
    rows: Vec<Vec<Cell>>,
    /// Key-ordered: rows arrive in the final order, so the scan can stop.
    streaming: bool,
    matched: u64,
}

impl<'q> Collector<'q> {
    fn new(
        query: &'q Query,
        key_ordered_scan: bool,
        seen: &'q dyn Fn(&[Cell]) -> bool,
    ) -> Collector<'q> {
        Collector {
            query,
            seen,
            rows: Vec::new(),
            streaming: key_ordered_scan && query.key_order().is_some(),
            matched: 0,
        }
    }

    /// Rows the page needs: those it skips, shows, and one to tell there is more.
    fn needed(&self) -> usize {
        self.query.offset + self.query.limit + 1
    }

    /// How to scan a sequence-keyed table: newest first unless the query
    /// sorts by key ascending, and after the cursor's key when rows stream.
    fn seq_bounds(&self) -> (bool, Option<u64>) {
        let reverse = self.query.key_order() != Some(Direction::Asc);
        let after = match self.query.after.as_ref().and_then(|after| after.last()) {
            Some(Cell::Int(id)) if self.streaming => u64::try_from(*id).ok(),
            _ => None,
        };
        (reverse, after)
    }

    /// Takes a row from a scan; false once the page is full.
    fn offer(&mut self, row: Vec<Cell>) -> bool {
        self.push(row);
        !(self.streaming && self.rows.len() > self.query.offset + self.query.limit)
    }

    fn push(&mut self, row: Vec<Cell>) {
        if !(self.seen)(&row) || !self.query.matches(&row) {
            return;
        }
        self.matched += 1;
        if !self.query.after_cursor(&row) {
            return;
        }
        self.rows.push(row);
        // Sorted as they come: the best `needed` stay, the rest go (amortised
        // to one sort per `needed` rows).
        if !self.streaming && self.rows.len() >= 2 * self.needed() {
            let (query, needed) = (self.query, self.needed());
            self.rows.sort_by(|a, b| query.compare(a, b));
            self.rows.truncate(needed);
        }
    }

    fn finish(mut self, columns: &'static [Column]) -> Page {
        let total = (!self.streaming).then_some(self.matched);
        if !self.streaming {
            let query = self.query;
            self.rows.sort_by(|a, b| query.compare(a, b));
        }
        let mut rows: Vec<Vec<Cell>> = self.rows.into_iter().skip(self.query.offset).collect();
        let more = rows.len() > self.query.limit;
        rows.truncate(self.query.limit);
        let next_cursor = more
            .then(|| rows.last().map(|row| self.query.cursor_after(row)))
            .flatten();
        Page {
            columns,
            rows,
            next_cursor,
            total,
        }
    }
}

fn text(value: Option<String>) -> Cell {
    value.map_or(Cell::Null, Cell::Str)
}

fn time(ms: Option<i64>) -> Cell {
    ms.map_or(Cell::Null, Cell::Time)
}

/// The `state` tag of a serialised status.
fn tag(value: &impl serde::Serialize) -> Cell {
    text(serde_json::to_value(value).ok().and_then(|v| {
        v["state"]
            .as_str()
            .or(v["reason"].as_str())
            .map(str::to_owned)
    }))
}

fn machine_row(store: &Store, record: store::MachineRecord) -> Vec<Cell> {
    let status = store.machine_status(&record.spec.id).ok().flatten();
    let machine = record.spec;
    vec![
        Cell::Str(machine.id),
        Cell::Str(machine.name),
        Cell::Str(machine.host),
        Cell::Int(machine.port.into()),
        text(machine.user),
        Cell::List(machine.tags),
        status.as_ref().map_or(Cell::Null, |s| tag(&s.health)),
        status.as_ref().map_or(Cell::Null, |s| tag(&s.enrollment)),
        time(status.as_ref().and_then(|s| s.last_seen_ms)),
        Cell::Str(record.revision),
        Cell::Bool(record.removed_at_ms.is_some()),
    ]
}

/// The `result` tag of a serialised check outcome or apply result.
fn result(value: &impl serde::Serialize) -> Cell {
    text(
        serde_json::to_value(value)
            .ok()
            .and_then(|v| v["result"].as_str().map(str::to_owned)),
    )
}

fn state_row(target: Target) -> Vec<Cell> {
    let reason = match &target.standing {
        Standing::Held { reason } | Standing::Failed { reason, .. } => Some(reason.clone()),
        Standing::CheckError { message } => Some(message.clone()),
        _ => None,
    };
    vec![
        Cell::Str(format!("{}/{}", target.state_id, target.machine_id)),
        Cell::Str(target.state_id),
        Cell::Str(target.machine_id),
        Cell::Str(target.standing.name().to_owned()),
        text(reason),
        Cell::Time(target.since_ms),
        time(target.drifted_since_ms),
        time(target.check.as_ref().map(|c| c.at_ms)),
        target
            .check
            .as_ref()
            .map_or(Cell::Null, |c| result(&c.outcome)),
        target
            .apply
            .as_ref()
            .map_or(Cell::Null, |a| Cell::Int(a.operation_id as i64)),
        target
            .apply
            .as_ref()
            .map_or(Cell::Null, |a| result(&a.result)),
    ]
}

fn operation_row(operation: Operation) -> Vec<Cell> {
    let requested_by = operation.requested_by.label();
    vec![
        Cell::Int(operation.id as i64),
        Cell::Str(operation.script),
        Cell::Str(operation.state.name().to_owned()),
        Cell::Str(requested_by),
        Cell::List(operation.machines),
        Cell::Time(operation.created_at_ms),
        time(operation.finished_at_ms),
    ]
}

fn host_row(operation_id: u64, host: &HostResult) -> Vec<Cell> {
    let exit_code = match &host.state {
        HostState::Succeeded => Cell::Int(0),
        HostState::Failed {
            exit_code: Some(code),
            ..
        } => Cell::Int((*code).into()),
        _ => Cell::Null,
    };
    vec![
        Cell::Str(format!("{operation_id}/{}", host.machine_id)),
        Cell::Int(operation_id as i64),
        Cell::Str(host.machine_id.clone()),
        tag(&host.state),
        exit_code,
        time(host.started_at_ms),
        time(host.finished_at_ms),
        Cell::Int(host.stdout_bytes as i64),
        Cell::Int(host.stderr_bytes as i64),
    ]
}

fn sync_row(record: SyncRecord) -> Vec<Cell> {
    vec![
        Cell::Int(record.seq as i64),
        Cell::Time(record.started_at_ms),
        Cell::Int(record.duration_ms as i64),
        Cell::Str(record.trigger),
        Cell::Str(record.outcome.name().to_owned()),
        text(record.revision),
        text(record.previous),
    ]
}

fn audit_row(entry: AuditEntry) -> Vec<Cell> {
    vec![
        Cell::Int(entry.seq as i64),
        Cell::Time(entry.at_ms),
        Cell::Str(entry.actor),
        Cell::Str(entry.action),
        Cell::Str(entry.target),
        tag_outcome(entry.outcome),
        text(entry.detail),
    ]
}

fn tag_outcome(outcome: store::Outcome) -> Cell {
    text(
        serde_json::to_value(outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned)),
    )
}

fn session_row(session: TerminalSession) -> Vec<Cell> {
    vec![
        Cell::Int(session.id as i64),
        Cell::Str(session.workspace_id),
        Cell::Int(session.pane as i64),
        Cell::Str(session.machine_id),
        Cell::Str(session.user),
        Cell::Time(session.started_at_ms),
        time(session.ended_at_ms),
        session.end.as_ref().map_or(Cell::Null, tag),
        Cell::Int(session.recorded_bytes as i64),
    ]
}

fn workspace_row(workspace: Workspace) -> Vec<Cell> {
    vec![
        Cell::Str(workspace.id),
        Cell::Str(workspace.name),
        Cell::Str(workspace.owner),
        Cell::Str(workspace.layout.name().to_owned()),
        Cell::List(workspace.panes.into_iter().flatten().collect()),
        Cell::Time(workspace.created_at_ms),
        Cell::Time(workspace.updated_at_ms),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_at_once_are_bounded_per_user_and_in_all() {
        let permits = Permits::new(3, 2);
        let first = permits.take("vic").unwrap();
        let _second = permits.take("vic").unwrap();
        let refused = permits.take("vic").err().unwrap().to_string();
        assert!(
            refused.contains("[http] table_queries_per_user = 2"),
            "{refused}"
        );
        let _other = permits.take("olga").unwrap();
        let refused = permits.take("ada").err().unwrap().to_string();
        assert!(refused.contains("[http] table_queries = 3"), "{refused}");
        drop(first);
        permits.take("ada").unwrap();
    }

    #[test]
    fn a_sort_on_another_column_holds_no_more_than_twice_its_page() {
        let request: QueryRequest = serde_json::from_value(serde_json::json!({
            "table": "state_checks",
            "filter": [{"column": "result", "op": "eq", "value": "holds"}],
            "sort": [{"column": "at", "dir": "desc"}],
            "limit": 10,
            "offset": 5,
        }))
        .unwrap();
        let query = Query::compile("state_checks", STATE_CHECKS, &request).unwrap();
        let mut collector = Collector::new(&query, false, &|_| true);
        let mut most = 0;
        for n in 0..10_000i64 {
            // Every third row does not match; the times come in no order.
            let at = (n * 7_919) % 10_000;
            collector.push(vec![
                Cell::Str(format!("s/m{n}/{at}")),
                Cell::Str("s".into()),
                Cell::Str(format!("m{n}")),
                Cell::Time(at),
                Cell::Str(if n % 3 == 0 { "drifted" } else { "holds" }.into()),
                Cell::Int(1),
                Cell::Str("d".into()),
                Cell::Str("x".repeat(64)),
            ]);
            most = most.max(collector.rows.len());
        }
        assert!(most <= 2 * (5 + 10 + 1), "held {most} rows at once");
        let page = collector.finish(STATE_CHECKS);
        assert_eq!(page.total, Some(6_666));
        let times: Vec<&Cell> = page.rows.iter().map(|row| &row[3]).collect();
        // The newest matching times, after the first five: as a full sort gives them.
        let mut expected: Vec<i64> = (0..10_000i64)
            .filter(|n| n % 3 != 0)
            .map(|n| (n * 7_919) % 10_000)
            .collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        let expected: Vec<Cell> = expected[5..15].iter().map(|at| Cell::Time(*at)).collect();
        assert_eq!(times, expected.iter().collect::<Vec<_>>());
        assert!(page.next_cursor.is_some());
    }
}
