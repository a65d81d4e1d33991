//! Operations: starting runs, their history and recorded output, the events
//! of `/api/operations/{id}/events`; and run-requests from Git.

use std::collections::BTreeMap;

use linkops_reconcilers::condition::Condition;
use linkops_reconcilers::operation::{HostResult, HostState, Operation, OperationState, Stream};
use linkops_reconcilers::rollout::Rollout;
use linkops_reconcilers::run::{RunRequest, RunState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationView {
    #[serde(flatten)]
    pub operation: Operation,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<jiff::Timestamp>,
    /// Per machine; empty in lists.
    pub hosts: Vec<HostResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunBody {
    pub script: String,
    #[serde(default)]
    pub targets: TargetsBody,
    /// By name: a string, an integer or a boolean, as the script declares.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// At most this many machines at once (the script's and the fleet's limits also apply).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Run in batches, canaries first, halting after `max_failures`; all at once when absent.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetsBody {
    #[serde(default)]
    pub machines: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Of those (or of every machine), the ones whose facts are these, e.g.
    /// `{"reboot_required": true}` — decided when the run starts.
    #[serde(
        default,
        rename = "where",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    #[schema(value_type = Object)]
    pub where_: std::collections::BTreeMap<String, linkops_reconcilers::script::ParamValue>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    pub script: Option<String>,
    pub machine: Option<String>,
    pub state: Option<OperationState>,
    /// RFC 3339: only operations created at or after.
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<jiff::Timestamp>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// Only this machine's output.
    pub machine: Option<String>,
    /// Events after this sequence number (from a previous page's `next_after`).
    #[serde(default)]
    pub after: u64,
    pub limit: Option<usize>,
}

/// Recorded output, paged by event sequence number.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputPage {
    pub chunks: Vec<OutputChunk>,
    /// Ask again with `after` set to this; `null` when the page was the last.
    pub next_after: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// For clients that cannot send the `Last-Event-ID` header.
    pub last_event_id: Option<u64>,
}

/// The data of an `output` event, and a chunk of an output page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputChunk {
    pub machine: String,
    pub stream: Stream,
    #[serde(flatten)]
    pub bytes: OutputBytes,
}

/// Output is `text` when it is UTF-8, `base64` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OutputBytes {
    Text { text: String },
    Base64 { base64: String },
}

/// The data of a `host` event: a machine's part changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostEvent {
    pub machine: String,
    pub state: HostState,
}

/// The data of an `operation` event (it changed state) and of `end` (nothing follows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateEvent {
    pub state: OperationState,
}

/// The answer to a stop.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stopping {
    /// The operation being stopped.
    pub stopping: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunView {
    pub id: String,
    /// As in Git now; `null` once removed from Git.
    pub request: Option<RunRequest>,
    /// `null` before the daemon has looked at it.
    pub state: Option<RunState>,
    /// The request was edited after its operation started; it is not re-run.
    pub changed_after_run: bool,
    pub revision: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<jiff::Timestamp>,
    pub conditions: Vec<Condition>,
}

/// A page of `POST /api/tables/query`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TablePage {
    pub table: String,
    pub columns: Vec<TableColumn>,
    /// Each row by column name.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
    /// Every matching row, when the query had to read them all anyway.
    pub total: Option<u64>,
    pub has_more: bool,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TableColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: crate::tables::query::Kind,
}

/// `GET /api/notifications`: what waits in the outbox and what was given up on.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxView {
    /// Commit statuses and notifications waiting, oldest first (with their
    /// attempts and last error): a page of them, after `after`.
    pub queued: Vec<linkops_reconcilers::outbox::Queued>,
    /// Given up on after their last attempt, or dropped from a full channel:
    /// the newest, oldest first.
    pub dead: Vec<linkops_reconcilers::outbox::Queued>,
    /// How many wait, and how many dead letters are kept, in all channels.
    pub queued_total: u64,
    pub dead_total: u64,
}

/// Which part of the outbox `GET /api/notifications` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// One channel: `forge` or a sink's name.
    pub channel: Option<String>,
    /// Waiting messages after this number (the last one seen).
    pub after: Option<u64>,
    /// At most this many of each (default 100, at most 1000).
    pub limit: Option<usize>,
}
