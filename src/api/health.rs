//! `GET /health`: liveness and readiness for load balancers and systemd watchdogs.

use axum::extract::State;

use super::AppState;
use super::extract::Json;
use crate::contract::{Check, GitHealth, Health, Readiness};
use axum::http::StatusCode;

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
        status: if ready {
            Readiness::Ok
        } else {
            Readiness::Degraded
        },
        live: true,
        ready,
        store,
        git: git_health(&state),
        version: env!("CARGO_PKG_VERSION").to_owned(),
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
        last_result: last.as_ref().map(|r| r.outcome.name().to_owned()),
        last_sync_at: last.and_then(|r| super::at(r.started_at_ms)),
    }
}
