//! One authenticated SSH connection per machine, shared by every check and command.
//!
//! Each machine's slot has its own async lock, so concurrent callers wait for
//! one connect instead of racing to open several; a closed connection is
//! replaced on the next use, and one idle for longer than the idle timeout is
//! closed by the reaper. At most `capacity` connections stay open: beyond it
//! the least recently used idle ones close, so memory and open files are
//! bounded by a setting (`[ssh] pool_size`) whatever the fleet's size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use linkops_reconcilers::certificate::Purpose;

use super::{ConnectOptions, Connection, Result, Target};

struct Pooled {
    connection: Arc<Connection>,
    last_used: Instant,
}

type Slot = Arc<AsyncMutex<Option<Pooled>>>;

#[derive(Clone)]
pub struct Pool {
    options: ConnectOptions,
    /// A std mutex: held only to find or insert a slot, never across an await.
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    /// Connections kept open at most.
    capacity: usize,
    /// Slots holding a connection (closed ones included, until dropped).
    pooled: Arc<AtomicUsize>,
}

impl Pool {
    pub fn new(options: ConnectOptions, capacity: usize) -> Pool {
        Pool {
            options,
            slots: Arc::default(),
            capacity: capacity.max(1),
            pooled: Arc::default(),
        }
    }

    /// How many connections the pool holds now.
    pub fn open_connections(&self) -> usize {
        self.pooled.load(Ordering::Relaxed)
    }

    /// How this pool connects (for connections that must not be shared).
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The open connection to `target`, connecting if there is none (for the
    /// daemon's own checks).
    pub async fn get(&self, target: &Target) -> Result<Arc<Connection>> {
        self.get_for(target, &Purpose::Health).await
    }

    /// [`Pool::get`], a new connection opened for `purpose` (its certificate
    /// names it; later users share the connection).
    pub async fn get_for(&self, target: &Target, purpose: &Purpose) -> Result<Arc<Connection>> {
        let slot = self.slot(target);
        let mut guard = slot.lock().await;
        if let Some(pooled) = guard.as_mut().filter(|p| !p.connection.is_closed()) {
            pooled.last_used = Instant::now();
            return Ok(pooled.connection.clone());
        }
        let connection = Arc::new(Connection::open_for(target, &self.options, purpose).await?);
        let replaced = guard.replace(Pooled {
            connection: connection.clone(),
            last_used: Instant::now(),
        });
        drop(guard);
        if replaced.is_none() && self.pooled.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.evict();
        }
        Ok(connection)
    }

    /// Closes the least recently used idle connections until a tenth of the
    /// capacity is free again (a tenth at once: one scan serves many connects).
    fn evict(&self) {
        let slots = self.all_slots();
        let mut idle: Vec<(Instant, Slot)> = slots
            .into_iter()
            .filter_map(|slot| {
                let guard = slot.try_lock().ok()?;
                let pooled = guard.as_ref()?;
                let unused = Arc::strong_count(&pooled.connection) == 1;
                let last_used = pooled.last_used;
                drop(guard);
                unused.then_some((last_used, slot))
            })
            .collect();
        idle.sort_by_key(|(last_used, _)| *last_used);
        let target = self.capacity - self.capacity / 10;
        for (_, slot) in idle {
            if self.open_connections() <= target {
                break;
            }
            self.take(&slot);
        }
    }

    /// Drops a slot's connection, if it is idle now.
    fn take(&self, slot: &Slot) {
        if let Ok(mut guard) = slot.try_lock()
            && guard
                .as_ref()
                .is_some_and(|p| Arc::strong_count(&p.connection) == 1)
            && guard.take().is_some()
        {
            self.pooled.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops the pooled connection to `target` (after it failed), so the next
    /// `get` connects afresh.
    pub async fn forget(&self, target: &Target) {
        let slot = self.slot(target);
        if slot.lock().await.take().is_some() {
            self.pooled.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes, every so often, connections nobody has used for `idle`. Stops on `shutdown`.
    pub fn spawn_reaper(
        &self,
        idle: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((idle / 4).max(Duration::from_secs(1)));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => pool.close_idle(idle),
                }
            }
        })
    }

    /// Closes the connections unused for `idle` (and drops closed ones).
    pub fn close_idle(&self, idle: Duration) {
        let slots = self.all_slots();
        for slot in slots {
            // A slot in use is not idle.
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            let expired = guard.as_ref().is_some_and(|p| {
                p.connection.is_closed()
                    || (p.last_used.elapsed() >= idle && Arc::strong_count(&p.connection) == 1)
            });
            if expired {
                tracing::debug!(
                    target = guard.as_ref().map_or("", |p| p.connection.target()),
                    "closing an idle SSH connection"
                );
                guard.take();
                self.pooled.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Every slot, copied out so that the map's lock is not held while they are looked at.
    fn all_slots(&self) -> Vec<Slot> {
        let slots = self.slots.lock().expect("never poisoned");
        slots.values().cloned().collect()
    }

    fn slot(&self, target: &Target) -> Slot {
        // Everything that identifies the session: a changed key or address is a new connection.
        let key = format!(
            "{target}|{}|{}",
            target.key,
            target.pinned_host_key.as_deref().unwrap_or("")
        );
        self.slots
            .lock()
            .expect("never poisoned")
            .entry(key)
            .or_default()
            .clone()
    }
}
