//! What to say of what happened: the commit statuses and notifications of
//! a machine's trouble, a sync, a run, an operation, a plan, a state, a restart.

use super::*;

/// A machine bouncing sends at most one message per this long: the state it
/// settles in is told once the time has passed (at its next check).
pub const MACHINE_DAMPING_MS: i64 = 5 * 60_000;

/// What was last told about a machine, kept with its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Told {
    /// The trouble told (`None`: that it recovered).
    pub trouble: Option<EventKind>,
    pub at_ms: i64,
}

/// What is wrong with a machine, for people: `None` when it is fine or not checked yet.
fn trouble(status: &MachineStatus) -> Option<(EventKind, String)> {
    match &status.enrollment {
        Enrollment::HostKeyMismatch { error } => {
            Some((EventKind::MachineHostKeyChanged, error.clone()))
        }
        Enrollment::Unreachable { error } => Some((EventKind::MachineUnreachable, error.clone())),
        Enrollment::Mismatch { .. } | Enrollment::MissingFile => Some((
            EventKind::MachineUnenrolled,
            crate::run::describe(&status.enrollment),
        )),
        Enrollment::Enrolled | Enrollment::Unknown => None,
    }
}

/// After a check: what to tell about the machine, if anything, and what is
/// then the last told. A first trouble is told at once; a change after
/// that only once [`MACHINE_DAMPING_MS`] have passed since the last message.
pub fn for_machine(
    status: &MachineStatus,
    told: Option<&Told>,
    console: Option<&str>,
    now_ms: i64,
) -> (Option<Notification>, Option<Told>) {
    let current = trouble(status);
    let kind = current.as_ref().map(|(kind, _)| *kind);
    let unchanged = match told {
        Some(told) => told.trouble == kind,
        None => kind.is_none(),
    };
    let damped = told.is_some_and(|told| now_ms - told.at_ms < MACHINE_DAMPING_MS);
    if unchanged || damped || status.enrollment == Enrollment::Unknown {
        return (None, told.cloned());
    }
    let id = &status.machine_id;
    let (kind, title, text) = match current {
        Some((kind, detail)) => {
            let what = match kind {
                EventKind::MachineHostKeyChanged => "presents another host key (refused)",
                EventKind::MachineUnreachable => "is unreachable",
                _ => "is not enrolled",
            };
            (kind, format!("machine {id} {what}"), detail)
        }
        None => (
            EventKind::MachineRecovered,
            format!("machine {id} is back"),
            "Reachable and enrolled again.".to_owned(),
        ),
    };
    let about = About {
        subject: id.clone(),
        url: console.map(|base| format!("{}/#/machines/{id}", base.trim_end_matches('/'))),
        at_ms: now_ms,
    };
    let notification = about.tell(kind, title, text);
    let told = Told {
        trouble: (kind != EventKind::MachineRecovered).then_some(kind),
        at_ms: now_ms,
    };
    (Some(notification), Some(told))
}

/// Where the console shows a revision, if its address is known.
fn git_page(console: Option<&str>, revision: &str) -> Option<String> {
    console.map(|base| format!("{}/#/git?revision={revision}", base.trim_end_matches('/')))
}

/// A revision's first problem, and how many follow it.
fn problems(first: &str, count: usize) -> String {
    match count {
        0 | 1 => first.to_owned(),
        n => format!("{first} (+{} more)", n - 1),
    }
}

/// How a sync attempt on the followed branch ended, for the outside.
pub enum SyncEnd<'a> {
    Applied,
    /// Refused: its problems (the first is shown), how many.
    Refused {
        first: &'a str,
        count: usize,
    },
}

/// The statuses and notifications of a fetched revision: `pending` then
/// `success` or `failure` on the commit (`linkops/sync`); a refusal, and the
/// first good revision after refusals, notified.
pub fn for_sync(
    revision: &str,
    end: SyncEnd,
    refused_before: bool,
    console: Option<&str>,
    now_ms: i64,
) -> (Vec<CommitStatus>, Vec<Notification>) {
    let status = |state, description: String| CommitStatus {
        sha: revision.to_owned(),
        context: "linkops/sync".into(),
        state,
        description: short(&description),
        target_url: git_page(console, revision),
    };
    let short_revision = &revision[..revision.len().min(12)];
    let mut statuses = vec![status(
        CommitState::Pending,
        "fetched; checking the revision".into(),
    )];
    let mut events = Vec::new();
    let about = About {
        subject: revision.to_owned(),
        url: git_page(console, revision),
        at_ms: now_ms,
    };
    let event = |kind, title, text| about.tell(kind, title, text);
    match end {
        SyncEnd::Applied => {
            statuses.push(status(
                CommitState::Success,
                "applied: the fleet follows this revision".into(),
            ));
            if refused_before {
                events.push(event(
                    EventKind::RevisionRecovered,
                    format!("revision {short_revision} applied"),
                    "The config repository is valid again; this revision is in force.".into(),
                ));
            }
        }
        SyncEnd::Refused { first, count } => {
            statuses.push(status(
                CommitState::Failure,
                format!("refused: {}", problems(first, count)),
            ));
            events.push(event(
                EventKind::RevisionRefused,
                format!("revision {short_revision} refused"),
                format!(
                    "{count} problem(s); the last good revision stays in force. First: {first}"
                ),
            ));
        }
    }
    (statuses, events)
}

/// "3 succeeded, 1 failed on web-2": the machines' ends in a line.
pub fn tally(hosts: &[HostResult]) -> String {
    let succeeded = hosts
        .iter()
        .filter(|h| h.state == HostState::Succeeded)
        .count();
    let mut parts = vec![format!("{succeeded} succeeded")];
    let mut by_end: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for host in hosts.iter().filter(|h| h.state != HostState::Succeeded) {
        by_end
            .entry(host.state.name())
            .or_default()
            .push(&host.machine_id);
    }
    for (end, machines) in by_end {
        let shown: Vec<&str> = machines.iter().take(5).copied().collect();
        let more = match machines.len() - shown.len() {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        parts.push(format!(
            "{} {end} on {}{more}",
            machines.len(),
            shown.join(", ")
        ));
    }
    parts.join(", ")
}

/// The context of a run-request's commit status.
pub fn run_context(id: &str) -> String {
    format!("linkops/run/{id}")
}

/// The context of a schedule's commit status: its latest fire's end.
pub fn schedule_context(name: &str) -> String {
    format!("linkops/schedule/{name}")
}

/// A schedule's fire that could not start (no machine it may run on):
/// `failure` on the commit that declared it, and notified as a failure.
pub fn for_fire_not_started(
    name: &str,
    revision: &str,
    reason: &str,
    console: Option<&str>,
    now_ms: i64,
) -> (CommitStatus, Notification) {
    let url = console.map(|base| format!("{}/#/schedules/{name}", base.trim_end_matches('/')));
    let status = CommitStatus {
        sha: revision.to_owned(),
        context: schedule_context(name),
        state: CommitState::Failure,
        description: short(&format!("a fire could not start: {reason}")),
        target_url: url.clone(),
    };
    let about = About {
        subject: name.to_owned(),
        url,
        at_ms: now_ms,
    };
    let event = about.tell(
        EventKind::OperationFailed,
        format!("schedule {name}'s fire could not start"),
        reason.to_owned(),
    );
    (status, event)
}

/// A run-request's operation started: `pending` on its commit.
pub fn for_run_started(
    id: &str,
    revision: &str,
    operation_id: u64,
    console: Option<&str>,
) -> CommitStatus {
    CommitStatus {
        sha: revision.to_owned(),
        context: run_context(id),
        state: CommitState::Pending,
        description: format!("operation {operation_id} started"),
        target_url: operation_page(console, operation_id),
    }
}

fn operation_page(console: Option<&str>, id: u64) -> Option<String> {
    console.map(|base| format!("{}/#/operations/{id}", base.trim_end_matches('/')))
}

/// How many failed machines a failure's notification quotes the last line of.
const QUOTED_FAILURES: usize = 3;

/// What an ended operation tells the outside: a failure notified, with the
/// last line each of the first failed machines printed (`tails`: each
/// machine's last output, as stored); a run-request's end notified and set
/// on its commit.
pub fn for_operation(
    operation: &Operation,
    hosts: &[HostResult],
    tails: &BTreeMap<String, String>,
    console: Option<&str>,
    now_ms: i64,
) -> (Vec<CommitStatus>, Vec<Notification>) {
    let counts = tally(hosts);
    let url = operation_page(console, operation.id);
    let about = About {
        subject: operation.id.to_string(),
        url: url.clone(),
        at_ms: now_ms,
    };
    let event = |kind, title| about.tell(kind, title, counts.clone());
    let (mut statuses, mut events) = (Vec::new(), Vec::new());
    let ended = operation.state.name().replace('_', " ");
    if matches!(
        operation.state,
        OperationState::Failed | OperationState::PartiallyFailed
    ) {
        let mut failure = event(
            EventKind::OperationFailed,
            format!(
                "operation {} ({}, by {}) {ended}",
                operation.id,
                operation.script,
                operation.requested_by.label()
            ),
        );
        let failed = (hosts.iter()).filter(|host| host.state.is_retried());
        for host in failed.take(QUOTED_FAILURES) {
            let last = (tails.get(&host.machine_id))
                .and_then(|tail| tail.lines().rev().find(|line| !line.trim().is_empty()));
            if let Some(line) = last {
                failure
                    .text
                    .push_str(&format!("\n{}: {}", host.machine_id, line.trim()));
            }
        }
        events.push(failure);
    }
    let state = match operation.state {
        OperationState::Succeeded => CommitState::Success,
        _ => CommitState::Failure,
    };
    match &operation.requested_by {
        Requester::RunRequest { id, revision } => {
            events.push(event(
                EventKind::RunRequestDone,
                format!("run-request {id} {ended} (operation {})", operation.id),
            ));
            statuses.push(CommitStatus {
                sha: revision.clone(),
                context: run_context(id),
                state,
                description: short(&format!("{ended}: {counts}")),
                target_url: url.clone(),
            });
        }
        // A schedule's latest fire, on the commit that declared it.
        Requester::Schedule {
            name,
            due_ms,
            revision,
        } => {
            let due = jiff::Timestamp::from_millisecond(*due_ms)
                .map_or_else(|_| due_ms.to_string(), |at| at.to_string());
            statuses.push(CommitStatus {
                sha: revision.clone(),
                context: schedule_context(name),
                state,
                description: short(&format!("fire due {due} {ended}: {counts}")),
                target_url: url.clone(),
            });
        }
        Requester::User { .. } | Requester::State { .. } | Requester::Trigger { .. } => {}
    }
    (statuses, events)
}

/// A run waits for approvers: who asked for what, how many approvals it
/// needs and until when, and where to approve it.
pub fn for_approval(
    request: &crate::approval::Request,
    console: Option<&str>,
    now_ms: i64,
) -> Notification {
    let content = &request.content;
    let about = About {
        subject: request.id.to_string(),
        url: console
            .map(|base| format!("{}/#/approvals/{}", base.trim_end_matches('/'), request.id)),
        at_ms: now_ms,
    };
    let machines = match content.machines.len() {
        0..=5 => content.machines.join(", "),
        n => format!("{} and {} more", content.machines[..5].join(", "), n - 5),
    };
    let expires = jiff::Timestamp::from_millisecond(request.expires_at_ms)
        .map_or_else(|_| request.expires_at_ms.to_string(), |at| at.to_string());
    about.tell(
        EventKind::ApprovalRequested,
        format!(
            "{} asks to run {} on {machines}: {} approval(s) needed (request {})",
            request.requested_by.label(),
            content.script,
            request.approvers,
            request.id
        ),
        format!(
            "rules {}; approvers hold {} over the machines; expires {expires}. `linkops approve {}` or the console.",
            request.rules.join(", "),
            request.role,
            request.id
        ),
    )
}

/// What merging a branch would change, on its head (`linkops/plan`):
/// `success` with the changes in a line, or `failure` where it would be refused.
pub fn for_plan(
    head: &str,
    branch: &str,
    plan: Result<&[String], (&str, usize)>,
    console: Option<&str>,
) -> CommitStatus {
    let (state, description) = match plan {
        Ok([]) => (
            CommitState::Success,
            format!("merging {branch} changes nothing"),
        ),
        Ok(changes) => (
            CommitState::Success,
            format!("{} change(s): {}", changes.len(), changes.join("; ")),
        ),
        Err((first, count)) => (
            CommitState::Failure,
            format!("would be refused: {}", problems(first, count)),
        ),
    };
    CommitStatus {
        sha: head.to_owned(),
        context: "linkops/plan".into(),
        state,
        description: short(&description),
        target_url: console.map(|base| format!("{}/#/git", base.trim_end_matches('/'))),
    }
}

/// The context of a declared state's commit status.
pub fn state_context(id: &str) -> String {
    format!("linkops/state/{id}")
}

/// What a state reconcile tells the outside: on the revision that gave the
/// state its content, where its rollout stands (`pending` while not all in
/// sync, `success` once they are, `failure` once halted); machines that held
/// the content and no longer do, and a halt, notified.
pub fn for_state(
    status: &StateStatus,
    drifted: &[String],
    halted_now: bool,
    console: Option<&str>,
    now_ms: i64,
) -> (Vec<CommitStatus>, Vec<Notification>) {
    let counts = status.counts;
    let total = counts.total();
    let (state, description) = match &status.halted {
        Some(halt) => (
            CommitState::Failure,
            format!("rollout halted: {}", halt.reason),
        ),
        None if counts.in_sync == total => (
            CommitState::Success,
            format!("in sync on {total} machine(s)"),
        ),
        None => (
            CommitState::Pending,
            format!(
                "{}/{total} in sync, {} applying, {} drifted, {} held, {} failed",
                counts.in_sync, counts.applying, counts.drifted, counts.held, counts.failed
            ),
        ),
    };
    let url = console.map(|base| {
        format!(
            "{}/#/states/{}",
            base.trim_end_matches('/'),
            status.state_id
        )
    });
    let statuses = match &status.content_revision {
        Some(revision) => vec![CommitStatus {
            sha: revision.clone(),
            context: state_context(&status.state_id),
            state,
            description: short(&description),
            target_url: url.clone(),
        }],
        None => Vec::new(),
    };
    let about = About {
        subject: status.state_id.clone(),
        url: url.clone(),
        at_ms: now_ms,
    };
    let event = |kind, title, text| about.tell(kind, title, text);
    let mut events = Vec::new();
    if !drifted.is_empty() {
        let shown: Vec<&str> = drifted.iter().take(10).map(String::as_str).collect();
        let more = match drifted.len() - shown.len() {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        events.push(event(
            EventKind::StateDrifted,
            format!(
                "state {} drifted on {} machine(s)",
                status.state_id,
                drifted.len()
            ),
            format!("No longer as declared: {}{more}.", shown.join(", ")),
        ));
    }
    if halted_now && let Some(halt) = &status.halted {
        events.push(event(
            EventKind::RolloutHalted,
            format!("state {}: rollout halted", status.state_id),
            format!(
                "{}. Resume it (POST /api/states/{}/resume) or commit new content.",
                halt.reason, status.state_id
            ),
        ));
    }
    (statuses, events)
}

/// The daemon found operations a previous process left running.
pub fn for_restart(interrupted: &[u64], now_ms: i64) -> Option<Notification> {
    let (first, rest) = interrupted.split_first()?;
    let ids: Vec<String> = std::iter::once(first)
        .chain(rest)
        .map(u64::to_string)
        .collect();
    let about = About {
        subject: first.to_string(),
        url: None,
        at_ms: now_ms,
    };
    Some(about.tell(
        EventKind::DaemonRecovered,
        format!(
            "the daemon restarted; {} operation(s) were interrupted",
            ids.len()
        ),
        format!(
            "Operations {} were running when the previous process stopped; nothing was re-run.",
            ids.join(", ")
        ),
    ))
}
