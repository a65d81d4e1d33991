//! A replica that does not lead: it follows the revision the leader applied
//! from the store and passes the syncs and plans asked of it to the leader.

use super::*;

/// How often a replica that does not lead reads the store for a new
/// revision in force (and for the records of the syncs it passed on), and
/// the leader for what was asked of it, by themselves: the store's doorbell
/// wakes them as soon as it is written.
pub(super) const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// How long a sync passed to the leader is waited for.
pub(super) const RELAYED_WAIT: Duration = Duration::from_secs(120);

/// Until this replica leads: publishes the state in force as the store has
/// it, and passes syncs and plans asked of it to the leader. Returns the
/// store fenced by the leader lease once it leads; `None` at shutdown.
pub(super) async fn follow(
    context: &SyncContext,
    mut applied: Option<Arc<DesiredState>>,
    mut channels: Channels,
    membership: &Membership,
    shutdown: &CancellationToken,
) -> Option<(Store, Option<Arc<DesiredState>>, Channels, Vec<Request>)> {
    let leading = membership.leader_store(&context.store);
    tokio::pin!(leading);
    // Syncs passed on, waiting for their record: (asked after this attempt, the request, until when).
    let mut relayed: Vec<(u64, Request, Instant)> = Vec::new();
    let mut synced = context.store.doorbell(Followed::Sync);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            leader = &mut leading => {
                // Those still waiting are the leader's own requests now.
                let relayed = relayed.into_iter().map(|(_, request, _)| request).collect();
                return Some((leader, applied, channels, relayed));
            }
            Some(request) = channels.queue.recv() => {
                // The leader has its own timer and file watch.
                if matches!(request.trigger, Trigger::Interval | Trigger::Watch | Trigger::Startup) {
                    continue;
                }
                let ask = SyncAsk::Sync { trigger: request.trigger.to_string() };
                match relay(&context.store, ask).await {
                    Some(seq) => relayed.push((seq, request, Instant::now() + RELAYED_WAIT)),
                    None => drop(request),
                }
            }
            waiting = channels.plans.next() => {
                let ask = match waiting.work {
                    BranchWork::Plan => SyncAsk::Plan { branch: waiting.branch },
                    BranchWork::Forget => SyncAsk::Forget { branch: waiting.branch },
                };
                relay(&context.store, ask).await;
            }
            _ = synced.wait(FOLLOW_EVERY) => {
                let followed = follow_applied(&context.store, applied.as_deref()).await;
                if let Some(state) = followed {
                    tracing::info!(revision = %state.revision, "following the revision the leader applied");
                    applied = Some(state.clone());
                    channels.publish.desired.send_replace(Some(state));
                }
                relayed = answer_relayed(&context.store, relayed).await;
                channels.publish.attempts.send_if_modified(|n| {
                    let first = *n == 0;
                    *n = n.saturating_add(u64::from(first));
                    first
                });
            }
        }
    }
}

/// Passes `ask` to the leader through the store; the attempt it comes after.
pub(super) async fn relay(store: &Store, ask: SyncAsk) -> Option<u64> {
    let asking = store.clone();
    match crate::blocking::run(move || asking.ask_sync(&ask)).await {
        Ok(Ok(seq)) => Some(seq),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot pass the request to the replica that leads");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "passing the request on failed");
            None
        }
    }
}

/// Answers the relayed syncs whose record the leader wrote (or that waited
/// too long: no answer); the rest still wait.
pub(super) async fn answer_relayed(
    store: &Store,
    relayed: Vec<(u64, Request, Instant)>,
) -> Vec<(u64, Request, Instant)> {
    if relayed.is_empty() {
        return relayed;
    }
    let reading = store.clone();
    let asked: Vec<(u64, String)> = relayed
        .iter()
        .map(|(seq, request, _)| (*seq, request.trigger.to_string()))
        .collect();
    let found = crate::blocking::run(move || -> Result<Vec<Option<SyncRecord>>, store::Error> {
        asked
            .iter()
            .map(|(seq, trigger)| reading.sync_by(*seq, trigger))
            .collect()
    })
    .await;
    let Ok(Ok(found)) = found else {
        return relayed;
    };
    let now = Instant::now();
    let mut waiting = Vec::new();
    for ((seq, request, until), record) in relayed.into_iter().zip(found) {
        match record {
            Some(record) => {
                if let Some(reply) = request.reply {
                    reply.send(record).ok();
                }
            }
            None if now < until => waiting.push((seq, request, until)),
            None => {
                tracing::warn!(trigger = %request.trigger, "the replica that leads did not record the sync passed to it in time")
            }
        }
    }
    waiting
}

/// The state in force in the store, when its revision is not `current`'s.
pub(super) async fn follow_applied(
    store: &Store,
    current: Option<&DesiredState>,
) -> Option<Arc<DesiredState>> {
    let current = current.map(|state| state.revision.clone());
    let reading = store.clone();
    let read = crate::blocking::run(move || -> Result<_, store::Error> {
        let Some(revision) = reading
            .last_applied_sync()?
            .and_then(|record| record.revision)
        else {
            return Ok(None);
        };
        if current.as_deref() == Some(revision.as_str()) {
            return Ok(None);
        }
        let Some(state) = reading.applied_state(&revision)? else {
            return Ok(None);
        };
        Ok(Some(state))
    })
    .await;
    match read {
        Ok(Ok(state)) => state.map(Arc::new),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the revision in force from the store; reading again");
            None
        }
        Err(_) => None,
    }
}
