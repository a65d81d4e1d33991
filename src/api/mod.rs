//! The HTTP API. Submodules mirror the URL tree; handlers parse, authorise,
//! call a service and map errors in one place ([`ApiError`]).

mod approvals;
mod auth;
mod ca;
mod cluster;
mod console;
mod error;
mod extract;
mod forward;
mod git;
mod headers;
mod health;
mod links;
mod metrics;
mod notifications;
mod operations;
mod pictures;
mod reconcile;
mod runs;
mod schedules;
mod sso;
mod states;
mod tables;
mod terminal;
mod tokens;
mod triggers;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::contract::at;
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
    /// The machines as operators see them: views, pages, followed live.
    pub fleet: crate::fleet::Fleet,
    pub terminals: crate::terminal::Terminals,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Table queries running at once (`[http] table_queries`).
    pub table_queries: crate::tables::Permits,
    /// Cancelled when the server stops accepting: endless streams end.
    pub draining: tokio_util::sync::CancellationToken,
    /// How this replica reaches the others when they talk over mutual TLS.
    pub replica_tls: Option<crate::replica::tls::ReplicaTls>,
    /// This replica among the others sharing the store.
    pub membership: crate::replica::Membership,
    /// The SSH certificate authority (its public halves are shown).
    pub authority: Arc<crate::ssh::ca::Authority>,
    /// The certificates revoked, in force for this replica.
    pub revocations: crate::authority::Revocations,
    /// Trigger requests being answered (`[triggers] concurrency`).
    pub trigger_requests: Arc<tokio::sync::Semaphore>,
}

/// Every route of the API, with request tracing.
pub fn router(state: AppState) -> Router {
    let (routes, description) = described_routes();
    // Serialised once: the description is the routes' own, so it cannot drift from them.
    let description = Arc::new(
        description
            .to_pretty_json()
            .expect("the description serialises"),
    );
    routes
        .route(
            "/api/openapi.json",
            get(move || {
                let description = description.clone();
                async move {
                    (
                        [(CONTENT_TYPE, "application/json")],
                        description.as_str().to_owned(),
                    )
                }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_holder,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::count_requests,
        ))
        .fallback_service(console::fallback(state.config.console_dir.as_deref()))
        .with_state(state)
        .layer(axum::middleware::from_fn(headers::security_headers))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    // The matched route, not the raw path, keeps span fields low-cardinality.
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("(unmatched)", |path| path.as_str());
                    tracing::info_span!(
                        "http",
                        method = metrics::method_label(request.method()),
                        route
                    )
                })
                // Logs status and latency once per request.
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
}

/// The routes, each with its part of the description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(metrics::metrics))
        .routes(routes!(cluster::status))
        .routes(routes!(ca::authority))
        .routes(routes!(ca::host_certificate))
        .routes(routes!(ca::revoke))
        .routes(routes!(ca::rotate))
        .routes(routes!(auth::login))
        .routes(routes!(auth::me))
        .routes(routes!(auth::second_factor_begin))
        .routes(routes!(auth::second_factor_confirm))
        .routes(routes!(auth::step_up))
        .routes(routes!(sso::providers))
        .routes(routes!(sso::start))
        .routes(routes!(sso::callback))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::change_role, users::delete))
        .routes(routes!(users::reset_password))
        .routes(routes!(users::set_disabled))
        .routes(routes!(users::remove_second_factor))
        .routes(routes!(links::list))
        .routes(routes!(links::events))
        .routes(routes!(links::get))
        .routes(routes!(links::facts))
        .routes(routes!(links::verify))
        .routes(routes!(pictures::fleet))
        .routes(routes!(pictures::machine))
        .routes(routes!(pictures::states))
        .routes(routes!(runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(triggers::trigger))
        .routes(routes!(approvals::list))
        .routes(routes!(approvals::get))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::reject))
        .routes(routes!(schedules::list))
        .routes(routes!(schedules::get))
        .routes(routes!(states::list))
        .routes(routes!(states::get))
        .routes(routes!(states::resume))
        .routes(routes!(operations::list))
        .routes(routes!(operations::run))
        .routes(routes!(operations::get))
        .routes(routes!(operations::events))
        .routes(routes!(operations::output))
        .routes(routes!(operations::stop))
        .routes(routes!(operations::retry))
        .routes(routes!(notifications::list))
        .routes(routes!(reconcile::status))
        .routes(routes!(reconcile::suspend))
        .routes(routes!(reconcile::resume))
        .routes(routes!(terminal::list, terminal::create))
        .routes(routes!(terminal::get, terminal::delete))
        .routes(routes!(terminal::set_panes))
        .routes(routes!(terminal::connect_all))
        .routes(routes!(terminal::socket))
        .routes(routes!(terminal::recordings))
        .routes(routes!(terminal::recording))
        .routes(routes!(terminal::cast))
        .routes(routes!(tables::query))
        .routes(routes!(git::desired))
        .routes(routes!(git::status))
        .routes(routes!(git::sync))
        .routes({
            let (schemas, paths, webhook) = routes!(git::webhook);
            (
                schemas,
                paths,
                webhook.layer(DefaultBodyLimit::max(git::WEBHOOK_BODY_LIMIT)),
            )
        })
}

/// The OpenAPI description the daemon serves at `/api/openapi.json`, with the
/// event and socket shapes no route names (checked in as `schemas/openapi.json`;
/// the console's TypeScript types are generated from it).
pub fn description() -> utoipa::openapi::OpenApi {
    described_routes().1
}

fn described_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut description) = routes().split_for_parts();
    // Handlers are named for their module (`users::list`, `runs::list`); an
    // operation id must be unique, so it is the tag and the handler's name.
    for item in description.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let tag = operation.tags.iter().flatten().next().cloned();
            if let (Some(tag), Some(id)) = (tag, operation.operation_id.as_mut()) {
                *id = format!("{tag}_{id}");
            }
        }
    }
    (routes, description)
}

/// The OpenAPI description's frame; the paths come from the handlers' `#[utoipa::path]`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "LinkOps",
        description = "A GitOps reconciler for fleets of Linux machines reached over SSH. Every error answer is `{\"error\": {\"code\", \"message\", \"details\"?}}` (ErrorBody). Authenticate with `POST /api/auth/login`, then `Authorization: Bearer <token>` (or `?access_token=` where a browser cannot set headers: SSE, WebSocket). Roles: viewer < operator < admin."
    ),
    modifiers(&Security),
    components(schemas(
        crate::contract::ErrorBody,
        crate::contract::OperationStreamEvent,
        crate::contract::FleetStreamEvent,
        crate::contract::OutputChunk,
        crate::contract::HostEvent,
        crate::contract::StateEvent,
        crate::contract::FleetSnapshot,
        crate::contract::FleetChanges,
        crate::contract::FleetRows,
        crate::contract::FleetRowChanges,
        crate::contract::FleetShape,
        crate::contract::ClientMessage,
        crate::contract::ServerMessage,
        crate::contract::SocketCloseCode,
    )),
    tags(
        (name = "auth"), (name = "machines"), (name = "operations"), (name = "runs"), (name = "states", description = "Declared states: what the fleet converges to and is kept in"),
        (name = "terminals", description = "Workspaces of panes. The WebSocket sends ServerMessage (JSON) and `[pane][bytes]` binary output, takes ClientMessage and `[pane][bytes]` input, and closes with a SocketCloseCode; see src/terminal/protocol.md"),
        (name = "git"), (name = "reconcile"), (name = "tables"), (name = "schedules", description = "Scripts run on cron expressions in time zones, each fire claimed once"), (name = "pictures", description = "The fleet drawn: series and counts aggregated by the daemon for the console's charts"), (name = "users"), (name = "daemon")
    )
)]
struct ApiDoc;

/// Bearer tokens everywhere, except where a path says `security(())`.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}
