//! The API's contract: every body, query, event and socket message the HTTP
//! API exchanges, in one place. The handlers (`src/api`) build and read these
//! types, the CLI client (`src/client`) sends and reads the same ones, and the
//! console's TypeScript types are generated from the OpenAPI description they
//! make (`schemas/openapi.json` → `src/web/src/contract.ts`), so none of the
//! three can drift from the others.
//!
//! Only data lives here (and [`at`], how a stored time is shown); how a view
//! is built from the store is its service's.

mod approvals;
mod auth;
mod ca;
mod cluster;
mod git;
mod machines;
mod operations;
mod pictures;
mod schedules;
mod states;
mod terminals;
mod triggers;

pub use approvals::*;
pub use auth::*;
pub use ca::*;
pub use cluster::*;
pub use git::*;
pub use machines::*;
pub use operations::*;
pub use pictures::*;
pub use schedules::*;
pub use states::*;
pub use terminals::*;
pub use triggers::*;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A stored Unix-millisecond time as the API shows it (RFC 3339).
pub fn at(ms: i64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).ok()
}

/// What kind of error an answer is: stable, for programs (the message is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No valid bearer token (401).
    Unauthorized,
    /// The role is too low; `details.required_role` names the one needed (403).
    Forbidden,
    /// A browser page from an origin not allowed to open terminals (403).
    ForbiddenOrigin,
    /// A login with a wrong user name or password (401).
    InvalidCredentials,
    /// A sign-in refused for what it is: a disabled user, password sign-in
    /// off, what an identity provider sent; the message says which (403).
    SignInRefused,
    /// Allowed once a second factor is given: `details.how` is `totp` (POST
    /// /api/auth/step-up), `enrol` (POST /api/auth/second-factor first) or
    /// `sso:<provider>` (sign in there again); `details.within_seconds` (403).
    StepUpRequired,
    /// Too many failed logins; `details.retry_after_secs` (429).
    Locked,
    /// Too much at once; `details.retry_after_secs` (429).
    Busy,
    BadRequest,
    NotFound,
    /// No API route has this path (404).
    NoRoute,
    /// A well-formed request that does not fit; `details.field` names what (422).
    Invalid,
    Conflict,
    /// A webhook delivery, or a trigger's request, whose signature or token does not check out (401).
    BadSignature,
    /// A body over a limit; the message names it and its setting (413).
    TooLarge,
    UnsupportedMediaType,
    /// A webhook delivery received before (409).
    Replayed,
    /// A feature that needs configuration first; the message says which (409).
    NotConfigured,
    /// Not now; `details.retry_after_secs` (503).
    Unavailable,
    /// The replica holding a terminal workspace does not answer (503).
    HolderUnreachable,
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = serde_json::to_value(self).expect("a unit variant serialises");
        f.write_str(value.as_str().unwrap_or_default())
    }
}

/// The `event` of each Server-Sent Event of `GET /api/operations/{id}/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationStreamEvent {
    /// Output of a machine (data: OutputChunk).
    Output,
    /// A machine's state changed (data: HostEvent).
    Host,
    /// The operation's state changed (data: StateEvent).
    Operation,
    /// The last event: the operation ended (data: StateEvent).
    End,
}

impl OperationStreamEvent {
    pub fn name(self) -> &'static str {
        match self {
            OperationStreamEvent::Output => "output",
            OperationStreamEvent::Host => "host",
            OperationStreamEvent::Operation => "operation",
            OperationStreamEvent::End => "end",
        }
    }
}

/// The `event` of each Server-Sent Event of `GET /api/fleet/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetStreamEvent {
    /// Every machine asked for (data: FleetSnapshot).
    Snapshot,
    /// What changed since the last event (data: FleetChanges).
    Changes,
}

impl FleetStreamEvent {
    pub fn name(self) -> &'static str {
        match self {
            FleetStreamEvent::Snapshot => "snapshot",
            FleetStreamEvent::Changes => "changes",
        }
    }
}

/// The body of every error answer: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs.
    pub code: ErrorCode,
    /// For people: what is wrong and, where it helps, how to fix it.
    pub message: String,
    /// Structured context, e.g. `{"field": "params.version"}` or `{"retry_after_secs": 30}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_event_names_are_their_serialised_names() {
        use OperationStreamEvent::*;
        for event in [Output, Host, Operation, End] {
            assert_eq!(serde_json::to_value(event).unwrap(), event.name());
        }
        for event in [FleetStreamEvent::Snapshot, FleetStreamEvent::Changes] {
            assert_eq!(serde_json::to_value(event).unwrap(), event.name());
        }
        assert_eq!(
            ErrorCode::HolderUnreachable.to_string(),
            "holder_unreachable"
        );
    }
}
