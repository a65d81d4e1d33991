//! The HTTP API. Submodules mirror the URL tree; handlers parse, authorise,
//! call a service and map errors in one place ([`ApiError`]).

mod auth;
mod error;
mod git;
mod health;
mod links;
mod metrics;
mod operations;
mod reconcile;
mod runs;
mod tables;
mod terminal;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request};
use axum::routing::{get, post, put};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::config::Config;
use crate::store::Store;
pub use error::ApiError;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: crate::auth::Auth,
    pub git: crate::git::sync::GitSync,
    pub controller: crate::controller::Controller,
    pub terminals: crate::terminal::Terminals,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Every route of the API, with request tracing.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::metrics))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/me", get(auth::me))
        .route("/api/users", get(users::list))
        .route("/api/links", get(links::list))
        .route("/api/links/{id}", get(links::get))
        .route("/api/links/{id}/verify", post(links::verify))
        .route("/api/runs", get(runs::list))
        .route("/api/runs/{id}", get(runs::get))
        .route("/api/operations", get(operations::list))
        .route("/api/operations/run", post(operations::run))
        .route("/api/operations/{id}", get(operations::get))
        .route("/api/operations/{id}/events", get(operations::events))
        .route("/api/operations/{id}/output", get(operations::output))
        .route("/api/operations/{id}/stop", post(operations::stop))
        .route("/api/reconcile", get(reconcile::status))
        .route("/api/reconcile/suspend", post(reconcile::suspend))
        .route("/api/reconcile/resume", post(reconcile::resume))
        .route(
            "/api/terminal/workspaces",
            get(terminal::list).post(terminal::create),
        )
        .route(
            "/api/terminal/workspaces/{id}",
            get(terminal::get).delete(terminal::delete),
        )
        .route(
            "/api/terminal/workspaces/{id}/panes",
            put(terminal::set_panes),
        )
        .route(
            "/api/terminal/workspaces/{id}/connect-all",
            post(terminal::connect_all),
        )
        .route("/api/terminal/workspaces/{id}/ws", get(terminal::socket))
        .route("/api/terminal/recordings", get(terminal::recordings))
        .route("/api/terminal/recordings/{id}", get(terminal::recording))
        .route("/api/terminal/recordings/{id}/cast", get(terminal::cast))
        .route("/api/tables/query", post(tables::query))
        .route("/api/desired", get(git::desired))
        .route("/api/git/status", get(git::status))
        .route("/api/git/sync", post(git::sync))
        .route(
            "/api/git/webhook",
            post(git::webhook).layer(DefaultBodyLimit::max(git::WEBHOOK_BODY_LIMIT)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::count_requests,
        ))
        .with_state(state)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    // The matched route, not the raw path, keeps span fields low-cardinality.
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("(unmatched)", |path| path.as_str());
                    tracing::info_span!("http", method = %request.method(), route)
                })
                // Logs status and latency once per request.
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
}

/// A stored Unix-millisecond time as the API shows it (RFC 3339).
fn at(ms: i64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).ok()
}
