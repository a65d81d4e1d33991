//! `decide` table-tested: checks, rollouts, windows, holds and timing.

use super::*;
use crate::condition::{self, ConditionKind, ConditionStatus};
use crate::fixtures::machine;
use crate::machine::MachineStatus;
use crate::operation::HostState;
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
            where_: Default::default(),
        },
        params: BTreeMap::new(),
        mode,
        interval: Duration::from_secs(300),
        windows: vec![],
        zone: "UTC".into(),
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
        zone: &jiff::tz::TimeZone::UTC,
        awaiting: None,
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

/// At fleet size the checks come in waves: every machine shows as pending
/// from the first decision, and the canary starts once a first wave found
/// drift, not after every machine was checked.
#[test]
fn a_fleet_is_checked_in_waves_and_its_canary_does_not_wait_for_every_machine() {
    let machines = fleet(1_000);
    let rollout = Rollout {
        batch: 500,
        canary: 1,
        max_failures: 1,
    };
    let state = state(Mode::Enforce, rollout);
    let first = decide_with(&state, &machines, &[], None, &Held::default(), NOW);
    assert_eq!(first.check.len(), CHECKS_PER_DECISION);
    assert_eq!(first.status.counts.pending, 1_000, "every machine shows");
    assert_eq!(first.wake_after_ms, Some(0), "the next wave at once");
    assert!(first.apply.is_empty());

    let wave: Vec<Target> = (first.check.iter())
        .map(|id| checked(id, CheckOutcome::Drifted, NOW))
        .collect();
    let second = decide_with(&state, &machines, &wave, None, &Held::default(), NOW + 5);
    assert_eq!(second.apply, [first.check[0].clone()], "the canary, alone");
    assert_eq!(second.check.len(), CHECKS_PER_DECISION, "checks go on");
    assert!(second.check.iter().all(|id| !first.check.contains(id)));
    assert_eq!(
        second.status.counts.pending as usize,
        1_000 - CHECKS_PER_DECISION
    );
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
    // Its interval, its jitter, less what is run with the checks due then.
    let jitter = super::record::check_jitter_ms("web1", NOW - MINUTE, 5 * MINUTE);
    assert!((0..=MINUTE / 2).contains(&jitter), "{jitter}");
    let coalesce = super::record::CHECKS_COALESCE_MS;
    assert_eq!(decision.wake_after_ms, Some(4 * MINUTE + jitter - coalesce));
}

#[test]
fn drifted_machines_wait_for_approvers_while_checks_go_on() {
    let machines = fleet(2);
    let state = state(Mode::Enforce, Rollout::default());
    let targets: BTreeMap<String, Target> = [
        checked("web1", CheckOutcome::Drifted, NOW - MINUTE),
        checked("web2", CheckOutcome::Holds, NOW - 10 * MINUTE),
    ]
    .into_iter()
    .map(|t| (t.machine_id.clone(), t))
    .collect();
    let statuses = enrolled(&machines);
    let reason = "awaiting approval: request 4, 0 of 2 (`linkops approve 4`)";
    let observed = Observed {
        status: None,
        targets: &targets,
        statuses: &statuses,
        held: &Held::default(),
        zone: &jiff::tz::TimeZone::UTC,
        awaiting: Some(reason),
    };
    let decision = decide(&state, "d1", "r1", &machines, &observed, NOW);
    assert!(decision.apply.is_empty());
    assert_eq!(
        decision.targets[0].standing,
        Standing::Held {
            reason: reason.into()
        }
    );
    assert_eq!(decision.check, ["web2"], "checks go on");
    let approved = Observed {
        awaiting: None,
        ..observed
    };
    let decision = decide(&state, "d1", "r1", &machines, &approved, NOW);
    assert_eq!(decision.apply, ["web1"]);
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
            reason: "outside the maintenance windows; the next opens at 2025-12-06 22:00 UTC (2025-12-06T22:00:00Z)"
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
        zone: &jiff::tz::TimeZone::UTC,
        awaiting: None,
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
    // The names the API accepts as a filter are these, in this order.
    let names: Vec<&str> = standings.iter().map(Standing::name).collect();
    assert_eq!(names, Standing::NAMES);
}

#[test]
fn the_digest_follows_the_content() {
    let script = Script {
        check: Some("test -f /etc/motd".into()),
        ..crate::fixtures::script("motd", "echo hi > /etc/motd")
    };
    let state = state(Mode::Enforce, Rollout::default());
    let none = BTreeMap::new();
    let base = digest(&state, &script, "", &none);
    assert_eq!(base.len(), 24);
    let mut other = state.clone();
    other.params.insert("x".into(), ParamValue::Int(1));
    assert_ne!(digest(&other, &script, "", &none), base);
    // What the daemon tells scripts (a revocation) is content of those that read it.
    assert_eq!(digest(&state, &script, "revoked 42", &none), base);
    let keeper = Script {
        check: Some("grep -qF \"$LINKOPS_CA_USER_KEYS\" /etc/ssh/ca.pub".into()),
        ..script.clone()
    };
    assert_ne!(
        digest(&state, &keeper, "revoked 42", &none),
        digest(&state, &keeper, "", &none)
    );
    let edited = Script {
        check: Some("test -s /etc/motd".into()),
        ..script.clone()
    };
    assert_ne!(digest(&state, &edited, "", &none), base);
    // The mode, the interval and the rollout are not content.
    let mut reported = state.clone();
    reported.mode = Mode::Report;
    reported.interval = Duration::from_secs(60);
    assert_eq!(digest(&reported, &script, "", &none), base);
    // A secret it gives, sealed again (a new value, new recipients), is content.
    let secret = |sealed: &str| crate::secret::Secret {
        name: "token".into(),
        description: String::new(),
        file: "secrets/token.yaml".into(),
        scripts: Vec::new(),
        targets: crate::script::Targets::default(),
        sealed: sealed.into(),
    };
    let given = |sealed: &str| BTreeMap::from([("TOKEN".to_owned(), secret(sealed))]);
    assert_ne!(digest(&state, &script, "", &given("one")), base);
    assert_ne!(
        digest(&state, &script, "", &given("one")),
        digest(&state, &script, "", &given("two"))
    );
}

/// The controller's loop over `decide`, on a clock of its own: decide,
/// run the due checks 32 at a time (each taking its machine's time),
/// decide again at the clock the checks ended, sleep until the wake.
/// Every machine is checked again within its interval, its jitter and what
/// one sweep of checks takes, every cycle — also those that fell due while
/// checks ran — at 10,000 machines, with the fleet's sessions of a fleet that
/// size (`[ssh] concurrency = 256`); and the checks spread out.
#[test]
fn every_target_is_checked_again_within_its_interval_every_cycle() {
    const AT_ONCE: usize = 256;
    let machines = fleet(10_000);
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
            zone: &jiff::tz::TimeZone::UTC,
            awaiting: None,
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
    assert!(gaps.len() > 10_000 * 8, "{} checks again", gaps.len());
    assert!(
        worst <= interval + interval / 10 + 2 * sweep,
        "a machine waited {worst} ms between checks (interval {interval}, sweep {sweep})"
    );
}
