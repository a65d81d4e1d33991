//! `linkops logs` and a run's live output: an operation's events followed
//! (resumed after a dropped stream), each machine's output as it comes, a
//! progress line, the exit code of how it ended.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use base64::Engine as _;
use futures::StreamExt;
use linkops_reconcilers::operation::{HostState, OperationState, Stream};
use serde_json::{Value, json};

use super::{Client, Error, Result};
use crate::contract::{HostEvent, OperationView, OutputBytes, OutputChunk, OutputPage, StateEvent};

/// How many times a broken event stream is resumed before giving up.
const STREAM_RETRIES: u32 = 5;

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
pub(super) fn exit_code(state: OperationState) -> i32 {
    match state {
        OperationState::Succeeded => 0,
        _ => 1,
    }
}

/// Follows an operation's events to its end, resuming after a dropped
/// connection; returns its final state.
pub(super) async fn follow(client: &Client, id: u64, json: bool) -> Result<OperationState> {
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
