//! The client commands: each calls the API and prints a table for people or
//! JSON for scripts (`--json`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;

use base64::Engine as _;
use futures::StreamExt;
use linkops_reconcilers::desired::{self, DesiredState};
use linkops_reconcilers::plan::plan as plan_changes;
use linkops_reconcilers::run::RunState;
use serde_json::{Value, json};

use super::{Client, Error, Result, Session};

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
    let answer: Value = client
        .post(
            "/api/auth/login",
            &json!({ "username": user, "password": password }),
        )
        .await?;
    let session = Session {
        server: client.server().to_owned(),
        user: user.to_owned(),
        token: answer["token"].as_str().unwrap_or_default().to_owned(),
        expires_at: answer["expires_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(jiff::Timestamp::now),
    };
    let path = session.save()?;
    eprintln!(
        "logged in to {} as {user} ({}); session saved in {} (mode 0600), valid until {}",
        session.server,
        answer["role"].as_str().unwrap_or("?"),
        path.display(),
        session.expires_at
    );
    Ok(())
}

/// `linkops machines`
pub async fn machines(client: &Client, tag: Option<&str>, json: bool) -> Result<()> {
    let path = match tag {
        Some(tag) => format!("/api/links?tag={tag}"),
        None => "/api/links".to_owned(),
    };
    let machines: Vec<Value> = client.get(&path).await?;
    if json {
        return print_json(&machines);
    }
    let rows = machines
        .iter()
        .map(|m| {
            vec![
                text(&m["id"]),
                format!("{}:{}", text(&m["host"]), text(&m["port"])),
                text(&m["health"]["state"]),
                text(&m["enrollment"]["state"]),
                condition(m, "Ready"),
                text(&m["last_seen"]),
                m["tags"].as_array().map_or(String::new(), |tags| {
                    tags.iter().map(text).collect::<Vec<_>>().join(",")
                }),
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

fn condition(machine: &Value, kind: &str) -> String {
    machine["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .map_or("-".to_owned(), |c| text(&c["status"]))
}

/// What `linkops run` asks for.
pub struct RunArgs<'a> {
    pub script: &'a str,
    pub machines: &'a [String],
    pub tags: &'a [String],
    /// `name=value`; values are sent as strings, integers or booleans when they read as such.
    pub params: &'a [String],
    pub concurrency: Option<usize>,
}

/// `linkops run`: starts the script, follows its output live, and returns the
/// exit code (0 when every host succeeded, 1 otherwise).
pub async fn run(client: &Client, args: RunArgs<'_>, json: bool) -> Result<i32> {
    let mut params = serde_json::Map::new();
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
    let body = json!({
        "script": args.script,
        "targets": { "machines": args.machines, "tags": args.tags },
        "params": params,
        "concurrency": args.concurrency,
    });
    let operation: Value = client.post("/api/operations/run", &body).await?;
    let id = operation["id"].as_u64().unwrap_or_default();
    if !json {
        eprintln!(
            "operation {id}: {} on {} machine(s)",
            args.script,
            operation["machines"].as_array().map_or(0, Vec::len)
        );
    }
    let state = follow(client, id, json).await?;
    Ok(if state == "succeeded" { 0 } else { 1 })
}

/// `linkops ops logs ID [-f]`: the recorded output; with `follow`, live until the end.
pub async fn logs(client: &Client, id: u64, follow_live: bool, json: bool) -> Result<i32> {
    if follow_live {
        let state = follow(client, id, json).await?;
        return Ok(if state == "succeeded" { 0 } else { 1 });
    }
    let mut printer = Printer::new(json, 0);
    let mut after = 0;
    loop {
        let page: Value = client
            .get(&format!("/api/operations/{id}/output?after={after}"))
            .await?;
        for chunk in page["chunks"].as_array().into_iter().flatten() {
            printer.output(chunk);
        }
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    printer.finish();
    Ok(0)
}

/// Follows an operation's events to its end, resuming after a dropped
/// connection; returns its final state.
async fn follow(client: &Client, id: u64, json: bool) -> Result<String> {
    let operation: Value = client.get(&format!("/api/operations/{id}")).await?;
    let hosts = operation["hosts"].as_array().map_or(0, Vec::len);
    let mut printer = Printer::new(json, hosts);
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
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            if json {
                println!(
                    "{}",
                    json!({ "id": last, "event": event.event, "data": data })
                );
            }
            match event.event.as_str() {
                "output" => printer.output(&data),
                "host" => printer.host(&data),
                "end" => {
                    printer.finish();
                    let state = text(&data["state"]);
                    if !json {
                        eprintln!("operation {id}: {state} ({})", printer.tally().ended());
                    }
                    return Ok(state);
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
    partial: BTreeMap<(String, String), Vec<u8>>,
    hosts: BTreeMap<String, String>,
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

    fn output(&mut self, data: &Value) {
        if self.json {
            return;
        }
        let bytes = match (data["text"].as_str(), data["base64"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_default(),
            _ => return,
        };
        let key = (text(&data["machine"]), text(&data["stream"]));
        let buffer = self.partial.entry(key.clone()).or_default();
        buffer.extend_from_slice(&bytes);
        let Some(end) = buffer.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = buffer.drain(..=end).collect();
        self.print(&key, &complete);
    }

    fn print(&self, (machine, stream): &(String, String), bytes: &[u8]) {
        self.clear_progress();
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            if stream == "stderr" {
                eprintln!("{machine} ! {line}");
            } else {
                println!("{machine} | {line}");
            }
        }
        std::io::stdout().flush().ok();
        self.show_progress();
    }

    fn host(&mut self, data: &Value) {
        let (machine, state) = (text(&data["machine"]), &data["state"]);
        // Why a machine did not run, or failed before its script did.
        let why = state["reason"].as_str().or(state["error"].as_str());
        if let (false, Some(why)) = (self.json, why) {
            self.clear_progress();
            eprintln!("{machine} {}: {why}", text(&state["state"]));
        }
        self.hosts.insert(machine, text(&state["state"]));
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
        Tally::of(self.hosts.values().map(String::as_str), self.total)
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
    running: usize,
}

impl Tally {
    fn of<'a>(states: impl Iterator<Item = &'a str>, total: usize) -> Tally {
        let mut tally = Tally {
            total,
            ..Tally::default()
        };
        for state in states {
            match state {
                "succeeded" => tally.succeeded += 1,
                "failed" | "timeout" | "interrupted" => tally.failed += 1,
                "skipped" => tally.skipped += 1,
                "stopped" => tally.stopped += 1,
                "running" => tally.running += 1,
                _ => {}
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
        let ended = self.succeeded + self.failed + self.skipped + self.stopped;
        write!(
            f,
            "{ended}/{} ended · {} running · {} succeeded · {} failed",
            self.total, self.running, self.succeeded, self.failed
        )?;
        for (count, what) in [(self.skipped, "skipped"), (self.stopped, "stopped")] {
            if count > 0 {
                write!(f, " · {count} {what}")?;
            }
        }
        Ok(())
    }
}

/// `linkops ops`: operation history, newest first.
pub async fn ops(client: &Client, filters: &[(&str, Option<String>)], json: bool) -> Result<()> {
    let query: Vec<String> = filters
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect();
    let operations: Vec<Value> = client
        .get(&format!("/api/operations?{}", query.join("&")))
        .await?;
    if json {
        return print_json(&operations);
    }
    let rows = operations
        .iter()
        .map(|o| {
            vec![
                text(&o["id"]),
                text(&o["script"]),
                text(&o["state"]),
                o["machines"].as_array().map_or(0, Vec::len).to_string(),
                match o["requested_by"]["kind"].as_str() {
                    Some("user") => text(&o["requested_by"]["name"]),
                    _ => format!("run:{}", text(&o["requested_by"]["id"])),
                },
                text(&o["created_at"]),
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
    let answer: Value = client
        .post(&format!("/api/operations/{id}/stop"), &json!({}))
        .await?;
    if json {
        return print_json(&answer);
    }
    eprintln!(
        "operation {}: stopping — machines not started yet will not start; running scripts get SIGTERM, then SIGKILL {} s later. `linkops ops logs {id} -f` follows it to its end.",
        text(&answer["stopping"]),
        crate::operations::STOP_GRACE.as_secs()
    );
    Ok(())
}

/// `linkops sync`: a Git sync now; exit code 1 when the revision was refused or the fetch failed.
pub async fn sync(client: &Client, json: bool) -> Result<i32> {
    let record: Value = client.post("/api/git/sync", &json!({})).await?;
    let result = text(&record["result"]);
    if json {
        print_json(&record)?;
    } else {
        println!("{result}: revision {}", text(&record["revision"]));
        for problem in record["problems"].as_array().into_iter().flatten() {
            println!("  {}", problem_line(problem));
        }
        if let Some(error) = record["error"].as_str() {
            println!("  {error}");
        }
    }
    Ok(if matches!(result.as_str(), "applied" | "unchanged") {
        0
    } else {
        1
    })
}

fn problem_line(problem: &Value) -> String {
    match problem.as_str() {
        Some(line) => line.to_owned(),
        None => format!(
            "{}:{}:{}: {}",
            text(&problem["file"]),
            text(&problem["line"]),
            text(&problem["column"]),
            text(&problem["message"])
        ),
    }
}

/// `linkops status`: health, Git, reconcile suspension, in one screen.
pub async fn status(client: &Client, json: bool) -> Result<()> {
    let health: Value = client.get("/health").await?;
    let git: Value = client.get("/api/git/status").await?;
    let machines: Vec<Value> = client.get("/api/links").await?;
    if json {
        return print_json(&json!({ "health": health, "git": git, "machines": machines.len() }));
    }
    println!(
        "daemon     {} ({})",
        client.server(),
        text(&health["status"])
    );
    println!(
        "git        {} @ {} — applied {} ({})",
        text(&git["url"]),
        text(&git["branch"]),
        text(&git["applied_revision"]),
        text(&git["applied_at"])
    );
    if let Some(attempt) = git["last_attempt"].as_object() {
        println!(
            "last sync  {} at {} by {}",
            text(&attempt["result"]),
            text(&attempt["started_at"]),
            text(&attempt["trigger"])
        );
    }
    for error in git["last_error"].as_array().into_iter().flatten() {
        println!("  {}", text(error));
    }
    let count = |state: &str, field: &str| {
        machines
            .iter()
            .filter(|m| m[field]["state"] == state)
            .count()
    };
    println!(
        "machines   {} — {} reachable, {} enrolled",
        machines.len(),
        count("reachable", "health"),
        count("enrolled", "enrollment")
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
    let runs: Vec<Value> = client.get("/api/runs").await?;
    let states: BTreeMap<String, RunState> = runs
        .iter()
        .filter_map(|run| {
            let state = serde_json::from_value(run["state"].clone()).ok()?;
            Some((text(&run["id"]), state))
        })
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

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
        for (states, total, progress, end) in cases {
            let tally = Tally::of(states.iter().copied(), *total);
            assert_eq!(tally.to_string(), *progress, "{states:?}");
            assert_eq!(tally.ended(), *end, "{states:?}");
        }
    }
}
