//! The API's contract: every body, query, event and socket message the HTTP
//! API exchanges, in one place. The handlers (`src/api`) build and read these
//! types, the CLI client (`src/client`) sends and reads the same ones, and the
//! console's TypeScript types are generated from the OpenAPI description they
//! make (`schemas/openapi.json` → `src/web/src/contract.ts`), so none of the
//! three can drift from the others.
//!
//! Only data lives here (and [`at`], how a stored time is shown); how a view
//! is built from the store is its service's.

mod auth;
mod cluster;
mod git;
mod machines;
mod operations;
mod states;
mod terminals;

pub use auth::*;
pub use cluster::*;
pub use git::*;
pub use machines::*;
pub use operations::*;
pub use states::*;
pub use terminals::*;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A stored Unix-millisecond time as the API shows it (RFC 3339).
pub fn at(ms: i64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).ok()
}

/// The body of every error answer: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `unauthorized`, `forbidden`, `not_found`, `invalid`, `conflict`, …
    pub code: String,
    /// For people: what is wrong and, where it helps, how to fix it.
    pub message: String,
    /// Structured context, e.g. `{"field": "params.version"}` or `{"retry_after_secs": 30}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}
