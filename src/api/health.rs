//! `GET /health`: liveness and readiness for load balancers and systemd watchdogs.

use axum::extract::State;

use super::extract::Json;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use crate::store::SyncOutcome;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` when ready, `degraded` otherwise.
    status: &'static str,
    live: bool,
    ready: bool,
    store: Check,
    git: GitHealth,
    version: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GitHealth {
    /// Whether a config repository is configured at all.
    configured: bool,
    /// The revision in force, if any.
    applied_revision: Option<String>,
    /// `applied`, `unchanged`, `invalid` or `failed`; `null` before the first sync.
    last_result: Option<&'static str>,
    last_sync_at: Option<jiff::Timestamp>,
}

/// Answers 200 when ready, 503 when the process lives but cannot serve (store unreadable).
#[utoipa::path(get, path = "/health", tag = "daemon", security(()), responses((status = 200, description = "Alive and ready", body = Health), (status = 503, description = "Alive, not ready (the store does not answer)", body = Health)))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let store = match state.store.ping() {
        Ok(()) => Check {
            ok: true,
            error: None,
        },
        Err(e) => Check {
            ok: false,
            error: Some(e.to_string()),
        },
    };
    let ready = store.ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if ready { "ok" } else { "degraded" },
        live: true,
        ready,
        store,
        git: git_health(&state),
        version: env!("CARGO_PKG_VERSION"),
    };
    (status, Json(body))
}

fn git_health(state: &AppState) -> GitHealth {
    let last = state.store.recent_syncs(1).ok().and_then(|mut r| r.pop());
    let desired = state.git.desired();
    let applied_revision = desired.borrow().as_ref().map(|d| d.revision.clone());
    GitHealth {
        configured: state.git.source().is_some(),
        applied_revision,
        last_result: last.as_ref().map(|r| match r.outcome {
            SyncOutcome::Applied { .. } => "applied",
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Invalid { .. } => "invalid",
            SyncOutcome::Failed { .. } => "failed",
        }),
        last_sync_at: last.and_then(|r| super::at(r.started_at_ms)),
    }
}
