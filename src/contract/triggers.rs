//! What `POST /api/triggers/{name}` answers.

use std::collections::BTreeMap;

use linkops_reconcilers::script::ParamValue;
use serde::{Deserialize, Serialize};

/// What became of each run a trigger's request asked for, in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerAnswer {
    pub trigger: String,
    /// The revision that declared the trigger.
    pub revision: String,
    /// The trigger only said what it would run.
    pub dry_run: bool,
    pub runs: Vec<TriggerRunView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerRunView {
    /// The alert's fingerprint, when Alertmanager gave one.
    pub alert: Option<String>,
    /// The machine it names, when it names one of the inventory.
    pub machine: Option<String>,
    #[serde(flatten)]
    pub outcome: TriggerOutcome,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TriggerOutcome {
    Started {
        operation_id: u64,
    },
    /// A dry run: what would have started.
    WouldRun {
        params: BTreeMap<String, ParamValue>,
    },
    /// The same run (machine, parameters) started within the dedup window.
    Duplicate {
        reason: String,
    },
    /// The trigger's rate is spent.
    RateLimited {
        reason: String,
    },
    /// Nothing to run (a resolved alert).
    Ignored {
        reason: String,
    },
    /// Not the trigger's to run: a machine outside its machines, a value the script refuses.
    Refused {
        reason: String,
    },
    /// Admitted, but it could not start (the machine is suspended or not enrolled).
    NotStarted {
        reason: String,
    },
}

impl TriggerOutcome {
    /// The metric's word.
    pub fn name(&self) -> &'static str {
        match self {
            TriggerOutcome::Started { .. } => "started",
            TriggerOutcome::WouldRun { .. } => "would_run",
            TriggerOutcome::Duplicate { .. } => "duplicate",
            TriggerOutcome::RateLimited { .. } => "rate_limited",
            TriggerOutcome::Ignored { .. } => "ignored",
            TriggerOutcome::Refused { .. } => "refused",
            TriggerOutcome::NotStarted { .. } => "not_started",
        }
    }
}
