//! The outbox: commit statuses and notifications waiting to be delivered,
//! those given up on (the dead letters), and the statuses the forge has.
//!
//! Messages are queued in the transaction of the event they tell about
//! (`enqueue`, called by the store function that records the event), so a
//! crash loses both or neither; delivery removes them one by one.

use linkops_reconcilers::outbox::{CommitStatus, Message, Outgoing, Queued, retry_after_ms};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::schema::{FORGE_STATUSES, OUTBOX, OUTBOX_DEAD};
use super::{Result, Store, now_ms};

/// Dead letters kept; the oldest go first.
pub const MAX_DEAD_LETTERS: u64 = 1_000;

/// A commit status the forge accepted, with when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedStatus {
    pub status: CommitStatus,
    pub posted_at_ms: i64,
}

/// Queues `outgoing` in `tx`. A commit status the same as the last one
/// queued or posted for its commit and context is not queued again.
pub(super) fn enqueue(tx: &redb::WriteTransaction, outgoing: &[Outgoing]) -> Result<()> {
    if outgoing.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut queue = tx.open_table(OUTBOX)?;
    let posted = tx.open_table(FORGE_STATUSES)?;
    let mut seq = queue.last()?.map_or(1, |(key, _)| key.value() + 1);
    // A dead letter's number is never reused (the dead letters are by number too).
    let dead = tx.open_table(OUTBOX_DEAD)?;
    seq = seq.max(dead.last()?.map_or(1, |(key, _)| key.value() + 1));
    for item in outgoing {
        if let Message::CommitStatus(status) = &item.message {
            let last_queued = queue
                .iter()?
                .rev()
                .map(|entry| {
                    entry.map_err(super::Error::from).and_then(|(key, value)| {
                        decode::<Queued>("outbox", key.value(), value.value())
                    })
                })
                .find_map(|queued| match queued {
                    Ok(Queued {
                        message: Message::CommitStatus(queued),
                        ..
                    }) if queued.sha == status.sha && queued.context == status.context => {
                        Some(Ok(queued))
                    }
                    Ok(_) => None,
                    Err(error) => Some(Err(error)),
                })
                .transpose()?;
            let last = match last_queued {
                Some(queued) => Some(queued),
                None => posted
                    .get((status.sha.as_str(), status.context.as_str()))?
                    .map(|v| decode::<PostedStatus>("forge_statuses", &status.sha, v.value()))
                    .transpose()?
                    .map(|p| p.status),
            };
            if last.is_some_and(|last| {
                last.state == status.state && last.description == status.description
            }) {
                continue;
            }
        }
        let queued = Queued {
            seq,
            channel: item.channel.clone(),
            message: item.message.clone(),
            created_at_ms: now,
            attempts: 0,
            next_at_ms: now,
            last_error: None,
        };
        queue.insert(seq, encode(&queued).as_slice())?;
        seq += 1;
    }
    Ok(())
}

impl Store {
    /// Queues messages that belong to no other change (in a transaction of their own).
    pub fn enqueue(&self, outgoing: &[Outgoing]) -> Result<()> {
        let tx = self.db.begin_write()?;
        enqueue(&tx, outgoing)?;
        tx.commit()?;
        Ok(())
    }

    /// The oldest message queued for `channel` (due or not: a channel
    /// delivers in order).
    pub fn next_queued(&self, channel: &str) -> Result<Option<Queued>> {
        let tx = self.db.begin_read()?;
        for entry in tx.open_table(OUTBOX)?.iter()? {
            let (key, value) = entry?;
            let queued: Queued = decode("outbox", key.value(), value.value())?;
            if queued.channel == channel {
                return Ok(Some(queued));
            }
        }
        Ok(None)
    }

    /// How many messages wait, and how many were given up on (for `/metrics`).
    pub fn outbox_counts(&self) -> Result<(u64, u64)> {
        let tx = self.db.begin_read()?;
        Ok((
            tx.open_table(OUTBOX)?.len()?,
            tx.open_table(OUTBOX_DEAD)?.len()?,
        ))
    }

    /// Every message waiting, oldest first.
    pub fn queued(&self) -> Result<Vec<Queued>> {
        self.all_of(OUTBOX, "outbox")
    }

    /// Messages given up on, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<Queued>> {
        self.all_of(OUTBOX_DEAD, "outbox_dead")
    }

    fn all_of(
        &self,
        table: super::codec::JsonTable<u64>,
        name: &'static str,
    ) -> Result<Vec<Queued>> {
        let tx = self.db.begin_read()?;
        tx.open_table(table)?
            .iter()?
            .map(|entry| {
                let (key, value) = entry?;
                decode(name, key.value(), value.value())
            })
            .collect()
    }

    /// A message arrived: it leaves the queue (a commit status is kept as the forge's).
    pub fn delivered(&self, seq: u64) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut queue = tx.open_table(OUTBOX)?;
            let removed = queue
                .remove(seq)?
                .map(|v| decode::<Queued>("outbox", seq, v.value()))
                .transpose()?;
            if let Some(Queued {
                message: Message::CommitStatus(status),
                ..
            }) = removed
            {
                let mut posted = tx.open_table(FORGE_STATUSES)?;
                let record = PostedStatus {
                    status: status.clone(),
                    posted_at_ms: now_ms(),
                };
                posted.insert(
                    (status.sha.as_str(), status.context.as_str()),
                    encode(&record).as_slice(),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// An attempt failed: try again later, or, after the last attempt, move
    /// the message to the dead letters. Returns the message as it now is.
    pub fn delivery_failed(&self, seq: u64, error: &str) -> Result<Option<Queued>> {
        let tx = self.db.begin_write()?;
        let updated = {
            let mut queue = tx.open_table(OUTBOX)?;
            let current = queue
                .get(seq)?
                .map(|v| decode::<Queued>("outbox", seq, v.value()))
                .transpose()?;
            match current {
                None => None,
                Some(mut queued) => {
                    queued.attempts += 1;
                    queued.last_error = Some(error.to_owned());
                    match retry_after_ms(queued.attempts) {
                        Some(after) => {
                            queued.next_at_ms = now_ms() + after;
                            queue.insert(seq, encode(&queued).as_slice())?;
                        }
                        None => {
                            queue.remove(seq)?;
                            let mut dead = tx.open_table(OUTBOX_DEAD)?;
                            dead.insert(seq, encode(&queued).as_slice())?;
                            // The oldest go first beyond the bound.
                            while dead.len()? > MAX_DEAD_LETTERS {
                                dead.pop_first()?;
                            }
                        }
                    }
                    Some(queued)
                }
            }
        };
        tx.commit()?;
        Ok(updated)
    }

    /// The statuses the forge accepted for a commit, by context.
    pub fn posted_statuses(&self, sha: &str) -> Result<Vec<PostedStatus>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(FORGE_STATUSES)?;
        let mut posted = Vec::new();
        for entry in table.range((sha, "")..)? {
            let (key, value) = entry?;
            if key.value().0 != sha {
                break;
            }
            posted.push(decode("forge_statuses", sha, value.value())?);
        }
        Ok(posted)
    }
}

#[cfg(test)]
mod tests {
    use linkops_reconcilers::outbox::{CommitState, FORGE, MAX_ATTEMPTS};

    use super::*;

    fn status(state: CommitState) -> Outgoing {
        Outgoing {
            channel: FORGE.into(),
            message: Message::CommitStatus(CommitStatus {
                sha: "a".repeat(40),
                context: "linkops/sync".into(),
                state,
                description: format!("{state:?}"),
                target_url: None,
            }),
        }
    }

    #[test]
    fn the_queue_delivers_in_order_dedupes_statuses_and_keeps_the_dead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .enqueue(&[status(CommitState::Pending), status(CommitState::Pending)])
            .unwrap();
        assert_eq!(
            store.queued().unwrap().len(),
            1,
            "the same status twice is queued once"
        );
        let first = store.next_queued(FORGE).unwrap().unwrap();
        store.delivered(first.seq).unwrap();
        // Posted already: not queued again; a new state is.
        store.enqueue(&[status(CommitState::Pending)]).unwrap();
        assert!(store.queued().unwrap().is_empty());
        store.enqueue(&[status(CommitState::Success)]).unwrap();
        let posted = store.posted_statuses(&"a".repeat(40)).unwrap();
        assert_eq!(posted[0].status.state, CommitState::Pending);

        let next = store.next_queued(FORGE).unwrap().unwrap();
        for attempt in 1..MAX_ATTEMPTS {
            let failed = store
                .delivery_failed(next.seq, "connection refused")
                .unwrap()
                .unwrap();
            assert_eq!(failed.attempts, attempt);
            assert!(failed.next_at_ms > failed.created_at_ms);
        }
        store
            .delivery_failed(next.seq, "connection refused")
            .unwrap();
        assert!(store.next_queued(FORGE).unwrap().is_none());
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].last_error.as_deref(), Some("connection refused"));
        // Numbers are never reused, even once the queue is empty.
        store.enqueue(&[status(CommitState::Failure)]).unwrap();
        assert!(store.next_queued(FORGE).unwrap().unwrap().seq > dead[0].seq);
    }
}
