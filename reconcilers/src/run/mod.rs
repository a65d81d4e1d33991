//! Run-requests: a script to run once on some machines, asked for by a commit.
//!
//! A run-request id starts at most one operation, ever. The claim that says
//! so is written in the same store transaction that creates the operation,
//! before anything runs; from then on the decision is always "already ran".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::condition::{self, Condition, ConditionKind, ConditionStatus};
use crate::enrollment::Enrollment;
use crate::machine::{Machine, MachineStatus};
use crate::rollout::Rollout;
use crate::script::{ParamValue, Targets};
use crate::suspension::Held;

/// A run-request as committed under `runs/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRequest {
    /// Unique forever: it starts at most one operation.
    pub id: String,
    /// Repository path of the file that holds it.
    pub file: String,
    pub script: String,
    /// The resolved targets (the script's defaults when the request names none).
    pub targets: Targets,
    /// As written in the file (what `content` compares).
    pub params: BTreeMap<String, ParamValue>,
    /// What the script gets: checked against its parameters, defaults filled
    /// in, each as its declared type — resolved once, when the revision loads.
    #[serde(default)]
    pub resolved: BTreeMap<String, ParamValue>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub not_before: Option<jiff::Timestamp>,
    /// Its machines in batches, canaries first; all at once when absent.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

impl RunRequest {
    /// What the request asks for, as comparable text: a change after it ran is reported.
    pub fn content(&self) -> String {
        let mut content = serde_json::json!({
            "script": self.script,
            "targets": self.targets,
            "params": self.params,
            "not_before": self.not_before,
        });
        // Only when given: requests recorded before rollouts existed keep their content.
        if let Some(rollout) = self.rollout {
            content["rollout"] = serde_json::json!(rollout);
        }
        content.to_string()
    }
}

/// Where a run-request stands. Stored; times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Seen, not started: waiting for `not_before` or for its machines' first check.
    Waiting { reason: String },
    /// Claimed: its one operation was created.
    Started { operation_id: u64 },
    /// Removed from Git before it started; it never will.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub state: RunState,
    /// [`RunRequest::content`] when it was claimed (or last seen, before that).
    pub content: String,
    /// The content in Git differs from what ran; it is not re-run.
    pub changed_after_run: bool,
    /// The revision it was last reconciled against.
    pub revision: String,
    pub updated_at_ms: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl RunRecord {
    /// Sets the conditions for the record's state, keeping transition times
    /// from `previous` where the status did not change.
    pub fn with_conditions(mut self, previous: &[Condition], now_ms: i64) -> RunRecord {
        use ConditionKind::{Ready, Reconciling, Stalled};
        use ConditionStatus::{False, True};
        self.conditions = previous.to_vec();
        let conditions = &mut self.conditions;
        match &self.state {
            RunState::Waiting { reason } => {
                condition::set(conditions, Ready, False, "Waiting", reason.clone(), now_ms);
                condition::set(
                    conditions,
                    Reconciling,
                    True,
                    "Waiting",
                    reason.clone(),
                    now_ms,
                );
            }
            RunState::Started { operation_id } => {
                let message = format!("started operation {operation_id}");
                condition::set(conditions, Ready, True, "Started", message.clone(), now_ms);
                condition::set(conditions, Reconciling, False, "Started", message, now_ms);
            }
            RunState::Cancelled => {
                let message = "removed from Git before it started";
                condition::set(conditions, Ready, False, "Cancelled", message, now_ms);
                condition::set(conditions, Reconciling, False, "Cancelled", message, now_ms);
            }
        }
        if self.changed_after_run {
            let message =
                "edited after it started; run-requests run once: commit a new id to run again";
            condition::set(
                conditions,
                Stalled,
                True,
                "ChangedAfterRun",
                message,
                now_ms,
            );
        } else {
            condition::set(conditions, Stalled, False, "Progressing", "", now_ms);
        }
        self
    }
}

/// One target machine's part in a run about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Enrolled: it runs there, as the inventory describes it.
    Run(Box<Machine>),
    Skip {
        reason: String,
    },
}

/// What to do about a run-request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunDecision {
    /// Claim it and start its operation on these machines (in target order).
    Start { machines: Vec<(String, Placement)> },
    /// Not yet; look again after this many milliseconds.
    Wait { reason: String, retry_after_ms: i64 },
    /// The fleet, or a machine it targets, is suspended: it waits, and is
    /// looked at again on resume. `reason` names the suspension.
    Suspended { reason: String },
    /// Its operation exists; `changed` if the request was edited since.
    AlreadyStarted { operation_id: u64, changed: bool },
    /// It left Git before it started.
    Cancel,
    /// Nothing to record (gone from Git and already settled).
    Nothing,
}

/// What the store knows of machines, by id, read before a decision: a store
/// error is the shell's to handle, never a machine "not checked yet".
pub type Statuses = BTreeMap<String, MachineStatus>;

/// How long to wait for target machines' first check before deciding.
pub const ENROLLMENT_WAIT_MS: i64 = 2_000;

/// Decides about one run-request from what Git asks, what the store knows
/// and what is suspended (a suspension holds back a start, not the record of
/// one, nor a cancellation). A request runs once, so a machine of it that is
/// suspended holds the whole request rather than being skipped for ever.
pub fn decide(
    desired: Option<&RunRequest>,
    record: Option<&RunRecord>,
    machines: &[Machine],
    statuses: &Statuses,
    held: &Held,
    now_ms: i64,
) -> RunDecision {
    if let Some(RunRecord {
        state: RunState::Started { operation_id },
        content,
        ..
    }) = record
    {
        let changed = desired.is_some_and(|d| d.content() != *content);
        return RunDecision::AlreadyStarted {
            operation_id: *operation_id,
            changed,
        };
    }
    let Some(run) = desired else {
        return match record {
            Some(RunRecord {
                state: RunState::Waiting { .. },
                ..
            }) => RunDecision::Cancel,
            _ => RunDecision::Nothing,
        };
    };
    if let Some(reason) = held.refusal(None) {
        return RunDecision::Suspended { reason };
    }
    if let Some(not_before) = run.not_before {
        let at = not_before.as_millisecond();
        if at > now_ms {
            return RunDecision::Wait {
                reason: format!("not before {not_before}"),
                retry_after_ms: at - now_ms,
            };
        }
    }
    let selected = run.targets.select(machines);
    if let Some(reason) = selected.iter().find_map(|id| held.refusal(Some(id))) {
        return RunDecision::Suspended { reason };
    }
    if let Some(id) = first_unchecked(&selected, statuses) {
        return RunDecision::Wait {
            reason: format!("machine {id} has not been checked yet"),
            retry_after_ms: ENROLLMENT_WAIT_MS,
        };
    }
    let placements = place(&run.targets, machines, statuses, held);
    RunDecision::Start {
        machines: placements,
    }
}

/// The first of `selected` not checked yet since the daemon knew it: no
/// status, or one whose check is still under way (a status is written as
/// the check begins). A run placed now would skip it as not enrolled.
pub fn first_unchecked<'a>(selected: &'a [String], statuses: &Statuses) -> Option<&'a String> {
    selected.iter().find(|id| {
        statuses
            .get(*id)
            .is_none_or(|status| status.enrollment == Enrollment::Unknown)
    })
}

/// Why a run asked for by hand (or a retry) is refused as a whole: the fleet
/// is held, or every machine it selects is. Otherwise it starts and
/// [`place`] skips the held machines, naming their suspension.
pub fn refused_by_suspension(held: &Held, selected: &[String]) -> Option<String> {
    if let Some(reason) = held.refusal(None) {
        return Some(reason);
    }
    let mut reasons = selected.iter().map(|id| held.refusal(Some(id)));
    let first = reasons.next()??;
    reasons.all(|reason| reason.is_some()).then_some(first)
}

/// Where a run goes: each selected machine runs if enrolled and not
/// suspended, or is skipped with the reason; named machines that are not in
/// the inventory are skipped too, so nothing asked for is silently dropped.
/// In target order.
pub fn place(
    targets: &Targets,
    machines: &[Machine],
    statuses: &Statuses,
    held: &Held,
) -> Vec<(String, Placement)> {
    let selected: std::collections::BTreeSet<String> =
        targets.select(machines).into_iter().collect();
    let mut placements: Vec<(String, Placement)> = machines
        .iter()
        .filter(|machine| selected.contains(&machine.id))
        .map(|machine| {
            let enrollment = statuses.get(&machine.id).map(|s| &s.enrollment);
            let placement = match (held.refusal(Some(&machine.id)), enrollment) {
                (Some(reason), _) => Placement::Skip { reason },
                (None, Some(Enrollment::Enrolled)) => Placement::Run(Box::new(machine.clone())),
                (None, other) => Placement::Skip {
                    reason: format!(
                        "not enrolled: {}",
                        describe(other.unwrap_or(&Enrollment::Unknown))
                    ),
                },
            };
            (machine.id.clone(), placement)
        })
        .collect();
    for id in &targets.machines {
        if !machines.iter().any(|m| &m.id == id) {
            placements.push((
                id.clone(),
                Placement::Skip {
                    reason: "unknown machine: not in links.yaml".into(),
                },
            ));
        }
    }
    placements
}

/// A short account of why a machine is not enrolled.
pub fn describe(enrollment: &Enrollment) -> String {
    match enrollment {
        Enrollment::Unknown => "not checked yet (POST /api/links/{id}/verify checks it now)".into(),
        Enrollment::Enrolled => "enrolled".into(),
        Enrollment::Mismatch { expected, found } => {
            format!("client_id reads {found:?}, expected {expected:?}")
        }
        Enrollment::MissingFile => "/etc/linkops/client_id is missing".into(),
        Enrollment::Unreachable { error } => format!("unreachable ({error})"),
        Enrollment::HostKeyMismatch { error } => format!("host key mismatch ({error})"),
    }
}

#[cfg(test)]
mod tests;
