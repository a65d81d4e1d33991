//! The one error shape of the API: `{"error": {"code", "message", "details"?}}`.
//!
//! Handlers return [`ApiError`]; internal causes are logged here and never sent
//! to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::contract::{ErrorBody, ErrorCode, ErrorDetail};
use crate::{auth, store};

/// Why a second factor is asked for, and how to give one.
#[derive(Debug, Clone)]
pub struct StepUp {
    pub message: String,
    /// It must have been given within this.
    pub within_secs: u64,
    /// `totp`, `enrol` or `sso:<provider>`.
    pub how: String,
}

#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    /// The caller's grants do not reach what the request touches.
    NotGranted(linkops_reconcilers::grant::Refusal),
    /// A browser page from an origin not allowed to open terminals.
    ForbiddenOrigin(String),
    InvalidCredentials,
    /// A sign-in refused for what it is, not for a wrong password: a disabled
    /// user, password sign-in off, what an identity provider sent.
    SignInRefused(String),
    /// Allowed, once a second factor is given.
    StepUpRequired(StepUp),
    Locked {
        retry_after_secs: u64,
    },
    /// Too much of something at once (logins waiting for a hash); the message names the limit.
    Busy {
        message: String,
        retry_after_secs: u64,
    },
    BadRequest(String),
    NotFound(String),
    /// No route has this path.
    NoRoute(String),
    /// A well-formed request the catalog or inventory cannot accept; `field` names what is wrong.
    Unprocessable {
        field: String,
        message: String,
    },
    /// The request conflicts with the current state of the thing.
    Conflict(String),
    /// A webhook delivery whose signature or headers do not check out.
    Webhook(crate::git::webhook::Rejection),
    /// A trigger's caller without its token or signature; the message says which.
    BadCaller(String),
    /// A body over a limit; the message names it and its setting.
    TooLarge(String),
    UnsupportedMediaType(String),
    /// A webhook delivery id seen before.
    Replayed(String),
    /// A feature that needs configuration first (the message says which).
    NotConfigured(String),
    /// Not now: the message names what is missing (a full queue and its
    /// setting, the database); `Retry-After` says when to try again.
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// The replica holding a terminal workspace's sessions does not answer.
    HolderUnreachable {
        replica: String,
        address: String,
        reason: String,
    },
    Internal(String),
}

impl From<auth::Error> for ApiError {
    fn from(error: auth::Error) -> Self {
        match error {
            auth::Error::InvalidCredentials => ApiError::InvalidCredentials,
            auth::Error::Locked { retry_after } => ApiError::Locked {
                retry_after_secs: retry_after.as_secs().max(1),
            },
            auth::Error::InvalidToken => ApiError::Unauthorized,
            auth::Error::InvalidName(name) => ApiError::Unprocessable {
                field: "username".into(),
                message: auth::Error::InvalidName(name).to_string(),
            },
            auth::Error::Store(error) => error.into(),
            auth::Error::Busy { retry_after, .. } => ApiError::Busy {
                message: error.to_string(),
                retry_after_secs: retry_after.as_secs().max(1),
            },
            auth::Error::Hash(_) => ApiError::Internal(error.to_string()),
            auth::Error::PasswordSignInOff | auth::Error::SecondFactor(_) => {
                ApiError::SignInRefused(error.to_string())
            }
            auth::Error::SecondFactorUnreadable(_) => ApiError::Internal(error.to_string()),
            auth::Error::Sso(error) => error.into(),
        }
    }
}

impl From<auth::sso::Error> for ApiError {
    fn from(error: auth::sso::Error) -> Self {
        use auth::sso::Error;
        match error {
            Error::UnknownProvider(_) => ApiError::NotFound(error.to_string()),
            Error::Unreachable { .. } => ApiError::Unavailable {
                message: error.to_string(),
                retry_after_secs: 5,
            },
            Error::Config { .. } | Error::Secret(_) => ApiError::Internal(error.to_string()),
            Error::StateMismatch
            | Error::Refused { .. }
            | Error::IdToken { .. }
            | Error::Claim { .. } => ApiError::SignInRefused(error.to_string()),
        }
    }
}

impl From<crate::controller::Error> for ApiError {
    fn from(error: crate::controller::Error) -> Self {
        match error {
            crate::controller::Error::Store(error) => error.into(),
            reconcile => ApiError::Internal(reconcile.to_string()),
        }
    }
}

impl From<crate::controller::RunError> for ApiError {
    fn from(error: crate::controller::RunError) -> Self {
        use crate::controller::RunError;
        match error {
            RunError::NothingApplied => ApiError::NotConfigured(error.to_string()),
            RunError::NoSuchOperation(_) => ApiError::NotFound(error.to_string()),
            RunError::Unfit { field, message } => ApiError::Unprocessable { field, message },
            RunError::Conflict(message) => ApiError::Conflict(message),
            RunError::NotGranted(refusal) => ApiError::NotGranted(refusal),
            // The handler says how to give one; this is what is left.
            RunError::SecondFactor(_) => ApiError::SignInRefused(error.to_string()),
            // The handlers answer `201` with the request; this is what is left.
            RunError::AwaitingApproval(_) => ApiError::Conflict(error.to_string()),
            RunError::Check(error) => error.into(),
            RunError::Store(error) | RunError::Start(crate::operations::Error::Store(error)) => {
                error.into()
            }
            // A value that cannot travel as the script's environment.
            RunError::Start(error) => ApiError::Unprocessable {
                field: "params".into(),
                message: error.to_string(),
            },
        }
    }
}

impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::UserExists(_)
            | store::Error::NameRetired(_)
            | store::Error::LastAdmin(_) => ApiError::Conflict(error.to_string()),
            store::Error::NoSuchUser(_) | store::Error::NoSuchToken(_) => {
                ApiError::NotFound(error.to_string())
            }
            store::Error::TokenExists(_)
            | store::Error::VoteRaced { .. }
            | store::Error::TooManyTokens(_)
            | store::Error::SecondFactorEnrolled(_)
            | store::Error::NoSecondFactor(_) => ApiError::Conflict(error.to_string()),
            store::Error::NameTaken { .. } | store::Error::Disabled(_) => {
                ApiError::SignInRefused(error.to_string())
            }
            // The database away (or restarting), or a disk that refuses writes:
            // not this request's fault, and nothing was done.
            error
                if error.is_transient() || matches!(error, store::Error::WritesFailing { .. }) =>
            {
                ApiError::Unavailable {
                    message: format!("the store cannot serve this now; nothing was done: {error}"),
                    retry_after_secs: 2,
                }
            }
            error => ApiError::Internal(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details): (_, ErrorCode, String, Option<Value>) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "a valid bearer token is required".into(),
                None,
            ),
            ApiError::NotGranted(refusal) => (
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                refusal.to_string(),
                Some(json!({ "required_role": refusal.needed })),
            ),
            ApiError::ForbiddenOrigin(origin) => (
                StatusCode::FORBIDDEN,
                ErrorCode::ForbiddenOrigin,
                format!(
                    "origin {origin:?} may not open terminals; add it to [terminal] allowed_origins"
                ),
                Some(json!({ "origin": origin })),
            ),
            ApiError::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidCredentials,
                "invalid user name or password".into(),
                None,
            ),
            ApiError::StepUpRequired(StepUp {
                message,
                within_secs,
                how,
            }) => (
                StatusCode::FORBIDDEN,
                ErrorCode::StepUpRequired,
                message,
                Some(json!({ "within_seconds": within_secs, "how": how })),
            ),
            ApiError::SignInRefused(message) => (
                StatusCode::FORBIDDEN,
                ErrorCode::SignInRefused,
                message,
                None,
            ),
            ApiError::Locked { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Locked,
                format!("too many failed logins; try again in {retry_after_secs} s"),
                Some(json!({ "retry_after_secs": retry_after_secs })),
            ),
            ApiError::Busy {
                message,
                retry_after_secs,
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Busy,
                message,
                Some(json!({ "retry_after_secs": retry_after_secs })),
            ),
            ApiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                message,
                None,
            ),
            ApiError::NotFound(message) => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound, message, None)
            }
            ApiError::NoRoute(path) => (
                StatusCode::NOT_FOUND,
                ErrorCode::NoRoute,
                format!("no API route {path}; see /api/openapi.json"),
                None,
            ),
            ApiError::Unprocessable { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::Invalid,
                message,
                Some(json!({ "field": field })),
            ),
            ApiError::Conflict(message) => {
                (StatusCode::CONFLICT, ErrorCode::Conflict, message, None)
            }
            ApiError::Webhook(rejection) => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::BadSignature,
                rejection.to_string(),
                None,
            ),
            ApiError::BadCaller(message) => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::BadSignature,
                message,
                None,
            ),
            ApiError::TooLarge(message) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                message,
                None,
            ),
            ApiError::UnsupportedMediaType(message) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                message,
                None,
            ),
            ApiError::Replayed(delivery) => (
                StatusCode::CONFLICT,
                ErrorCode::Replayed,
                format!("{delivery} was already received"),
                None,
            ),
            ApiError::NotConfigured(message) => (
                StatusCode::CONFLICT,
                ErrorCode::NotConfigured,
                message,
                None,
            ),
            ApiError::Unavailable {
                message,
                retry_after_secs,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
                Some(json!({ "retry_after_secs": retry_after_secs })),
            ),
            ApiError::HolderUnreachable {
                replica,
                address,
                reason,
            } => {
                tracing::warn!(%replica, %address, %reason, "the replica holding a terminal workspace does not answer");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::HolderUnreachable,
                    format!(
                        "replica {replica} at {address} holds this workspace's terminals and does not answer ({reason}); if it is gone, another replica takes the workspace over once its lease passes: try again in a few seconds"
                    ),
                    Some(json!({ "replica": replica, "address": address, "retry_after_secs": 2 })),
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error; see the daemon's log".into(),
                    None,
                )
            }
        };
        let retry_after = details
            .as_ref()
            .and_then(|d| d["retry_after_secs"].as_u64());
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
