//! The store's doorbell: what wakes the followers of a table when a commit
//! wrote it. redb's commits ring this process's followers themselves. A
//! shared store: a commit says which tables it wrote
//! (`NOTIFY linkops, 'table,table'`, sent in the commit's own round trip and
//! delivered only if it commits), and each replica's listener wakes the
//! followers of those tables. Table names only, never data or ids of
//! records: a payload stays far below PostgreSQL's 8,000 bytes whatever a
//! transaction wrote.
//!
//! PostgreSQL keeps no notification for a listener that is away, so after
//! every (re)connect the listener rings every table: the followers read
//! again from where they were. Followers also look by themselves at a
//! slower pace, should the listener be down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

/// The channel every replica of a store listens on.
pub const CHANNEL: &str = "linkops";

/// How long the listener waits before connecting again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The tables followed in this process, each with its bell.
#[derive(Default)]
pub struct Doorbell {
    tables: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl Doorbell {
    fn subscribe(&self, table: &str) -> watch::Receiver<()> {
        self.tables
            .lock()
            .expect("never poisoned")
            .entry(table.to_owned())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Wakes the followers of the tables a notification names.
    fn ring(&self, payload: &str) {
        self.ring_tables(payload.split(','));
    }

    /// Wakes the followers of `written` (a commit's tables).
    pub fn ring_tables<'t>(&self, written: impl IntoIterator<Item = &'t str>) {
        let tables = self.tables.lock().expect("never poisoned");
        for table in written {
            if let Some(bell) = tables.get(table) {
                bell.send_replace(());
            }
        }
    }

    fn ring_all(&self) {
        for bell in self.tables.lock().expect("never poisoned").values() {
            bell.send_replace(());
        }
    }

    /// What wakes a follower of `tables`.
    pub fn ring_for(&self, tables: &[&str]) -> Ring {
        Ring {
            bells: tables.iter().map(|table| self.subscribe(table)).collect(),
        }
    }
}

/// Listens for the store's notifications until the runtime stops,
/// connecting again after any loss.
pub async fn listen(config: tokio_postgres::Config, doorbell: Arc<Doorbell>, store: Arc<str>) {
    let mut away = false;
    loop {
        let ended = session(&config, &doorbell, &mut away).await;
        if !away {
            tracing::warn!(%store, error = ended.err().map(|error| error.to_string()), "the store's notifications stopped: replicas follow each other by looking every second or two until they are back");
            away = true;
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// One connection's `LISTEN`, until it breaks.
async fn session(
    config: &tokio_postgres::Config,
    doorbell: &Doorbell,
    away: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&listen);
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            listened_now = &mut listening, if !listened => {
                listened_now?;
                listened = true;
                // Whatever was written while nobody listened.
                doorbell.ring_all();
                if std::mem::take(away) {
                    tracing::info!("the store's notifications are back");
                }
            }
            message = messages.next() => match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(notification))) => {
                    doorbell.ring(notification.payload());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    }
}

/// What wakes one follower: a commit that wrote one of its tables, or (a
/// shared store) the listener's (re)connect.
pub struct Ring {
    bells: Vec<watch::Receiver<()>>,
}

impl Ring {
    /// Waits until a bell rings or `at_most` passed (the follower's own
    /// look); whether a bell rang.
    pub async fn wait(&mut self, at_most: Duration) -> bool {
        if self.bells.is_empty() {
            tokio::time::sleep(at_most).await;
            return false;
        }
        let rung =
            futures::future::select_all(self.bells.iter_mut().map(|bell| Box::pin(bell.changed())));
        let rung = tokio::select! {
            (rung, _, _) = rung => Some(rung.is_ok()),
            () = tokio::time::sleep(at_most) => None,
        };
        if rung == Some(false) {
            // The listener went with its engine: looking alone from now on.
            self.bells.clear();
        }
        // The read that follows covers every ring so far.
        for bell in &mut self.bells {
            bell.mark_unchanged();
        }
        rung == Some(true)
    }
}
