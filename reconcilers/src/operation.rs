//! Operations: one script run across a set of machines, and its per-machine results.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The state of a whole operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    Running,
    Succeeded,
    Failed,
    PartiallyFailed,
    Stopped,
    /// The daemon stopped while the operation ran; nothing is re-run.
    Interrupted,
}

/// The state of one machine within an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostState {
    Pending,
    Running,
    Succeeded,
    Failed {
        exit_code: Option<u32>,
        signal: Option<String>,
    },
    Timeout,
    Skipped {
        reason: String,
    },
    Stopped,
    Interrupted,
}

/// Who asked for an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Requester {
    User { name: String },
    RunRequest { id: String, revision: String },
}

/// An operation as recorded. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: u64,
    pub script: String,
    pub params: BTreeMap<String, String>,
    pub machines: Vec<String>,
    pub requested_by: Requester,
    pub state: OperationState,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// One machine's part in an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResult {
    pub machine_id: String,
    pub state: HostState,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A piece of a machine's output, in arrival order within its operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub machine_id: String,
    pub stream: Stream,
    pub data: Vec<u8>,
    pub at_ms: i64,
}
