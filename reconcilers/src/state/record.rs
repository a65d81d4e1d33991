//! What the store keeps of a state: each machine's [`Target`] (its last
//! check and apply, where it stands) and the state's [`StateStatus`].

use serde::{Deserialize, Serialize};

use std::time::Duration;

use super::Mode;
use crate::condition::{self, Condition, ConditionKind, ConditionStatus};
use crate::operation::HostState;
use crate::rollout::Progress;

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
    /// Every standing's [`Standing::name`].
    pub const NAMES: [&'static str; 7] = [
        "pending",
        "in_sync",
        "drifted",
        "applying",
        "failed",
        "held",
        "check_error",
    ];

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
    /// checked, checked for other content, the interval (and the machine's
    /// jitter, [`check_jitter_ms`]) passed or passes within
    /// [`CHECKS_COALESCE_MS`], or an apply ended since (interrupted ones
    /// included: the check proves what they left). `Err`: due after this long.
    pub(super) fn check_due(
        &self,
        digest: &str,
        interval: Duration,
        now_ms: i64,
    ) -> Result<(), i64> {
        let Some(check) = &self.check else {
            return Ok(());
        };
        let applied_since = self
            .apply
            .as_ref()
            .is_some_and(|a| a.result != ApplyResult::Running && a.started_at_ms >= check.at_ms);
        let interval = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let due_at = (check.at_ms.saturating_add(interval)).saturating_add(check_jitter_ms(
            &self.machine_id,
            check.at_ms,
            interval,
        ));
        if check.digest != digest || applied_since || now_ms + CHECKS_COALESCE_MS >= due_at {
            Ok(())
        } else {
            Err(due_at - CHECKS_COALESCE_MS - now_ms)
        }
    }
}

/// A state's check falling due this soon is run with those due now: a
/// reconcile reads every record of its state, so spread checks must not
/// each wake one.
pub const CHECKS_COALESCE_MS: i64 = 2_000;

/// How much later than its interval a machine's next check falls due — up
/// to a tenth of the interval, from its id and last check time — so that a
/// wave of checks spreads out over the next cycles instead of repeating (as
/// machines' own checks are jittered). A hash, not a random number: the
/// core reads no entropy, and the same record always falls due at the same time.
pub fn check_jitter_ms(machine: &str, checked_at_ms: i64, interval_ms: i64) -> i64 {
    // FNV-1a over the id and the time.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in machine.bytes().chain(checked_at_ms.to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let span = u64::try_from(interval_ms / 10).unwrap_or(0);
    i64::try_from(hash % span.saturating_add(1)).unwrap_or(0)
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
    pub(super) fn summarize(&mut self, counts: Counts, mode: Mode, now_ms: i64) {
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
