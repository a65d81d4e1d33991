//! The client commands: each calls the API and prints a table for people or
//! JSON for scripts (`--json`).

use std::collections::BTreeMap;
use std::path::Path;

use linkops_reconcilers::condition::ConditionKind;
use linkops_reconcilers::desired::{self, DesiredState};
use linkops_reconcilers::facts::FactValue;
use linkops_reconcilers::plan::plan as plan_changes;
use linkops_reconcilers::rollout::Rollout;
use linkops_reconcilers::run::RunState;
use linkops_reconcilers::state::Standing;
use serde_json::{Value, json};

use super::follow::{exit_code, follow};
use super::print::{api_name, or_dash, print_json, print_table};
use super::{Client, Error, Result, Session};
use crate::contract::{
    FactsQuery, FactsView, GitStatus, Health, HistoryQuery, LoginRequest, LoginResponse,
    MachineDetail, MachineQuery, MachineView, OperationView, RunAnswer, RunBody, RunView,
    ScheduleDetail, ScheduleView, StateDetail, StateView, Stopping, SyncOutcome, SyncView,
    TargetsBody,
};

/// `linkops login`: exchanges a password for a token and saves the session.
pub async fn login(server: &str, user: &str, password_stdin: bool) -> Result<()> {
    let prompt = format!("Password for {user} at {server}: ");
    let password = super::read_password(&prompt, password_stdin)?;
    let client = Client::new(server, None);
    let request = LoginRequest {
        username: user.to_owned(),
        password: secrecy::ExposeSecret::expose_secret(&password).to_owned(),
    };
    let answer: LoginResponse = client.post("/api/auth/login", &request).await?;
    let session = Session {
        server: client.server().to_owned(),
        user: user.to_owned(),
        token: answer.token,
        expires_at: answer.expires_at,
    };
    let path = session.save()?;
    eprintln!(
        "logged in to {} as {user} ({}); session saved in {} (mode 0600), valid until {}",
        session.server,
        linkops_reconcilers::role::AccountRole(answer.role),
        path.display(),
        session.expires_at
    );
    Ok(())
}

/// `linkops machines`
pub async fn machines(
    client: &Client,
    tag: Option<&str>,
    facts: &[String],
    json: bool,
) -> Result<()> {
    if let Some(pair) = facts.iter().find(|pair| pair.contains(',')) {
        let usage = format!("--where {pair:?}: one fact=value each; repeat --where for more");
        return Err(Error::Usage(usage));
    }
    let query = MachineQuery {
        tag: tag.map(str::to_owned),
        where_: (!facts.is_empty()).then(|| facts.join(",")),
        ..MachineQuery::default()
    };
    let machines: Vec<MachineView> = client.get_query("/api/links", &query).await?;
    if json {
        return print_json(&machines);
    }
    let rows = machines
        .iter()
        .map(|m| {
            vec![
                m.spec.id.clone(),
                format!("{}:{}", m.spec.host, m.spec.port),
                m.health.name().to_owned(),
                m.enrollment.name().to_owned(),
                m.condition(ConditionKind::Ready)
                    .map_or("-".to_owned(), |c| api_name(&c.condition.status)),
                or_dash(m.last_seen),
                m.spec.tags.join(","),
            ]
        })
        .collect();
    print_table(
        &[
            "MACHINE",
            "ADDRESS",
            "HEALTH",
            "ENROLLMENT",
            "READY",
            "LAST SEEN",
            "TAGS",
        ],
        rows,
    );
    Ok(())
}

/// `linkops facts [ID]`: one machine's facts and their latest changes, or the
/// fleet's main facts, a machine per line.
pub async fn facts(client: &Client, id: Option<&str>, tag: Option<&str>, json: bool) -> Result<()> {
    let Some(id) = id else {
        return fleet_facts(client, tag, json).await;
    };
    let detail: MachineDetail = client.get(&format!("/api/links/{id}")).await?;
    if json {
        return print_json(&detail.facts);
    }
    let Some(facts) = detail.facts else {
        println!("{id}: no facts yet (they are gathered once the machine is enrolled)");
        return Ok(());
    };
    let rows = (facts.facts.iter())
        .map(|(name, value)| vec![name.clone(), value.to_string()])
        .collect();
    print_table(&["FACT", "VALUE"], rows);
    println!("gathered {}", or_dash(facts.gathered_at));
    if let Some(error) = &facts.error {
        println!("the last gathering failed: {error}");
    }
    for change in &facts.changes {
        let changed: Vec<String> = (change.changed.iter())
            .map(|(name, diff)| {
                let shown =
                    |v: &Option<FactValue>| v.as_ref().map_or("-".to_owned(), ToString::to_string);
                format!("{name} {} → {}", shown(&diff.before), shown(&diff.after))
            })
            .collect();
        println!("{}: {}", or_dash(change.at), changed.join(", "));
    }
    Ok(())
}

/// The facts of every machine the caller sees (with `tag`), a page of the
/// API at a time.
async fn all_facts(client: &Client, tag: Option<&str>) -> Result<Vec<FactsView>> {
    const PAGE: usize = 1000;
    let mut all: Vec<FactsView> = Vec::new();
    loop {
        let query = FactsQuery {
            tag: tag.map(str::to_owned),
            after: all.last().map(|f| f.machine.clone()),
            limit: Some(PAGE),
        };
        let page: Vec<FactsView> = client.get_query("/api/facts", &query).await?;
        let full = page.len() == PAGE;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// Every seen machine's main facts.
async fn fleet_facts(client: &Client, tag: Option<&str>, json: bool) -> Result<()> {
    let all = all_facts(client, tag).await?;
    if json {
        return print_json(&all);
    }
    let fact = |facts: &FactsView, name: &str| {
        facts
            .facts
            .get(name)
            .map_or("-".to_owned(), ToString::to_string)
    };
    let rows = (all.iter())
        .map(|f| {
            vec![
                f.machine.clone(),
                fact(f, "os"),
                fact(f, "kernel"),
                fact(f, "updates"),
                fact(f, "security_updates"),
                fact(f, "reboot_required"),
                fact(f, "root_used_pct"),
                or_dash(f.gathered_at),
            ]
        })
        .collect();
    print_table(
        &[
            "MACHINE", "OS", "KERNEL", "UPDATES", "SECURITY", "REBOOT", "ROOT %", "GATHERED",
        ],
        rows,
    );
    Ok(())
}

/// What `linkops run` asks for.
pub struct RunArgs<'a> {
    pub script: &'a str,
    pub machines: &'a [String],
    pub tags: &'a [String],
    /// `name=value`; values are sent as strings, integers or booleans when they read as such.
    pub params: &'a [String],
    /// Facts as `name=value`, read alike.
    pub facts: &'a [String],
    pub concurrency: Option<usize>,
    pub rollout: Option<Rollout>,
}

/// `name=value` pairs (`what`: the flag, for the error) by name, each value
/// an integer or a boolean when it reads as one, else text.
fn pairs<T: serde::de::DeserializeOwned>(
    given: &[String],
    what: &str,
) -> Result<BTreeMap<String, T>> {
    let mut read = BTreeMap::new();
    for pair in given {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("{what} {pair:?}: write it as name=value")))?;
        let value = serde_json::from_str::<Value>(value)
            .ok()
            .filter(|v| v.is_i64() || v.is_boolean())
            .unwrap_or_else(|| Value::String(value.to_owned()));
        let value = serde_json::from_value(value)
            .map_err(|e| Error::Usage(format!("{what} {pair:?}: {e}")))?;
        read.insert(name.to_owned(), value);
    }
    Ok(read)
}

/// `linkops run`: starts the script, follows its output live, and returns the
/// exit code (0 when every host succeeded, 1 otherwise).
pub async fn run(client: &Client, args: RunArgs<'_>, json: bool) -> Result<i32> {
    let params = pairs(args.params, "--param")?;
    let body = RunBody {
        script: args.script.to_owned(),
        targets: TargetsBody {
            machines: args.machines.to_vec(),
            tags: args.tags.to_vec(),
            where_: pairs(args.facts, "--where")?,
        },
        params,
        concurrency: args.concurrency,
        rollout: args.rollout,
    };
    let answer: RunAnswer = client.post("/api/operations/run", &body).await?;
    started(client, answer, json).await
}

/// The exit code of a run recorded as awaiting approval (it has not run yet).
pub const AWAITING_APPROVAL: i32 = 3;

/// `linkops retry ID`: runs the operation's script again on its machines that
/// failed, timed out or were interrupted, and follows it like `linkops run`.
pub async fn retry(client: &Client, id: u64, json: bool) -> Result<i32> {
    let answer: RunAnswer = client
        .post(&format!("/api/operations/{id}/retry"), &json!({}))
        .await?;
    started(client, answer, json).await
}

/// Says what started, follows it to its end; the exit code of its end. A run
/// awaiting approval is said, and exits [`AWAITING_APPROVAL`].
async fn started(client: &Client, answer: RunAnswer, json: bool) -> Result<i32> {
    let operation = match answer {
        RunAnswer::Started(operation) => *operation,
        RunAnswer::Awaiting(view) => {
            match json {
                true => print_json(&view)?,
                false => super::approvals::describe(&view),
            }
            return Ok(AWAITING_APPROVAL);
        }
    };
    let id = operation.operation.id;
    if !json {
        let retry = match operation.operation.retry_of {
            Some(of) => format!(" (retrying operation {of})"),
            None => String::new(),
        };
        let batches = match operation.operation.rollout {
            Some(r) => format!(
                ", {} canary then {} at a time, halting after {} failure(s)",
                r.canary, r.batch, r.max_failures
            ),
            None => String::new(),
        };
        eprintln!(
            "operation {id}: {} on {} machine(s){batches}{retry}",
            operation.operation.script,
            operation.operation.machines.len()
        );
    }
    let state = follow(client, id, json).await?;
    Ok(exit_code(state))
}

/// `linkops states`: every declared state and its machines by standing.
pub async fn states(client: &Client, json: bool) -> Result<()> {
    let states: Vec<StateView> = client.get("/api/states").await?;
    if json {
        return print_json(&states);
    }
    let rows = states
        .iter()
        .map(|state| {
            let counts = state.counts;
            vec![
                state.id.clone(),
                api_name(&state.declared.mode),
                format!("{}/{}", counts.in_sync, counts.total()),
                counts.drifted.to_string(),
                counts.applying.to_string(),
                counts.failed.to_string(),
                counts.held.to_string(),
                match &state.halted {
                    Some(halt) => format!("halted: {}", halt.reason),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    print_table(
        &[
            "STATE", "MODE", "IN SYNC", "DRIFTED", "APPLYING", "FAILED", "HELD", "ROLLOUT",
        ],
        rows,
    );
    Ok(())
}

/// `linkops schedules [NAME]`: the schedules and their next fires, in their
/// zone and the viewer's; with a name, its fires.
pub async fn schedules(client: &Client, name: Option<&str>, json: bool) -> Result<()> {
    let local = |at: Option<jiff::Timestamp>| {
        at.map_or("-".to_owned(), |at| {
            at.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
    };
    let fire_row = |fire: &linkops_reconcilers::schedule::FireRecord| {
        let due = jiff::Timestamp::from_millisecond(fire.due_ms).ok();
        let what = match &fire.outcome {
            linkops_reconcilers::schedule::FireOutcome::Started { operation_id } => {
                format!("operation {operation_id}")
            }
            linkops_reconcilers::schedule::FireOutcome::Missed { reason }
            | linkops_reconcilers::schedule::FireOutcome::Skipped { reason } => reason.clone(),
            linkops_reconcilers::schedule::FireOutcome::AwaitingApproval { approval } => {
                format!("approval request {approval} (`linkops approvals {approval}`)")
            }
        };
        vec![local(due), fire.outcome.name().to_owned(), what]
    };
    if let Some(name) = name {
        let detail: ScheduleDetail = client.get(&format!("/api/schedules/{name}")).await?;
        if json {
            return print_json(&detail);
        }
        let schedule = &detail.view.schedule;
        eprintln!(
            "{} runs {} at {:?} ({}); next: {} — {} here",
            schedule.name,
            schedule.script,
            schedule.cron,
            schedule.zone,
            detail.view.next_fire_in_zone.as_deref().unwrap_or("none"),
            local(detail.view.next_fire)
        );
        print_table(
            &["DUE (HERE)", "RESULT", "WHAT"],
            detail.fires.iter().map(fire_row).collect(),
        );
        return Ok(());
    }
    let schedules: Vec<ScheduleView> = client.get("/api/schedules").await?;
    if json {
        return print_json(&schedules);
    }
    let rows = schedules
        .iter()
        .map(|view| {
            let schedule = &view.schedule;
            vec![
                schedule.name.clone(),
                schedule.script.clone(),
                schedule.cron.clone(),
                schedule.zone.clone(),
                view.next_fire_in_zone.clone().unwrap_or_else(|| "-".into()),
                local(view.next_fire),
                view.last_fire
                    .as_ref()
                    .map_or("-".to_owned(), |fire| fire.outcome.name().to_owned()),
            ]
        })
        .collect();
    print_table(
        &[
            "SCHEDULE",
            "SCRIPT",
            "CRON",
            "ZONE",
            "NEXT (ITS ZONE)",
            "NEXT (HERE)",
            "LAST",
        ],
        rows,
    );
    Ok(())
}

/// `linkops states ID`: where the state stands on each of its machines.
pub async fn state(client: &Client, id: &str, json: bool) -> Result<()> {
    let detail: StateDetail = client.get(&format!("/api/states/{id}")).await?;
    if json {
        return print_json(&detail);
    }
    let state = &detail.state;
    eprintln!(
        "state {} ({} mode, script {}, content {}){}",
        state.id,
        api_name(&state.declared.mode),
        state.declared.script,
        state.digest.as_deref().unwrap_or("not reconciled yet"),
        match &state.halted {
            Some(halt) => format!(": rollout halted — {}", halt.reason),
            None => String::new(),
        }
    );
    let rows = detail
        .machines
        .iter()
        .map(|machine| {
            let why = match &machine.standing {
                Standing::Applying { operation_id } => format!("operation {operation_id}"),
                Standing::Failed {
                    operation_id,
                    reason,
                } => format!("operation {operation_id}: {reason}"),
                Standing::Held { reason } => reason.clone(),
                Standing::CheckError { message } => message.clone(),
                Standing::Drifted => machine
                    .check
                    .as_ref()
                    .map(|c| c.output.lines().next().unwrap_or_default().to_owned())
                    .unwrap_or_default(),
                Standing::Pending | Standing::InSync => String::new(),
            };
            vec![
                machine.machine_id.clone(),
                machine.standing.name().to_owned(),
                or_dash(machine.since),
                or_dash(machine.check.as_ref().and_then(|c| c.at)),
                or_dash(machine.apply.as_ref().map(|a| a.operation_id)),
                why,
            ]
        })
        .collect();
    print_table(
        &[
            "MACHINE",
            "STANDING",
            "SINCE",
            "CHECKED",
            "LAST APPLY",
            "WHY",
        ],
        rows,
    );
    Ok(())
}
/// `linkops ops`: operation history, newest first.
pub async fn ops(client: &Client, query: &HistoryQuery, json: bool) -> Result<()> {
    let operations: Vec<OperationView> = client.get_query("/api/operations", query).await?;
    if json {
        return print_json(&operations);
    }
    let rows = operations
        .iter()
        .map(|view| {
            let o = &view.operation;
            vec![
                o.id.to_string(),
                o.script.clone(),
                o.state.name().to_owned(),
                o.machines.len().to_string(),
                o.requested_by.label(),
                or_dash(view.created_at),
            ]
        })
        .collect();
    print_table(
        &["ID", "SCRIPT", "STATE", "MACHINES", "BY", "CREATED"],
        rows,
    );
    Ok(())
}

/// `linkops stop ID`
pub async fn stop(client: &Client, id: u64, json: bool) -> Result<()> {
    let answer: Stopping = client
        .post(&format!("/api/operations/{id}/stop"), &json!({}))
        .await?;
    if json {
        return print_json(&answer);
    }
    eprintln!(
        "operation {}: stopping — machines not started yet will not start; running scripts get SIGTERM, then SIGKILL {} s later. `linkops ops logs {id} -f` follows it to its end.",
        answer.stopping,
        crate::operations::STOP_GRACE.as_secs()
    );
    Ok(())
}

/// `linkops sync`: a Git sync now; exit code 1 when the revision was refused or the fetch failed.
pub async fn sync(client: &Client, json: bool) -> Result<i32> {
    let record: SyncView = client.post("/api/git/sync", &json!({})).await?;
    if json {
        print_json(&record)?;
    } else {
        println!(
            "{}: revision {}",
            record.outcome.name(),
            or_dash(record.revision.as_ref())
        );
        match &record.outcome {
            SyncOutcome::Invalid { problems } => {
                for problem in problems {
                    println!("  {problem}");
                }
            }
            SyncOutcome::Failed { error } => println!("  {error}"),
            SyncOutcome::Applied { .. } | SyncOutcome::Unchanged => {}
        }
    }
    Ok(match record.outcome {
        SyncOutcome::Applied { .. } | SyncOutcome::Unchanged => 0,
        SyncOutcome::Invalid { .. } | SyncOutcome::Failed { .. } => 1,
    })
}

/// `linkops status`: health, Git, reconcile suspension, in one screen.
pub async fn status(client: &Client, json: bool) -> Result<()> {
    let health: Health = client.get("/health").await?;
    let daemon = format!(
        "daemon     {} ({})",
        client.server(),
        api_name(&health.status)
    );
    if !client.has_session() {
        if json {
            return print_json(&json!({ "health": health }));
        }
        println!("{daemon}");
        println!(
            "           log in for the revision and the machines: linkops login --server {}",
            client.server()
        );
        return Ok(());
    }
    let git: GitStatus = client.get("/api/git/status").await?;
    let machines: Vec<MachineView> = client.get("/api/links").await?;
    if json {
        return print_json(&json!({ "health": health, "git": git, "machines": machines.len() }));
    }
    println!("{daemon}");
    println!(
        "git        {} @ {} — applied {} ({})",
        or_dash(git.url.as_ref()),
        git.branch,
        or_dash(git.applied_revision.as_ref()),
        or_dash(git.applied_at)
    );
    if let Some(attempt) = &git.last_attempt {
        println!(
            "last sync  {} at {} by {}",
            attempt.outcome.name(),
            attempt.started_at,
            attempt.trigger
        );
    }
    for error in &git.last_error {
        println!("  {error}");
    }
    let reachable = machines.iter().filter(|m| m.health.name() == "reachable");
    let enrolled = machines.iter().filter(|m| m.enrollment.is_enrolled());
    println!(
        "machines   {} — {} reachable, {} enrolled",
        machines.len(),
        reachable.count(),
        enrolled.count()
    );
    Ok(())
}

/// `linkops plan DIR`: what applying this checkout would change against the
/// daemon's applied revision. Exit code 0 no change, 1 changes.
pub async fn plan(client: &Client, dir: &Path) -> Result<i32> {
    let files = crate::git::read_dir(dir)?;
    let proposed = match desired::load("(checkout)", &files) {
        Ok(state) => state,
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            return Err(Error::Usage(format!(
                "{}: {} problem(s); the daemon would refuse this revision",
                dir.display(),
                problems.len()
            )));
        }
    };
    let applied: DesiredState = client.get("/api/desired").await?;
    let runs: Vec<RunView> = client.get("/api/runs").await?;
    let states: BTreeMap<String, RunState> = runs
        .into_iter()
        .filter_map(|run| Some((run.id, run.state?)))
        .collect();
    // What a run-request's `where` would select, on the daemon's facts now.
    let mut facts = BTreeMap::new();
    if proposed.runs.values().any(|run| run.targets.asks_facts()) {
        let all = all_facts(client, None).await?;
        facts.extend(all.into_iter().map(|view| (view.machine, view.facts)));
    }
    let changes = plan_changes(&proposed, &applied, &states, &facts);
    let short = &applied.revision[..applied.revision.len().min(12)];
    if changes.is_empty() {
        println!("no changes against the applied revision {short}");
        return Ok(0);
    }
    println!("against the applied revision {short}:");
    for change in &changes {
        println!("  {change}");
    }
    println!("{} change(s)", changes.len());
    Ok(1)
}
