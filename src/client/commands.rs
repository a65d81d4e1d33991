//! The client commands: each calls the API and prints a table for people or
//! JSON for scripts (`--json`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;

use base64::Engine as _;
use futures::StreamExt;
use linkops_reconcilers::condition::ConditionKind;
use linkops_reconcilers::desired::{self, DesiredState};
use linkops_reconcilers::operation::{HostState, OperationState, Stream};
use linkops_reconcilers::plan::plan as plan_changes;
use linkops_reconcilers::rollout::Rollout;
use linkops_reconcilers::run::RunState;
use linkops_reconcilers::state::Standing;
use serde_json::{Value, json};

use super::{Client, Error, Result, Session};
use crate::contract::{
    GitStatus, Health, HistoryQuery, HostEvent, LoginRequest, LoginResponse, MachineQuery,
    MachineView, OperationView, OutputBytes, OutputChunk, OutputPage, RunBody, RunView,
    StateDetail, StateEvent, StateView, Stopping, SyncView, TargetsBody,
};
use crate::store::SyncOutcome;

/// How many times a broken event stream is resumed before giving up.
const STREAM_RETRIES: u32 = 5;

/// `linkops login`: exchanges a password for a token and saves the session.
pub async fn login(server: &str, user: &str, password_stdin: bool) -> Result<()> {
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(Error::Password)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password(format!("Password for {user} at {server}: "))
            .map_err(Error::Password)?
    };
    let client = Client::new(server, None);
    let request = LoginRequest {
        username: user.to_owned(),
        password,
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
        answer.role,
        path.display(),
        session.expires_at
    );
    Ok(())
}

/// `linkops machines`
pub async fn machines(client: &Client, tag: Option<&str>, json: bool) -> Result<()> {
    let query = MachineQuery {
        tag: tag.map(str::to_owned),
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

/// What `linkops run` asks for.
pub struct RunArgs<'a> {
    pub script: &'a str,
    pub machines: &'a [String],
    pub tags: &'a [String],
    /// `name=value`; values are sent as strings, integers or booleans when they read as such.
    pub params: &'a [String],
    pub concurrency: Option<usize>,
    pub rollout: Option<Rollout>,
}

/// `linkops run`: starts the script, follows its output live, and returns the
/// exit code (0 when every host succeeded, 1 otherwise).
pub async fn run(client: &Client, args: RunArgs<'_>, json: bool) -> Result<i32> {
    let mut params = BTreeMap::new();
    for param in args.params {
        let (name, value) = param
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--param {param:?}: write it as name=value")))?;
        let value = serde_json::from_str::<Value>(value)
            .ok()
            .filter(|v| v.is_i64() || v.is_boolean())
            .unwrap_or_else(|| Value::String(value.to_owned()));
        params.insert(name.to_owned(), value);
    }
    let body = RunBody {
        script: args.script.to_owned(),
        targets: TargetsBody {
            machines: args.machines.to_vec(),
            tags: args.tags.to_vec(),
        },
        params,
        concurrency: args.concurrency,
        rollout: args.rollout,
    };
    let operation: OperationView = client.post("/api/operations/run", &body).await?;
    started(client, operation, json).await
}

/// `linkops retry ID`: runs the operation's script again on its machines that
/// failed, timed out or were interrupted, and follows it like `linkops run`.
pub async fn retry(client: &Client, id: u64, json: bool) -> Result<i32> {
    let operation: OperationView = client
        .post(&format!("/api/operations/{id}/retry"), &json!({}))
        .await?;
    started(client, operation, json).await
}

/// Says what started, follows it to its end; the exit code of its end.
async fn started(client: &Client, operation: OperationView, json: bool) -> Result<i32> {
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

/// `linkops ops logs ID [-f]`: the recorded output; with `follow`, live until the end.
pub async fn logs(client: &Client, id: u64, follow_live: bool, json: bool) -> Result<i32> {
    if follow_live {
        let state = follow(client, id, json).await?;
        return Ok(exit_code(state));
    }
    let mut printer = Printer::new(json, 0);
    let mut after = 0;
    loop {
        let page: OutputPage = client
            .get(&format!("/api/operations/{id}/output?after={after}"))
            .await?;
        for chunk in &page.chunks {
            printer.output(chunk);
        }
        match page.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    printer.finish();
    Ok(0)
}

/// 0 when every machine succeeded, 1 otherwise.
fn exit_code(state: OperationState) -> i32 {
    match state {
        OperationState::Succeeded => 0,
        _ => 1,
    }
}

/// Follows an operation's events to its end, resuming after a dropped
/// connection; returns its final state.
async fn follow(client: &Client, id: u64, json: bool) -> Result<OperationState> {
    let operation: OperationView = client.get(&format!("/api/operations/{id}")).await?;
    let mut printer = Printer::new(json, operation.hosts.len());
    let mut last = 0;
    let mut retries = 0;
    loop {
        let stream = client.events(id, last).await?;
        let mut stream = std::pin::pin!(stream);
        let mut broke = String::from("the stream ended before the operation did");
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    broke = error;
                    break;
                }
            };
            retries = 0;
            last = event.id.parse().unwrap_or(last);
            if json {
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                println!(
                    "{}",
                    json!({ "id": last, "event": event.event, "data": data })
                );
            }
            let unexpected = |error: serde_json::Error| Error::Stream {
                operation: id,
                reason: format!("a {} event was not understood: {error}", event.event),
            };
            match event.event.as_str() {
                "output" => printer.output(&serde_json::from_str(&event.data).map_err(unexpected)?),
                "host" => printer.host(serde_json::from_str(&event.data).map_err(unexpected)?),
                "end" => {
                    printer.finish();
                    let end: StateEvent = serde_json::from_str(&event.data).map_err(unexpected)?;
                    if !json {
                        eprintln!(
                            "operation {id}: {} ({})",
                            end.state.name(),
                            printer.tally().ended()
                        );
                    }
                    return Ok(end.state);
                }
                _ => {}
            }
        }
        retries += 1;
        if retries > STREAM_RETRIES {
            return Err(Error::Stream {
                operation: id,
                reason: broke,
            });
        }
        // Resumes exactly after the last event seen (the daemon numbers them).
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Prints output line by line, prefixed with the machine, and a progress line
/// on a terminal's stderr.
struct Printer {
    json: bool,
    /// Partial lines, by (machine, stream).
    partial: BTreeMap<(String, Stream), Vec<u8>>,
    hosts: BTreeMap<String, HostState>,
    total: usize,
    progress: bool,
}

impl Printer {
    fn new(json: bool, total: usize) -> Printer {
        Printer {
            json,
            partial: BTreeMap::new(),
            hosts: BTreeMap::new(),
            total,
            progress: !json && total > 0 && std::io::stderr().is_terminal(),
        }
    }

    fn output(&mut self, chunk: &OutputChunk) {
        if self.json {
            return;
        }
        let bytes = match &chunk.bytes {
            OutputBytes::Text { text } => text.as_bytes().to_vec(),
            OutputBytes::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .unwrap_or_default(),
        };
        let key = (chunk.machine.clone(), chunk.stream);
        let buffer = self.partial.entry(key.clone()).or_default();
        buffer.extend_from_slice(&bytes);
        let Some(end) = buffer.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = buffer.drain(..=end).collect();
        self.print(&key, &complete);
    }

    fn print(&self, (machine, stream): &(String, Stream), bytes: &[u8]) {
        self.clear_progress();
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            if *stream == Stream::Stderr {
                eprintln!("{machine} ! {line}");
            } else {
                println!("{machine} | {line}");
            }
        }
        std::io::stdout().flush().ok();
        self.show_progress();
    }

    fn host(&mut self, HostEvent { machine, state }: HostEvent) {
        // Why a machine did not run, or failed before its script did.
        let why = match &state {
            HostState::Skipped { reason } => Some(reason),
            HostState::Failed {
                error: Some(error), ..
            } => Some(error),
            _ => None,
        };
        if let (false, Some(why)) = (self.json, why) {
            self.clear_progress();
            eprintln!("{machine} {}: {why}", state.name());
        }
        self.hosts.insert(machine, state);
        self.show_progress();
    }

    fn clear_progress(&self) {
        if self.progress {
            eprint!("\r\x1b[K");
        }
    }

    fn show_progress(&self) {
        if self.progress {
            eprint!("\r\x1b[K[{}]", self.tally());
        }
    }

    fn tally(&self) -> Tally {
        Tally::of(self.hosts.values(), self.total)
    }

    /// Prints what is left of unfinished lines, and ends the progress line.
    fn finish(&mut self) {
        for (key, rest) in std::mem::take(&mut self.partial) {
            if !rest.is_empty() {
                self.print(&key, &rest);
            }
        }
        if self.progress {
            eprintln!();
        }
    }
}

/// Machines of an operation by where they are: what the progress line and
/// the last line say, so the two agree with the operation's end state.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    total: usize,
    succeeded: usize,
    /// A failure, a timeout, or the daemon stopping while it ran.
    failed: usize,
    /// Never ran: not enrolled, unknown, unreachable; counts against success.
    skipped: usize,
    stopped: usize,
    /// Never started: the rollout halted first.
    held: usize,
    running: usize,
}

impl Tally {
    fn of<'a>(states: impl Iterator<Item = &'a HostState>, total: usize) -> Tally {
        let mut tally = Tally {
            total,
            ..Tally::default()
        };
        for state in states {
            match state {
                HostState::Succeeded => tally.succeeded += 1,
                HostState::Failed { .. } | HostState::Timeout { .. } | HostState::Interrupted => {
                    tally.failed += 1
                }
                HostState::Skipped { .. } => tally.skipped += 1,
                HostState::Stopped { .. } => tally.stopped += 1,
                HostState::Held { .. } => tally.held += 1,
                HostState::Running => tally.running += 1,
                HostState::Pending => {}
            }
        }
        tally
    }

    /// The end's summary: only what happened.
    fn ended(&self) -> String {
        let parts = [
            (self.succeeded, "succeeded"),
            (self.failed, "failed"),
            (self.skipped, "skipped"),
            (self.stopped, "stopped"),
            (self.held, "held (the rollout halted)"),
        ];
        let said: Vec<String> = parts
            .iter()
            .filter(|(count, _)| *count > 0)
            .map(|(count, what)| format!("{count} {what}"))
            .collect();
        match said.is_empty() {
            true => "no machine ran".into(),
            false => format!("of {} machine(s): {}", self.total, said.join(" · ")),
        }
    }
}

impl std::fmt::Display for Tally {
    /// The progress line: every machine is counted once, skipped ones too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ended = self.succeeded + self.failed + self.skipped + self.stopped + self.held;
        write!(
            f,
            "{ended}/{} ended · {} running · {} succeeded · {} failed",
            self.total, self.running, self.succeeded, self.failed
        )?;
        let others = [
            (self.skipped, "skipped"),
            (self.stopped, "stopped"),
            (self.held, "held"),
        ];
        for (count, what) in others {
            if count > 0 {
                write!(f, " · {count} {what}")?;
            }
        }
        Ok(())
    }
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
    let changes = plan_changes(&proposed, &applied, &states);
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

/// A unit variant as the API names it (`True`, `degraded`).
fn api_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => "-".to_owned(),
    }
}

/// A value that may be absent, `-` when it is.
fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or("-".to_owned(), |value| value.to_string())
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialise")
    );
    Ok(())
}

/// Columns padded to their widest cell.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use linkops_reconcilers::operation::HostState;

    use super::Tally;

    #[test]
    fn the_progress_counts_every_machine_and_agrees_with_the_end() {
        let cases: &[(&[&str], usize, &str, &str)] = &[
            (
                &["skipped"],
                1,
                "1/1 ended · 0 running · 0 succeeded · 0 failed · 1 skipped",
                "of 1 machine(s): 1 skipped",
            ),
            (
                &["succeeded", "running", "pending"],
                3,
                "1/3 ended · 1 running · 1 succeeded · 0 failed",
                "of 3 machine(s): 1 succeeded",
            ),
            (
                &["succeeded", "timeout", "interrupted", "stopped"],
                4,
                "4/4 ended · 0 running · 1 succeeded · 2 failed · 1 stopped",
                "of 4 machine(s): 1 succeeded · 2 failed · 1 stopped",
            ),
            (
                &[],
                0,
                "0/0 ended · 0 running · 0 succeeded · 0 failed",
                "no machine ran",
            ),
        ];
        let state = |name: &str| -> HostState {
            serde_json::from_value(serde_json::json!({ "state": name, "reason": "r" })).unwrap()
        };
        for (states, total, progress, end) in cases {
            let states: Vec<HostState> = states.iter().map(|name| state(name)).collect();
            let tally = Tally::of(states.iter(), *total);
            assert_eq!(tally.to_string(), *progress, "{states:?}");
            assert_eq!(tally.ended(), *end, "{states:?}");
        }
    }
}
