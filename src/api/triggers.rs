//! `POST /api/triggers/{name}`: an inbound trigger, called by whoever holds
//! its own token or key (Alertmanager, a monitoring hook) — no session. The
//! body is read up to `[triggers] max_body`, at most `[triggers]
//! concurrency` requests at once; the controller proves the caller and
//! starts what the trigger allows.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};

use super::extract::{Json, Path};
use super::{ApiError, AppState};
use crate::contract::{TriggerAnswer, TriggerOutcome};
use crate::controller::{Proof, TriggerError};

/// How long a trigger request that found every slot busy is told to wait.
const BUSY_RETRY_SECS: u64 = 5;

/// `POST /api/triggers/{name}`
#[utoipa::path(post, path = "/api/triggers/{name}", tag = "triggers", security(()), params(("name" = String, Path, description = "Trigger name (triggers/<name>.yaml)")), request_body(content = Object, description = "Alertmanager's webhook payload (version 4), or any JSON object for `format: json`; `Authorization: Bearer <token>` or `X-LinkOps-Signature: sha256=<hex>` as the trigger's `auth` says", content_type = "application/json"), responses((status = 202, description = "At least one run started (or, in a dry run, would)", body = TriggerAnswer), (status = 200, description = "Nothing started: resends, resolved alerts, a spent rate; each run says why", body = TriggerAnswer), (status = 401, description = "No token or signature, or not this trigger's", body = crate::contract::ErrorBody), (status = 404, description = "No such trigger", body = crate::contract::ErrorBody), (status = 409, description = "The trigger's key cannot be read (the operator's to fix)", body = crate::contract::ErrorBody), (status = 413, description = "Body over [triggers] max_body", body = crate::contract::ErrorBody), (status = 422, description = "Not the trigger's format, too many alerts, or every run refused (a machine outside its machines)", body = crate::contract::ErrorBody), (status = 429, description = "[triggers] concurrency requests already being answered", body = crate::contract::ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<TriggerAnswer>), ApiError> {
    let refused = |result: &'static str| {
        let labels = crate::metrics::ResultLabels { result };
        state.metrics.trigger_refusals.get_or_create(&labels).inc();
    };
    let Ok(_turn) = state.trigger_requests.clone().try_acquire_owned() else {
        refused("busy");
        return Err(ApiError::Busy {
            message: format!(
                "{} trigger requests are being answered ([triggers] concurrency): send it again",
                state.config.triggers.concurrency
            ),
            retry_after_secs: BUSY_RETRY_SECS,
        });
    };
    let limit = state.config.triggers.max_body;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        refused("too_large");
        return Err(ApiError::TooLarge(format!(
            "the body is over {limit} bytes ([triggers] max_body)"
        )));
    };
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let proof = Proof {
        authorization: text(header::AUTHORIZATION),
        signature: text(header::HeaderName::from_static("x-linkops-signature")),
    };
    let secrets_dir = &state.config.triggers.secrets_dir;
    let answer = match state
        .controller
        .trigger(&name, proof, &body, secrets_dir)
        .await
    {
        Ok(answer) => answer,
        Err(error) => {
            refused(match &error {
                TriggerError::Unknown(_) => "unknown",
                other => other.name(),
            });
            if let TriggerError::NoKey { .. } = &error {
                tracing::error!(trigger = %name, %error, "a trigger cannot check its callers");
            }
            return Err(error.into());
        }
    };
    let started = |outcome: &TriggerOutcome| {
        matches!(
            outcome,
            TriggerOutcome::Started { .. } | TriggerOutcome::WouldRun { .. }
        )
    };
    let refused_all = !answer.runs.is_empty()
        && (answer.runs.iter()).all(|run| matches!(run.outcome, TriggerOutcome::Refused { .. }));
    if refused_all {
        let reasons: Vec<String> = (answer.runs.iter())
            .filter_map(|run| match &run.outcome {
                TriggerOutcome::Refused { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        return Err(ApiError::Unprocessable {
            field: "body".into(),
            message: format!(
                "trigger {name:?} runs nothing asked: {}",
                reasons.join("; ")
            ),
        });
    }
    let status = match answer.runs.iter().any(|run| started(&run.outcome)) {
        true => StatusCode::ACCEPTED,
        false => StatusCode::OK,
    };
    Ok((status, Json(answer)))
}

impl From<TriggerError> for ApiError {
    fn from(error: TriggerError) -> Self {
        match error {
            TriggerError::Unknown(_) => ApiError::NotFound(error.to_string()),
            TriggerError::Unauthorized(message) => ApiError::BadCaller(message),
            TriggerError::NoKey { .. } => ApiError::NotConfigured(error.to_string()),
            TriggerError::Body { .. } => ApiError::Unprocessable {
                field: "body".into(),
                message: error.to_string(),
            },
            TriggerError::Store(error) => error.into(),
        }
    }
}
