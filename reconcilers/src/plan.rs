//! Plans: what applying a proposed revision would change against the one in
//! force — machines, scripts, run-requests, declared states (`linkops plan`,
//! like `flux diff`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::Serialize;

use crate::desired::DesiredState;
use crate::facts::Facts;
use crate::run::RunState;

/// One difference between the applied and the proposed desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    MachineAdded(String),
    MachineRemoved(String),
    /// The fields of the inventory entry that differ.
    MachineChanged {
        id: String,
        fields: Vec<String>,
    },
    ScriptAdded(String),
    ScriptRemoved(String),
    ScriptChanged {
        id: String,
        fields: Vec<String>,
    },
    /// A run-request the daemon has not started: it would start (once due);
    /// with a `where`, on the machines `selects` names (by their facts now).
    RunWouldStart {
        id: String,
        script: String,
        selects: Option<Vec<String>>,
    },
    /// A run-request that already ran was edited: it will not run again.
    RunEditedAfterStart {
        id: String,
        operation_id: u64,
    },
    /// A run-request removed before it started: it never will.
    RunCancelled(String),
    StateAdded(String),
    StateRemoved(String),
    /// Its content (script, check, parameters) changed: every target is checked again.
    StateChanged {
        id: String,
        fields: Vec<String>,
        rechecks: bool,
    },
    /// A grant of `access.yaml`, as it reads (who, role, scope).
    GrantGiven(String),
    GrantTaken(String),
    SecretAdded(String),
    SecretRemoved(String),
    /// `value` when it was sealed again: a new value, or new recipients.
    SecretChanged {
        name: String,
        fields: Vec<String>,
    },
    /// `recipients.yaml` changed: `linkops secret rotate` seals the secrets to it.
    RecipientsChanged,
    /// A schedule (`schedules/*.yaml`), with what it runs and when.
    ScheduleAdded {
        name: String,
        runs: String,
        when: String,
    },
    ScheduleRemoved(String),
    ScheduleChanged {
        name: String,
        fields: Vec<String>,
    },
    /// A custom fact (`facts/*.yaml`): gathered from the next gathering on.
    FactAdded(String),
    FactRemoved(String),
    /// An inbound trigger (`triggers/*.yaml`): its URL answers from the merge on.
    TriggerAdded {
        name: String,
        script: String,
    },
    TriggerRemoved(String),
    TriggerChanged {
        name: String,
        fields: Vec<String>,
    },
    FactChanged {
        name: String,
        fields: Vec<String>,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::MachineAdded(id) => write!(f, "+ machine {id}"),
            Change::MachineRemoved(id) => write!(f, "- machine {id} (its history is kept)"),
            Change::MachineChanged { id, fields } => {
                write!(f, "~ machine {id}: {} changed", fields.join(", "))
            }
            Change::ScriptAdded(id) => write!(f, "+ script {id}"),
            Change::ScriptRemoved(id) => write!(f, "- script {id}"),
            Change::ScriptChanged { id, fields } => {
                write!(f, "~ script {id}: {} changed", fields.join(", "))
            }
            Change::RunWouldStart {
                id,
                script,
                selects,
            } => {
                write!(f, "▶ run-request {id} would start script {script}")?;
                match selects.as_deref() {
                    None => Ok(()),
                    Some([]) => f.write_str("; its `where` selects no machine on their facts now"),
                    Some(machines) => {
                        const SHOWN: usize = 10;
                        let names = machines[..machines.len().min(SHOWN)].join(", ");
                        let more = match machines.len() > SHOWN {
                            true => format!(" and {} more", machines.len() - SHOWN),
                            false => String::new(),
                        };
                        write!(
                            f,
                            " on {names}{more} (its `where` selects {} machine(s) on their facts now)",
                            machines.len()
                        )
                    }
                }
            }
            Change::RunEditedAfterStart { id, operation_id } => write!(
                f,
                "! run-request {id} was edited after it ran (operation {operation_id}); it will not run again"
            ),
            Change::RunCancelled(id) => {
                write!(f, "✗ run-request {id} would be cancelled before it ran")
            }
            Change::StateAdded(id) => write!(f, "+ state {id}"),
            Change::StateRemoved(id) => {
                write!(
                    f,
                    "- state {id} (no longer kept; machines are left as they are)"
                )
            }
            Change::StateChanged {
                id,
                fields,
                rechecks,
            } => {
                write!(f, "~ state {id}: {} changed", fields.join(", "))?;
                if *rechecks {
                    f.write_str("; its content changed, every target is checked again")?;
                }
                Ok(())
            }
            Change::GrantGiven(grant) => write!(f, "+ grant {grant}"),
            Change::GrantTaken(grant) => write!(f, "- grant {grant}"),
            Change::SecretAdded(name) => write!(f, "+ secret {name}"),
            Change::SecretRemoved(name) => write!(f, "- secret {name}"),
            Change::SecretChanged { name, fields } => {
                write!(f, "~ secret {name}: {} changed", fields.join(", "))
            }
            Change::RecipientsChanged => f.write_str(
                "~ recipients.yaml changed: `linkops secret rotate` seals every secret to it",
            ),
            Change::ScheduleAdded { name, runs, when } => {
                write!(f, "+ schedule {name}: {runs}, {when}")
            }
            Change::ScheduleRemoved(name) => {
                write!(f, "- schedule {name} (no more fires; its record is kept)")
            }
            Change::ScheduleChanged { name, fields } => {
                write!(f, "~ schedule {name}: {} changed", fields.join(", "))
            }
            Change::TriggerAdded { name, script } => write!(
                f,
                "+ trigger {name}: POST /api/triggers/{name} runs script {script}"
            ),
            Change::TriggerRemoved(name) => {
                write!(
                    f,
                    "- trigger {name} (its URL answers 404; its runs are kept)"
                )
            }
            Change::TriggerChanged { name, fields } => {
                write!(f, "~ trigger {name}: {} changed", fields.join(", "))
            }
            Change::FactAdded(name) => {
                write!(
                    f,
                    "+ fact {name} (gathered from each machine's next gathering)"
                )
            }
            Change::FactRemoved(name) => {
                write!(
                    f,
                    "- fact {name} (its values go at each machine's next gathering)"
                )
            }
            Change::FactChanged { name, fields } => {
                write!(f, "~ fact {name}: {} changed", fields.join(", "))
            }
        }
    }
}

/// What applying `proposed` would change, given `applied`, the
/// run-requests' recorded states and each machine's facts (what a
/// run-request's `where` would select).
pub fn plan(
    proposed: &DesiredState,
    applied: &DesiredState,
    runs: &BTreeMap<String, RunState>,
    facts: &BTreeMap<String, Facts>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let applied_machines: BTreeMap<&str, _> = applied
        .machines
        .iter()
        .map(|m| (m.id.as_str(), m))
        .collect();
    let proposed_machines: BTreeMap<&str, _> = proposed
        .machines
        .iter()
        .map(|m| (m.id.as_str(), m))
        .collect();
    for (id, machine) in &proposed_machines {
        match applied_machines.get(id) {
            None => changes.push(Change::MachineAdded((*id).to_owned())),
            Some(before) => {
                let fields = changed_fields(before, machine);
                if !fields.is_empty() {
                    changes.push(Change::MachineChanged {
                        id: (*id).to_owned(),
                        fields,
                    });
                }
            }
        }
    }
    for id in applied_machines
        .keys()
        .filter(|id| !proposed_machines.contains_key(*id))
    {
        changes.push(Change::MachineRemoved((*id).to_owned()));
    }
    for (id, script) in &proposed.scripts {
        match applied.scripts.get(id) {
            None => changes.push(Change::ScriptAdded(id.clone())),
            Some(before) => {
                let fields = changed_fields(before, script);
                if !fields.is_empty() {
                    changes.push(Change::ScriptChanged {
                        id: id.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for id in applied
        .scripts
        .keys()
        .filter(|id| !proposed.scripts.contains_key(*id))
    {
        changes.push(Change::ScriptRemoved(id.clone()));
    }
    for (id, request) in &proposed.runs {
        match runs.get(id) {
            Some(RunState::Started { operation_id }) => {
                if applied.runs.get(id).is_some_and(|before| before != request) {
                    changes.push(Change::RunEditedAfterStart {
                        id: id.clone(),
                        operation_id: *operation_id,
                    });
                }
            }
            Some(RunState::Cancelled) => {}
            Some(RunState::Waiting { .. }) | None => {
                if applied.runs.get(id) != Some(request) {
                    let selects = (request.targets.asks_facts()).then(|| {
                        (request.targets)
                            .on_facts(&proposed.machines, |id| facts.get(id))
                            .machines
                    });
                    changes.push(Change::RunWouldStart {
                        id: id.clone(),
                        script: request.script.clone(),
                        selects,
                    });
                }
            }
        }
    }
    for id in applied
        .runs
        .keys()
        .filter(|id| !proposed.runs.contains_key(*id))
    {
        if !matches!(
            runs.get(id),
            Some(RunState::Started { .. } | RunState::Cancelled)
        ) {
            changes.push(Change::RunCancelled(id.clone()));
        }
    }
    for (id, state) in &proposed.states {
        let Some(before) = applied.states.get(id) else {
            changes.push(Change::StateAdded(id.clone()));
            continue;
        };
        let content = |desired: &DesiredState, state: &crate::state::DeclaredState| {
            desired
                .scripts
                .get(&state.script)
                // The daemon's facts are the same on both sides of a plan.
                .map(|script| desired.state_digest(state, script, ""))
        };
        let rechecks = content(applied, before) != content(proposed, state);
        let mut fields = changed_fields(before, state);
        if rechecks && !fields.contains(&"script".to_owned()) {
            fields.push(format!("script {}", state.script));
        }
        if !fields.is_empty() {
            changes.push(Change::StateChanged {
                id: id.clone(),
                fields,
                rechecks,
            });
        }
    }
    for id in applied
        .states
        .keys()
        .filter(|id| !proposed.states.contains_key(*id))
    {
        changes.push(Change::StateRemoved(id.clone()));
    }
    let grants = |desired: &DesiredState| -> BTreeSet<String> {
        desired.grants.iter().map(ToString::to_string).collect()
    };
    let (before, after) = (grants(applied), grants(proposed));
    changes.extend(after.difference(&before).cloned().map(Change::GrantGiven));
    changes.extend(before.difference(&after).cloned().map(Change::GrantTaken));
    // Names and limits only: a sealed value is shown as `value`, never read.
    for (name, secret) in &proposed.secrets {
        match applied.secrets.get(name) {
            None => changes.push(Change::SecretAdded(name.clone())),
            Some(before) => {
                let fields: Vec<String> = (changed_fields(before, secret).into_iter())
                    .map(|field| match field.as_str() {
                        "sealed" => "value".to_owned(),
                        _ => field,
                    })
                    .collect();
                if !fields.is_empty() {
                    changes.push(Change::SecretChanged {
                        name: name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for name in (applied.secrets.keys()).filter(|name| !proposed.secrets.contains_key(*name)) {
        changes.push(Change::SecretRemoved(name.clone()));
    }
    if applied.recipients != proposed.recipients {
        changes.push(Change::RecipientsChanged);
    }
    for (name, schedule) in &proposed.schedules {
        match applied.schedules.get(name) {
            None => changes.push(Change::ScheduleAdded {
                name: name.clone(),
                runs: match &schedule.state {
                    Some(state) => format!("applies state {state}"),
                    None => format!("runs script {}", schedule.script),
                },
                when: format!("{:?} in {}", schedule.cron, schedule.zone),
            }),
            Some(before) => {
                let fields: Vec<String> = (changed_fields(before, schedule).into_iter())
                    .filter(|field| field != "resolved")
                    .collect();
                if !fields.is_empty() {
                    changes.push(Change::ScheduleChanged {
                        name: name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for name in (applied.schedules.keys()).filter(|n| !proposed.schedules.contains_key(*n)) {
        changes.push(Change::ScheduleRemoved(name.clone()));
    }
    for (name, fact) in &proposed.custom_facts {
        match applied.custom_facts.get(name) {
            None => changes.push(Change::FactAdded(name.clone())),
            Some(before) => {
                let fields = changed_fields(before, fact);
                if !fields.is_empty() {
                    changes.push(Change::FactChanged {
                        name: name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for name in (applied.custom_facts.keys()).filter(|n| !proposed.custom_facts.contains_key(*n)) {
        changes.push(Change::FactRemoved(name.clone()));
    }
    for (name, trigger) in &proposed.triggers {
        match applied.triggers.get(name) {
            None => changes.push(Change::TriggerAdded {
                name: name.clone(),
                script: trigger.script.clone(),
            }),
            Some(before) => {
                let fields = changed_fields(before, trigger);
                if !fields.is_empty() {
                    changes.push(Change::TriggerChanged {
                        name: name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for name in (applied.triggers.keys()).filter(|n| !proposed.triggers.contains_key(*n)) {
        changes.push(Change::TriggerRemoved(name.clone()));
    }
    changes
}

/// The top-level fields whose values differ, by their serialised names.
fn changed_fields<T: Serialize>(before: &T, after: &T) -> Vec<String> {
    let object = |value: &T| match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (object(before), object(after));
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .cloned()
        .collect()
}

/// What a push to another branch asks of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchWork {
    /// Plan its head (whichever head it has when the plan runs).
    Plan,
    /// It was deleted: forget what was fetched of it.
    Forget,
}

/// A branch waiting for the planner, and what for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub branch: String,
    pub work: BranchWork,
}

/// What became of a push to another branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// It waits at the end of the queue.
    Added,
    /// The branch already waited: its newest push decides, in its place.
    Coalesced,
    /// `capacity` branches already wait: refused, for the forge to redeliver.
    Full,
}

/// Queues `asked`: one entry per branch (a plan fetches the branch's newest
/// head, so a burst of pushes to one branch is one plan), at most `capacity`
/// branches; never dropped silently.
pub fn queue(queue: &mut VecDeque<Waiting>, asked: Waiting, capacity: usize) -> Queued {
    if let Some(waiting) = queue.iter_mut().find(|w| w.branch == asked.branch) {
        waiting.work = asked.work;
        return Queued::Coalesced;
    }
    if queue.len() >= capacity {
        return Queued::Full;
    }
    queue.push_back(asked);
    Queued::Added
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{RepoFiles, load};

    fn state(links: &str, scripts: &str, runs: &[(&str, &str)]) -> DesiredState {
        let mut files = RepoFiles::new();
        files.insert("links.yaml".into(), links.as_bytes().to_vec());
        files.insert("scripts.yaml".into(), scripts.as_bytes().to_vec());
        for (path, body) in runs {
            let path = match path.contains('/') {
                true => path.to_string(),
                false => format!("runs/{path}.yaml"),
            };
            files.insert(path, body.as_bytes().to_vec());
        }
        load("r", &files).unwrap()
    }

    const UUID_A: &str = "11111111-1111-4111-8111-111111111111";
    const UUID_B: &str = "22222222-2222-4222-8222-222222222222";

    fn links(b_host: &str) -> String {
        format!(
            "machines:\n  - {{id: a, name: A, host: 10.0.0.1, uuid: {UUID_A}}}\n  - {{id: b, name: B, host: {b_host}, uuid: {UUID_B}}}\n"
        )
    }

    const SCRIPTS: &str = "scripts:\n  - {id: up, name: Up, body: uptime}\n";

    #[test]
    fn nothing_changes_against_itself() {
        let applied = state(
            &links("10.0.0.2"),
            SCRIPTS,
            &[("r1", "id: r1\nscript: up\ntargets: {machines: [a]}\n")],
        );
        let runs = BTreeMap::from([("r1".to_owned(), RunState::Started { operation_id: 4 })]);
        assert!(plan(&applied, &applied, &runs, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn machines_scripts_and_runs_are_compared() {
        let applied = state(
            &links("10.0.0.2"),
            SCRIPTS,
            &[
                ("done", "id: done\nscript: up\ntargets: {machines: [a]}\n"),
                (
                    "waiting",
                    "id: waiting\nscript: up\ntargets: {machines: [a]}\n",
                ),
            ],
        );
        let proposed = state(
            "machines:\n  - {id: b, name: B, host: 10.0.0.9, port: 2222, uuid: 22222222-2222-4222-8222-222222222222}\n  - {id: c, name: C, host: 10.0.0.3, uuid: 33333333-3333-4333-8333-333333333333}\n",
            "scripts:\n  - {id: up, name: Up, body: uptime -p}\n  - {id: new, name: New, body: 'true'}\n",
            &[
                ("done", "id: done\nscript: up\ntargets: {machines: [b]}\n"),
                (
                    "fresh",
                    "id: fresh\nscript: new\ntargets: {machines: [c]}\n",
                ),
            ],
        );
        let runs = BTreeMap::from([
            ("done".to_owned(), RunState::Started { operation_id: 7 }),
            (
                "waiting".to_owned(),
                RunState::Waiting {
                    reason: "not before".into(),
                },
            ),
        ]);
        let changes: Vec<String> = plan(&proposed, &applied, &runs, &BTreeMap::new())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "~ machine b: host, port changed",
                "+ machine c",
                "- machine a (its history is kept)",
                "+ script new",
                "~ script up: body changed",
                "! run-request done was edited after it ran (operation 7); it will not run again",
                "▶ run-request fresh would start script new",
                "✗ run-request waiting would be cancelled before it ran",
            ]
        );
    }

    #[test]
    fn states_say_whether_their_targets_are_checked_again() {
        let scripts = |check: &str| {
            format!(
                "scripts:\n  - {{id: motd, name: Motd, body: 'echo hi > /etc/motd', check: '{check}'}}\n  - {{id: up, name: Up, body: uptime, check: 'true'}}\n"
            )
        };
        let motd = "id: motd\nscript: motd\ntargets: {machines: [a]}\n";
        let applied = state(
            &links("10.0.0.2"),
            &scripts("test -f /etc/motd"),
            &[
                ("states/motd.yaml", motd),
                (
                    "states/up.yaml",
                    "id: up\nscript: up\ntargets: {machines: [a]}\n",
                ),
            ],
        );
        let proposed = state(
            &links("10.0.0.2"),
            &scripts("grep -q hi /etc/motd"),
            &[
                ("states/motd.yaml", &format!("{motd}interval: 1m\n")),
                (
                    "states/new.yaml",
                    "id: new\nscript: up\ntargets: {machines: [b]}\nmode: report\n",
                ),
            ],
        );
        let changes: Vec<String> = plan(&proposed, &applied, &BTreeMap::new(), &BTreeMap::new())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "~ script motd: check changed",
                "~ state motd: interval, script motd changed; its content changed, every target is checked again",
                "+ state new",
                "- state up (no longer kept; machines are left as they are)",
            ]
        );
    }

    #[test]
    fn pushes_to_a_branch_coalesce_and_a_full_queue_refuses() {
        let ask = |branch: &str, work| Waiting {
            branch: branch.into(),
            work,
        };
        let mut waiting = VecDeque::new();
        let steps = [
            (ask("a", BranchWork::Plan), Queued::Added),
            (ask("b", BranchWork::Plan), Queued::Added),
            (ask("a", BranchWork::Plan), Queued::Coalesced),
            (ask("c", BranchWork::Plan), Queued::Full),
            // Deleted while waiting: forgotten instead, in its place.
            (ask("a", BranchWork::Forget), Queued::Coalesced),
        ];
        for (asked, expected) in steps {
            assert_eq!(queue(&mut waiting, asked.clone(), 2), expected, "{asked:?}");
        }
        assert_eq!(
            Vec::from(waiting),
            [ask("a", BranchWork::Forget), ask("b", BranchWork::Plan)]
        );
    }

    #[test]
    fn a_grant_given_or_taken_is_shown_as_it_reads() {
        let with_access = |access: &str| {
            let mut desired = state(&links("10.0.0.2"), SCRIPTS, &[]);
            let mut files = RepoFiles::new();
            files.insert("links.yaml".into(), links("10.0.0.2").into_bytes());
            files.insert("scripts.yaml".into(), SCRIPTS.as_bytes().to_vec());
            files.insert("access.yaml".into(), access.as_bytes().to_vec());
            desired.grants = load("r", &files).unwrap().grants;
            desired
        };
        let before =
            with_access("grants:\n  - {to: {group: ops}, role: operator, machines: [a]}\n");
        let after = with_access(
            "grants:\n  - {to: {group: ops}, role: operator, machines: [a, b], scripts: [up]}\n",
        );
        let shown: Vec<String> = plan(&after, &before, &BTreeMap::new(), &BTreeMap::new())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "+ grant group ops: operator, machines a b, scripts up",
                "- grant group ops: operator, machines a",
            ]
        );
    }

    #[test]
    fn a_secret_is_shown_by_name_and_what_changed_never_its_value() {
        use crate::secret::{Recipients, Secret};
        let secret = |sealed: &str, scripts: &[&str]| Secret {
            name: "token".into(),
            description: String::new(),
            file: "secrets/token.yaml".into(),
            scripts: scripts.iter().map(|s| (*s).into()).collect(),
            targets: crate::script::Targets::default(),
            sealed: sealed.into(),
        };
        let with = |secrets: Vec<Secret>, all: &[&str]| {
            let mut desired = state(&links("10.0.0.2"), SCRIPTS, &[]);
            desired.secrets = secrets.into_iter().map(|s| (s.name.clone(), s)).collect();
            desired.recipients = Recipients {
                all: all.iter().map(|r| (*r).into()).collect(),
                tags: BTreeMap::new(),
            };
            desired
        };
        let shown = |after: &DesiredState, before: &DesiredState| -> Vec<String> {
            (plan(after, before, &BTreeMap::new(), &BTreeMap::new()).iter())
                .map(ToString::to_string)
                .collect()
        };
        let before = with(vec![secret("SEALED-ONE", &[])], &["age1a"]);
        assert!(shown(&before, &before).is_empty());
        let table: [(DesiredState, &[&str]); 3] = [
            (
                with(vec![secret("SEALED-TWO", &["up"])], &["age1a"]),
                &["~ secret token: scripts, value changed"],
            ),
            (
                with(vec![], &["age1b"]),
                &[
                    "- secret token",
                    "~ recipients.yaml changed: `linkops secret rotate` seals every secret to it",
                ],
            ),
            (
                with(
                    vec![
                        secret("SEALED-ONE", &[]),
                        Secret {
                            name: "new".into(),
                            ..secret("S", &[])
                        },
                    ],
                    &["age1a"],
                ),
                &["+ secret new"],
            ),
        ];
        for (after, expected) in table {
            let said = shown(&after, &before);
            assert_eq!(said, expected);
            assert!(said.iter().all(|line| !line.contains("SEALED")), "{said:?}");
        }
    }

    #[test]
    fn a_where_shows_the_machines_it_selects_now_and_custom_facts_show_as_changes() {
        use crate::facts::FactValue;
        let reboot = "id: reboot\nscript: up\ntargets:\n  where: {reboot_required: true}\n";
        let applied = state(
            &links("10.0.0.2"),
            "scripts:\n  - {id: up, name: Up, body: uptime}\n",
            &[],
        );
        let proposed = state(
            &links("10.0.0.2"),
            "scripts:\n  - {id: up, name: Up, body: uptime}\n",
            &[
                ("reboot", reboot),
                (
                    "facts/raid.yaml",
                    "name: raid\nscript: |\n  echo '{\"ok\": true}'\n",
                ),
                (
                    "schedules/hourly.yaml",
                    "name: hourly\nscript: up\ntargets: {machines: [a]}\ncron: \"0 * * * *\"\n",
                ),
                (
                    "triggers/alert.yaml",
                    "name: alert\nscript: up\nmachines: {machines: [a]}\n",
                ),
            ],
        );
        let flag = |on: bool| Facts::from([("reboot_required".to_owned(), FactValue::Bool(on))]);
        let facts = BTreeMap::from([("a".to_owned(), flag(true)), ("b".to_owned(), flag(false))]);
        let shown: Vec<String> = plan(&proposed, &applied, &BTreeMap::new(), &facts)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "▶ run-request reboot would start script up on a (its `where` selects 1 machine(s) on their facts now)",
                "+ schedule hourly: runs script up, \"0 * * * *\" in UTC",
                "+ fact raid (gathered from each machine's next gathering)",
                "+ trigger alert: POST /api/triggers/alert runs script up",
            ]
        );
        let none = plan(&proposed, &applied, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            none[0].to_string(),
            "▶ run-request reboot would start script up; its `where` selects no machine on their facts now"
        );
        let back: Vec<String> = plan(&applied, &proposed, &BTreeMap::new(), &facts)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            back.contains(
                &"- fact raid (its values go at each machine's next gathering)".to_owned()
            ),
            "{back:?}"
        );
    }
}
