//! The machines of the fleet as desired and observed, and reconcile suspension.

use linkops_reconcilers::condition::{Condition, ConditionKind};
use linkops_reconcilers::enrollment::Enrollment;
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

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MachineQuery {
    /// Only machines with this tag.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineDetail {
    #[serde(flatten)]
    pub machine: MachineView,
    pub recent_operations: Vec<OperationSummary>,
    pub health_history: Vec<HealthPoint>,
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
