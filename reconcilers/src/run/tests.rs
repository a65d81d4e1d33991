//! The run-request decision and placement, table-tested.

use super::*;
use crate::fixtures::{machine, run_request};

fn run(not_before: Option<&str>) -> RunRequest {
    let targets = Targets {
        machines: vec!["db".into()],
        tags: vec!["web".into()],
        where_: Default::default(),
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
fn a_machine_is_unchecked_until_its_first_check_ends() {
    let selected: Vec<String> = vec!["web-1".into(), "db".into()];
    let mut statuses = status(Enrollment::Enrolled);
    assert_eq!(first_unchecked(&selected, &statuses), None);
    // A check under way has written its status, still unknown.
    statuses.get_mut("db").unwrap().enrollment = Enrollment::Unknown;
    assert_eq!(first_unchecked(&selected, &statuses), Some(&selected[1]));
    statuses.remove("db");
    assert_eq!(first_unchecked(&selected, &statuses), Some(&selected[1]));
    // Checked and found wanting is checked: placement says why it is skipped.
    statuses.get_mut("web-1").unwrap().enrollment = Enrollment::MissingFile;
    statuses.insert("db".into(), MachineStatus::new("db"));
    statuses.get_mut("db").unwrap().enrollment = Enrollment::Unreachable {
        error: "refused".into(),
    };
    assert_eq!(first_unchecked(&selected, &statuses), None);
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
        where_: Default::default(),
    };
    assert_eq!(targets(&["web", "db"]).unmatched_tag(&machines), None);
    assert_eq!(
        targets(&["web", "nosuch"]).unmatched_tag(&machines),
        Some("nosuch")
    );
    assert_eq!(targets(&[]).unmatched_tag(&machines), None);
}
