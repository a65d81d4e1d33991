//! The machines of the fleet as desired and observed, and reconcile suspension.

use linkops_reconcilers::condition::{Condition, ConditionKind, ConditionStatus};
use linkops_reconcilers::enrollment::Enrollment;
use linkops_reconcilers::facts::{FactChange, FactValue, Facts, MachineFacts};
use linkops_reconcilers::machine::{Health, Machine};
use linkops_reconcilers::operation::OperationState;
use serde::{Deserialize, Serialize};

/// A machine as `GET /api/links` and the `machines` event of `/api/fleet/events` show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineView {
    #[serde(flatten)]
    pub spec: Machine,
    pub health: Health,
    pub enrollment: Enrollment,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub checked_at: Option<jiff::Timestamp>,
    pub conditions: Vec<ConditionView>,
    /// The Git revision it was last reconciled against.
    pub revision: Option<String>,
    pub suspended: bool,
}

impl MachineView {
    /// A digest of what the view shows beyond check times and latency: two
    /// views with the same one look alike to someone watching the fleet.
    pub fn shown(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        fn json(value: &impl Serialize) -> String {
            serde_json::to_string(value).unwrap_or_default()
        }
        json(&self.spec).hash(&mut hasher);
        let health = match &self.health {
            Health::Reachable { .. } => String::from("reachable"),
            other => json(other),
        };
        health.hash(&mut hasher);
        json(&self.enrollment).hash(&mut hasher);
        for view in &self.conditions {
            let condition = &view.condition;
            json(&condition.kind).hash(&mut hasher);
            json(&condition.status).hash(&mut hasher);
            condition.reason.hash(&mut hasher);
            condition.message.hash(&mut hasher);
        }
        self.revision.hash(&mut hasher);
        self.suspended.hash(&mut hasher);
        hasher.finish()
    }

    /// The status of its condition `kind` (`Ready`, …), if it has one.
    pub fn condition(&self, kind: ConditionKind) -> Option<&ConditionView> {
        self.conditions.iter().find(|c| c.condition.kind == kind)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConditionView {
    #[serde(flatten)]
    pub condition: Condition,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_transition: Option<jiff::Timestamp>,
}

/// Which machines of `GET /api/links` and `GET /api/fleet/events`, in id order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MachineQuery {
    /// Only machines with this tag.
    pub tag: Option<String>,
    /// Only machines in this health state: `unknown`, `reachable`, `unreachable`.
    pub health: Option<String>,
    /// Only machines in this enrollment state: `unknown`, `enrolled`, `mismatch`,
    /// `missing_file`, `unreachable`, `host_key_mismatch`.
    pub enrollment: Option<String>,
    /// Only machines whose id, name or host contains this, ignoring case.
    pub q: Option<String>,
    /// At most this many (1 to 1000; every matching machine when absent). The
    /// `X-Total-Count` header says how many match, `Link` where the next page is.
    pub limit: Option<usize>,
    /// Only machines whose id sorts after this: the last id of the previous page.
    pub after: Option<String>,
    /// Only machines whose facts are these, `fact=value[,fact=value…]`, e.g.
    /// `os=debian-12,reboot_required=true` (`GET /api/links` only: facts
    /// are gathered hourly, not followed live).
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    #[param(rename = "where")]
    pub where_: Option<String>,
}

impl MachineQuery {
    /// Whether `view` is one of the machines asked for (paging aside).
    pub fn matches(&self, view: &MachineView) -> bool {
        self.inventory_filter().matches(&view.spec) && self.observed_matches(view)
    }

    /// Whether what was observed of `view` is what the query asks for
    /// (health, enrollment), its inventory entry aside.
    pub fn observed_matches(&self, view: &MachineView) -> bool {
        self.health.as_ref().is_none_or(|h| view.health.name() == h)
            && self
                .enrollment
                .as_ref()
                .is_none_or(|e| view.enrollment.name() == e)
    }

    /// Whether the query filters on what was observed (health, enrollment),
    /// not only on the inventory.
    pub fn asks_observed(&self) -> bool {
        self.health.is_some() || self.enrollment.is_some()
    }

    /// The part of the query the inventory answers alone (tag, text), its
    /// text lower-cased once.
    pub fn inventory_filter(&self) -> InventoryFilter<'_> {
        InventoryFilter {
            tag: self.tag.as_deref(),
            text: self.q.as_ref().map(|q| q.to_lowercase()),
        }
    }
}

/// What a [`MachineQuery`] asks of the inventory.
pub struct InventoryFilter<'q> {
    tag: Option<&'q str>,
    text: Option<String>,
}

impl InventoryFilter<'_> {
    pub fn matches(&self, spec: &Machine) -> bool {
        self.tag
            .is_none_or(|tag| spec.tags.iter().any(|have| have == tag))
            && self.text.as_ref().is_none_or(|q| {
                [&spec.id, &spec.name, &spec.host]
                    .iter()
                    .any(|field| field.to_lowercase().contains(q))
            })
    }
}

/// The first event of `/api/fleet/events` (and again when the client was too
/// far behind, or the inventory changed): every machine asked for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetSnapshot {
    pub machines: Vec<MachineView>,
}

/// How `/api/fleet/events` shows each machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetShape {
    /// Each as `GET /api/links` shows it ([`MachineView`]).
    #[default]
    Views,
    /// Each as one row of the fleet's table ([`MachineRow`]): about a fifth
    /// of a view, what a page listing 10,000 machines needs to draw at once.
    Rows,
}

/// The shape `/api/fleet/events` sends, beside the [`MachineQuery`] it follows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetEventsQuery {
    /// `views` (the default: every machine as `GET /api/links` shows it) or
    /// `rows` (`FleetRows` and `FleetRowChanges`: what a table of the fleet shows).
    #[serde(default)]
    pub shape: FleetShape,
}

/// A machine as one row of the fleet's table: what it is called and where,
/// its health, enrollment and readiness, when it was last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineRow {
    pub id: String,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tags: Vec<String>,
    /// Its health's `state`: `unknown`, `reachable`, `unreachable`.
    pub health: String,
    /// Its enrollment's `state` (one of `GET /api/links`' `enrollment` filter's).
    pub enrollment: String,
    /// What its client id reads, when that is not what the inventory expects.
    pub found: Option<String>,
    /// Its `Ready` condition's status, and why.
    pub ready: Option<ConditionStatus>,
    pub ready_message: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<jiff::Timestamp>,
    pub suspended: bool,
}

impl From<MachineView> for MachineRow {
    fn from(view: MachineView) -> Self {
        let found = match view.enrollment {
            Enrollment::Mismatch { ref found, .. } => Some(found.clone()),
            _ => None,
        };
        let ready = (view.conditions.into_iter())
            .map(|view| view.condition)
            .find(|condition| condition.kind == ConditionKind::Ready);
        MachineRow {
            health: view.health.name().to_owned(),
            enrollment: view.enrollment.name().to_owned(),
            found,
            ready: ready.as_ref().map(|ready| ready.status),
            ready_message: ready.map(|ready| ready.message),
            last_seen: view.last_seen,
            suspended: view.suspended,
            id: view.spec.id,
            name: view.spec.name,
            host: view.spec.host,
            port: view.spec.port,
            tags: view.spec.tags,
        }
    }
}

/// `/api/fleet/events?shape=rows`' first event: every machine asked for, as rows.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetRows {
    pub machines: Vec<MachineRow>,
}

/// `/api/fleet/events?shape=rows`' later events: [`FleetChanges`] as rows.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetRowChanges {
    pub changed: Vec<MachineRow>,
    pub removed: Vec<String>,
}

/// A later event of `/api/fleet/events`: machines whose health state,
/// enrollment, conditions, revision or suspension changed (not mere check
/// times), and machines no longer among those asked for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetChanges {
    pub changed: Vec<MachineView>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: MachineView,
    pub recent_operations: Vec<OperationSummary>,
    pub health_history: Vec<HealthPoint>,
    /// What it is, as last gathered, with what changed lately; `null` before
    /// the first gathering (facts are gathered once it is enrolled).
    pub facts: Option<FactsView>,
}

/// A machine's facts as last gathered (`GET /api/facts`, and in a machine's detail).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FactsView {
    pub machine: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub gathered_at: Option<jiff::Timestamp>,
    /// By name: OS (`os`, `os_name`), `kernel`, `arch`, `uptime_s`,
    /// `booted_at_ms`, `cpus`, `memory_bytes`, `root_size_bytes`,
    /// `root_used_bytes`, `root_used_pct`, `package_manager`, `updates`,
    /// `security_updates`, `reboot_required`, and each custom fact's
    /// `<name>.<key>` (`facts/*.yaml`); a fact the machine cannot tell is absent.
    pub facts: Facts,
    /// What went wrong in the last gathering, if anything: all of it (the
    /// facts are the last good ones) or a custom fact (its values are).
    pub error: Option<String>,
    /// What the latest gatherings changed, newest first (in a machine's detail only).
    pub changes: Vec<FactChangeView>,
}

/// One gathering's changes: each fact's value before and after (`null`: absent).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FactChangeView {
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<jiff::Timestamp>,
    pub changed: std::collections::BTreeMap<String, FactDiff>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FactDiff {
    pub before: Option<FactValue>,
    pub after: Option<FactValue>,
}

impl FactsView {
    pub fn of(gathered: MachineFacts, changes: Vec<FactChange>) -> FactsView {
        FactsView {
            machine: gathered.machine_id,
            gathered_at: jiff::Timestamp::from_millisecond(gathered.gathered_at_ms).ok(),
            facts: gathered.facts,
            error: gathered.error,
            changes: (changes.into_iter())
                .map(|change| FactChangeView {
                    at: jiff::Timestamp::from_millisecond(change.at_ms).ok(),
                    changed: (change.changed.into_iter())
                        .map(|(name, (before, after))| (name, FactDiff { before, after }))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Which machines' facts `GET /api/facts` answers, in id order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FactsQuery {
    /// Only machines with this tag.
    pub tag: Option<String>,
    /// Only machines whose id comes after this one (the `Link` header's next page).
    pub after: Option<String>,
    /// At most this many (1 to 1000, the default).
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationSummary {
    pub id: u64,
    pub script: String,
    pub state: OperationState,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthPoint {
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<jiff::Timestamp>,
    pub health: Health,
    pub enrolled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuspensionView {
    /// Suspended by `[reconcile] suspended` in the configuration (the API cannot lift it).
    pub by_config: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub fleet: Option<jiff::Timestamp>,
    /// Suspended machines, with since when.
    #[schema(value_type = Vec<(String, Option<String>)>)]
    pub machines: Vec<(String, Option<jiff::Timestamp>)>,
}

/// What a suspend or resume applies to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuspensionScope {
    /// A machine id; the whole fleet when absent.
    pub machine: Option<String>,
}
