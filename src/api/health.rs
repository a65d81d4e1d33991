//! `GET /health`: liveness and readiness for load balancers and systemd watchdogs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;

#[derive(Serialize)]
pub struct Health {
    /// `ok` when ready, `degraded` otherwise.
    status: &'static str,
    live: bool,
    ready: bool,
    store: Check,
    git: GitHealth,
    version: &'static str,
}

#[derive(Serialize)]
pub struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
pub struct GitHealth {
    /// Whether a config repository is configured at all.
    configured: bool,
    /// No sync has been attempted yet by this daemon.
    last_sync: Option<()>,
}

/// Answers 200 when ready, 503 when the process lives but cannot serve (store unreadable).
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
        git: GitHealth {
            configured: state.config.git.url.is_some(),
            last_sync: None,
        },
        version: env!("CARGO_PKG_VERSION"),
    };
    (status, Json(body))
}
