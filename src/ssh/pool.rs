//! One authenticated SSH connection per machine, shared by every check and command.
//!
//! Each machine's slot has its own async lock, so concurrent callers wait for
//! one connect instead of racing to open several; a closed connection is
//! replaced on the next use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

use super::{ConnectOptions, Connection, Result, Target};

type Slot = Arc<AsyncMutex<Option<Arc<Connection>>>>;

#[derive(Clone)]
pub struct Pool {
    options: ConnectOptions,
    /// A std mutex: held only to find or insert a slot, never across an await.
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl Pool {
    pub fn new(options: ConnectOptions) -> Pool {
        Pool {
            options,
            slots: Arc::default(),
        }
    }

    /// The open connection to `target`, connecting if there is none.
    pub async fn get(&self, target: &Target) -> Result<Arc<Connection>> {
        let slot = self.slot(target);
        let mut guard = slot.lock().await;
        if let Some(connection) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(Connection::open(target, &self.options).await?);
        *guard = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the pooled connection to `target` (after it failed), so the next
    /// `get` connects afresh.
    pub async fn forget(&self, target: &Target) {
        let slot = self.slot(target);
        slot.lock().await.take();
    }

    /// Number of open pooled connections.
    pub fn open_connections(&self) -> usize {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .expect("pool lock is never poisoned")
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter(|slot| {
                slot.try_lock()
                    .map(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                    .unwrap_or(true)
            })
            .count()
    }

    fn slot(&self, target: &Target) -> Slot {
        // Everything that identifies the session: a changed key or address is a new connection.
        let key = format!(
            "{target}|{}|{}",
            target.key_path.display(),
            target.pinned_host_key.as_deref().unwrap_or("")
        );
        self.slots
            .lock()
            .expect("pool lock is never poisoned")
            .entry(key)
            .or_default()
            .clone()
    }
}
