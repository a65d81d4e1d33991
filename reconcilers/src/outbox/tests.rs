//! What is said, and when messages are dropped, coalesced or tried again.

use super::*;

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn a_machine_s_newer_standing_supersedes_its_older_one_and_nothing_else() {
    let event = |kind, subject: &str| {
        Message::Notification(Notification {
            version: NOTIFICATION_VERSION,
            kind,
            at_ms: 0,
            title: String::new(),
            text: String::new(),
            subject: subject.into(),
            url: None,
        })
    };
    use EventKind::*;
    let cases = [
        (
            event(MachineRecovered, "web1"),
            event(MachineUnreachable, "web1"),
            true,
        ),
        (
            event(MachineUnenrolled, "web1"),
            event(MachineRecovered, "web1"),
            true,
        ),
        (
            event(MachineRecovered, "web1"),
            event(MachineUnreachable, "web2"),
            false,
        ),
        // An operation's or a revision's news is never coalesced.
        (
            event(OperationFailed, "7"),
            event(OperationFailed, "7"),
            false,
        ),
        (
            event(MachineRecovered, "7"),
            event(OperationFailed, "7"),
            false,
        ),
    ];
    for (newer, older, expected) in cases {
        assert_eq!(
            supersedes(&newer, &older),
            expected,
            "{newer:?} over {older:?}"
        );
    }
}

#[test]
fn a_sync_says_pending_then_its_end_on_the_commit() {
    let (statuses, events) = for_sync(
        REV,
        SyncEnd::Applied,
        false,
        Some("https://ops.example/"),
        7,
    );
    let states: Vec<CommitState> = statuses.iter().map(|s| s.state).collect();
    assert_eq!(states, [CommitState::Pending, CommitState::Success]);
    assert!(
        statuses
            .iter()
            .all(|s| s.context == "linkops/sync" && s.sha == REV)
    );
    assert_eq!(
        statuses[1].target_url.as_deref(),
        Some(format!("https://ops.example/#/git?revision={REV}").as_str())
    );
    assert!(
        events.is_empty(),
        "a good revision after a good one says nothing"
    );

    let first = "links.yaml:3:11: expected string scalar";
    let (statuses, events) = for_sync(REV, SyncEnd::Refused { first, count: 3 }, false, None, 7);
    assert_eq!(statuses[1].state, CommitState::Failure);
    assert_eq!(
        statuses[1].description,
        "refused: links.yaml:3:11: expected string scalar (+2 more)"
    );
    assert_eq!(events[0].kind, EventKind::RevisionRefused);

    let (_, events) = for_sync(REV, SyncEnd::Applied, true, None, 7);
    assert_eq!(events[0].kind, EventKind::RevisionRecovered);
}

#[test]
fn an_ended_run_request_reports_on_its_commit_with_counts() {
    let host = |id: &str, state| HostResult {
        machine_id: id.into(),
        state,
        started_at_ms: None,
        finished_at_ms: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        certificate: None,
    };
    let failed = HostState::Failed {
        exit_code: Some(1),
        signal: None,
        error: None,
    };
    let hosts = [
        host("web-1", HostState::Succeeded),
        host("web-2", failed),
        host("web-3", HostState::Succeeded),
        host("web-4", HostState::Succeeded),
    ];
    let operation = Operation {
        id: 9,
        script: "upgrade".into(),
        params: Default::default(),
        machines: vec![],
        requested_by: Requester::RunRequest {
            id: "nightly".into(),
            revision: REV.into(),
        },
        state: OperationState::PartiallyFailed,
        created_at_ms: 0,
        finished_at_ms: Some(5),
        rollout: None,
        retry_of: None,
        secrets: Vec::new(),
    };
    let tails = BTreeMap::from([
        ("web-1".to_owned(), "all good\n".to_owned()),
        (
            "web-2".to_owned(),
            "unpacking\nE: disk full  \n\n".to_owned(),
        ),
    ]);
    let (statuses, events) = for_operation(&operation, &hosts, &tails, None, 5);
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].context, "linkops/run/nightly");
    assert_eq!(statuses[0].state, CommitState::Failure);
    assert_eq!(
        statuses[0].description,
        "partially failed: 3 succeeded, 1 failed on web-2"
    );
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::OperationFailed, EventKind::RunRequestDone]
    );
    assert_eq!(
        events[0].title,
        "operation 9 (upgrade, by run:nightly) partially failed"
    );
    // The failed machine's last line, as stored (secrets masked already).
    assert!(
        events[0].text.ends_with("\nweb-2: E: disk full"),
        "{}",
        events[0].text
    );

    // A schedule's fire: its end on the commit that declared the schedule.
    let fired = Operation {
        requested_by: Requester::Schedule {
            name: "nightly".into(),
            due_ms: 1_800_000_000_000,
            revision: REV.into(),
        },
        ..operation.clone()
    };
    let (statuses, events) = for_operation(&fired, &hosts, &tails, None, 5);
    assert_eq!(
        (statuses[0].context.as_str(), statuses[0].state),
        ("linkops/schedule/nightly", CommitState::Failure)
    );
    assert_eq!(
        statuses[0].description,
        "fire due 2027-01-15T08:00:00Z partially failed: 3 succeeded, 1 failed on web-2"
    );
    assert_eq!(
        events[0].title,
        "operation 9 (upgrade, by schedule:nightly) partially failed"
    );
    let (status, event) = for_fire_not_started(
        "nightly",
        REV,
        "no machine may run it",
        Some("https://ops.example"),
        5,
    );
    assert_eq!(
        (status.state, status.target_url.as_deref()),
        (
            CommitState::Failure,
            Some("https://ops.example/#/schedules/nightly")
        )
    );
    assert_eq!(event.kind, EventKind::OperationFailed);

    // A person's operation that succeeded tells nobody.
    let quiet = Operation {
        requested_by: Requester::User { name: "ada".into() },
        state: OperationState::Succeeded,
        ..operation
    };
    assert_eq!(
        for_operation(&quiet, &hosts[..1], &BTreeMap::new(), None, 5),
        (vec![], vec![])
    );
    assert!(for_restart(&[], 5).is_none());
    assert_eq!(
        for_restart(&[3, 4], 5).unwrap().kind,
        EventKind::DaemonRecovered
    );
}

#[test]
fn a_plan_is_a_status_on_the_branch_s_head() {
    let changes = [
        "+ machine c".to_owned(),
        "~ script up: body changed".to_owned(),
    ];
    let planned = for_plan(REV, "feature", Ok(&changes), None);
    assert_eq!(planned.context, "linkops/plan");
    assert_eq!(planned.state, CommitState::Success);
    assert_eq!(
        planned.description,
        "2 change(s): + machine c; ~ script up: body changed"
    );
    assert_eq!(
        for_plan(REV, "feature", Ok(&[]), None).description,
        "merging feature changes nothing"
    );
    let refused = for_plan(
        REV,
        "feature",
        Err(("links.yaml:1:1: the file is empty", 1)),
        None,
    );
    assert_eq!(refused.state, CommitState::Failure);
    assert_eq!(
        refused.description,
        "would be refused: links.yaml:1:1: the file is empty"
    );
}

#[test]
fn a_bouncing_machine_is_told_once_per_damping_time() {
    let mut status = MachineStatus::new("web-1");
    let minute = 60_000;
    let down = Enrollment::Unreachable {
        error: "connection refused".into(),
    };
    // (enrollment, now) → the kind told, if any
    let table = [
        (Enrollment::Enrolled, 0, None),
        (down.clone(), minute, Some(EventKind::MachineUnreachable)),
        (Enrollment::Enrolled, 2 * minute, None),
        (down.clone(), 3 * minute, None),
        (Enrollment::Enrolled, 4 * minute, None),
        // The damping time since the last message has passed: its state now is told.
        (
            Enrollment::Enrolled,
            7 * minute,
            Some(EventKind::MachineRecovered),
        ),
        (Enrollment::Enrolled, 20 * minute, None),
        (
            Enrollment::MissingFile,
            21 * minute,
            Some(EventKind::MachineUnenrolled),
        ),
    ];
    let mut told: Option<Told> = None;
    for (enrollment, now, expected) in table {
        status.enrollment = enrollment;
        let (message, next) = for_machine(&status, told.as_ref(), None, now);
        assert_eq!(message.map(|m| m.kind), expected, "at {now}");
        told = next;
    }
}

#[test]
fn descriptions_are_cut_on_a_character_boundary() {
    let long = "é".repeat(200);
    let cut = short(&long);
    assert_eq!(cut.chars().count(), STATUS_DESCRIPTION_CHARS);
    assert!(cut.ends_with('…'));
    assert_eq!(short("short"), "short");
}

#[test]
fn retries_back_off_and_then_give_up() {
    assert_eq!(retry_after_ms(0), Some(1_000));
    assert_eq!(retry_after_ms(3), Some(8_000));
    assert_eq!(retry_after_ms(9), Some(MAX_BACKOFF_MS));
    assert_eq!(retry_after_ms(MAX_ATTEMPTS), None);
}

#[test]
fn a_run_awaiting_approval_is_told_with_a_link_to_approve_it() {
    let content = crate::approval::Content {
        script: "apt-upgrade".into(),
        params: BTreeMap::new(),
        machines: vec!["db-1".into(), "db-2".into()],
        rollout: None,
        concurrency: None,
        script_digest: "d".into(),
    };
    let needed = crate::approval::Needed {
        rules: vec!["prod".into()],
        approvers: 2,
        role: crate::role::Role::Operator,
        expires: std::time::Duration::from_secs(3600),
    };
    let by = Requester::User {
        name: "olga".into(),
    };
    let request = crate::approval::Request {
        id: 3,
        ..crate::approval::Request::new(needed, content, by, 1_800_000_000_000)
    };
    let told = for_approval(&request, Some("https://ops.example/"), 5);
    assert_eq!(told.kind, EventKind::ApprovalRequested);
    assert_eq!(
        told.title,
        "olga asks to run apt-upgrade on db-1, db-2: 2 approval(s) needed (request 3)"
    );
    assert_eq!(
        told.url.as_deref(),
        Some("https://ops.example/#/approvals/3")
    );
    assert!(told.text.contains("`linkops approve 3`"), "{}", told.text);
}
