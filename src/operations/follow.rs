//! Following an operation's log: what `GET /api/operations/{id}/events`
//! streams, on whichever replica the client reached.
//!
//! The log is read from the store, then live events are passed on as they are
//! broadcast; a follower that falls behind (a lag, a gap) reads the store
//! again, which has everything broadcast (it is written first). An operation
//! another replica runs has no live events here: its follower reads the store
//! whenever the store's doorbell says its log was written.

use std::sync::Arc;

use linkops_reconcilers::operation::OperationEvent;
use tokio::sync::{broadcast, mpsc};

use super::{Engine, LiveEvent};
use crate::store::{self, Followed, Ring, Store};

/// About how much of the event log one read takes.
pub const PAGE_BYTES: usize = 64 << 10;

/// How often a follower reads the log of an operation another replica runs
/// by itself: the store's doorbell wakes it as soon as that one writes.
const ELSEWHERE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

impl Engine {
    /// The events of operation `id` after sequence number `after`, in order,
    /// each once, ending with its `end`. The stream also ends when the store
    /// cannot be read (the client may resume after the last event it got).
    /// Dropping it stops the follower at once.
    pub fn follow(&self, id: u64, after: u64) -> mpsc::Receiver<Arc<LiveEvent>> {
        // Subscribe before reading the log, so nothing falls between the two.
        let live = self.subscribe(id);
        // Small: a slow client holds few events; behind that, its follower reads the store.
        let (client, receiver) = mpsc::channel(1);
        let follower = Follower {
            engine: self.clone(),
            id,
            last: after,
            live,
            client,
        };
        tokio::spawn(follower.run());
        receiver
    }
}

/// Feeds one client: the log from the store, then live events; back to the
/// store whenever it fell behind.
struct Follower {
    engine: Engine,
    id: u64,
    last: u64,
    live: Option<broadcast::Receiver<Arc<LiveEvent>>>,
    client: mpsc::Sender<Arc<LiveEvent>>,
}

impl Follower {
    async fn run(mut self) {
        let client = self.client.clone();
        tokio::select! {
            () = self.feed() => {}
            // A client that went away stops a follower waiting for events.
            () = client.closed() => {}
        }
    }

    async fn feed(&mut self) {
        let mut behind = true;
        // Seen finished in the store: the page after that is the last.
        let mut ended = false;
        // Woken by another replica's writes of the log (subscribed once needed).
        let mut rung: Option<Ring> = None;
        loop {
            if behind {
                let Some(page) = self.page().await else {
                    return;
                };
                if page.is_empty() {
                    behind = false;
                    if self.live.is_none() {
                        // Not running here: it ended (its `end` sent), or another
                        // replica runs it and the store is read again shortly.
                        if ended {
                            return;
                        }
                        let store = &self.engine.store;
                        match running_elsewhere(store, self.id).await {
                            true => {
                                rung.get_or_insert_with(|| store.doorbell(Followed::OperationLogs))
                                    .wait(ELSEWHERE_POLL)
                                    .await;
                            }
                            // It ended since the page was read: its last events
                            // are in the store now, read once more.
                            false => ended = true,
                        }
                        behind = true;
                    }
                    continue;
                }
                for recorded in page {
                    let event = Arc::new(LiveEvent {
                        recorded,
                        encoded: std::sync::OnceLock::new(),
                    });
                    if !self.pass(event).await {
                        return;
                    }
                }
                continue;
            }
            let Some(receiver) = self.live.as_mut() else {
                return;
            };
            match receiver.recv().await {
                Ok(live) if live.recorded.seq <= self.last => {}
                Ok(live) if live.recorded.seq == self.last + 1 => {
                    if !self.pass(live).await {
                        return;
                    }
                }
                // A gap or a lag: the store has everything broadcast.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => behind = true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.live = None;
                    behind = true;
                }
            }
        }
    }

    /// Passes one event on; false once the client is gone or the event was the `end`.
    async fn pass(&mut self, event: Arc<LiveEvent>) -> bool {
        self.last = event.recorded.seq;
        let end = matches!(event.recorded.event, OperationEvent::End { .. });
        self.client.send(event).await.is_ok() && !end
    }

    /// The next page of the log from the store; `None` when it cannot be read.
    async fn page(&self) -> Option<Vec<linkops_reconcilers::operation::RecordedEvent>> {
        loop {
            let (id, after) = (self.id, self.last);
            let permit = self.engine.catch_up_permit().await;
            let read = self.engine.store.run(move |store| {
                let _permit = permit;
                store.operation_events(id, after, 512, PAGE_BYTES)
            });
            match read.await {
                Ok(page) => return Some(page),
                // The database restarting: read again shortly, from where it was.
                Err(error) if error.is_transient() => {
                    tokio::time::sleep(ELSEWHERE_POLL).await;
                }
                Err(store::Error::ShuttingDown) => return None,
                Err(error) => {
                    tracing::warn!(operation = id, %error, "cannot read the operation's events: its stream ends here (the client may resume with Last-Event-ID)");
                    return None;
                }
            }
        }
    }
}

/// Whether operation `id` has not finished (so another replica runs it), or
/// the store cannot tell for a moment.
async fn running_elsewhere(store: &Store, id: u64) -> bool {
    match store.run(move |store| store.operation_state(id)).await {
        Ok(Some(state)) => !state.is_finished(),
        // The database restarting: it may well still run.
        Err(error) => error.is_transient(),
        Ok(None) => false,
    }
}
