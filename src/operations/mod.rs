//! The operation engine: runs a catalog script on machines over pooled SSH
//! and records every host's state and output in the store as it happens.
//!
//! Run-requests from Git and (later) `POST /api/operations/run` both start
//! operations here: one engine. The script text travels on the channel's
//! stdin to the catalog's interpreter; parameters travel as environment
//! variables set through quoted `env` arguments, never spliced into script text.

use std::collections::BTreeMap;
use std::sync::Arc;

use linkops_reconcilers::machine::Machine;
use linkops_reconcilers::operation::{
    HostResult, HostState, Operation, OperationState, OutputChunk, Requester, Stream, summarize,
};
use linkops_reconcilers::run::{Placement, RunRecord};
use linkops_reconcilers::script::Script;
use tokio::sync::Semaphore;

use crate::fleet::Fleet;
use crate::ssh::{ExitStatus, OutputEvent};
use crate::store::{self, Store, now_ms};

/// Output kept per host and stream; the rest is counted, not stored.
pub const OUTPUT_CAP: u64 = 4 << 20;

/// Output is written to the store in batches of about this size (a commit costs ~1 ms).
const BATCH_BYTES: usize = 32 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("parameter {name}: {message}")]
    Param { name: String, message: String },
    #[error("parameter name {0:?} cannot be passed as an environment variable")]
    ParamName(String),
}

/// What to run where.
pub struct Plan {
    pub script: Script,
    /// Checked and resolved values, by parameter name.
    pub params: BTreeMap<String, String>,
    /// Target machines in order, each to run on or to skip (with the reason).
    pub machines: Vec<(Machine, Placement)>,
    pub requested_by: Requester,
    /// The requester's own parallelism limit, if any.
    pub concurrency: Option<usize>,
}

#[derive(Clone)]
pub struct Engine {
    store: Store,
    fleet: Fleet,
}

impl Engine {
    pub fn new(store: Store, fleet: Fleet) -> Engine {
        Engine { store, fleet }
    }

    /// Records the operation (and, for a run-request, its claim, in the same
    /// transaction), then runs it in the background. Returns once recorded.
    pub fn start(&self, plan: Plan, claim: Option<RunRecord>) -> Result<Operation, Error> {
        let command = command_line(&plan.script, &plan.params)?;
        let hosts: Vec<HostResult> = plan
            .machines
            .iter()
            .map(|(machine, placement)| HostResult {
                machine_id: machine.id.clone(),
                state: match placement {
                    Placement::Run => HostState::Pending,
                    Placement::Skip { reason } => HostState::Skipped {
                        reason: reason.clone(),
                    },
                },
                started_at_ms: None,
                finished_at_ms: None,
                stdout_bytes: 0,
                stderr_bytes: 0,
            })
            .collect();
        let operation = Operation {
            id: 0,
            script: plan.script.id.clone(),
            params: plan.params.clone(),
            machines: plan.machines.iter().map(|(m, _)| m.id.clone()).collect(),
            requested_by: plan.requested_by.clone(),
            state: OperationState::Pending,
            created_at_ms: now_ms(),
            finished_at_ms: None,
        };
        let operation = self.store.create_operation(&operation, &hosts, claim)?;
        tracing::info!(operation = operation.id, script = %operation.script, hosts = hosts.len(), "operation started");
        let run = Run {
            engine: self.clone(),
            id: operation.id,
            command: Arc::from(command),
            script: Arc::new(plan.script),
        };
        tokio::spawn(run.execute(plan.machines, hosts, plan.concurrency));
        Ok(operation)
    }
}

/// One operation in flight.
struct Run {
    engine: Engine,
    id: u64,
    command: Arc<str>,
    script: Arc<Script>,
}

impl Run {
    async fn execute(
        self,
        machines: Vec<(Machine, Placement)>,
        hosts: Vec<HostResult>,
        concurrency: Option<usize>,
    ) {
        let store = &self.engine.store;
        if let Err(error) = store.update_operation_state(self.id, OperationState::Running, false) {
            tracing::error!(operation = self.id, %error, "cannot record the operation as running");
        }
        // The smallest of the script's and the request's limits (the fleet's applies per session).
        let limit = [self.script.max_parallel.map(|n| n as usize), concurrency]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        let parallel = Arc::new(Semaphore::new(limit));
        let run = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        let mut states = Vec::new();
        for ((machine, placement), host) in machines.into_iter().zip(hosts) {
            if placement != Placement::Run {
                states.push(host.state);
                continue;
            }
            let (run, parallel) = (run.clone(), parallel.clone());
            tasks.spawn(async move {
                let _slot = parallel.acquire_owned().await.expect("never closed");
                run.on_host(machine, host).await
            });
        }
        while let Some(result) = tasks.join_next().await {
            states.push(match result {
                Ok(state) => state,
                Err(error) => HostState::Failed {
                    exit_code: None,
                    signal: None,
                    error: Some(format!("host task failed: {error}")),
                },
            });
        }
        let state = summarize(&states);
        if let Err(error) = run.engine.store.update_operation_state(run.id, state, true) {
            tracing::error!(operation = run.id, %error, "cannot record the operation's end");
        }
        tracing::info!(operation = run.id, ?state, "operation finished");
    }

    /// Runs the script on one machine, recording as it goes; returns the final state.
    async fn on_host(&self, machine: Machine, mut host: HostResult) -> HostState {
        let store = &self.engine.store;
        let _session = self
            .engine
            .fleet
            .sessions
            .acquire()
            .await
            .expect("never closed");
        host.state = HostState::Running;
        host.started_at_ms = Some(now_ms());
        store.put_host_result(self.id, &host).ok();

        host.state = match self.stream(&machine, &mut host).await {
            Ok(ExitStatus::Code(0)) => HostState::Succeeded,
            Ok(ExitStatus::Code(code)) => HostState::Failed {
                exit_code: Some(code),
                signal: None,
                error: None,
            },
            Ok(ExitStatus::Signal { name, .. }) => HostState::Failed {
                exit_code: None,
                signal: Some(name),
                error: None,
            },
            Ok(ExitStatus::Unknown) => HostState::Failed {
                exit_code: None,
                signal: None,
                error: Some("the session closed without an exit status".into()),
            },
            Err(crate::ssh::Error::CommandTimeout { .. }) => HostState::Timeout,
            Err(error) => {
                let target = self.engine.fleet.target(&machine);
                self.engine.fleet.pool.forget(&target).await;
                HostState::Failed {
                    exit_code: None,
                    signal: None,
                    error: Some(error.to_string()),
                }
            }
        };
        host.finished_at_ms = Some(now_ms());
        if let Err(error) = store.put_host_result(self.id, &host) {
            tracing::error!(operation = self.id, machine = %machine.id, %error, "cannot record the host's result");
        }
        host.state
    }

    /// Streams the output into the store in batches; bounded memory whatever the size.
    async fn stream(
        &self,
        machine: &Machine,
        host: &mut HostResult,
    ) -> Result<ExitStatus, crate::ssh::Error> {
        let connection = self
            .engine
            .fleet
            .pool
            .get(&self.engine.fleet.target(machine))
            .await?;
        let timeout = self.script.timeout;
        let mut execution = connection
            .exec(&self.command, self.script.body.as_bytes(), timeout)
            .await?;
        let mut batch: Vec<OutputChunk> = Vec::new();
        let mut batch_bytes = 0;
        let mut truncated = [false, false];
        let result = loop {
            let event = match execution.next_output().await {
                Ok(Some(event)) => event,
                Ok(None) => break Ok(execution.exit_status()),
                Err(error) => break Err(error),
            };
            let (stream, data, count, index) = match event {
                OutputEvent::Stdout(data) => (Stream::Stdout, data, &mut host.stdout_bytes, 0),
                OutputEvent::Stderr(data) => (Stream::Stderr, data, &mut host.stderr_bytes, 1),
            };
            let kept_before = *count;
            *count += data.len() as u64;
            let room = OUTPUT_CAP.saturating_sub(kept_before) as usize;
            if room > 0 {
                let kept = data[..data.len().min(room)].to_vec();
                batch_bytes += kept.len();
                batch.push(OutputChunk {
                    machine_id: machine.id.clone(),
                    stream,
                    data: kept,
                    at_ms: now_ms(),
                });
            } else if !truncated[index] {
                truncated[index] = true;
                let marker = format!("\n[linkops: output beyond {OUTPUT_CAP} bytes is not kept]\n");
                batch.push(OutputChunk {
                    machine_id: machine.id.clone(),
                    stream,
                    data: marker.into_bytes(),
                    at_ms: now_ms(),
                });
            }
            if batch_bytes >= BATCH_BYTES {
                self.flush(host, &mut batch);
                batch_bytes = 0;
            }
        };
        self.flush(host, &mut batch);
        result
    }

    fn flush(&self, host: &HostResult, batch: &mut Vec<OutputChunk>) {
        if batch.is_empty() {
            return;
        }
        if let Err(error) = self.engine.store.append_output(self.id, host, batch) {
            tracing::error!(operation = self.id, machine = %host.machine_id, %error, "cannot record output");
        }
        batch.clear();
    }
}

/// `env LINKOPS_PARAM_<NAME>='value' … <interpreter>`: values are quoted for
/// the remote shell, so no value can become code.
fn command_line(script: &Script, params: &BTreeMap<String, String>) -> Result<String, Error> {
    let mut command = String::from("env");
    for (name, value) in params {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::ParamName(name.clone()));
        }
        let assignment = format!("LINKOPS_PARAM_{}={value}", name.to_ascii_uppercase());
        let quoted = shlex::try_quote(&assignment).map_err(|_| Error::Param {
            name: name.clone(),
            message: "contains a NUL byte".into(),
        })?;
        command.push(' ');
        command.push_str(&quoted);
    }
    command.push(' ');
    command.push_str(&script.interpreter);
    Ok(command)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use linkops_reconcilers::script::Targets;

    fn script() -> Script {
        Script {
            id: "s".into(),
            name: "s".into(),
            description: String::new(),
            body: String::new(),
            interpreter: "/bin/sh".into(),
            params: vec![],
            timeout: Duration::from_secs(1),
            max_parallel: None,
            targets: Targets::default(),
        }
    }

    #[test]
    fn parameters_are_quoted_not_spliced() {
        let params = BTreeMap::from([
            ("package".to_owned(), "htop; rm -rf /".to_owned()),
            ("note".to_owned(), "it's $HOME `id` \"q\"".to_owned()),
        ]);
        let mut script = script();
        // The interpreter prints what the script would see.
        script.interpreter = "printenv LINKOPS_PARAM_NOTE LINKOPS_PARAM_PACKAGE".into();
        let line = command_line(&script, &params).unwrap();
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .unwrap();
        assert!(output.status.success(), "{line}");
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "it's $HOME `id` \"q\"\nhtop; rm -rf /\n"
        );
    }
}
