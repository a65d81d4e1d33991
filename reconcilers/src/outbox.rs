//! What the daemon tells the outside: commit statuses on the forge and
//! notifications to people's sinks, decided from what happened.
//!
//! The daemon queues these in the store in the transaction of the event they
//! are about, and delivers them later (retried, one at a time per channel);
//! this module decides *what* to say, and when to try again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::enrollment::Enrollment;
use crate::machine::MachineStatus;
use crate::operation::{HostResult, HostState, Operation, OperationState, Requester};
use crate::state::StateStatus;

/// The channel of the forge's commit statuses.
pub const FORGE: &str = "forge";
/// The longest description a commit status carries (Forgejo and GitHub cut longer ones).
pub const STATUS_DESCRIPTION_CHARS: usize = 140;
/// Attempts before a message goes to the dead letters.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 5 * 60_000;

/// A commit status's state, as Forgejo, Gitea and GitHub name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Error,
    Failure,
    Warning,
}

/// A status on one commit, in one context (`linkops/sync`, `linkops/run/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitStatus {
    /// The full commit id.
    pub sha: String,
    pub context: String,
    pub state: CommitState,
    pub description: String,
    pub target_url: Option<String>,
}

/// What a notification is about; sinks choose by these.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A revision has problems; the last good one stays in force.
    RevisionRefused,
    /// A revision applied after one or more were refused.
    RevisionRecovered,
    /// An operation ended failed, partially failed, stopped or interrupted
    /// (a machine timed out, failed or never confirmed its end).
    OperationFailed,
    /// A run-request's operation ended, however it ended.
    RunRequestDone,
    /// The daemon started and found operations a previous process left running.
    DaemonRecovered,
    /// Machines that held a declared state's content no longer do (a hand change?).
    StateDrifted,
    /// A declared state's rollout halted (a failed canary, too many failures).
    RolloutHalted,
    /// A machine stopped answering over SSH.
    MachineUnreachable,
    /// A machine answers but is not the one the inventory means (its client id differs or is missing).
    MachineUnenrolled,
    /// A machine's host key is not the one known: refused, as always.
    MachineHostKeyChanged,
    /// A machine is reachable and enrolled again.
    MachineRecovered,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::RevisionRefused,
        EventKind::RevisionRecovered,
        EventKind::OperationFailed,
        EventKind::RunRequestDone,
        EventKind::DaemonRecovered,
        EventKind::StateDrifted,
        EventKind::RolloutHalted,
        EventKind::MachineUnreachable,
        EventKind::MachineUnenrolled,
        EventKind::MachineHostKeyChanged,
        EventKind::MachineRecovered,
    ];
}

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

/// The current version of [`Notification`]'s shape; receivers check it.
pub const NOTIFICATION_VERSION: u32 = 1;

/// A notification as every sink receives it (webhooks: this JSON; ntfy and
/// Slack: `title` and `text`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    pub version: u32,
    pub kind: EventKind,
    /// When it happened (Unix ms).
    pub at_ms: i64,
    /// One line for people.
    pub title: String,
    /// A few lines for people.
    pub text: String,
    /// What it is about: a revision, an operation id.
    pub subject: String,
    /// The console's page about it, when the daemon knows its address.
    pub url: Option<String>,
}

/// What notifications about one thing share: the thing, its page, the time.
struct About {
    subject: String,
    url: Option<String>,
    at_ms: i64,
}

impl About {
    fn tell(&self, kind: EventKind, title: String, text: String) -> Notification {
        Notification {
            version: NOTIFICATION_VERSION,
            kind,
            at_ms: self.at_ms,
            title,
            text,
            subject: self.subject.clone(),
            url: self.url.clone(),
        }
    }
}

/// One message to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    CommitStatus(CommitStatus),
    Notification(Notification),
}

/// A message bound for a channel: [`FORGE`] or a sink's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outgoing {
    pub channel: String,
    pub message: Message,
}

/// A message in the queue, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Queued {
    pub seq: u64,
    pub channel: String,
    pub message: Message,
    pub created_at_ms: i64,
    pub attempts: u32,
    /// Not before this (Unix ms).
    pub next_at_ms: i64,
    pub last_error: Option<String>,
}

/// Whether `message` tells how one machine stands (and so can be replaced
/// by a newer standing of it, [`supersedes`]).
pub fn tells_a_machine_s_standing(message: &Message) -> bool {
    matches!(
        message,
        Message::Notification(Notification {
            kind: EventKind::MachineUnreachable
                | EventKind::MachineUnenrolled
                | EventKind::MachineHostKeyChanged
                | EventKind::MachineRecovered,
            ..
        })
    )
}

/// Whether `newer`, queued for a channel, makes `older` — queued for the
/// same channel and not delivered yet — redundant: both tell how one
/// machine stands, and the newer is how it stands now. While a sink is down,
/// a bouncing machine then waits as one message, not one per change.
pub fn supersedes(newer: &Message, older: &Message) -> bool {
    match (newer, older) {
        (Message::Notification(newer_event), Message::Notification(older_event)) => {
            tells_a_machine_s_standing(newer)
                && tells_a_machine_s_standing(older)
                && newer_event.subject == older_event.subject
        }
        _ => false,
    }
}

/// After `attempts` failed attempts: when to try again, or `None` to give up
/// (the message goes to the dead letters). 1 s, 2 s, 4 s … at most 5 min.
pub fn retry_after_ms(attempts: u32) -> Option<i64> {
    (attempts < MAX_ATTEMPTS).then(|| (1_000i64 << attempts.min(20)).min(MAX_BACKOFF_MS))
}

/// Cut to what a commit status shows, on a character boundary.
pub fn short(text: &str) -> String {
    cut(text, STATUS_DESCRIPTION_CHARS)
}

/// `text` in at most `chars` characters, the last one `…` when it was cut.
pub fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
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

/// What an ended operation tells the outside: a failure notified; a
/// run-request's end notified and set on its commit.
pub fn for_operation(
    operation: &Operation,
    hosts: &[HostResult],
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
        events.push(event(
            EventKind::OperationFailed,
            format!(
                "operation {} ({}, by {}) {ended}",
                operation.id,
                operation.script,
                operation.requested_by.label()
            ),
        ));
    }
    if let Requester::RunRequest { id, revision } = &operation.requested_by {
        events.push(event(
            EventKind::RunRequestDone,
            format!("run-request {id} {ended} (operation {})", operation.id),
        ));
        let state = match operation.state {
            OperationState::Succeeded => CommitState::Success,
            _ => CommitState::Failure,
        };
        statuses.push(CommitStatus {
            sha: revision.clone(),
            context: run_context(id),
            state,
            description: short(&format!("{ended}: {counts}")),
            target_url: url.clone(),
        });
    }
    (statuses, events)
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

#[cfg(test)]
mod tests {
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
        let (statuses, events) =
            for_sync(REV, SyncEnd::Refused { first, count: 3 }, false, None, 7);
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
        };
        let (statuses, events) = for_operation(&operation, &hosts, None, 5);
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

        // A person's operation that succeeded tells nobody.
        let quiet = Operation {
            requested_by: Requester::User { name: "ada".into() },
            state: OperationState::Succeeded,
            ..operation
        };
        assert_eq!(
            for_operation(&quiet, &hosts[..1], None, 5),
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
}
