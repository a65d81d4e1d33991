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
    if let Some(id) = selected.iter().find(|id| {
        statuses
            .get(*id)
            .is_none_or(|s| s.enrollment == Enrollment::Unknown)
    }) {
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
mod tests {
    use super::*;
    use crate::fixtures::{machine, run_request};

    fn run(not_before: Option<&str>) -> RunRequest {
        let targets = Targets {
            machines: vec!["db".into()],
            tags: vec!["web".into()],
        };
        RunRequest {
            not_before: not_before.map(|t| t.parse().unwrap()),
            ..run_request("upgrade", "apt-upgrade", targets)
        }
    }

    fn started(content: String) -> RunRecord {
        RunRecord {
            id: "upgrade".into(),
            state: RunState::Started { operation_id: 7 },
            content,
            changed_after_run: false,
            revision: "r1".into(),
            updated_at_ms: 0,
            conditions: vec![],
        }
    }

    fn fleet() -> Vec<Machine> {
        vec![
            machine("web-1", &["web"]),
            machine("web-2", &["web"]),
            machine("db", &[]),
            machine("mail", &["mail"]),
        ]
    }

    /// Every machine of `fleet()` as `enrollment`, but web-2: its file is missing.
    fn status(enrollment: Enrollment) -> Statuses {
        fleet()
            .iter()
            .map(|machine| {
                let mut status = MachineStatus::new(&machine.id);
                status.enrollment = if machine.id == "web-2" {
                    Enrollment::MissingFile
                } else {
                    enrollment.clone()
                };
                (machine.id.clone(), status)
            })
            .collect()
    }

    #[test]
    fn starts_on_enrolled_targets_and_skips_the_rest_with_reasons() {
        let decision = decide(
            Some(&run(None)),
            None,
            &fleet(),
            &status(Enrollment::Enrolled),
            &Held::default(),
            0,
        );
        let RunDecision::Start { machines } = decision else {
            panic!("{decision:?}")
        };
        let ids: Vec<&str> = machines.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            ["web-1", "web-2", "db"],
            "inventory order, selected by id or tag"
        );
        assert_eq!(
            machines[0].1,
            Placement::Run(Box::new(machine("web-1", &["web"])))
        );
        assert_eq!(
            machines[1].1,
            Placement::Skip {
                reason: "not enrolled: /etc/linkops/client_id is missing".into()
            }
        );
    }

    #[test]
    fn a_suspension_holds_back_a_start_but_not_a_record_or_a_cancel() {
        use crate::suspension::Scope;
        let (statuses, machines, request) = (status(Enrollment::Enrolled), fleet(), run(None));
        let fleet_held = Held {
            by_config: false,
            scopes: vec![Scope::Fleet],
        };
        let decide_held = |held: &Held, desired: Option<&RunRequest>, record| {
            decide(desired, record, &machines, &statuses, held, 0)
        };
        let machine_held = |id: &str| Held {
            by_config: false,
            scopes: vec![Scope::Machine(id.into())],
        };
        let by_config = Held {
            by_config: true,
            scopes: vec![],
        };
        // Each hold, and the reason the request waits with.
        let cases: [(&Held, &str); 3] = [
            (&fleet_held, "reconciliation of the fleet is suspended"),
            (&by_config, "suspended by the configuration"),
            (
                &machine_held("db"),
                "reconciliation of machine db is suspended",
            ),
        ];
        for (held, says) in cases {
            let decision = decide_held(held, Some(&request), None);
            let RunDecision::Suspended { reason } = &decision else {
                panic!("{held:?}: {decision:?}")
            };
            assert!(reason.contains(says), "{reason}");
        }
        // A machine it does not target holds nothing.
        assert!(matches!(
            decide_held(&machine_held("other"), Some(&request), None),
            RunDecision::Start { .. }
        ));
        let ran = started(request.content());
        assert_eq!(
            decide_held(&fleet_held, Some(&request), Some(&ran)),
            RunDecision::AlreadyStarted {
                operation_id: 7,
                changed: false
            }
        );
        let waiting = RunRecord {
            state: RunState::Waiting {
                reason: "suspended".into(),
            },
            ..started(String::new())
        };
        assert_eq!(
            decide_held(&fleet_held, None, Some(&waiting)),
            RunDecision::Cancel
        );
    }

    #[test]
    fn a_run_by_hand_is_refused_only_when_nothing_it_selects_may_start() {
        use crate::suspension::Scope;
        let held = |scopes: &[Scope]| Held {
            by_config: false,
            scopes: scopes.to_vec(),
        };
        let web = Scope::Machine("web".into());
        let db = Scope::Machine("db".into());
        let selected = ["web".to_owned(), "db".to_owned()];
        let cases: [(Held, &[String], Option<&str>); 6] = [
            (held(&[]), &selected, None),
            (held(std::slice::from_ref(&web)), &selected, None),
            (held(&[web.clone(), db]), &selected, Some("machine web")),
            (held(&[Scope::Fleet]), &selected, Some("the fleet")),
            (held(&[Scope::Fleet]), &[], Some("the fleet")),
            (held(&[web]), &[], None),
        ];
        for (held, selected, expected) in cases {
            let refusal = refused_by_suspension(&held, selected);
            match expected {
                None => assert_eq!(refusal, None, "{held:?} {selected:?}"),
                Some(names) => assert!(
                    refusal.as_deref().is_some_and(|r| r.contains(names)),
                    "{held:?} {selected:?}: {refusal:?}"
                ),
            }
        }
    }

    #[test]
    fn a_suspended_machine_is_placed_as_skipped_naming_its_suspension() {
        let held = Held {
            by_config: false,
            scopes: vec![crate::suspension::Scope::Machine("web-1".into())],
        };
        let placements = place(
            &run(None).targets,
            &fleet(),
            &status(Enrollment::Enrolled),
            &held,
        );
        let reasons: Vec<String> = placements
            .iter()
            .map(|(id, placement)| match placement {
                Placement::Run(_) => format!("{id}: runs"),
                Placement::Skip { reason } => format!("{id}: {reason}"),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "web-1: reconciliation of machine web-1 is suspended \
                 (POST /api/reconcile/resume {\"machine\": \"web-1\"} lifts it)",
                "web-2: not enrolled: /etc/linkops/client_id is missing",
                "db: runs",
            ]
        );
    }

    #[test]
    fn waits_for_not_before_and_for_first_checks() {
        let now = "2026-11-25T02:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let decision = decide(
            Some(&run(Some("2026-11-25T03:00:00Z"))),
            None,
            &fleet(),
            &status(Enrollment::Enrolled),
            &Held::default(),
            now,
        );
        assert_eq!(
            decision,
            RunDecision::Wait {
                reason: "not before 2026-11-25T03:00:00Z".into(),
                retry_after_ms: 3_600_000
            }
        );
        let decision = decide(
            Some(&run(None)),
            None,
            &fleet(),
            &status(Enrollment::Unknown),
            &Held::default(),
            now,
        );
        assert!(
            matches!(
                decision,
                RunDecision::Wait {
                    retry_after_ms: ENROLLMENT_WAIT_MS,
                    ..
                }
            ),
            "{decision:?}"
        );
    }

    #[test]
    fn a_started_request_never_starts_again_and_reports_edits() {
        let request = run(None);
        let record = started(request.content());
        let decision = decide(
            Some(&request),
            Some(&record),
            &fleet(),
            &status(Enrollment::Enrolled),
            &Held::default(),
            0,
        );
        assert_eq!(
            decision,
            RunDecision::AlreadyStarted {
                operation_id: 7,
                changed: false
            }
        );
        let mut edited = request.clone();
        edited
            .params
            .insert("package".into(), ParamValue::String("htop".into()));
        let decision = decide(
            Some(&edited),
            Some(&record),
            &fleet(),
            &status(Enrollment::Enrolled),
            &Held::default(),
            0,
        );
        assert_eq!(
            decision,
            RunDecision::AlreadyStarted {
                operation_id: 7,
                changed: true
            }
        );
        // Even gone from Git, it stays started.
        let decision = decide(
            None,
            Some(&record),
            &fleet(),
            &status(Enrollment::Enrolled),
            &Held::default(),
            0,
        );
        assert_eq!(
            decision,
            RunDecision::AlreadyStarted {
                operation_id: 7,
                changed: false
            }
        );
    }

    #[test]
    fn conditions_follow_the_state() {
        let waiting = RunRecord {
            state: RunState::Waiting {
                reason: "not before".into(),
            },
            ..started(String::new())
        }
        .with_conditions(&[], 10);
        let ready = condition::get(&waiting.conditions, ConditionKind::Ready).unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, "Waiting")
        );
        let mut edited = started(String::new()).with_conditions(&waiting.conditions, 20);
        assert_eq!(
            condition::get(&edited.conditions, ConditionKind::Ready)
                .unwrap()
                .last_transition_ms,
            20
        );
        edited.changed_after_run = true;
        let edited = edited.clone().with_conditions(&edited.conditions, 30);
        let stalled = condition::get(&edited.conditions, ConditionKind::Stalled).unwrap();
        assert_eq!(
            (stalled.status, stalled.reason.as_str()),
            (ConditionStatus::True, "ChangedAfterRun")
        );
    }

    #[test]
    fn removed_before_it_started_is_cancelled_once() {
        let waiting = RunRecord {
            state: RunState::Waiting {
                reason: "not before".into(),
            },
            ..started(String::new())
        };
        assert_eq!(
            decide(
                None,
                Some(&waiting),
                &fleet(),
                &status(Enrollment::Enrolled),
                &Held::default(),
                0,
            ),
            RunDecision::Cancel
        );
        let cancelled = RunRecord {
            state: RunState::Cancelled,
            ..waiting
        };
        assert_eq!(
            decide(
                None,
                Some(&cancelled),
                &fleet(),
                &status(Enrollment::Enrolled),
                &Held::default(),
                0,
            ),
            RunDecision::Nothing
        );
        assert_eq!(
            decide(
                None,
                None,
                &fleet(),
                &status(Enrollment::Enrolled),
                &Held::default(),
                0,
            ),
            RunDecision::Nothing
        );
    }

    #[test]
    fn a_tag_no_machine_has_is_named() {
        let machines = [machine("web1", &["web"]), machine("db1", &["db"])];
        let targets = |tags: &[&str]| Targets {
            machines: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        assert_eq!(targets(&["web", "db"]).unmatched_tag(&machines), None);
        assert_eq!(
            targets(&["web", "nosuch"]).unmatched_tag(&machines),
            Some("nosuch")
        );
        assert_eq!(targets(&[]).unmatched_tag(&machines), None);
    }
}
