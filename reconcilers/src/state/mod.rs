//! Declared states: a script with a check, bound to machines, that the fleet
//! converges to and is kept in — drift detected, corrected in `enforce`
//! mode, reported in `report` mode, applied in rollout batches and only
//! inside maintenance windows.
//!
//! For every (state, machine) the store keeps a [`Target`]: the last check
//! and the last apply, each with the [`digest`] of the content they were
//! for. [`decide`] reads those, the machines' statuses and the clock, and
//! says which machines to check and which to apply on now.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::enrollment::Enrollment;
use crate::machine::Machine;
use crate::rollout::Rollout;
use crate::run::{Statuses, describe};
use crate::script::{ParamValue, Script, Targets};
use crate::secret::Secret;
use crate::suspension::Held;

/// How often a state is checked when it says nothing.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest interval a state may ask for: each check is an SSH session per machine.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Output of a check kept with its result (the start of it).
pub const CHECK_OUTPUT_BYTES: usize = 4 << 10;
/// Check results kept per (state, machine), newest first.
pub const CHECK_HISTORY: usize = 20;
/// How soon to look again at machines not checked yet by their own reconciler.
const ENROLLMENT_WAIT_MS: i64 = 2_000;
/// Checks one decision asks for at most. The reconcile runs them, records
/// what they found and decides again at once: at fleet size the standings
/// show, and a rollout's canary starts, as the first checks come in rather
/// than after the checks of every machine.
pub const CHECKS_PER_DECISION: usize = 256;

/// A declared state as committed under `states/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeclaredState {
    pub id: String,
    /// Repository path of the file that declares it.
    pub file: String,
    pub description: String,
    /// The catalog script (which has a check) that makes the state hold.
    pub script: String,
    /// The resolved targets (the script's defaults when the state names none).
    pub targets: Targets,
    /// What the script and its check get: checked, defaults filled in.
    pub params: BTreeMap<String, ParamValue>,
    pub mode: Mode,
    /// How often each machine is checked.
    #[schema(value_type = crate::DurationSchema)]
    pub interval: Duration,
    /// When applying is allowed, read in `zone`; none: at any time. Checks run at any time.
    pub windows: Vec<Window>,
    /// The IANA time zone the windows are read in.
    #[serde(default = "utc")]
    pub zone: String,
    pub rollout: Rollout,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// What a state does about drift.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Apply the script where the check says drifted.
    #[default]
    Enforce,
    /// Only detect and report drift; never apply.
    Report,
}

mod record;
#[cfg(test)]
mod tests;
mod window;

pub use record::{
    ApplyRecord, ApplyResult, CheckOutcome, CheckRecord, Counts, Halt, Standing, StateStatus,
    Target,
};
pub use window::{Weekday, Window, window_at};

/// What a check and an apply are for: the state, its script's body, check and
/// interpreter, the parameters, the sealed values of the secrets they give
/// (`secrets`, by parameter: a new value or new recipients re-check), and —
/// for a script that reads them ([`reads_trust_facts`]) — `facts`, what the
/// daemon tells every script besides (the trust machines hold in it: a
/// revocation or a CA rotation re-checks the states that keep it, and only
/// those). A change of any re-checks every machine.
pub fn digest(
    state: &DeclaredState,
    script: &Script,
    facts: &str,
    secrets: &BTreeMap<String, Secret>,
) -> String {
    let mut content = serde_json::json!({
        "state": state.id,
        "script": script.id,
        "interpreter": script.interpreter,
        "body": script.body,
        "check": script.check,
        "params": state.params,
        "facts": if reads_trust_facts(script) { facts } else { "" },
    });
    // Only when there are some: the digests of states without secrets stay as they were.
    if !secrets.is_empty() {
        let sealed: BTreeMap<&str, &str> = (secrets.iter())
            .map(|(param, secret)| (param.as_str(), secret.sealed.as_str()))
            .collect();
        content["secrets"] = serde_json::json!(sealed);
    }
    crate::short_digest(content.to_string().as_bytes(), 12)
}

/// Whether a script's body or check reads what the daemon tells scripts of
/// its trust (`LINKOPS_CA_USER_KEYS`, `LINKOPS_CA_REVOKED_SERIALS`).
pub fn reads_trust_facts(script: &Script) -> bool {
    std::iter::once(&script.body)
        .chain(&script.check)
        .any(|text| text.contains("LINKOPS_CA_"))
}

/// What the daemon knows when it decides about one state.
pub struct Observed<'a> {
    /// The state's current status, if it has one.
    pub status: Option<&'a StateStatus>,
    /// The state's records, by machine id.
    pub targets: &'a BTreeMap<String, Target>,
    /// The selected machines' statuses.
    pub statuses: &'a Statuses,
    pub held: &'a Held,
    /// The state's zone (its windows are read in it), from the tz database.
    pub zone: &'a jiff::tz::TimeZone,
    /// Why its applies wait for approvers (`access.yaml`'s approvals); none:
    /// no rule covers them, or their content is approved.
    pub awaiting: Option<&'a str>,
}

/// What to do about a state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDecision {
    /// Machines to check now: at most [`CHECKS_PER_DECISION`], the rest
    /// due at the next decision (which it asks for at once).
    pub check: Vec<String>,
    /// Machines to apply on now, as one operation: the next batch of the rollout.
    pub apply: Vec<String>,
    /// Every selected machine's record as it now stands (those in `apply` as
    /// drifted: the shell marks them applying once their operation exists).
    pub targets: Vec<Target>,
    /// The state's record as it now stands.
    pub status: StateStatus,
    /// The rollout halted in this decision (for the audit log).
    pub halted_now: bool,
    /// Look again after this long, if nothing else wakes it first.
    pub wake_after_ms: Option<i64>,
}

/// Decides about one state: what to check, what to apply, and where every
/// selected machine stands. `machines` is the inventory; `digest` the
/// state's [`digest`]. Each machine's standing is its own
/// ([`stand`]); the drifted ones then pass the rollout's gates
/// ([`gate`]): a halt, the windows, the next batch.
pub fn decide(
    state: &DeclaredState,
    digest: &str,
    revision: &str,
    machines: &[Machine],
    observed: &Observed,
    now_ms: i64,
) -> StateDecision {
    let mut status = match observed.status {
        Some(status) if status.digest == digest => status.clone(),
        // New content: a new rollout (a halt ends with the content it was for).
        previous => StateStatus {
            conditions: previous.map(|s| s.conditions.clone()).unwrap_or_default(),
            ..StateStatus::new(&state.id, digest, revision, now_ms)
        },
    };
    status.revision = revision.to_owned();
    status.updated_at_ms = now_ms;
    let mut wake = Wake::default();
    let (mut check, mut candidates, mut in_flight) = (Vec::new(), Vec::new(), 0);
    let mut targets = Vec::new();
    for id in state.targets.select(machines) {
        let mut target = observed
            .targets
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Target::new(&state.id, &id, now_ms));
        let stand = stand(state, digest, &status, &target, observed, now_ms);
        wake.after(stand.look_again_ms);
        match stand.asks {
            Asks::Nothing => {}
            Asks::Check if check.len() == CHECKS_PER_DECISION => {}
            Asks::Check => check.push(id),
            Asks::Apply => candidates.push(targets.len()),
            Asks::InFlight => in_flight += 1,
        }
        target.stand(stand.standing, now_ms);
        targets.push(target);
    }

    let mut halted_now = false;
    if status.halted.is_none()
        && let Some(reason) = state.rollout.halts(status.progress)
    {
        status.halted = Some(Halt {
            reason,
            at_ms: now_ms,
        });
        halted_now = true;
    }
    let gate = gate(
        state,
        observed,
        &status,
        candidates.len(),
        in_flight,
        now_ms,
    );
    wake.after(gate.look_again_ms);
    let (now, later) = candidates.split_at(gate.apply);
    let apply = now.iter().map(|&i| targets[i].machine_id.clone()).collect();
    for &index in later {
        let reason = gate.held.clone();
        targets[index].stand(Standing::Held { reason }, now_ms);
    }
    let counts = Counts::of(targets.iter().map(|t| &t.standing));
    status.summarize(counts, state.mode, now_ms);
    StateDecision {
        check,
        apply,
        targets,
        status,
        halted_now,
        wake_after_ms: wake.0,
    }
}

/// The soonest of the times a decision asks to look again after.
#[derive(Default)]
struct Wake(Option<i64>);

impl Wake {
    fn after(&mut self, after: Option<i64>) {
        if let Some(after) = after {
            self.0 = Some(self.0.map_or(after, |wake| wake.min(after)));
        }
    }
}

/// Where one machine stands on its own, and what that asks of the state.
struct Stand {
    standing: Standing,
    asks: Asks,
    /// Look again after this long for its sake.
    look_again_ms: Option<i64>,
}

enum Asks {
    Nothing,
    /// A check now.
    Check,
    /// An apply, if the rollout's gates let it through.
    Apply,
    /// Nothing more: its apply runs (and takes a place in the batch).
    InFlight,
}

/// Where `target` stands: applying, held (suspended, not enrolled), due for
/// a check, or as its last check and apply say.
fn stand(
    state: &DeclaredState,
    digest: &str,
    status: &StateStatus,
    target: &Target,
    observed: &Observed,
    now_ms: i64,
) -> Stand {
    let id = &target.machine_id;
    let unchanged = || target.standing.clone();
    let only = |standing| Stand {
        standing,
        asks: Asks::Nothing,
        look_again_ms: None,
    };
    if let Some(apply) = &target.apply
        && apply.result == ApplyResult::Running
    {
        return Stand {
            asks: Asks::InFlight,
            ..only(Standing::Applying {
                operation_id: apply.operation_id,
            })
        };
    }
    if let Some(reason) = observed.held.refusal(Some(id)) {
        return only(Standing::Held { reason });
    }
    match observed.statuses.get(id).map(|s| &s.enrollment) {
        Some(Enrollment::Enrolled) => {}
        None | Some(Enrollment::Unknown) => {
            return Stand {
                look_again_ms: Some(ENROLLMENT_WAIT_MS),
                ..only(unchanged())
            };
        }
        Some(other) => {
            return only(Standing::Held {
                reason: format!("machine {id} is {}", describe(other)),
            });
        }
    }
    let next_check = match target.check_due(digest, state.interval, now_ms) {
        // Due now: a check run in progress must not push it a whole interval
        // back (the wake is also for those that fell due while checks ran).
        Ok(()) => {
            return Stand {
                asks: Asks::Check,
                look_again_ms: Some(0),
                ..only(unchanged())
            };
        }
        Err(after) => Some(after),
    };
    let last = target.check.as_ref().expect("checked: not due");
    let (standing, asks) = match &last.outcome {
        CheckOutcome::Holds => (Standing::InSync, Asks::Nothing),
        CheckOutcome::Error { message } => (
            Standing::CheckError {
                message: message.clone(),
            },
            Asks::Nothing,
        ),
        CheckOutcome::Drifted if state.mode == Mode::Report => (Standing::Drifted, Asks::Nothing),
        CheckOutcome::Drifted => match &target.apply {
            // Failed on this content since the last resume: it stays failed.
            Some(ApplyRecord {
                digest: applied,
                operation_id,
                started_at_ms,
                result: ApplyResult::Failed { reason },
                ..
            }) if applied == digest
                && status.resumed_at_ms.is_none_or(|at| *started_at_ms >= at) =>
            {
                let standing = Standing::Failed {
                    operation_id: *operation_id,
                    reason: reason.clone(),
                };
                (standing, Asks::Nothing)
            }
            _ => (Standing::Drifted, Asks::Apply),
        },
    };
    Stand {
        standing,
        asks,
        look_again_ms: next_check,
    }
}

/// What the rollout's gates let through of `candidates` drifted machines
/// (in order): the first `apply`; the others held for `held`.
struct Gate {
    apply: usize,
    held: String,
    look_again_ms: Option<i64>,
}

/// The rollout's gates, in order: a halt holds every candidate, then the
/// maintenance windows (looking again when the next opens), then the batch
/// (canaries first) with `in_flight` applies already running.
fn gate(
    state: &DeclaredState,
    observed: &Observed,
    status: &StateStatus,
    candidates: usize,
    in_flight: usize,
    now_ms: i64,
) -> Gate {
    let held = |held: String| Gate {
        apply: 0,
        held,
        look_again_ms: None,
    };
    if let Some(halt) = &status.halted {
        return held(format!("the rollout is halted: {}", halt.reason));
    }
    if let Some(awaiting) = observed.awaiting {
        return held(awaiting.to_owned());
    }
    let zone = observed.zone;
    if let Err(opens) = window_at(&state.windows, zone, now_ms) {
        return match opens.and_then(|at| jiff::Timestamp::from_millisecond(at).ok()) {
            Some(at) if candidates > 0 => Gate {
                look_again_ms: Some(at.as_millisecond() - now_ms),
                ..held(format!(
                    "outside the maintenance windows; the next opens at {} ({at})",
                    crate::schedule::in_zone(at, zone)
                ))
            },
            _ => held("outside the maintenance windows".to_owned()),
        };
    }
    let waiting = match state.rollout.in_canary(status.progress) {
        true => "waiting for the canaries to succeed",
        false => "waiting for the rollout's next batch",
    };
    Gate {
        apply: state
            .rollout
            .next_batch(status.progress, in_flight)
            .min(candidates),
        ..held(waiting.to_owned())
    }
}

/// Machines whose check now says drifted where the one before, for the
/// same content, held: the state was changed under it (not new content).
pub fn drifted(before: &BTreeMap<String, Target>, after: &[Target]) -> Vec<String> {
    after
        .iter()
        .filter(|target| {
            let (Some(now), Some(then)) = (
                target.check.as_ref(),
                before
                    .get(&target.machine_id)
                    .and_then(|b| b.check.as_ref()),
            ) else {
                return false;
            };
            now.outcome == CheckOutcome::Drifted
                && then.outcome == CheckOutcome::Holds
                && now.digest == then.digest
        })
        .map(|target| target.machine_id.clone())
        .collect()
}
