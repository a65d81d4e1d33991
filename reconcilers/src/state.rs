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
use sha2::Digest as _;

use crate::condition::{self, Condition, ConditionKind, ConditionStatus};
use crate::enrollment::Enrollment;
use crate::machine::Machine;
use crate::operation::HostState;
use crate::rollout::{Progress, Rollout};
use crate::run::{Statuses, describe};
use crate::script::{ParamValue, Script, Targets};
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
    /// When applying is allowed (UTC); none: at any time. Checks run at any time.
    pub windows: Vec<Window>,
    pub rollout: Rollout,
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

/// A maintenance window: on these days (every day when none), from one time
/// of day to another, in UTC. A window that ends before it starts runs past
/// midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Window {
    pub days: Vec<Weekday>,
    /// Minutes after midnight, UTC.
    pub from_minute: u16,
    pub to_minute: u16,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    fn of(day: jiff::civil::Weekday) -> Weekday {
        use jiff::civil::Weekday as W;
        match day {
            W::Monday => Weekday::Mon,
            W::Tuesday => Weekday::Tue,
            W::Wednesday => Weekday::Wed,
            W::Thursday => Weekday::Thu,
            W::Friday => Weekday::Fri,
            W::Saturday => Weekday::Sat,
            W::Sunday => Weekday::Sun,
        }
    }
}

const DAY_MS: i64 = 86_400_000;

impl Window {
    fn on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.contains(&day)
    }

    /// Whether `at_ms` falls inside the window.
    pub fn contains(&self, at_ms: i64) -> bool {
        let (day, minute) = day_and_minute(at_ms);
        let (from, to) = (self.from_minute, self.to_minute);
        if from < to {
            self.on(day) && (from..to).contains(&minute)
        } else {
            let yesterday = day_and_minute(at_ms - DAY_MS).0;
            (self.on(day) && minute >= from) || (self.on(yesterday) && minute < to)
        }
    }

    /// The next time the window opens after `at_ms` (within a week).
    fn next_opening(&self, at_ms: i64) -> Option<i64> {
        let midnight = at_ms - at_ms.rem_euclid(DAY_MS);
        (0..=7)
            .map(|days| midnight + days * DAY_MS + i64::from(self.from_minute) * 60_000)
            .find(|&opens| opens > at_ms && self.on(day_and_minute(opens).0))
    }
}

fn day_and_minute(at_ms: i64) -> (Weekday, u16) {
    let day = jiff::Timestamp::from_millisecond(at_ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).weekday())
        .unwrap_or(jiff::civil::Weekday::Thursday);
    let minute = (at_ms.rem_euclid(DAY_MS) / 60_000) as u16;
    (Weekday::of(day), minute)
}

/// Whether applying is allowed at `at_ms`, and if not, when it next is.
pub fn window_at(windows: &[Window], at_ms: i64) -> Result<(), Option<i64>> {
    if windows.is_empty() || windows.iter().any(|w| w.contains(at_ms)) {
        return Ok(());
    }
    Err(windows.iter().filter_map(|w| w.next_opening(at_ms)).min())
}

/// What a check and an apply are for: the state, its script's body, check and
/// interpreter, and the parameters. A change of any re-checks every machine.
pub fn digest(state: &DeclaredState, script: &Script) -> String {
    let content = serde_json::json!({
        "state": state.id,
        "script": script.id,
        "interpreter": script.interpreter,
        "body": script.body,
        "check": script.check,
        "params": state.params,
    });
    let hash = sha2::Sha256::digest(content.to_string().as_bytes());
    hash.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// What a check said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// Exit 0: the state holds.
    Holds,
    /// Exit 1: it does not.
    Drifted,
    /// Any other end: another exit code, a signal, a timeout, no connection.
    Error { message: String },
}

impl CheckOutcome {
    /// A check's end as its outcome: 0 holds, 1 drifted, anything else an error.
    pub fn of(end: &HostState) -> CheckOutcome {
        match end {
            HostState::Succeeded => CheckOutcome::Holds,
            HostState::Failed {
                exit_code: Some(1), ..
            } => CheckOutcome::Drifted,
            HostState::Failed {
                exit_code: Some(code),
                ..
            } => CheckOutcome::Error {
                message: format!("the check exited {code} (0 means holds, 1 drifted)"),
            },
            HostState::Failed {
                signal: Some(signal),
                ..
            } => CheckOutcome::Error {
                message: format!("the check was killed by {signal}"),
            },
            HostState::Failed {
                error: Some(error), ..
            } => CheckOutcome::Error {
                message: error.clone(),
            },
            HostState::Timeout { .. } => CheckOutcome::Error {
                message: "the check timed out (the script's timeout)".into(),
            },
            other => CheckOutcome::Error {
                message: format!("the check ended {}", other.name()),
            },
        }
    }
}

/// One check of a state on a machine. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckRecord {
    pub digest: String,
    pub at_ms: i64,
    pub duration_ms: u64,
    pub outcome: CheckOutcome,
    /// The start of what it printed (stdout, then stderr), at most 4 KiB.
    pub output: String,
}

/// How an apply ended (or that it has not yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ApplyResult {
    Running,
    Succeeded,
    /// A non-zero exit, a signal, a timeout, a stop: the operation has the output.
    Failed {
        reason: String,
    },
    /// The daemon stopped while it ran: the machine is checked again before anything else.
    Interrupted,
}

impl ApplyResult {
    /// The apply's result from its host's state in the operation; `None` while it runs.
    pub fn of(host: &HostState) -> Option<ApplyResult> {
        Some(match host {
            HostState::Pending | HostState::Running => return None,
            HostState::Succeeded => ApplyResult::Succeeded,
            HostState::Interrupted => ApplyResult::Interrupted,
            HostState::Failed {
                exit_code: Some(code),
                ..
            } => ApplyResult::Failed {
                reason: format!("exited {code}"),
            },
            HostState::Failed {
                signal: Some(signal),
                ..
            } => ApplyResult::Failed {
                reason: format!("killed by {signal}"),
            },
            HostState::Failed { error, .. } => ApplyResult::Failed {
                reason: error.clone().unwrap_or_else(|| "failed".into()),
            },
            HostState::Timeout { .. } => ApplyResult::Failed {
                reason: "timed out".into(),
            },
            HostState::Stopped { .. } => ApplyResult::Failed {
                reason: "stopped".into(),
            },
            HostState::Skipped { reason } | HostState::Held { reason } => ApplyResult::Failed {
                reason: format!("not run: {reason}"),
            },
        })
    }
}

/// One apply of a state on a machine: an operation's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyRecord {
    pub digest: String,
    pub operation_id: u64,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub result: ApplyResult,
}

/// Where a state stands on a machine, in the fleet's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "standing", rename_all = "snake_case")]
pub enum Standing {
    /// Not checked yet.
    Pending,
    InSync,
    /// The check says it does not hold (report mode, or not applied yet).
    Drifted,
    Applying {
        operation_id: u64,
    },
    /// Its apply for this content failed; it is not applied again until the
    /// next content, a resume of the rollout or a retry.
    Failed {
        operation_id: u64,
        reason: String,
    },
    /// Drifted or not checkable, and held back: why.
    Held {
        reason: String,
    },
    /// The check itself could not say (another exit code, a timeout, no connection).
    CheckError {
        message: String,
    },
}

impl Standing {
    /// The name the API, tables and metrics use.
    pub fn name(&self) -> &'static str {
        match self {
            Standing::Pending => "pending",
            Standing::InSync => "in_sync",
            Standing::Drifted => "drifted",
            Standing::Applying { .. } => "applying",
            Standing::Failed { .. } => "failed",
            Standing::Held { .. } => "held",
            Standing::CheckError { .. } => "check_error",
        }
    }
}

/// A state on one machine, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Target {
    pub state_id: String,
    pub machine_id: String,
    pub standing: Standing,
    /// When the standing last changed.
    pub since_ms: i64,
    /// Since when its checks have said drifted, without a check that held since.
    pub drifted_since_ms: Option<i64>,
    pub check: Option<CheckRecord>,
    pub apply: Option<ApplyRecord>,
}

impl Target {
    pub fn new(state_id: &str, machine_id: &str, now_ms: i64) -> Target {
        Target {
            state_id: state_id.to_owned(),
            machine_id: machine_id.to_owned(),
            standing: Standing::Pending,
            since_ms: now_ms,
            drifted_since_ms: None,
            check: None,
            apply: None,
        }
    }

    /// Records a check's result.
    pub fn checked(&mut self, check: CheckRecord) {
        match check.outcome {
            CheckOutcome::Holds => self.drifted_since_ms = None,
            CheckOutcome::Drifted => {
                self.drifted_since_ms.get_or_insert(check.at_ms);
            }
            CheckOutcome::Error { .. } => {}
        }
        self.check = Some(check);
    }

    /// Sets the standing, keeping `since_ms` when it is unchanged.
    pub fn stand(&mut self, standing: Standing, now_ms: i64) {
        if self.standing != standing {
            self.standing = standing;
            self.since_ms = now_ms;
        }
    }

    /// Whether a check must run before anything else is decided: never
    /// checked, checked for other content, the interval passed, or an apply
    /// ended since (interrupted ones included: the check proves what they left).
    fn check_due(&self, digest: &str, interval: Duration, now_ms: i64) -> Result<(), i64> {
        let Some(check) = &self.check else {
            return Ok(());
        };
        let applied_since = self
            .apply
            .as_ref()
            .is_some_and(|a| a.result != ApplyResult::Running && a.started_at_ms >= check.at_ms);
        let due_at = check.at_ms + i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        if check.digest != digest || applied_since || now_ms >= due_at {
            Ok(())
        } else {
            Err(due_at - now_ms)
        }
    }
}

/// A state's own record: the content in force and its rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateStatus {
    pub state_id: String,
    /// The content the rollout is for; a new one starts a new rollout.
    pub digest: String,
    pub revision: String,
    /// The revision that gave the state this content (where its rollout is reported).
    #[serde(default)]
    pub content_revision: Option<String>,
    /// Applies of this content since the rollout started (or was resumed).
    pub progress: Progress,
    pub halted: Option<Halt>,
    /// When an operator last resumed the rollout: failures before it no longer count.
    pub resumed_at_ms: Option<i64>,
    pub counts: Counts,
    pub conditions: Vec<Condition>,
    pub updated_at_ms: i64,
}

/// Why a rollout stopped starting applies, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Halt {
    pub reason: String,
    pub at_ms: i64,
}

/// Machines of a state by standing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub pending: u32,
    pub in_sync: u32,
    pub drifted: u32,
    pub applying: u32,
    pub failed: u32,
    pub held: u32,
    pub check_error: u32,
}

impl Counts {
    pub fn of<'a>(standings: impl IntoIterator<Item = &'a Standing>) -> Counts {
        let mut counts = Counts::default();
        for standing in standings {
            *match standing {
                Standing::Pending => &mut counts.pending,
                Standing::InSync => &mut counts.in_sync,
                Standing::Drifted => &mut counts.drifted,
                Standing::Applying { .. } => &mut counts.applying,
                Standing::Failed { .. } => &mut counts.failed,
                Standing::Held { .. } => &mut counts.held,
                Standing::CheckError { .. } => &mut counts.check_error,
            } += 1;
        }
        counts
    }

    /// Each standing's name with its count (metrics' label values).
    pub fn by_standing(&self) -> [(&'static str, u32); 7] {
        [
            ("pending", self.pending),
            ("in_sync", self.in_sync),
            ("drifted", self.drifted),
            ("applying", self.applying),
            ("failed", self.failed),
            ("held", self.held),
            ("check_error", self.check_error),
        ]
    }

    pub fn total(&self) -> u32 {
        self.pending
            + self.in_sync
            + self.drifted
            + self.applying
            + self.failed
            + self.held
            + self.check_error
    }
}

impl StateStatus {
    pub fn new(state_id: &str, digest: &str, revision: &str, now_ms: i64) -> StateStatus {
        StateStatus {
            state_id: state_id.to_owned(),
            digest: digest.to_owned(),
            revision: revision.to_owned(),
            content_revision: Some(revision.to_owned()),
            progress: Progress::default(),
            halted: None,
            resumed_at_ms: None,
            counts: Counts::default(),
            conditions: Vec::new(),
            updated_at_ms: now_ms,
        }
    }

    /// Counts an ended apply into the rollout of its content (one that
    /// started before a resume no longer counts).
    pub fn count(&mut self, apply: &ApplyRecord) {
        let current = apply.digest == self.digest
            && self
                .resumed_at_ms
                .is_none_or(|at| apply.started_at_ms >= at);
        match &apply.result {
            ApplyResult::Succeeded if current => self.progress.succeeded += 1,
            ApplyResult::Failed { .. } if current => self.progress.failed += 1,
            _ => {}
        }
    }

    /// An operator resumes a halted rollout: failures so far no longer count,
    /// and machines whose apply failed are applied again.
    pub fn resume(&mut self, now_ms: i64) {
        self.halted = None;
        self.progress.failed = 0;
        self.resumed_at_ms = Some(now_ms);
    }

    /// Sets the counts and the conditions for them.
    fn summarize(&mut self, counts: Counts, mode: Mode, now_ms: i64) {
        use ConditionKind::{Ready, Reconciling, Stalled};
        use ConditionStatus::{False, True};
        self.counts = counts;
        let conditions = &mut self.conditions;
        let total = counts.total();
        if counts.in_sync == total {
            let message = format!("in sync on {total} machine(s)");
            condition::set(conditions, Ready, True, "InSync", message, now_ms);
        } else {
            let message = format!(
                "{} of {total} in sync; {} drifted, {} applying, {} failed, {} held, {} not checked, {} check errors",
                counts.in_sync,
                counts.drifted,
                counts.applying,
                counts.failed,
                counts.held,
                counts.pending,
                counts.check_error
            );
            let reason = if counts.failed > 0 {
                "Failed"
            } else if mode == Mode::Report && counts.drifted > 0 {
                "DriftReported"
            } else {
                "NotInSync"
            };
            condition::set(conditions, Ready, False, reason, message, now_ms);
        }
        if counts.applying > 0 {
            let message = format!("applying on {} machine(s)", counts.applying);
            condition::set(conditions, Reconciling, True, "Applying", message, now_ms);
        } else {
            condition::set(conditions, Reconciling, False, "Idle", "", now_ms);
        }
        match &self.halted {
            Some(halt) => {
                let message = format!(
                    "rollout halted: {}; resume it (POST /api/states/{}/resume) or commit new content",
                    halt.reason, self.state_id
                );
                condition::set(conditions, Stalled, True, "RolloutHalted", message, now_ms);
            }
            None => condition::set(conditions, Stalled, False, "Progressing", "", now_ms),
        }
    }
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
}

/// What to do about a state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDecision {
    /// Machines to check now.
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
/// state's [`digest`].
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
    let mut wake: Option<i64> = None;
    let mut soon = |after: i64| wake = Some(wake.map_or(after, |w| w.min(after)));
    let mut check = Vec::new();
    let mut candidates = Vec::new();
    let mut in_flight = 0;
    let mut targets = Vec::new();
    for id in state.targets.select(machines) {
        let mut target = observed
            .targets
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Target::new(&state.id, &id, now_ms));
        let standing = 'standing: {
            if let Some(apply) = &target.apply
                && apply.result == ApplyResult::Running
            {
                in_flight += 1;
                break 'standing Standing::Applying {
                    operation_id: apply.operation_id,
                };
            }
            if let Some(reason) = observed.held.refusal(Some(&id)) {
                break 'standing Standing::Held { reason };
            }
            match observed.statuses.get(&id).map(|s| &s.enrollment) {
                Some(Enrollment::Enrolled) => {}
                None | Some(Enrollment::Unknown) => {
                    soon(ENROLLMENT_WAIT_MS);
                    break 'standing target.standing.clone();
                }
                Some(other) => {
                    break 'standing Standing::Held {
                        reason: format!("machine {id} is {}", describe(other)),
                    };
                }
            }
            match target.check_due(digest, state.interval, now_ms) {
                Ok(()) => {
                    check.push(id.clone());
                    // Due now: a check run in progress must not push it a
                    // whole interval back (the wake is also for those that
                    // fell due while checks ran).
                    soon(0);
                    break 'standing target.standing.clone();
                }
                Err(after) => soon(after),
            }
            let last = target.check.as_ref().expect("checked: not due");
            match &last.outcome {
                CheckOutcome::Holds => Standing::InSync,
                CheckOutcome::Error { message } => Standing::CheckError {
                    message: message.clone(),
                },
                CheckOutcome::Drifted if state.mode == Mode::Report => Standing::Drifted,
                CheckOutcome::Drifted => match &target.apply {
                    Some(ApplyRecord {
                        digest: applied,
                        operation_id,
                        started_at_ms,
                        result: ApplyResult::Failed { reason },
                        ..
                    }) if applied == digest
                        && status.resumed_at_ms.is_none_or(|at| *started_at_ms >= at) =>
                    {
                        Standing::Failed {
                            operation_id: *operation_id,
                            reason: reason.clone(),
                        }
                    }
                    _ => {
                        candidates.push(targets.len());
                        Standing::Drifted
                    }
                },
            }
        };
        target.stand(standing, now_ms);
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
    let mut apply = Vec::new();
    let hold = |targets: &mut Vec<Target>, at: &[usize], reason: &str| {
        for &index in at {
            let reason = reason.to_owned();
            targets[index].stand(Standing::Held { reason }, now_ms);
        }
    };
    if let Some(halt) = &status.halted {
        hold(
            &mut targets,
            &candidates,
            &format!("the rollout is halted: {}", halt.reason),
        );
    } else if let Err(opens) = window_at(&state.windows, now_ms) {
        let reason = match opens.and_then(|at| jiff::Timestamp::from_millisecond(at).ok()) {
            Some(at) if !candidates.is_empty() => {
                soon(at.as_millisecond() - now_ms);
                format!("outside the maintenance windows; the next opens at {at}")
            }
            _ => "outside the maintenance windows".to_owned(),
        };
        hold(&mut targets, &candidates, &reason);
    } else {
        let room = state.rollout.next_batch(status.progress, in_flight);
        let waiting = if state.rollout.in_canary(status.progress) {
            "waiting for the canaries to succeed"
        } else {
            "waiting for the rollout's next batch"
        };
        let (now, later) = candidates.split_at(room.min(candidates.len()));
        apply = now.iter().map(|&i| targets[i].machine_id.clone()).collect();
        hold(&mut targets, later, waiting);
    }
    let counts = Counts::of(targets.iter().map(|t| &t.standing));
    status.summarize(counts, state.mode, now_ms);
    StateDecision {
        check,
        apply,
        targets,
        status,
        halted_now,
        wake_after_ms: wake,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::machine;
    use crate::machine::MachineStatus;
    use crate::suspension::Scope;

    const NOW: i64 = 1_764_583_200_000; // 2025-12-01T10:00:00Z, a Monday
    const MINUTE: i64 = 60_000;

    fn state(mode: Mode, rollout: Rollout) -> DeclaredState {
        DeclaredState {
            id: "motd".into(),
            file: "states/motd.yaml".into(),
            description: String::new(),
            script: "motd".into(),
            targets: Targets {
                machines: vec![],
                tags: vec!["web".into()],
            },
            params: BTreeMap::new(),
            mode,
            interval: Duration::from_secs(300),
            windows: vec![],
            rollout,
        }
    }

    fn fleet(n: usize) -> Vec<Machine> {
        let mut machines: Vec<Machine> = (1..=n)
            .map(|i| machine(&format!("web{i}"), &["web"]))
            .collect();
        machines.push(machine("db", &["db"]));
        machines
    }

    fn enrolled(machines: &[Machine]) -> Statuses {
        machines
            .iter()
            .map(|m| {
                let mut status = MachineStatus::new(&m.id);
                status.enrollment = Enrollment::Enrolled;
                (m.id.clone(), status)
            })
            .collect()
    }

    fn checked(id: &str, outcome: CheckOutcome, at_ms: i64) -> Target {
        let mut target = Target::new("motd", id, at_ms);
        target.checked(CheckRecord {
            digest: "d1".into(),
            at_ms,
            duration_ms: 5,
            outcome,
            output: String::new(),
        });
        target
    }

    fn decide_with(
        state: &DeclaredState,
        machines: &[Machine],
        targets: &[Target],
        status: Option<&StateStatus>,
        held: &Held,
        now_ms: i64,
    ) -> StateDecision {
        let targets: BTreeMap<String, Target> = targets
            .iter()
            .map(|t| (t.machine_id.clone(), t.clone()))
            .collect();
        let statuses = enrolled(machines);
        let observed = Observed {
            status,
            targets: &targets,
            statuses: &statuses,
            held,
        };
        decide(state, "d1", "r1", machines, &observed, now_ms)
    }

    fn standings(decision: &StateDecision) -> Vec<(&str, &str)> {
        decision
            .targets
            .iter()
            .map(|t| (t.machine_id.as_str(), t.standing.name()))
            .collect()
    }

    #[test]
    fn every_matching_machine_is_checked_first_and_nothing_applied_unchecked() {
        let machines = fleet(3);
        let decision = decide_with(
            &state(Mode::Enforce, Rollout::default()),
            &machines,
            &[],
            None,
            &Held::default(),
            NOW,
        );
        assert_eq!(decision.check, ["web1", "web2", "web3"]);
        assert!(decision.apply.is_empty());
        assert_eq!(decision.status.counts.pending, 3);
    }

    #[test]
    fn drift_is_applied_canary_first_then_in_batches() {
        let machines = fleet(4);
        let rollout = Rollout {
            batch: 2,
            canary: 1,
            max_failures: 1,
        };
        let state = state(Mode::Enforce, rollout);
        let drifted: Vec<Target> = ["web1", "web2", "web3", "web4"]
            .iter()
            .map(|id| checked(id, CheckOutcome::Drifted, NOW - MINUTE))
            .collect();
        let first = decide_with(&state, &machines, &drifted, None, &Held::default(), NOW);
        assert!(first.check.is_empty());
        assert_eq!(first.apply, ["web1"]);
        assert_eq!(
            standings(&first),
            [
                ("web1", "drifted"),
                ("web2", "held"),
                ("web3", "held"),
                ("web4", "held")
            ]
        );
        assert_eq!(
            first.targets[1].standing,
            Standing::Held {
                reason: "waiting for the canaries to succeed".into()
            }
        );
        // The canary succeeded: the next batch is two.
        let mut status = first.status.clone();
        status.progress.succeeded = 1;
        let mut after = drifted.clone();
        after[0] = checked("web1", CheckOutcome::Holds, NOW + MINUTE);
        let second = decide_with(
            &state,
            &machines,
            &after,
            Some(&status),
            &Held::default(),
            NOW + MINUTE,
        );
        assert_eq!(second.apply, ["web2", "web3"]);
        assert_eq!(
            second.targets[3].standing,
            Standing::Held {
                reason: "waiting for the rollout's next batch".into()
            }
        );
    }

    #[test]
    fn a_failed_canary_halts_the_rollout_until_resumed() {
        let machines = fleet(3);
        let state = state(Mode::Enforce, Rollout::default());
        let mut canary = checked("web1", CheckOutcome::Drifted, NOW - MINUTE);
        let apply = ApplyRecord {
            digest: "d1".into(),
            operation_id: 9,
            started_at_ms: NOW - 2 * MINUTE,
            finished_at_ms: Some(NOW - MINUTE),
            result: ApplyResult::Failed {
                reason: "exited 2".into(),
            },
        };
        canary.apply = Some(apply.clone());
        // Checked after the apply: still drifted.
        canary.check.as_mut().unwrap().at_ms = NOW - MINUTE / 2;
        let mut status = StateStatus::new("motd", "d1", "r1", NOW - 3 * MINUTE);
        status.count(&apply);
        let others = [
            checked("web2", CheckOutcome::Drifted, NOW - MINUTE),
            checked("web3", CheckOutcome::Drifted, NOW - MINUTE),
        ];
        let targets = [canary, others[0].clone(), others[1].clone()];
        let decision = decide_with(
            &state,
            &machines,
            &targets,
            Some(&status),
            &Held::default(),
            NOW,
        );
        assert!(decision.apply.is_empty());
        assert!(decision.halted_now);
        assert_eq!(
            standings(&decision),
            [("web1", "failed"), ("web2", "held"), ("web3", "held")]
        );
        let halted = decision.status.clone();
        assert!(
            condition::get(&halted.conditions, ConditionKind::Stalled)
                .is_some_and(|c| c.status == ConditionStatus::True)
        );
        // It stays halted by itself…
        let again = decide_with(
            &state,
            &machines,
            &targets,
            Some(&halted),
            &Held::default(),
            NOW + MINUTE,
        );
        assert!(again.apply.is_empty() && !again.halted_now);
        // …until resumed: the failed canary is applied again first.
        let mut resumed = halted.clone();
        resumed.resume(NOW + MINUTE);
        let after = decide_with(
            &state,
            &machines,
            &targets,
            Some(&resumed),
            &Held::default(),
            NOW + 2 * MINUTE,
        );
        assert_eq!(after.apply, ["web1"]);
        // …or until new content: a new rollout.
        let mut files_changed = halted;
        files_changed.digest = "d0".into();
        let fresh = decide_with(
            &state,
            &machines,
            &targets,
            Some(&files_changed),
            &Held::default(),
            NOW + MINUTE,
        );
        assert_eq!(fresh.status.halted, None);
        assert_eq!(fresh.check.len(), 0, "checks were for d1, the digest");
    }

    #[test]
    fn report_mode_only_reports() {
        let machines = fleet(2);
        let targets = [
            checked("web1", CheckOutcome::Drifted, NOW - MINUTE),
            checked("web2", CheckOutcome::Holds, NOW - MINUTE),
        ];
        let decision = decide_with(
            &state(Mode::Report, Rollout::default()),
            &machines,
            &targets,
            None,
            &Held::default(),
            NOW,
        );
        assert!(decision.apply.is_empty());
        assert_eq!(
            standings(&decision),
            [("web1", "drifted"), ("web2", "in_sync")]
        );
        assert_eq!(decision.targets[0].drifted_since_ms, Some(NOW - MINUTE));
        let ready = condition::get(&decision.status.conditions, ConditionKind::Ready).unwrap();
        assert_eq!(ready.reason, "DriftReported");
    }

    #[test]
    fn checks_are_due_on_new_content_after_the_interval_and_after_an_apply() {
        let machines = fleet(4);
        let state = state(Mode::Enforce, Rollout::default());
        let fresh = checked("web1", CheckOutcome::Holds, NOW - MINUTE);
        let stale = checked("web2", CheckOutcome::Holds, NOW - 6 * MINUTE);
        let mut other_content = checked("web3", CheckOutcome::Holds, NOW - MINUTE);
        other_content.check.as_mut().unwrap().digest = "d0".into();
        let mut interrupted = checked("web4", CheckOutcome::Drifted, NOW - 3 * MINUTE);
        interrupted.apply = Some(ApplyRecord {
            digest: "d1".into(),
            operation_id: 3,
            started_at_ms: NOW - 2 * MINUTE,
            finished_at_ms: Some(NOW - MINUTE),
            result: ApplyResult::Interrupted,
        });
        let decision = decide_with(
            &state,
            &machines,
            &[fresh, stale, other_content, interrupted],
            None,
            &Held::default(),
            NOW,
        );
        assert_eq!(decision.check, ["web2", "web3", "web4"]);
        assert!(
            decision.apply.is_empty(),
            "an interrupted apply is re-checked, not re-applied"
        );
        // Machines are due now: look again as soon as their checks ran.
        assert_eq!(decision.wake_after_ms, Some(0));
        // Once they were checked, web1 is due again when its interval ends.
        let now_checked = ["web2", "web3", "web4"].map(|id| checked(id, CheckOutcome::Holds, NOW));
        let mut targets = vec![checked("web1", CheckOutcome::Holds, NOW - MINUTE)];
        targets.extend(now_checked);
        let decision = decide_with(&state, &machines, &targets, None, &Held::default(), NOW);
        assert!(decision.check.is_empty(), "{:?}", decision.check);
        assert_eq!(decision.wake_after_ms, Some(4 * MINUTE));
    }

    #[test]
    fn applying_is_held_outside_the_windows_and_suspension_holds_everything() {
        let machines = fleet(2);
        let mut state = state(Mode::Enforce, Rollout::default());
        // Saturdays and Sundays, 22:00 to 02:00 UTC; NOW is a Monday at 10:00.
        state.windows = vec![Window {
            days: vec![Weekday::Sat, Weekday::Sun],
            from_minute: 22 * 60,
            to_minute: 2 * 60,
        }];
        let targets = [
            checked("web1", CheckOutcome::Drifted, NOW - MINUTE),
            checked("web2", CheckOutcome::Drifted, NOW - MINUTE),
        ];
        let decision = decide_with(&state, &machines, &targets, None, &Held::default(), NOW);
        assert!(decision.apply.is_empty());
        assert_eq!(
            decision.targets[0].standing,
            Standing::Held {
                reason: "outside the maintenance windows; the next opens at 2025-12-06T22:00:00Z"
                    .into()
            }
        );
        // Monday 01:00 is still Sunday's window.
        let monday_night = NOW - 9 * 60 * MINUTE;
        let inside = decide_with(
            &state,
            &machines,
            &targets,
            None,
            &Held::default(),
            monday_night,
        );
        assert_eq!(inside.apply, ["web1"]);

        let held = Held {
            by_config: false,
            scopes: vec![Scope::Machine("web2".into())],
        };
        state.windows.clear();
        let decision = decide_with(&state, &machines, &targets, None, &held, NOW);
        assert_eq!(decision.apply, ["web1"]);
        assert_eq!(
            decision.targets[1].standing,
            Standing::Held {
                reason: "reconciliation of machine web2 is suspended \
                         (POST /api/reconcile/resume {\"machine\": \"web2\"} lifts it)"
                    .into()
            }
        );
        let fleet_held = Held {
            by_config: false,
            scopes: vec![Scope::Fleet],
        };
        let decision = decide_with(&state, &machines, &[], None, &fleet_held, NOW);
        assert!(decision.check.is_empty() && decision.apply.is_empty());
    }

    #[test]
    fn machines_not_enrolled_are_held_and_unknown_ones_waited_for() {
        let machines = fleet(2);
        let state = state(Mode::Enforce, Rollout::default());
        let mut statuses = enrolled(&machines);
        statuses.get_mut("web1").unwrap().enrollment = Enrollment::MissingFile;
        statuses.get_mut("web2").unwrap().enrollment = Enrollment::Unknown;
        let observed = Observed {
            status: None,
            targets: &BTreeMap::new(),
            statuses: &statuses,
            held: &Held::default(),
        };
        let decision = decide(&state, "d1", "r1", &machines, &observed, NOW);
        assert!(decision.check.is_empty());
        assert_eq!(
            decision.targets[0].standing,
            Standing::Held {
                reason: "machine web1 is /etc/linkops/client_id is missing".into()
            }
        );
        assert_eq!(decision.targets[1].standing, Standing::Pending);
        assert_eq!(decision.wake_after_ms, Some(ENROLLMENT_WAIT_MS));
    }

    #[test]
    fn check_and_apply_ends_read_in_the_fleet_s_words() {
        let failed = |code| HostState::Failed {
            exit_code: Some(code),
            signal: None,
            error: None,
        };
        assert_eq!(CheckOutcome::of(&HostState::Succeeded), CheckOutcome::Holds);
        assert_eq!(CheckOutcome::of(&failed(1)), CheckOutcome::Drifted);
        assert!(
            matches!(CheckOutcome::of(&failed(2)), CheckOutcome::Error { message } if message.contains("exited 2"))
        );
        assert!(matches!(
            CheckOutcome::of(&HostState::Timeout { unconfirmed: false }),
            CheckOutcome::Error { .. }
        ));
        assert_eq!(ApplyResult::of(&HostState::Running), None);
        assert_eq!(
            ApplyResult::of(&HostState::Interrupted),
            Some(ApplyResult::Interrupted)
        );
        assert_eq!(
            ApplyResult::of(&failed(3)),
            Some(ApplyResult::Failed {
                reason: "exited 3".into()
            })
        );
    }

    #[test]
    fn drift_is_a_held_state_failing_its_check_not_new_content() {
        let held = checked("web1", CheckOutcome::Holds, NOW - MINUTE);
        let before: BTreeMap<String, Target> = [
            ("web1".to_owned(), held.clone()),
            (
                "web2".to_owned(),
                checked("web2", CheckOutcome::Holds, NOW - MINUTE),
            ),
            (
                "web3".to_owned(),
                checked("web3", CheckOutcome::Drifted, NOW - MINUTE),
            ),
        ]
        .into();
        let mut new_content = checked("web2", CheckOutcome::Drifted, NOW);
        new_content.check.as_mut().unwrap().digest = "d2".into();
        let after = [
            checked("web1", CheckOutcome::Drifted, NOW),
            new_content,
            checked("web3", CheckOutcome::Drifted, NOW),
            checked("web4", CheckOutcome::Drifted, NOW),
        ];
        assert_eq!(drifted(&before, &after), ["web1"]);
    }

    #[test]
    fn counts_are_named_as_the_standings_are() {
        let standings = [
            Standing::Pending,
            Standing::InSync,
            Standing::Drifted,
            Standing::Applying { operation_id: 1 },
            Standing::Failed {
                operation_id: 1,
                reason: String::new(),
            },
            Standing::Held {
                reason: String::new(),
            },
            Standing::CheckError {
                message: String::new(),
            },
        ];
        for standing in &standings {
            let counts = Counts::of([standing]);
            let named: Vec<&str> = counts
                .by_standing()
                .iter()
                .filter(|(_, count)| *count == 1)
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(named, [standing.name()]);
            // …and as serde tags them.
            let tagged = serde_json::to_value(standing).unwrap();
            assert_eq!(tagged["standing"], standing.name());
        }
        assert_eq!(Counts::of(&standings).total(), 7);
    }

    #[test]
    fn the_digest_follows_the_content() {
        let script = Script {
            check: Some("test -f /etc/motd".into()),
            ..crate::fixtures::script("motd", "echo hi > /etc/motd")
        };
        let state = state(Mode::Enforce, Rollout::default());
        let base = digest(&state, &script);
        assert_eq!(base.len(), 24);
        let mut other = state.clone();
        other.params.insert("x".into(), ParamValue::Int(1));
        assert_ne!(digest(&other, &script), base);
        let edited = Script {
            check: Some("test -s /etc/motd".into()),
            ..script.clone()
        };
        assert_ne!(digest(&state, &edited), base);
        // The mode, the interval and the rollout are not content.
        let mut reported = state.clone();
        reported.mode = Mode::Report;
        reported.interval = Duration::from_secs(60);
        assert_eq!(digest(&reported, &script), base);
    }

    /// The controller's loop over `decide`, on a clock of its own: decide,
    /// run the due checks 32 at a time (each taking its machine's time),
    /// decide again at the clock the checks ended, sleep until the wake.
    /// Every machine is checked again within its interval plus what one
    /// sweep of checks takes, every cycle — also those that fell due while
    /// checks ran.
    #[test]
    fn every_target_is_checked_again_within_its_interval_every_cycle() {
        const AT_ONCE: usize = 32;
        let machines = fleet(2_000);
        let mut state = state(Mode::Report, Rollout::default());
        state.interval = Duration::from_secs(60);
        let interval = 60_000;
        // 20-400 ms per check, by machine: the sweep spreads unevenly.
        let takes = |id: &str| 20 + (id.bytes().map(u64::from).sum::<u64>() * 37 % 381) as i64;
        let sweep: i64 = machines.iter().map(|m| takes(&m.id)).sum::<i64>() / AT_ONCE as i64;
        let statuses = enrolled(&machines);
        let held = Held::default();
        let mut targets: BTreeMap<String, Target> = BTreeMap::new();
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        let mut gaps = Vec::new();
        let mut now = NOW;
        let decide_at = |targets: &BTreeMap<String, Target>, now| {
            let observed = Observed {
                status: None,
                targets,
                statuses: &statuses,
                held: &held,
            };
            decide(&state, "d1", "r1", &machines, &observed, now)
        };
        while now < NOW + 10 * interval {
            let mut decision = decide_at(&targets, now);
            if !decision.check.is_empty() {
                // Each of 32 lanes takes the next machine when it is free.
                let mut lanes = [now; AT_ONCE];
                for id in &decision.check {
                    let lane = lanes.iter_mut().min().expect("lanes");
                    let at_ms = *lane;
                    *lane += takes(id);
                    if let Some(before) = last.insert(id.clone(), at_ms) {
                        gaps.push(at_ms - before);
                    }
                    let record = CheckRecord {
                        digest: "d1".into(),
                        at_ms,
                        duration_ms: 1,
                        outcome: CheckOutcome::Holds,
                        output: String::new(),
                    };
                    targets
                        .entry(id.clone())
                        .or_insert_with(|| Target::new("motd", id, at_ms))
                        .checked(record);
                }
                now = lanes.into_iter().max().expect("lanes");
                decision = decide_at(&targets, now);
            }
            now += decision.wake_after_ms.unwrap_or(interval).max(200);
        }
        let worst = gaps.iter().copied().max().expect("checked again");
        assert!(gaps.len() > 2_000 * 8, "{} checks again", gaps.len());
        assert!(
            worst <= interval + 2 * sweep,
            "a machine waited {worst} ms between checks (interval {interval}, sweep {sweep})"
        );
    }
}
