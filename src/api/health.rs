//! `GET /health`: liveness and readiness for load balancers and systemd watchdogs.

use axum::extract::State;

use super::AppState;
use super::extract::Json;
use crate::contract::{Check, GitHealth, Health, Readiness};
use axum::http::StatusCode;

/// How long `/health` waits for the store.
const STORE_ANSWER: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers 200 when ready, 503 when the process lives but cannot serve (store unreadable).
#[utoipa::path(get, path = "/health", tag = "daemon", security(()), responses((status = 200, description = "Alive and ready", body = Health), (status = 503, description = "Alive, not ready (the store does not answer)", body = Health)))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    // Off the async runtime, and bounded: a database that does not answer
    // (cut off) must make this answer "not ready" at once, not in 30 s.
    let asking = state.store.clone();
    let asked = crate::blocking::run(move || {
        let pinged = asking.ping();
        let last = asking.recent_syncs(1).ok().and_then(|mut r| r.pop());
        (pinged, last)
    });
    let (pinged, last) = match tokio::time::timeout(STORE_ANSWER, asked).await {
        Ok(Ok((pinged, last))) => (pinged.map_err(|e| e.to_string()), last),
        Ok(Err(error)) => (Err(error.to_string()), None),
        Err(_) => (
            Err(format!("the store did not answer within {STORE_ANSWER:?}")),
            None,
        ),
    };
    let store = match pinged {
        Ok(()) => Check {
            ok: true,
            error: None,
        },
        Err(error) => Check {
            ok: false,
            error: Some(error),
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
        git: git_health(&state, last),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    (status, Json(body))
}

fn git_health(state: &AppState, last: Option<crate::store::SyncRecord>) -> GitHealth {
    let desired = state.git.desired();
    let applied_revision = desired.borrow().as_ref().map(|d| d.revision.clone());
    GitHealth {
        configured: state.git.source().is_some(),
        applied_revision,
        last_result: last.as_ref().map(|r| r.outcome.name().to_owned()),
        last_sync_at: last.and_then(|r| super::at(r.started_at_ms)),
    }
}
