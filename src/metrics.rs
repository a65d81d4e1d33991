//! Prometheus metrics (`GET /metrics`): the daemon's counters and gauges, and
//! the store-derived gauges filled in at scrape time.
//!
//! Components get the one [`Metrics`] handle at start-up and count what they
//! do; the names are the contract with dashboards and alerts.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// One of the methods the API routes, or `other`: never the request's own string.
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A trigger's name is one the repository declares (a request naming
/// another counts as `unknown`): the label's values are bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub trigger: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// A declared state (an id from Git) and a standing (a closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StandingLabels {
    pub state: String,
    pub standing: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeclaredStateLabels {
    pub state: String,
}

/// A delivery channel (`forge` or a configured sink's name) and how an attempt went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `unreachable`, `timeout`, `host_key`, `auth` or `other`.
    pub reason: &'static str,
}

/// Every metric the daemon exports. Cheap to share (`Arc`); each metric is
/// itself a shared handle.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub syncs: Family<ResultLabels, Counter>,
    /// Seconds since the applied revision was applied; set at scrape time.
    pub sync_applied_age: Gauge,
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Schedules' fires, by what became of them (`started`, `missed`, `skipped`, `awaiting_approval`).
    pub schedule_fires: Family<ResultLabels, Counter>,
    /// How long after its due time each fire was recorded.
    pub schedule_lateness: Histogram,
    /// What triggers' requests asked for, by trigger and what became of it.
    pub trigger_runs: Family<TriggerLabels, Counter>,
    /// Trigger requests refused whole, by why (`unauthorized`, `unknown`, `busy`, …).
    pub trigger_refusals: Family<ResultLabels, Counter>,
    /// Objects waiting for a reconcile; set at scrape time.
    pub reconcile_queue: Gauge,
    /// Operations that ended, by final state.
    pub operations_finished: Family<StateLabels, Counter>,
    pub operations_running: Gauge,
    pub ssh_connections: Gauge,
    pub ssh_connect_seconds: Histogram,
    pub ssh_connect_failures: Family<ReasonLabels, Counter>,
    /// Certificates the CA signed: `user` (a login of the daemon's), `host` (an enrolled machine's).
    pub ssh_certificates_issued: Family<KindLabels, Counter>,
    /// Days until the user CA is due to be rotated (negative: overdue), and
    /// whether a rotation is under way; set at scrape time.
    pub ssh_user_ca_rotation_due_days: Gauge,
    pub ssh_user_ca_rotating: Gauge,
    /// Machines by health and by enrollment state; set at scrape time.
    pub machines_by_health: Family<StateLabels, Gauge>,
    pub machines_by_enrollment: Family<StateLabels, Gauge>,
    /// Machines of each declared state by standing; set at scrape time.
    pub state_machines: Family<StandingLabels, Gauge>,
    /// Delivery attempts of commit statuses and notifications, by channel and result.
    pub deliveries: Family<ChannelLabels, Counter>,
    /// Messages waiting in the outbox, and dead letters; set at scrape time.
    pub outbox_queued: Gauge,
    pub outbox_dead: Gauge,
    /// 1 while a declared state's rollout is halted; set at scrape time.
    pub state_rollout_halted: Family<DeclaredStateLabels, Gauge>,
    pub sse_clients: Gauge,
    pub websocket_clients: Gauge,
    /// Records the retention pass let go: `health_sample`, `output_event`, `operation`, `state_record`, `revocation`.
    pub store_pruned: Family<KindLabels, Counter>,
    pub terminal_sessions: Gauge,
    /// HTTP connections open, and those refused at `[http] max_connections`.
    pub http_connections: Gauge,
    pub http_connections_refused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            http_requests: Family::default(),
            syncs: Family::default(),
            sync_applied_age: Gauge::default(),
            reconciles: Family::default(),
            schedule_fires: Family::default(),
            trigger_runs: Family::default(),
            trigger_refusals: Family::default(),
            // 0.1 s … ~14 min.
            schedule_lateness: Histogram::new(exponential_buckets(0.1, 2.0, 14)),
            reconcile_queue: Gauge::default(),
            operations_finished: Family::default(),
            operations_running: Gauge::default(),
            ssh_connections: Gauge::default(),
            // 5 ms … ~20 s.
            ssh_connect_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            ssh_connect_failures: Family::default(),
            ssh_certificates_issued: Family::default(),
            ssh_user_ca_rotation_due_days: Gauge::default(),
            ssh_user_ca_rotating: Gauge::default(),
            machines_by_health: Family::default(),
            machines_by_enrollment: Family::default(),
            state_machines: Family::default(),
            state_rollout_halted: Family::default(),
            deliveries: Family::default(),
            outbox_queued: Gauge::default(),
            outbox_dead: Gauge::default(),
            sse_clients: Gauge::default(),
            websocket_clients: Gauge::default(),
            store_pruned: Family::default(),
            terminal_sessions: Gauge::default(),
            http_connections: Gauge::default(),
            http_connections_refused: Counter::default(),
            registry: Registry::with_prefix("linkops"),
        };
        let r = &mut metrics.registry;
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            metrics.http_requests.clone(),
        );
        r.register(
            "store_pruned",
            "Records the store let go under [retention], by kind",
            metrics.store_pruned.clone(),
        );
        r.register(
            "http_connections_open",
            "HTTP connections open (SSE and WebSocket clients included)",
            metrics.http_connections.clone(),
        );
        r.register(
            "http_connections_refused",
            "HTTP connections refused because [http] max_connections were open",
            metrics.http_connections_refused.clone(),
        );
        r.register(
            "syncs",
            "Git sync attempts by result (applied, unchanged, invalid, failed; not_moved: a timer or file-watch look that found the ref where it was, not recorded)",
            metrics.syncs.clone(),
        );
        r.register(
            "sync_applied_age_seconds",
            "Seconds since the revision in force was applied (-1 before the first)",
            metrics.sync_applied_age.clone(),
        );
        r.register(
            "reconciles",
            "Reconciles by object kind and result",
            metrics.reconciles.clone(),
        );
        r.register(
            "schedule_fires",
            "Schedules' fires by result: started, missed (the daemon was down or the fire held past its minute), skipped (the previous still ran, or nothing could start), awaiting_approval",
            metrics.schedule_fires.clone(),
        );
        r.register(
            "schedule_lateness_seconds",
            "How long after its due time a fire was started or passed",
            metrics.schedule_lateness.clone(),
        );
        r.register(
            "trigger_runs",
            "What triggers' requests asked for, by trigger and result: started, would_run (dry run), duplicate, rate_limited, ignored, refused, not_started",
            metrics.trigger_runs.clone(),
        );
        r.register(
            "trigger_refusals",
            "Trigger requests refused whole, by why: unknown, unauthorized, too_large, bad_body, busy",
            metrics.trigger_refusals.clone(),
        );
        r.register(
            "reconcile_queue_depth",
            "Objects waiting for a reconcile",
            metrics.reconcile_queue.clone(),
        );
        r.register(
            "operations_finished",
            "Operations that ended, by final state",
            metrics.operations_finished.clone(),
        );
        r.register(
            "operations_running",
            "Operations in flight",
            metrics.operations_running.clone(),
        );
        r.register(
            "ssh_connections_open",
            "Open SSH connections (pooled and terminal)",
            metrics.ssh_connections.clone(),
        );
        r.register(
            "ssh_connect_duration_seconds",
            "Time to connect, check the host key and authenticate",
            metrics.ssh_connect_seconds.clone(),
        );
        r.register(
            "ssh_connect_failures",
            "SSH connections that failed, by reason",
            metrics.ssh_connect_failures.clone(),
        );
        r.register(
            "ssh_certificates_issued",
            "Certificates the SSH CA signed, by kind (user: a login of the daemon's; host: an enrolled machine's)",
            metrics.ssh_certificates_issued.clone(),
        );
        r.register(
            "ssh_user_ca_rotation_due_days",
            "Days until the SSH user CA is due to be rotated ([ssh] user_ca_rotate_after); negative: overdue",
            metrics.ssh_user_ca_rotation_due_days.clone(),
        );
        r.register(
            "ssh_user_ca_rotating",
            "1 while a rotation of the SSH user CA is under way (linkops ca rotate), else 0",
            metrics.ssh_user_ca_rotating.clone(),
        );
        r.register(
            "machines_by_health",
            "Machines in the inventory by health state",
            metrics.machines_by_health.clone(),
        );
        r.register(
            "machines_by_enrollment",
            "Machines in the inventory by enrollment state",
            metrics.machines_by_enrollment.clone(),
        );
        r.register(
            "state_machines",
            "Machines of each declared state by standing (in_sync, drifted, applying, failed, held, pending, check_error)",
            metrics.state_machines.clone(),
        );
        r.register(
            "state_rollout_halted",
            "1 while a declared state's rollout is halted (resume it or commit new content)",
            metrics.state_rollout_halted.clone(),
        );
        r.register(
            "deliveries",
            "Delivery attempts of commit statuses and notifications, by channel (forge or a sink) and result (delivered, failed, dead)",
            metrics.deliveries.clone(),
        );
        r.register(
            "outbox_queued",
            "Commit statuses and notifications waiting for delivery",
            metrics.outbox_queued.clone(),
        );
        r.register(
            "outbox_dead",
            "Messages given up on after their last attempt (GET /api/notifications)",
            metrics.outbox_dead.clone(),
        );
        r.register(
            "sse_clients",
            "Open Server-Sent Event streams",
            metrics.sse_clients.clone(),
        );
        r.register(
            "websocket_clients",
            "Open terminal WebSockets",
            metrics.websocket_clients.clone(),
        );
        r.register(
            "terminal_sessions",
            "Open terminal sessions",
            metrics.terminal_sessions.clone(),
        );
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub fn ssh_connected(&self, took: Duration) {
        self.ssh_connect_seconds.observe(took.as_secs_f64());
    }

    /// One certificate signed, of `kind` (`user` or `host`).
    pub fn certificate_issued(&self, kind: &'static str) {
        self.ssh_certificates_issued
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn ssh_failed(&self, reason: &'static str) {
        self.ssh_connect_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// Counts one open thing (a connection, a stream) for as long as it lives.
pub struct Open(Gauge);

impl Open {
    pub fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_the_prefix() {
        let metrics = Metrics::new();
        metrics
            .http_requests
            .get_or_create(&HttpLabels {
                method: "GET",
                route: "/api/links".into(),
                status: 200,
            })
            .inc();
        metrics.ssh_failed("host_key");
        let open = Open::new(&metrics.websocket_clients);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"linkops_http_requests_total{method="GET",route="/api/links",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"linkops_ssh_connect_failures_total{reason="host_key"} 1"#),
            "{text}"
        );
        assert!(text.contains("linkops_websocket_clients 1"), "{text}");
        drop(open);
        assert!(metrics.encode().contains("linkops_websocket_clients 0"));
        assert!(text.ends_with("# EOF\n"));
    }
}
