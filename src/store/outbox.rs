//! The outbox: commit statuses and notifications waiting to be delivered,
//! those given up on (the dead letters), and the statuses the forge has.
//!
//! Messages are queued in the transaction of the event they tell about
//! (`enqueue`, called by the store function that records the event), so a
//! crash loses both or neither; delivery removes them one by one. Each
//! channel's messages are indexed by (channel, number), so a channel's next
//! message and its length cost what they read, and a channel holds at most
//! `[notify] max_queued` (beyond, its oldest go to the dead letters) while
//! a machine's newer standing replaces its older one still waiting.

use linkops_reconcilers::outbox::{
    Message, Outgoing, Queued, retry_after_ms, supersedes, tells_a_machine_s_standing,
};

use super::engine::{Json, Read, Table, Write, WriteTx};
use super::records::PostedStatus;
use super::schema::{FORGE_STATUSES, OUTBOX, OUTBOX_CHANNELS, OUTBOX_DEAD};
use super::{Result, Store, now_ms};

/// Dead letters kept; the oldest go first.
pub const MAX_DEAD_LETTERS: u64 = 1_000;

/// The numbers of `channel`'s waiting messages, oldest first.
fn channel_seqs(tx: &impl Read, channel: &str) -> Result<Vec<u64>> {
    tx.range(OUTBOX_CHANNELS, (channel, 0u64)..)
        .map_while(|entry| match entry {
            Ok(((of, seq), _)) if of == channel => Some(Ok(seq)),
            Ok(_) => None,
            Err(error) => Some(Err(error)),
        })
        .collect()
}

/// Takes message `seq` of `channel` out of the queue (and its index).
fn unqueue(tx: &mut WriteTx, channel: &str, seq: u64) -> Result<Option<Queued>> {
    let queued = tx.get(OUTBOX, seq)?;
    tx.remove(OUTBOX, seq)?;
    tx.remove(OUTBOX_CHANNELS, (channel, seq))?;
    Ok(queued)
}

/// Keeps a dead letter; the oldest go first beyond [`MAX_DEAD_LETTERS`].
fn bury(tx: &mut WriteTx, queued: &Queued) -> Result<()> {
    tx.insert(OUTBOX_DEAD, queued.seq, queued)?;
    let dead: Table<u64, Json<Queued>> = OUTBOX_DEAD;
    while tx.len(dead)? > MAX_DEAD_LETTERS {
        let Some((oldest, _)) = tx.first(dead)? else {
            break;
        };
        tx.remove(dead, oldest)?;
    }
    Ok(())
}

/// Queues `outgoing` in `tx`. A commit status the same as the last one
/// queued or posted for its commit and context is not queued again; a
/// machine's standing replaces an older one of it still waiting; a channel
/// over `bound` messages lets its oldest go to the dead letters, saying why.
pub(super) fn enqueue(tx: &mut WriteTx, outgoing: &[Outgoing], bound: usize) -> Result<()> {
    if outgoing.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let next =
        |tx: &WriteTx, table| -> Result<u64> { Ok(tx.last(table)?.map_or(1, |(seq, _)| seq + 1)) };
    // A dead letter's number is never reused (the dead letters are by number too).
    let mut seq = next(tx, OUTBOX)?.max(next(tx, OUTBOX_DEAD)?);
    for item in outgoing {
        let channel = item.channel.as_str();
        let waiting = channel_seqs(tx, channel)?;
        if let Message::CommitStatus(status) = &item.message {
            let mut last_queued = None;
            for queued_seq in waiting.iter().rev() {
                if let Some(Queued {
                    message: Message::CommitStatus(queued),
                    ..
                }) = tx.get(OUTBOX, *queued_seq)?
                    && queued.sha == status.sha
                    && queued.context == status.context
                {
                    last_queued = Some(queued);
                    break;
                }
            }
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
        // A machine's older standing still waiting goes (not one attempted:
        // its delivery may be under way); only machines' news is read for it.
        let mut kept = Vec::with_capacity(waiting.len() + 1);
        for older in waiting {
            let superseded = tells_a_machine_s_standing(&item.message)
                && tx.get(OUTBOX, older)?.is_some_and(|queued| {
                    queued.attempts == 0 && supersedes(&item.message, &queued.message)
                });
            if superseded {
                unqueue(tx, channel, older)?;
            } else {
                kept.push(older);
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
        tx.insert(OUTBOX_CHANNELS, (channel, seq), &())?;
        kept.push(seq);
        seq += 1;
        // Beyond the bound the oldest go, told as dead letters.
        for oldest in kept.iter().take(kept.len().saturating_sub(bound)) {
            if let Some(mut dropped) = unqueue(tx, channel, *oldest)? {
                dropped.last_error = Some(format!(
                    "dropped undelivered: channel {channel} held {bound} messages ([notify] max_queued)"
                ));
                bury(tx, &dropped)?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Queues messages that belong to no other change (in a transaction of their own).
    pub fn enqueue(&self, outgoing: &[Outgoing]) -> Result<()> {
        let mut tx = self.write()?;
        enqueue(&mut tx, outgoing, self.outbox_bound)?;
        tx.commit()
    }

    /// The oldest message queued for `channel` (due or not: a channel
    /// delivers in order).
    pub fn next_queued(&self, channel: &str) -> Result<Option<Queued>> {
        let tx = self.read()?;
        let first = tx
            .range(OUTBOX_CHANNELS, (channel, 0u64)..)
            .next()
            .transpose()?;
        match first {
            Some(((of, seq), _)) if of == channel => tx.get(OUTBOX, seq),
            _ => Ok(None),
        }
    }

    /// How many messages wait, and how many were given up on (for `/metrics`).
    pub fn outbox_counts(&self) -> Result<(u64, u64)> {
        let tx = self.read()?;
        Ok((tx.len(OUTBOX)?, tx.len(OUTBOX_DEAD)?))
    }

    /// The first `limit` messages waiting (of `channel`, or of all), oldest
    /// first, after number `after`.
    pub fn queued(&self, channel: Option<&str>, after: u64, limit: usize) -> Result<Vec<Queued>> {
        let tx = self.read()?;
        match channel {
            None => tx
                .range(OUTBOX, after.saturating_add(1)..)
                .take(limit)
                .map(|entry| entry.map(|(_, queued)| queued))
                .collect(),
            Some(channel) => {
                let mut page = Vec::new();
                let seqs = tx.range(OUTBOX_CHANNELS, (channel, after.saturating_add(1))..);
                for entry in seqs.take(limit) {
                    let ((of, seq), _) = entry?;
                    if of != channel {
                        break;
                    }
                    page.extend(tx.get(OUTBOX, seq)?);
                }
                Ok(page)
            }
        }
    }

    /// The newest `limit` messages given up on (of `channel`, or of all),
    /// oldest first. At most [`MAX_DEAD_LETTERS`] are kept.
    pub fn dead_letters(&self, channel: Option<&str>, limit: usize) -> Result<Vec<Queued>> {
        let tx = self.read()?;
        let mut newest = Vec::new();
        for entry in tx.all(OUTBOX_DEAD, true) {
            let (_, queued) = entry?;
            if channel.is_none_or(|channel| queued.channel == channel) {
                newest.push(queued);
                if newest.len() == limit {
                    break;
                }
            }
        }
        newest.reverse();
        Ok(newest)
    }

    /// A message arrived: it leaves the queue (a commit status is kept as the forge's).
    pub fn delivered(&self, seq: u64) -> Result<()> {
        let mut tx = self.write()?;
        let removed = match tx.get(OUTBOX, seq)? {
            Some(queued) => unqueue(&mut tx, &queued.channel, seq)?,
            None => None,
        };
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
                unqueue(&mut tx, &queued.channel, seq)?;
                bury(&mut tx, &queued)?;
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
    use linkops_reconcilers::outbox::{CommitState, CommitStatus, FORGE, MAX_ATTEMPTS};

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
                store.queued(None, 0, 100).unwrap().len(),
                1,
                "the same status twice is queued once"
            );
            let first = store.next_queued(FORGE).unwrap().unwrap();
            store.delivered(first.seq).unwrap();
            // Posted already: not queued again; a new state is.
            store.enqueue(&[status(CommitState::Pending)]).unwrap();
            assert!(store.queued(None, 0, 100).unwrap().is_empty());
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
            let dead = store.dead_letters(None, 100).unwrap();
            assert_eq!(dead.len(), 1);
            assert_eq!(dead[0].last_error.as_deref(), Some("connection refused"));
            // Numbers are never reused, even once the queue is empty.
            store.enqueue(&[status(CommitState::Failure)]).unwrap();
            assert!(store.next_queued(FORGE).unwrap().unwrap().seq > dead[0].seq);
        }
    }

    fn machine(kind: linkops_reconcilers::outbox::EventKind, id: &str, n: i64) -> Outgoing {
        Outgoing {
            channel: "chat".into(),
            message: Message::Notification(linkops_reconcilers::outbox::Notification {
                version: 1,
                kind,
                at_ms: n,
                title: format!("{id} {kind:?} {n}"),
                text: String::new(),
                subject: id.into(),
                url: None,
            }),
        }
    }

    #[test]
    fn a_channel_holds_at_most_its_bound_and_a_machine_s_news_coalesces() {
        use linkops_reconcilers::outbox::EventKind::{MachineRecovered, MachineUnreachable};
        for backing in testing::backings() {
            let store = backing.open().bounding_outbox(3);
            // A machine bouncing while the sink is down waits as its latest standing.
            for n in 0..6 {
                let kind = if n % 2 == 0 {
                    MachineUnreachable
                } else {
                    MachineRecovered
                };
                store.enqueue(&[machine(kind, "web1", n)]).unwrap();
            }
            let waiting = store.queued(Some("chat"), 0, 100).unwrap();
            assert_eq!(waiting.len(), 1);
            let Message::Notification(latest) = &waiting[0].message else {
                panic!("{waiting:?}")
            };
            assert_eq!((latest.kind, latest.at_ms), (MachineRecovered, 5));
            // Five machines into a channel of three: the two oldest are dead letters, saying why.
            for id in ["web2", "web3", "web4", "web5"] {
                store
                    .enqueue(&[machine(MachineUnreachable, id, 9)])
                    .unwrap();
            }
            let subjects = |queued: Vec<Queued>| -> Vec<String> {
                queued
                    .into_iter()
                    .map(|q| match q.message {
                        Message::Notification(n) => n.subject,
                        Message::CommitStatus(s) => s.sha,
                    })
                    .collect()
            };
            assert_eq!(
                subjects(store.queued(Some("chat"), 0, 100).unwrap()),
                ["web3", "web4", "web5"]
            );
            let dead = store.dead_letters(Some("chat"), 100).unwrap();
            assert_eq!(subjects(dead.clone()), ["web1", "web2"]);
            let why = dead[0].last_error.as_deref().unwrap();
            assert!(why.contains("[notify] max_queued"), "{why}");
            // Other channels are neither bounded nor read by it.
            assert!(store.next_queued(FORGE).unwrap().is_none());
            assert_eq!(store.next_queued("chat").unwrap().unwrap().seq, {
                let first = store.queued(Some("chat"), 0, 1).unwrap();
                first[0].seq
            });
            assert_eq!(store.outbox_counts().unwrap(), (3, 2));
        }
    }
}
