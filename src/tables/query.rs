//! The query language of `POST /api/tables/query`, checked against a table's
//! typed columns and evaluated on rows. Pure: no store, no I/O.

use std::cmp::Ordering;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Rows a page may hold at most (a larger `limit` is capped, not refused).
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 100;

/// A column's type, as a page's `columns` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Integer,
    String,
    /// Unix milliseconds in the store; RFC 3339 on the wire.
    Timestamp,
    Boolean,
    /// A list of strings; only `contains` (an element) applies.
    List,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::String => "string",
            Kind::Timestamp => "timestamp",
            Kind::Boolean => "boolean",
            Kind::List => "list",
        }
    }

    fn supports(self, op: Op) -> bool {
        use Op::*;
        match self {
            Kind::Integer | Kind::Timestamp => matches!(op, Eq | Ne | Lt | Le | Gt | Ge | In),
            Kind::String => true,
            Kind::Boolean => matches!(op, Eq | Ne),
            Kind::List => matches!(op, Contains),
        }
    }
}

/// A column of a table; the first column of every table is its unique key.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Str(String),
    Bool(bool),
    Time(i64),
    List(Vec<String>),
}

impl Cell {
    /// Ordering within one column; nulls first.
    fn compare(&self, other: &Cell) -> Ordering {
        match (self, other) {
            (Cell::Null, Cell::Null) => Ordering::Equal,
            (Cell::Null, _) => Ordering::Less,
            (_, Cell::Null) => Ordering::Greater,
            (Cell::Int(a), Cell::Int(b)) | (Cell::Time(a), Cell::Time(b)) => a.cmp(b),
            (Cell::Str(a), Cell::Str(b)) => a.cmp(b),
            (Cell::Bool(a), Cell::Bool(b)) => a.cmp(b),
            (Cell::List(a), Cell::List(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }

    /// The value as the API shows it.
    pub fn to_json(&self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(n) => json!(n),
            Cell::Str(s) => json!(s),
            Cell::Bool(b) => json!(b),
            Cell::Time(ms) => {
                jiff::Timestamp::from_millisecond(*ms).map_or(Value::Null, |t| json!(t.to_string()))
            }
            Cell::List(items) => json!(items),
        }
    }

    fn from_json(kind: Kind, value: &Value) -> Option<Cell> {
        match (kind, value) {
            (_, Value::Null) => Some(Cell::Null),
            (Kind::Integer, Value::Number(n)) => n.as_i64().map(Cell::Int),
            (Kind::String | Kind::List, Value::String(s)) => Some(Cell::Str(s.clone())),
            (Kind::Boolean, Value::Bool(b)) => Some(Cell::Bool(*b)),
            (Kind::Timestamp, Value::String(s)) => s
                .parse::<jiff::Timestamp>()
                .ok()
                .map(|t| Cell::Time(t.as_millisecond())),
            (Kind::Timestamp, Value::Number(n)) => n.as_i64().map(Cell::Time),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    Prefix,
    In,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Asc,
    Desc,
}

/// The request body, as the client sends it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub table: String,
    #[serde(default)]
    pub filter: Vec<FilterRequest>,
    #[serde(default)]
    pub sort: Vec<SortRequest>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    pub offset: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    pub column: String,
    pub op: Op,
    pub value: Value,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SortRequest {
    pub column: String,
    #[serde(default)]
    pub dir: Direction,
}

/// Why a query cannot run; each names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    #[error("table {table} has no column {column:?}")]
    UnknownColumn { table: String, column: String },
    #[error("column {column} ({kind}) does not support the {op:?} operator")]
    UnsupportedOp {
        column: String,
        kind: &'static str,
        op: Op,
    },
    #[error("column {column} is a {kind}: {value} is not one{hint}")]
    WrongType {
        column: String,
        kind: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("the cursor is not one this query returned")]
    BadCursor,
    #[error("give either a cursor or an offset, not both")]
    CursorAndOffset,
}

/// A checked condition.
#[derive(Debug, Clone)]
pub struct Condition {
    pub column: usize,
    pub op: Op,
    pub operand: Vec<Cell>,
}

/// A checked query for one table.
#[derive(Debug, Clone)]
pub struct Query {
    pub filter: Vec<Condition>,
    /// Sort keys; the table's key always ends them (so the order is total).
    pub sort: Vec<(usize, Direction)>,
    pub limit: usize,
    /// Rows strictly after this one (in sort order): the sort key values, then the table key.
    pub after: Option<Vec<Cell>>,
    pub offset: usize,
}

impl Query {
    /// Checks a request against a table's columns.
    pub fn compile(
        table: &str,
        columns: &[Column],
        request: &QueryRequest,
    ) -> Result<Query, QueryError> {
        let column = |name: &str| {
            columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| QueryError::UnknownColumn {
                    table: table.to_owned(),
                    column: name.to_owned(),
                })
        };
        let mut filter = Vec::new();
        for condition in &request.filter {
            let index = column(&condition.column)?;
            let Column { name, kind } = columns[index];
            if !kind.supports(condition.op) {
                return Err(QueryError::UnsupportedOp {
                    column: name.to_owned(),
                    kind: kind.name(),
                    op: condition.op,
                });
            }
            let wrong = |value: &Value| QueryError::WrongType {
                column: name.to_owned(),
                kind: kind.name(),
                value: value.to_string(),
                hint: match (kind, condition.op) {
                    (_, Op::In) => " (`in` takes a list of values)",
                    (Kind::Timestamp, _) => " (give an RFC 3339 time or Unix milliseconds)",
                    _ => "",
                },
            };
            let operand = match (condition.op, &condition.value) {
                (Op::In, Value::Array(values)) => values
                    .iter()
                    .map(|v| Cell::from_json(kind, v).ok_or_else(|| wrong(v)))
                    .collect::<Result<_, _>>()?,
                (Op::In, other) => return Err(wrong(other)),
                (_, value) => vec![Cell::from_json(kind, value).ok_or_else(|| wrong(value))?],
            };
            filter.push(Condition {
                column: index,
                op: condition.op,
                operand,
            });
        }
        let mut sort = Vec::new();
        for key in &request.sort {
            sort.push((column(&key.column)?, key.dir));
        }
        if !sort.iter().any(|(c, _)| *c == 0) {
            let dir = sort.last().map_or(Direction::Asc, |(_, d)| *d);
            sort.push((0, dir));
        }
        if request.cursor.is_some() && request.offset.is_some() {
            return Err(QueryError::CursorAndOffset);
        }
        let after = request
            .cursor
            .as_deref()
            .map(|cursor| decode_cursor(cursor, &sort, columns))
            .transpose()?;
        Ok(Query {
            filter,
            sort,
            limit: request.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            after,
            offset: request.offset.unwrap_or(0),
        })
    }

    pub fn matches(&self, row: &[Cell]) -> bool {
        self.filter
            .iter()
            .all(|condition| condition.holds(&row[condition.column]))
    }

    /// The order of two rows under the sort keys.
    pub fn compare(&self, a: &[Cell], b: &[Cell]) -> Ordering {
        for (column, dir) in &self.sort {
            let order = a[*column].compare(&b[*column]);
            let order = if *dir == Direction::Desc {
                order.reverse()
            } else {
                order
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }

    /// Whether a row comes after the cursor (every row does without one).
    pub fn after_cursor(&self, row: &[Cell]) -> bool {
        let Some(after) = &self.after else {
            return true;
        };
        for ((column, dir), bound) in self.sort.iter().zip(after) {
            let order = row[*column].compare(bound);
            let order = if *dir == Direction::Desc {
                order.reverse()
            } else {
                order
            };
            if order != Ordering::Equal {
                return order == Ordering::Greater;
            }
        }
        false
    }

    /// The cursor that continues after `row`.
    pub fn cursor_after(&self, row: &[Cell]) -> String {
        let keys: Vec<Value> = self.sort.iter().map(|(c, _)| raw(&row[*c])).collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Value::Array(keys).to_string())
    }

    /// Whether rows come in the table key's order (so a scan in that order can stop early).
    pub fn key_order(&self) -> Option<Direction> {
        match self.sort.as_slice() {
            [(0, dir)] => Some(*dir),
            _ => None,
        }
    }

    /// The value an `eq` condition pins `column` to, if any (an index can serve it).
    pub fn pinned(&self, column: usize) -> Option<&Cell> {
        self.filter
            .iter()
            .find(|c| c.column == column && c.op == Op::Eq)
            .map(|c| &c.operand[0])
    }
}

impl Condition {
    fn holds(&self, cell: &Cell) -> bool {
        let operand = &self.operand[0];
        match self.op {
            Op::Eq => cell == operand,
            Op::Ne => cell != operand,
            Op::Lt => *cell != Cell::Null && cell.compare(operand) == Ordering::Less,
            Op::Le => *cell != Cell::Null && cell.compare(operand) != Ordering::Greater,
            Op::Gt => cell.compare(operand) == Ordering::Greater,
            Op::Ge => *cell != Cell::Null && cell.compare(operand) != Ordering::Less,
            Op::In => self.operand.contains(cell),
            Op::Contains => match (cell, operand) {
                (Cell::Str(s), Cell::Str(needle)) => s.contains(needle.as_str()),
                (Cell::List(items), Cell::Str(item)) => items.contains(item),
                _ => false,
            },
            Op::Prefix => {
                matches!((cell, operand), (Cell::Str(s), Cell::Str(p)) if s.starts_with(p.as_str()))
            }
        }
    }
}

/// A cell as stored in a cursor (timestamps as milliseconds, so they round-trip exactly).
fn raw(cell: &Cell) -> Value {
    match cell {
        Cell::Time(ms) => json!(ms),
        other => other.to_json(),
    }
}

fn decode_cursor(
    cursor: &str,
    sort: &[(usize, Direction)],
    columns: &[Column],
) -> Result<Vec<Cell>, QueryError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| QueryError::BadCursor)?;
    let Ok(Value::Array(values)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(QueryError::BadCursor);
    };
    if values.len() != sort.len() {
        return Err(QueryError::BadCursor);
    }
    sort.iter()
        .zip(&values)
        .map(|((column, _), value)| {
            let kind = match columns[*column].kind {
                Kind::List => return Ok(Cell::Null),
                kind => kind,
            };
            Cell::from_json(kind, value).ok_or(QueryError::BadCursor)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[Column] = &[
        Column {
            name: "id",
            kind: Kind::Integer,
        },
        Column {
            name: "script",
            kind: Kind::String,
        },
        Column {
            name: "created_at",
            kind: Kind::Timestamp,
        },
        Column {
            name: "machines",
            kind: Kind::List,
        },
        Column {
            name: "removed",
            kind: Kind::Boolean,
        },
    ];

    fn request(body: Value) -> QueryRequest {
        serde_json::from_value(body).unwrap()
    }

    fn compile(body: Value) -> Result<Query, QueryError> {
        Query::compile("operations", COLUMNS, &request(body))
    }

    fn row(id: i64, script: &str, at: i64, machines: &[&str]) -> Vec<Cell> {
        vec![
            Cell::Int(id),
            Cell::Str(script.into()),
            Cell::Time(at),
            Cell::List(machines.iter().map(|m| m.to_string()).collect()),
            Cell::Bool(false),
        ]
    }

    #[test]
    fn mistakes_are_named() {
        let error = |body| compile(body).unwrap_err().to_string();
        assert_eq!(
            error(
                json!({"table": "operations", "filter": [{"column": "colour", "op": "eq", "value": 1}]})
            ),
            "table operations has no column \"colour\""
        );
        assert_eq!(
            error(
                json!({"table": "operations", "filter": [{"column": "id", "op": "eq", "value": "seven"}]})
            ),
            "column id is a integer: \"seven\" is not one"
        );
        assert_eq!(
            error(
                json!({"table": "operations", "filter": [{"column": "id", "op": "prefix", "value": 1}]})
            ),
            "column id (integer) does not support the Prefix operator"
        );
        assert!(error(json!({"table": "operations", "filter": [{"column": "created_at", "op": "gt", "value": "yesterday"}]}))
            .contains("RFC 3339"));
        assert!(
            error(
                json!({"table": "operations", "filter": [{"column": "id", "op": "in", "value": 3}]})
            )
            .contains("list of values")
        );
        assert_eq!(
            error(json!({"table": "operations", "sort": [{"column": "nope"}]})),
            "table operations has no column \"nope\""
        );
        assert!(
            serde_json::from_value::<QueryRequest>(
                json!({"table": "t", "filter": [{"column": "id", "op": "like", "value": 1}]})
            )
            .is_err()
        );
    }

    #[test]
    fn filters_apply_each_operator() {
        let rows = [
            row(1, "deploy", 1000, &["web1"]),
            row(2, "backup", 2000, &["db1", "web1"]),
            row(3, "deploy-all", 3000, &[]),
        ];
        let ids = |body: Value| -> Vec<i64> {
            let query = compile(body).unwrap();
            rows.iter()
                .filter(|r| query.matches(r))
                .map(|r| match r[0] {
                    Cell::Int(id) => id,
                    _ => unreachable!(),
                })
                .collect()
        };
        let f = |column: &str, op: &str, value: Value| json!({"table": "operations", "filter": [{"column": column, "op": op, "value": value}]});
        assert_eq!(ids(f("script", "eq", json!("deploy"))), [1]);
        assert_eq!(ids(f("script", "ne", json!("deploy"))), [2, 3]);
        assert_eq!(ids(f("script", "prefix", json!("deploy"))), [1, 3]);
        assert_eq!(ids(f("script", "contains", json!("ack"))), [2]);
        assert_eq!(ids(f("id", "in", json!([1, 3]))), [1, 3]);
        assert_eq!(ids(f("id", "ge", json!(2))), [2, 3]);
        assert_eq!(ids(f("id", "lt", json!(2))), [1]);
        assert_eq!(ids(f("machines", "contains", json!("web1"))), [1, 2]);
        assert_eq!(
            ids(f("created_at", "gt", json!("1970-01-01T00:00:01.5Z"))),
            [2, 3]
        );
        assert_eq!(ids(f("created_at", "le", json!(2000))), [1, 2]);
        assert_eq!(ids(f("removed", "eq", json!(false))), [1, 2, 3]);
    }

    #[test]
    fn sorting_ends_with_the_key_and_cursors_continue_exactly() {
        let query = compile(json!({"table": "operations", "sort": [{"column": "script", "dir": "desc"}], "limit": 2})).unwrap();
        assert_eq!(query.sort, vec![(1, Direction::Desc), (0, Direction::Desc)]);
        let mut rows = [
            row(1, "a", 0, &[]),
            row(2, "b", 0, &[]),
            row(3, "b", 0, &[]),
            row(4, "a", 0, &[]),
        ];
        rows.sort_by(|a, b| query.compare(a, b));
        let order: Vec<&Cell> = rows.iter().map(|r| &r[0]).collect();
        assert_eq!(
            order,
            [&Cell::Int(3), &Cell::Int(2), &Cell::Int(4), &Cell::Int(1)]
        );

        let cursor = query.cursor_after(&rows[1]);
        let next = compile(json!({"table": "operations", "sort": [{"column": "script", "dir": "desc"}], "cursor": cursor})).unwrap();
        let rest: Vec<&Cell> = rows
            .iter()
            .filter(|r| next.after_cursor(r))
            .map(|r| &r[0])
            .collect();
        assert_eq!(rest, [&Cell::Int(4), &Cell::Int(1)]);
        assert_eq!(query.key_order(), None);
        let by_key =
            compile(json!({"table": "operations", "sort": [{"column": "id", "dir": "desc"}]}))
                .unwrap();
        assert_eq!(by_key.key_order(), Some(Direction::Desc));
    }

    #[test]
    fn limits_are_capped_and_cursors_checked() {
        assert_eq!(
            compile(json!({"table": "operations", "limit": 1_000_000}))
                .unwrap()
                .limit,
            MAX_LIMIT
        );
        assert_eq!(
            compile(json!({"table": "operations", "cursor": "garbage"})).unwrap_err(),
            QueryError::BadCursor
        );
        assert_eq!(
            compile(json!({"table": "operations", "cursor": "W10", "offset": 3})).unwrap_err(),
            QueryError::CursorAndOffset
        );
    }
}
