//! Group commit of machine statuses. A check's status is durable before its
//! reconcile ends, as before, but the checks of a sweep share transactions:
//! at 10,000 machines checked every minute, one commit (and `fdatasync`) per
//! write was 333 a second, made on the async runtime's threads.
//!
//! One writer thread takes whatever is queued — everything that arrived
//! while the last commit ran, up to [`MOST_PER_COMMIT`] — and commits it in
//! one transaction, then answers each writer. Nothing waits for a batch to
//! fill: a lone write commits at once. Should a batch fail, its writes are
//! committed one by one, so each writer learns its own outcome.

use tokio::sync::{mpsc, oneshot};

use super::observed::StatusWrite;
use super::{Error, Result, Store};

/// Writes one transaction holds at most (a sweep's worth keeps each commit short).
const MOST_PER_COMMIT: usize = 512;
/// Writes queued at most; beyond, writers wait (backpressure, not memory).
const QUEUE: usize = 4096;

struct Queued {
    write: StatusWrite,
    done: oneshot::Sender<Result<()>>,
}

/// A handle on the writer thread; cheap to clone. The thread ends when the
/// last handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct StatusWriter {
    queue: mpsc::Sender<Queued>,
}

impl StatusWriter {
    pub fn start(store: Store) -> StatusWriter {
        let (queue, received) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("linkops-status-writer".into())
            .spawn(move || write_batches(&store, received))
            .expect("a thread can be started");
        StatusWriter { queue }
    }

    /// Stores `write` (as [`Store::put_machine_statuses`] does) once its
    /// batch has committed.
    pub async fn put(&self, write: StatusWrite) -> Result<()> {
        let (done, outcome) = oneshot::channel();
        self.queue
            .send(Queued { write, done })
            .await
            .map_err(|_| Error::WriterStopped)?;
        outcome.await.map_err(|_| Error::WriterStopped)?
    }
}

fn write_batches(store: &Store, mut received: mpsc::Receiver<Queued>) {
    let mut writes = Vec::with_capacity(MOST_PER_COMMIT);
    let mut waiting = Vec::with_capacity(MOST_PER_COMMIT);
    while let Some(first) = received.blocking_recv() {
        let mut next = Some(first);
        while let Some(Queued { write, done }) = next {
            writes.push(write);
            waiting.push(done);
            next = match writes.len() < MOST_PER_COMMIT {
                true => received.try_recv().ok(),
                false => None,
            };
        }
        match store.put_machine_statuses(&writes) {
            Ok(()) => {
                for done in waiting.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::warn!(%error, writes = writes.len(), "a batch of machine statuses failed to commit; committing them one by one");
                for (write, done) in writes.iter().zip(waiting.drain(..)) {
                    let _ = done.send(store.put_machine_statuses(std::slice::from_ref(write)));
                }
            }
        }
        writes.clear();
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing;
    use linkops_reconcilers::machine::{Health, MachineStatus};

    use super::*;
    use crate::store::HealthSample;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_all_stored_in_order_per_machine() {
        for backing in testing::backings() {
            let store = backing.open();
            let writer = StatusWriter::start(store.clone());
            // 100 machines written at once, each machine's 20 writes in turn.
            let per_machine = (0..100i64).map(|m| {
                let writer = writer.clone();
                async move {
                    for check in 0..20 {
                        let at_ms = check * 100 + m;
                        let mut status = MachineStatus::new(&format!("m{m}"));
                        status.checked_at_ms = Some(at_ms);
                        let sample = HealthSample {
                            at_ms,
                            health: Health::Reachable { latency_ms: 1 },
                            enrolled: false,
                        };
                        let write = StatusWrite {
                            status,
                            sample: Some(sample),
                            audits: Vec::new(),
                            outgoing: Vec::new(),
                        };
                        writer.put(write).await.unwrap();
                    }
                }
            });
            futures::future::join_all(per_machine).await;
            let checked = store.run(|store| {
                for m in 0..100 {
                    let id = format!("m{m}");
                    let status = store.machine_status(&id)?.unwrap();
                    assert_eq!(
                        status.checked_at_ms,
                        Some(1900 + m),
                        "{id}: the last write wins"
                    );
                    assert_eq!(store.health_history(&id, 100)?.len(), 20, "{id}");
                }
                Ok(())
            });
            checked.await.unwrap();
        }
    }
}
