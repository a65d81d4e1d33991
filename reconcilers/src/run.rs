//! Run-requests: a script to run once on some machines, asked for by a commit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::script::{ParamValue, Targets};

/// A run-request as committed under `runs/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Unique forever: it starts at most one operation.
    pub id: String,
    /// Repository path of the file that holds it.
    pub file: String,
    pub script: String,
    /// The resolved targets (the script's defaults when the request names none).
    pub targets: Targets,
    pub params: BTreeMap<String, ParamValue>,
    pub not_before: Option<jiff::Timestamp>,
}
