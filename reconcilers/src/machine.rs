//! Machines: an inventory entry (desired) and what was last seen of it (observed).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::condition::{self, Condition, ConditionKind, ConditionStatus};
use crate::enrollment::{ClientIdReading, Enrollment, assess};

/// A machine as the inventory (`links.yaml`) declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Machine {
    /// Stable identifier, unique in the inventory.
    pub id: String,
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Login user on the machine; the daemon's default when `None`.
    pub user: Option<String>,
    /// Name of the private key in the daemon's keys directory (never a key
    /// itself); the daemon's default when `None`.
    pub key: Option<String>,
    /// Enrollment id: the machine's `/etc/linkops/client_id` must read `LINKOPS-<uuid>`.
    pub uuid: String,
    // Optional in stored records, always in answers.
    #[serde(default)]
    #[schema(required = true)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(required = true)]
    pub labels: BTreeMap<String, String>,
    /// A pinned host key (an OpenSSH public key line); wins over known_hosts.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Overrides the default health-check interval.
    #[serde(default)]
    #[schema(value_type = Option<crate::DurationSchema>)]
    pub health_interval: Option<Duration>,
    /// Overrides the per-machine session limit.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// How the daemon logs in.
    #[serde(default)]
    pub auth: Auth,
    /// Running on it, like a terminal to it, asks for a second factor first.
    #[serde(default)]
    #[schema(required = true)]
    pub protected: bool,
}

/// How the daemon logs in to a machine.
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
pub enum Auth {
    /// With a private key file in its keys directory (`key`, or `[ssh] key`):
    /// for what cannot take certificates, such as Dropbear on routers.
    #[default]
    Key,
    /// With a user certificate its CA signs for each connection, valid for
    /// minutes: the machine's sshd trusts the CA (`TrustedUserCAKeys`), and no
    /// key that opens it is kept anywhere.
    Certificate,
}

/// Reachability as the last health check saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Never checked since the machine entered the inventory.
    Unknown,
    Reachable {
        latency_ms: u64,
    },
    Unreachable {
        error: String,
    },
}

impl Health {
    /// Every [`Health::name`].
    pub const NAMES: [&'static str; 3] = ["unknown", "reachable", "unreachable"];

    /// The `state` the API shows, also a metric's label value.
    pub fn name(&self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Reachable { .. } => "reachable",
            Health::Unreachable { .. } => "unreachable",
        }
    }
}

/// How often a machine is checked when the inventory does not say.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(60);

/// Failed checks in a row after which a machine counts as stalled.
pub const STALL_AFTER_FAILURES: u32 = 5;

/// Everything LinkOps has observed about one machine. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineStatus {
    pub machine_id: String,
    pub health: Health,
    pub enrollment: Enrollment,
    /// Last time the machine answered over SSH.
    pub last_seen_ms: Option<i64>,
    pub checked_at_ms: Option<i64>,
    /// [`check_fingerprint`] of the inventory entry the last check used.
    pub checked_fingerprint: Option<String>,
    /// The Git revision the machine was last reconciled against.
    pub revision: Option<String>,
    pub consecutive_failures: u32,
    pub conditions: Vec<Condition>,
    /// What the sinks were last told about it (damping a machine that bounces).
    #[serde(default)]
    pub told: Option<crate::outbox::Told>,
}

impl MachineStatus {
    pub fn new(machine_id: &str) -> MachineStatus {
        MachineStatus {
            machine_id: machine_id.to_owned(),
            health: Health::Unknown,
            enrollment: Enrollment::Unknown,
            last_seen_ms: None,
            checked_at_ms: None,
            checked_fingerprint: None,
            revision: None,
            consecutive_failures: 0,
            conditions: Vec::new(),
            told: None,
        }
    }
}

/// The inventory fields a check depends on: when any changes, check again at once.
pub fn check_fingerprint(machine: &Machine) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}",
        machine.host,
        machine.port,
        machine.user.as_deref().unwrap_or(""),
        machine.key.as_deref().unwrap_or(""),
        machine.uuid,
        machine.host_key.as_deref().unwrap_or(""),
    )
}

/// What to do about a machine now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineDecision {
    /// Reconciliation is suspended: look again when that changes.
    Suspended,
    /// Connect, read the client id (which also proves reachability), record.
    CheckNow,
    /// Nothing yet; the next check is due after this long.
    WaitFor(Duration),
}

/// What an operator asked of a machine, outside the repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// Reconciliation is suspended for it (or the fleet): nothing is checked.
    pub suspended: bool,
    /// A verify asked for a check now, whatever its interval.
    pub check: bool,
}

/// Decides whether a machine needs a check: asked for (unless suspended),
/// never checked, its connection details changed, or its interval has passed.
pub fn decide(
    machine: &Machine,
    status: Option<&MachineStatus>,
    now_ms: i64,
    asked: Asked,
) -> MachineDecision {
    if asked.suspended {
        return MachineDecision::Suspended;
    }
    if asked.check {
        return MachineDecision::CheckNow;
    }
    let Some(status) = status else {
        return MachineDecision::CheckNow;
    };
    let (Some(checked_at), Some(fingerprint)) = (status.checked_at_ms, &status.checked_fingerprint)
    else {
        return MachineDecision::CheckNow;
    };
    if *fingerprint != check_fingerprint(machine) {
        return MachineDecision::CheckNow;
    }
    let interval = machine.health_interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
    let elapsed = Duration::from_millis(u64::try_from(now_ms - checked_at).unwrap_or(0));
    match interval.checked_sub(elapsed) {
        Some(left) if !left.is_zero() => MachineDecision::WaitFor(left),
        _ => MachineDecision::CheckNow,
    }
}

/// What one check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Connect plus command, for a reachable machine.
    pub latency_ms: u64,
    pub reading: ClientIdReading,
}

/// The status after a check: health, enrollment and conditions.
pub fn observe(
    machine: &Machine,
    previous: Option<MachineStatus>,
    result: CheckResult,
    revision: &str,
    now_ms: i64,
) -> Observed {
    let was_refused = previous
        .as_ref()
        .is_some_and(|s| matches!(s.enrollment, Enrollment::HostKeyMismatch { .. }));
    let mut status = previous.unwrap_or_else(|| MachineStatus::new(&machine.id));
    let reachable = matches!(
        result.reading,
        ClientIdReading::Content(_) | ClientIdReading::Missing
    );
    status.health = match &result.reading {
        ClientIdReading::Unreachable(error) => Health::Unreachable {
            error: error.clone(),
        },
        ClientIdReading::HostKeyMismatch(error) => Health::Unreachable {
            error: error.clone(),
        },
        _ => Health::Reachable {
            latency_ms: result.latency_ms,
        },
    };
    if reachable {
        status.last_seen_ms = Some(now_ms);
        status.consecutive_failures = 0;
    } else {
        status.consecutive_failures += 1;
    }
    status.enrollment = assess(&machine.uuid, result.reading);
    status.checked_at_ms = Some(now_ms);
    status.checked_fingerprint = Some(check_fingerprint(machine));
    status.revision = Some(revision.to_owned());
    set_conditions(&mut status, now_ms);
    let mut transitions = Vec::new();
    // Told once when it starts, not on every check while it lasts.
    if let Enrollment::HostKeyMismatch { error } = &status.enrollment
        && !was_refused
    {
        transitions.push(Transition::HostKeyRefused {
            error: error.clone(),
        });
    }
    Observed {
        status,
        transitions,
    }
}

/// A check's outcome: the new status, and what changed that the shell must
/// act on (audit it, count it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub status: MachineStatus,
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The machine's host key started being refused (it was not, before).
    HostKeyRefused { error: String },
}

fn set_conditions(status: &mut MachineStatus, now_ms: i64) {
    use ConditionKind::{Ready, Reconciling, Stalled};
    use ConditionStatus::{False, True};
    let conditions = &mut status.conditions;
    let (ready, reason, message) = match (&status.health, &status.enrollment) {
        (_, Enrollment::Enrolled) => (True, "Enrolled", "reachable and enrolled".to_owned()),
        (_, Enrollment::HostKeyMismatch { error }) => (False, "HostKeyMismatch", error.clone()),
        (Health::Unreachable { error }, _) => (False, "Unreachable", error.clone()),
        (_, Enrollment::Mismatch { expected, found }) => (
            False,
            "ClientIdMismatch",
            format!("/etc/linkops/client_id reads {found:?}, expected {expected:?}"),
        ),
        (_, Enrollment::MissingFile) => (
            False,
            "ClientIdMissing",
            "/etc/linkops/client_id does not exist; enroll the machine".to_owned(),
        ),
        _ => (
            ConditionStatus::Unknown,
            "NotChecked",
            "not checked yet".to_owned(),
        ),
    };
    condition::set(conditions, Ready, ready, reason, message.clone(), now_ms);
    condition::set(
        conditions,
        Reconciling,
        False,
        "Checked",
        "the last check is recorded",
        now_ms,
    );
    // Needs a person: nothing LinkOps retries will fix these.
    let stalled = matches!(
        reason,
        "HostKeyMismatch" | "ClientIdMismatch" | "ClientIdMissing"
    ) || status.consecutive_failures >= STALL_AFTER_FAILURES;
    if stalled {
        let message = if reason == "Unreachable" {
            format!(
                "{} failed checks in a row: {message}",
                status.consecutive_failures
            )
        } else {
            message
        };
        condition::set(conditions, Stalled, True, reason, message, now_ms);
    } else {
        condition::set(conditions, Stalled, False, "Progressing", "", now_ms);
    }
}

/// Whether a check is announced as it begins — its status written with the
/// `Reconciling` condition before it connects: a machine's first check
/// (from then on it has a status), and a check someone asked for, who
/// watches it. A routine check is not: it lasts milliseconds, and at fleet
/// size announcing it doubled the status writes of a sweep and told every
/// live view two changes per check (the condition's flip and back).
pub fn announces_check(status: Option<&MachineStatus>, asked: bool) -> bool {
    status.is_none() || asked
}

/// Marks a machine as being checked (the `Reconciling` condition).
pub fn mark_reconciling(status: &mut MachineStatus, now_ms: i64) {
    condition::set(
        &mut status.conditions,
        ConditionKind::Reconciling,
        ConditionStatus::True,
        "Checking",
        "connecting and reading /etc/linkops/client_id",
        now_ms,
    );
}

/// Whether a machine's new status shows differently from its old one in the
/// fleet's views — its health state, enrollment, conditions or revision — as
/// opposed to only the times of its checks and the latency they measured,
/// which change at every check and which live views need not hear about.
pub fn shown_change(before: Option<&MachineStatus>, after: &MachineStatus) -> bool {
    let Some(before) = before else {
        return true;
    };
    let health = match (&before.health, &after.health) {
        (Health::Reachable { .. }, Health::Reachable { .. }) => false,
        (before, after) => before != after,
    };
    health
        || before.enrollment != after.enrollment
        || before.conditions != after.conditions
        || before.revision != after.revision
}

/// Whether `name` is a plain file name, as key names must be: letters, digits,
/// `.`, `_` and `-`, not starting with a dot (so never `..`, never a path).
pub fn is_plain_file_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric() || matches!(first, '_' | '-'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routine_check_is_one_write_and_no_change_shown() {
        let first = observe(&machine(), None, enrolled(), "r1", 1_000).status;
        assert!(announces_check(None, false), "the first check");
        assert!(announces_check(Some(&first), true), "a verify");
        assert!(!announces_check(Some(&first), false), "a routine check");
        // Unannounced, the next check's status differs only in times and latency.
        let again = observe(&machine(), Some(first.clone()), enrolled(), "r1", 61_000).status;
        assert!(!shown_change(Some(&first), &again));
        // Announced, it showed twice: the condition's flip, and back.
        let mut announced = first.clone();
        mark_reconciling(&mut announced, 61_000);
        assert!(shown_change(Some(&first), &announced));
        let after = observe(
            &machine(),
            Some(announced.clone()),
            enrolled(),
            "r1",
            61_010,
        );
        assert!(shown_change(Some(&announced), &after.status));
        // A change of health is shown, announced or not.
        let down = observe(&machine(), Some(first.clone()), unreachable(), "r1", 61_000);
        assert!(shown_change(Some(&first), &down.status));
    }

    #[test]
    fn a_check_that_only_moves_times_and_latency_is_no_shown_change() {
        let before = MachineStatus {
            health: Health::Reachable { latency_ms: 3 },
            enrollment: Enrollment::Enrolled,
            checked_at_ms: Some(1),
            last_seen_ms: Some(1),
            ..MachineStatus::new("m")
        };
        let cases: &[(&str, MachineStatus, bool)] = &[
            (
                "times and latency",
                MachineStatus {
                    health: Health::Reachable { latency_ms: 9 },
                    checked_at_ms: Some(2),
                    last_seen_ms: Some(2),
                    consecutive_failures: 0,
                    ..before.clone()
                },
                false,
            ),
            (
                "health state",
                MachineStatus {
                    health: Health::Unreachable {
                        error: "refused".into(),
                    },
                    ..before.clone()
                },
                true,
            ),
            (
                "enrollment",
                MachineStatus {
                    enrollment: Enrollment::MissingFile,
                    ..before.clone()
                },
                true,
            ),
            (
                "revision",
                MachineStatus {
                    revision: Some("r2".into()),
                    ..before.clone()
                },
                true,
            ),
        ];
        for (what, after, shown) in cases {
            assert_eq!(shown_change(Some(&before), after), *shown, "{what}");
        }
        assert!(shown_change(None, &before), "a first status");
    }

    const UUID: &str = "7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935";

    fn machine() -> Machine {
        Machine {
            id: "web-1".into(),
            name: "Web 1".into(),
            host: "10.0.0.1".into(),
            port: 22,
            user: None,
            key: None,
            uuid: UUID.into(),
            tags: vec![],
            labels: BTreeMap::new(),
            host_key: None,
            health_interval: Some(Duration::from_secs(60)),
            concurrency: None,
            auth: Auth::Key,
            protected: false,
        }
    }

    fn checked_at(ms: i64) -> MachineStatus {
        observe(&machine(), None, enrolled(), "r1", ms).status
    }

    fn enrolled() -> CheckResult {
        CheckResult {
            latency_ms: 12,
            reading: ClientIdReading::Content(format!("LINKOPS-{UUID}\n")),
        }
    }

    fn unreachable() -> CheckResult {
        CheckResult {
            latency_ms: 0,
            reading: ClientIdReading::Unreachable("connection refused".into()),
        }
    }

    #[test]
    fn decisions() {
        let mut moved = machine();
        moved.host = "10.0.0.99".into();
        // (name, machine, status, now, suspended, expected)
        type Case = (
            &'static str,
            Machine,
            Option<MachineStatus>,
            i64,
            bool,
            MachineDecision,
        );
        let cases: Vec<Case> = vec![
            (
                "never checked",
                machine(),
                None,
                0,
                false,
                MachineDecision::CheckNow,
            ),
            (
                "suspended wins",
                machine(),
                None,
                0,
                true,
                MachineDecision::Suspended,
            ),
            (
                "fresh check waits",
                machine(),
                Some(checked_at(1_000)),
                21_000,
                false,
                MachineDecision::WaitFor(Duration::from_secs(40)),
            ),
            (
                "interval passed",
                machine(),
                Some(checked_at(1_000)),
                61_000,
                false,
                MachineDecision::CheckNow,
            ),
            (
                "long overdue",
                machine(),
                Some(checked_at(1_000)),
                900_000,
                false,
                MachineDecision::CheckNow,
            ),
            (
                "address changed",
                moved,
                Some(checked_at(1_000)),
                2_000,
                false,
                MachineDecision::CheckNow,
            ),
            (
                "status without a check",
                machine(),
                Some(MachineStatus::new("web-1")),
                2_000,
                false,
                MachineDecision::CheckNow,
            ),
        ];
        for (name, machine, status, now, suspended, expected) in cases {
            assert_eq!(
                decide(
                    &machine,
                    status.as_ref(),
                    now,
                    Asked {
                        suspended,
                        check: false
                    }
                ),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn a_verify_checks_at_once_unless_suspended() {
        let fresh = checked_at(1_000);
        let check = Asked {
            suspended: false,
            check: true,
        };
        assert_eq!(
            decide(&machine(), Some(&fresh), 2_000, check),
            MachineDecision::CheckNow
        );
        let held = Asked {
            suspended: true,
            check: true,
        };
        assert_eq!(
            decide(&machine(), Some(&fresh), 2_000, held),
            MachineDecision::Suspended
        );
    }

    #[test]
    fn a_refused_host_key_is_a_transition_once() {
        let refused = || CheckResult {
            latency_ms: 0,
            reading: ClientIdReading::HostKeyMismatch("the key changed".into()),
        };
        let first = observe(&machine(), Some(checked_at(1_000)), refused(), "r1", 2_000);
        assert_eq!(
            first.transitions,
            [Transition::HostKeyRefused {
                error: "the key changed".into()
            }]
        );
        let again = observe(&machine(), Some(first.status), refused(), "r1", 3_000);
        assert!(again.transitions.is_empty(), "{:?}", again.transitions);
        let back = observe(&machine(), Some(again.status), enrolled(), "r1", 4_000);
        assert!(back.transitions.is_empty());
    }

    #[test]
    fn an_enrolled_machine_is_ready() {
        let status = checked_at(5_000);
        assert_eq!(status.health, Health::Reachable { latency_ms: 12 });
        assert_eq!(status.last_seen_ms, Some(5_000));
        let ready = condition::get(&status.conditions, ConditionKind::Ready).unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::True, "Enrolled")
        );
    }

    #[test]
    fn going_offline_is_visible_at_once_and_keeps_last_seen() {
        let online = checked_at(5_000);
        let offline = observe(&machine(), Some(online), unreachable(), "r1", 65_000).status;
        assert!(matches!(offline.health, Health::Unreachable { .. }));
        assert_eq!(offline.last_seen_ms, Some(5_000));
        let ready = condition::get(&offline.conditions, ConditionKind::Ready).unwrap();
        assert_eq!(
            (
                ready.status,
                ready.reason.as_str(),
                ready.last_transition_ms
            ),
            (ConditionStatus::False, "Unreachable", 65_000)
        );
        let back = observe(&machine(), Some(offline), enrolled(), "r1", 125_000).status;
        assert_eq!(
            condition::get(&back.conditions, ConditionKind::Ready)
                .unwrap()
                .status,
            ConditionStatus::True
        );
        assert_eq!(back.consecutive_failures, 0);
    }

    #[test]
    fn a_wrong_client_id_stalls_with_both_values() {
        let wrong = CheckResult {
            latency_ms: 5,
            reading: ClientIdReading::Content("LINKOPS-other\n".into()),
        };
        let status = observe(&machine(), None, wrong, "r1", 1_000).status;
        let stalled = condition::get(&status.conditions, ConditionKind::Stalled).unwrap();
        assert_eq!(
            (stalled.status, stalled.reason.as_str()),
            (ConditionStatus::True, "ClientIdMismatch")
        );
        assert!(
            stalled.message.contains("LINKOPS-other") && stalled.message.contains(UUID),
            "{}",
            stalled.message
        );
    }

    #[test]
    fn repeated_failures_stall() {
        let mut status = None;
        for i in 0..STALL_AFTER_FAILURES {
            status = Some(
                observe(
                    &machine(),
                    status,
                    unreachable(),
                    "r1",
                    i64::from(i) * 1_000,
                )
                .status,
            );
        }
        let status = status.unwrap();
        let stalled = condition::get(&status.conditions, ConditionKind::Stalled).unwrap();
        assert_eq!(stalled.status, ConditionStatus::True);
        assert!(
            stalled.message.starts_with("5 failed checks"),
            "{}",
            stalled.message
        );
    }
}
