//! The outbox: commit statuses and notifications waiting to be delivered,
//! those given up on (the dead letters), and the statuses the forge has.
//!
//! Messages are queued in the transaction of the event they tell about
//! (`enqueue`, called by the store function that records the event), so a
//! crash loses both or neither; delivery removes them one by one.

use linkops_reconcilers::outbox::{CommitStatus, Message, Outgoing, Queued, retry_after_ms};
use serde::{Deserialize, Serialize};

use super::engine::{Json, Read, Table, Write, WriteTx};
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
pub(super) fn enqueue(tx: &mut WriteTx, outgoing: &[Outgoing]) -> Result<()> {
    if outgoing.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let next =
        |tx: &WriteTx, table| -> Result<u64> { Ok(tx.last(table)?.map_or(1, |(seq, _)| seq + 1)) };
    // A dead letter's number is never reused (the dead letters are by number too).
    let mut seq = next(tx, OUTBOX)?.max(next(tx, OUTBOX_DEAD)?);
    for item in outgoing {
        if let Message::CommitStatus(status) = &item.message {
            let last_queued = tx
                .all(OUTBOX, true)
                .find_map(|queued| match queued {
                    Ok((
                        _,
                        Queued {
                            message: Message::CommitStatus(queued),
                            ..
                        },
                    )) if queued.sha == status.sha && queued.context == status.context => {
                        Some(Ok(queued))
                    }
                    Ok(_) => None,
                    Err(error) => Some(Err(error)),
                })
                .transpose()?;
            let last = match last_queued {
                Some(queued) => Some(queued),
                None => tx
                    .get(
                        FORGE_STATUSES,
                        (status.sha.as_str(), status.context.as_str()),
                    )?
                    .map(|posted| posted.status),
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
        tx.insert(OUTBOX, seq, &queued)?;
        seq += 1;
    }
    Ok(())
}

impl Store {
    /// Queues messages that belong to no other change (in a transaction of their own).
    pub fn enqueue(&self, outgoing: &[Outgoing]) -> Result<()> {
        let mut tx = self.write()?;
        enqueue(&mut tx, outgoing)?;
        tx.commit()
    }

    /// The oldest message queued for `channel` (due or not: a channel
    /// delivers in order).
    pub fn next_queued(&self, channel: &str) -> Result<Option<Queued>> {
        let tx = self.read()?;
        for entry in tx.all(OUTBOX, false) {
            let (_, queued) = entry?;
            if queued.channel == channel {
                return Ok(Some(queued));
            }
        }
        Ok(None)
    }

    /// How many messages wait, and how many were given up on (for `/metrics`).
    pub fn outbox_counts(&self) -> Result<(u64, u64)> {
        let tx = self.read()?;
        Ok((tx.len(OUTBOX)?, tx.len(OUTBOX_DEAD)?))
    }

    /// Every message waiting, oldest first.
    pub fn queued(&self) -> Result<Vec<Queued>> {
        self.read_all(OUTBOX)
    }

    /// Messages given up on, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<Queued>> {
        self.read_all(OUTBOX_DEAD)
    }

    /// A message arrived: it leaves the queue (a commit status is kept as the forge's).
    pub fn delivered(&self, seq: u64) -> Result<()> {
        let mut tx = self.write()?;
        let removed = tx.get(OUTBOX, seq)?;
        tx.remove(OUTBOX, seq)?;
        if let Some(Queued {
            message: Message::CommitStatus(status),
            ..
        }) = removed
        {
            let record = PostedStatus {
                status: status.clone(),
                posted_at_ms: now_ms(),
            };
            let key = (status.sha.as_str(), status.context.as_str());
            tx.insert(FORGE_STATUSES, key, &record)?;
        }
        tx.commit()
    }

    /// An attempt failed: try again later, or, after the last attempt, move
    /// the message to the dead letters. Returns the message as it now is.
    pub fn delivery_failed(&self, seq: u64, error: &str) -> Result<Option<Queued>> {
        let mut tx = self.write()?;
        let Some(mut queued) = tx.get(OUTBOX, seq)? else {
            return Ok(None);
        };
        queued.attempts += 1;
        queued.last_error = Some(error.to_owned());
        match retry_after_ms(queued.attempts) {
            Some(after) => {
                queued.next_at_ms = now_ms() + after;
                tx.insert(OUTBOX, seq, &queued)?;
            }
            None => {
                tx.remove(OUTBOX, seq)?;
                tx.insert(OUTBOX_DEAD, seq, &queued)?;
                // The oldest go first beyond the bound.
                let dead: Table<u64, Json<Queued>> = OUTBOX_DEAD;
                while tx.len(dead)? > MAX_DEAD_LETTERS {
                    let Some((oldest, _)) = tx.first(dead)? else {
                        break;
                    };
                    tx.remove(dead, oldest)?;
                }
            }
        }
        tx.commit()?;
        Ok(Some(queued))
    }

    /// The statuses the forge accepted for a commit, by context.
    pub fn posted_statuses(&self, sha: &str) -> Result<Vec<PostedStatus>> {
        self.read()?
            .range(FORGE_STATUSES, (sha, "")..)
            .take_while(|entry| !matches!(entry, Ok(((of, _), _)) if of != sha))
            .map(|entry| entry.map(|(_, posted)| posted))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing;
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
        for backing in testing::backings() {
            let store = backing.open();
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
}
