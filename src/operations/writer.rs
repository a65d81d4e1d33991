//! The one writer of an operation's event log.
//!
//! Host tasks send updates over a bounded channel (a slow store slows the
//! hosts' reads, and so the SSH windows, rather than growing memory); the
//! writer numbers them in store transactions of up to 20 ms or 256 KiB, then
//! broadcasts them to live subscribers. A subscriber that falls behind misses
//! broadcasts, never blocks the writer, and catches up from the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use linkops_reconcilers::certificate::CertificateLogin;
use linkops_reconcilers::operation::{
    HostResult, HostState, Operation, OperationEvent, OperationState, Stream,
};
use tokio::sync::{broadcast, mpsc};

use crate::store::{OperationUpdate, Store, now_ms};

const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// The last output kept per host for a failure's notification.
const TAIL_BYTES: usize = 512;
const BATCH_BYTES: usize = 256 << 10;

/// What host tasks tell the writer.
pub enum Update {
    /// `data` is what is kept (possibly nothing); `received` counts every byte that arrived.
    Output {
        machine_id: String,
        stream: Stream,
        data: Vec<u8>,
        received: u64,
    },
    Host {
        machine_id: String,
        state: HostState,
    },
    /// A host's script logged in with this certificate.
    Login {
        machine_id: String,
        certificate: CertificateLogin,
    },
    /// The operation's state changed (not for the last time).
    State(OperationState),
    /// The last update: the operation's final state.
    Finish(OperationState),
}

pub struct Writer {
    /// The operation as created (its end is told to the outside from it).
    pub operation: Operation,
    pub notifier: Arc<crate::notify::Notifier>,
    pub store: Store,
    pub hosts: HashMap<String, HostResult>,
    pub updates: mpsc::Receiver<Update>,
    pub events: broadcast::Sender<Arc<super::LiveEvent>>,
    /// The last [`TAIL_BYTES`] each host printed (masked, as stored): what a
    /// failure's notification quotes.
    pub tails: HashMap<String, Vec<u8>>,
}

impl Writer {
    pub async fn run(mut self) {
        let mut finished = false;
        while !finished {
            let Some(first) = self.updates.recv().await else {
                break;
            };
            let mut batch = Batch::default();
            finished = self.add(&mut batch, first);
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while !finished && batch.bytes < BATCH_BYTES {
                tokio::select! {
                    update = self.updates.recv() => match update {
                        Some(update) => finished = self.add(&mut batch, update),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.commit(batch).await;
        }
    }

    /// Adds an update to the batch; true when it is the last.
    fn add(&mut self, batch: &mut Batch, update: Update) -> bool {
        match update {
            Update::Output {
                machine_id,
                stream,
                data,
                received,
            } => {
                if let Some(host) = self.hosts.get_mut(&machine_id) {
                    match stream {
                        Stream::Stdout => host.stdout_bytes += received,
                        Stream::Stderr => host.stderr_bytes += received,
                    }
                    batch.touched.insert(machine_id.clone());
                }
                if !data.is_empty() {
                    let tail = self.tails.entry(machine_id.clone()).or_default();
                    tail.extend_from_slice(&data);
                    tail.drain(..tail.len().saturating_sub(TAIL_BYTES));
                    batch.bytes += data.len();
                    batch.update.events.push(OperationEvent::Output {
                        machine_id,
                        stream,
                        data,
                    });
                }
                false
            }
            Update::Host { machine_id, state } => {
                if let Some(host) = self.hosts.get_mut(&machine_id) {
                    match state {
                        HostState::Running => host.started_at_ms = Some(now_ms()),
                        ref s if s.is_final() => host.finished_at_ms = Some(now_ms()),
                        _ => {}
                    }
                    host.state = state.clone();
                    batch.touched.insert(machine_id.clone());
                }
                batch
                    .update
                    .events
                    .push(OperationEvent::Host { machine_id, state });
                false
            }
            Update::Login {
                machine_id,
                certificate,
            } => {
                if let Some(host) = self.hosts.get_mut(&machine_id) {
                    host.certificate = Some(certificate);
                    batch.touched.insert(machine_id);
                }
                false
            }
            Update::State(state) => {
                batch
                    .update
                    .events
                    .push(OperationEvent::Operation { state });
                batch.update.state = Some((state, false));
                false
            }
            Update::Finish(state) => {
                batch
                    .update
                    .events
                    .push(OperationEvent::Operation { state });
                batch.update.events.push(OperationEvent::End { state });
                batch.update.state = Some((state, true));
                // What the outside hears of its end, queued with it.
                let ended = Operation {
                    state,
                    finished_at_ms: Some(now_ms()),
                    ..self.operation.clone()
                };
                let hosts: Vec<HostResult> = ended
                    .machines
                    .iter()
                    .filter_map(|id| self.hosts.get(id).cloned())
                    .collect();
                let notifier = &self.notifier;
                let tails = (self.tails.iter())
                    .map(|(id, tail)| (id.clone(), String::from_utf8_lossy(tail).into_owned()))
                    .collect();
                let (statuses, events) = linkops_reconcilers::outbox::for_operation(
                    &ended,
                    &hosts,
                    &tails,
                    notifier.console_url(),
                    now_ms(),
                );
                batch.update.outgoing = notifier.route(statuses, events);
                true
            }
        }
    }

    async fn commit(&mut self, mut batch: Batch) {
        batch.update.hosts = batch
            .touched
            .iter()
            .filter_map(|id| self.hosts.get(id).cloned())
            .collect();
        let operation = self.operation.id;
        // The database unreachable a moment (restarting): the same batch again,
        // while the hosts wait (their output is read only as this drains).
        let mut pause = RETRY_FIRST;
        let started = std::time::Instant::now();
        let recorded = loop {
            let (store, update) = (self.store.clone(), batch.update.clone());
            let recorded =
                crate::blocking::run(move || store.record_operation_update(operation, update))
                    .await;
            match recorded {
                Ok(Err(error)) if error.is_transient() && started.elapsed() < RETRY_FOR => {
                    tracing::warn!(operation, %error, "cannot record operation events yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                recorded => break recorded,
            }
        };
        match recorded {
            Ok(Ok(events)) => {
                for event in events {
                    // No subscribers is fine: the log is in the store.
                    let live = super::LiveEvent {
                        recorded: event,
                        encoded: Default::default(),
                    };
                    self.events.send(Arc::new(live)).ok();
                }
            }
            Ok(Err(error)) => tracing::error!(operation, %error, "cannot record operation events"),
            Err(error) => tracing::error!(operation, %error, "the event writer's commit panicked"),
        }
    }
}

/// How a batch the store could not take for a moment is tried again: after
/// this, doubling up to [`RETRY_MAX`], for at most [`RETRY_FOR`] (by then a
/// replica cut off from its database has stopped: its lease passed).
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
struct Batch {
    update: OperationUpdate,
    touched: std::collections::BTreeSet<String>,
    bytes: usize,
}
