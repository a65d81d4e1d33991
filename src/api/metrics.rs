//! `GET /metrics`: the Prometheus exposition, with the store-derived gauges refreshed first.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{ApiError, AppState};
use crate::metrics::{DeclaredStateLabels, HttpLabels, Metrics, StandingLabels, StateLabels};
use crate::store::now_ms;

/// `GET /metrics` (no authentication: it holds counts, never names or secrets).
#[utoipa::path(get, path = "/metrics", tag = "daemon", security(()), responses((status = 200, description = "Prometheus/OpenMetrics text exposition", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = &state.metrics;
    let desired = state.git.desired().borrow().clone().unwrap_or_default();
    let ids: Vec<String> = desired.machines.iter().map(|m| m.id.clone()).collect();
    let (applied, statuses, states, (queued, dead)) = state
        .store
        .run(move |store| {
            Ok((
                store.last_applied_sync()?,
                store.machine_statuses(&ids)?,
                store.state_statuses()?,
                store.outbox_counts()?,
            ))
        })
        .await?;
    let age = applied.map_or(-1, |sync| (now_ms() - sync.started_at_ms).max(0) / 1000);
    metrics.sync_applied_age.set(age);
    metrics
        .reconcile_queue
        .set(i64::try_from(state.controller.queue_depth()).unwrap_or(i64::MAX));
    let (mut health, mut enrollment) = (BTreeMap::new(), BTreeMap::new());
    for machine in &desired.machines {
        let (h, e) = match statuses.get(&machine.id) {
            Some(status) => (status.health.name(), status.enrollment.name()),
            None => ("unknown", "unknown"),
        };
        *health.entry(h).or_insert(0) += 1;
        *enrollment.entry(e).or_insert(0) += 1;
    }
    let authority = &state.authority;
    if let Some(since) = authority.user_ca_since() {
        let due = crate::authority::rotation_due_days(since, state.config.ssh.user_ca_rotate_after);
        metrics.ssh_user_ca_rotation_due_days.set(due);
    }
    let rotating = authority.next_user_public().is_some();
    metrics.ssh_user_ca_rotating.set(i64::from(rotating));
    set_counts(&metrics.machines_by_health, health);
    set_counts(&metrics.machines_by_enrollment, enrollment);
    set_states(metrics, &desired, states);
    metrics
        .outbox_queued
        .set(i64::try_from(queued).unwrap_or(i64::MAX));
    metrics
        .outbox_dead
        .set(i64::try_from(dead).unwrap_or(i64::MAX));
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response())
}

/// Replaces a gauge family's values: states no machine is in any more disappear.
fn set_counts(family: &Family<StateLabels, Gauge>, counts: BTreeMap<&str, i64>) {
    family.clear();
    for (state, count) in counts {
        family
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .set(count);
    }
}

/// Each declared state's machines by standing, and whether its rollout is
/// halted; states that left Git disappear.
fn set_states(
    metrics: &Metrics,
    desired: &linkops_reconcilers::desired::DesiredState,
    statuses: Vec<linkops_reconcilers::state::StateStatus>,
) {
    metrics.state_machines.clear();
    metrics.state_rollout_halted.clear();
    let statuses: BTreeMap<String, _> = statuses
        .into_iter()
        .map(|status| (status.state_id.clone(), status))
        .collect();
    for id in desired.states.keys() {
        let status = statuses.get(id);
        let counts = status.map(|s| s.counts).unwrap_or_default();
        for (standing, count) in counts.by_standing() {
            let labels = StandingLabels {
                state: id.clone(),
                standing,
            };
            metrics
                .state_machines
                .get_or_create(&labels)
                .set(count.into());
        }
        let halted = status.is_some_and(|s| s.halted.is_some());
        let labels = DeclaredStateLabels { state: id.clone() };
        metrics
            .state_rollout_halted
            .get_or_create(&labels)
            .set(halted.into());
    }
}

/// A request's method as a label value from a closed set: a client chooses
/// the method string, and each distinct label value is kept forever.
pub(super) fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts every routed request by method, route and status.
pub async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(unmatched)", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    response
}
