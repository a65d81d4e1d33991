//! What must happen once among the replicas, done by the one that leads
//! (at once on an unshared store): retention, and ending what a replica
//! that is gone left running. The outbox's deliveries start the same way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Membership;
use crate::metrics::Metrics;
use crate::store;

/// Lets the store go of what `[retention]` no longer keeps, every `interval`
/// (the first pass right after start).
pub async fn prune_store(
    store: store::Store,
    retention: crate::config::RetentionConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let policy = crate::store::Retention::from(&retention);
    loop {
        let pass = store.clone();
        let pruned = crate::blocking::run(move || pass.prune(&policy, store::now_ms())).await;
        match pruned {
            Ok(Ok(pruned)) => {
                for (kind, count) in [
                    ("health_sample", pruned.health_samples),
                    ("output_event", pruned.output_events),
                    ("operation", pruned.operations),
                    ("state_record", pruned.state_records),
                    ("revocation", pruned.revocations),
                ] {
                    metrics
                        .store_pruned
                        .get_or_create(&crate::metrics::KindLabels { kind })
                        .inc_by(count);
                }
                if pruned != store::Pruned::default() {
                    tracing::info!(
                        ?pruned,
                        "the store let go of what [retention] no longer keeps"
                    );
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the retention pass failed; it runs again later")
            }
            Err(error) => tracing::warn!(%error, "the retention pass stopped"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(retention.interval) => {}
        }
    }
}

/// Starts the work that must happen once among the replicas, when this one leads.
pub struct Leading {
    membership: Membership,
    store: store::Store,
    stop: CancellationToken,
}

impl Leading {
    pub fn new(membership: &Membership, store: &store::Store, stop: &CancellationToken) -> Leading {
        Leading {
            membership: membership.clone(),
            store: store.clone(),
            stop: stop.clone(),
        }
    }

    /// Runs `work` with the store fenced by the leader lease once this
    /// replica leads (at once on an unshared store); nothing if it stops first.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(
        &self,
        work: impl FnOnce(store::Store) -> F + Send + 'static,
    ) -> JoinHandle<()> {
        let (membership, store, stop) = (
            self.membership.clone(),
            self.store.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                leader = membership.leader_store(&store) => work(leader).await,
            }
        })
    }
}

/// How often the leader looks for operations of replicas that are gone,
/// besides whenever the members change.
const GONE_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The leader's part when a replica dies: its running operations are marked
/// interrupted (hosts that had not finished too; nothing is re-run), their
/// ends told like a restart's, and their followers on any replica see `end`;
/// its open terminal sessions are marked interrupted.
pub async fn end_what_the_gone_left(
    store: store::Store,
    membership: Membership,
    notifier: Arc<crate::notify::Notifier>,
    stop: CancellationToken,
) {
    let mut members = membership.changes();
    loop {
        let (sweeping, telling) = (store.clone(), notifier.clone());
        let swept = crate::blocking::run(move || {
            let operations = sweeping.interrupt_operations_of_gone(|interrupted| {
                let events = linkops_reconcilers::outbox::for_restart(interrupted, store::now_ms());
                telling.route(Vec::new(), events.into_iter().collect())
            })?;
            Ok::<_, store::Error>((operations, sweeping.interrupt_terminal_sessions_of_gone()?))
        })
        .await;
        match swept {
            Ok(Ok((operations, sessions))) => {
                if !operations.is_empty() {
                    tracing::warn!(
                        ?operations,
                        "operations of a replica that is gone marked interrupted"
                    );
                }
                if !sessions.is_empty() {
                    tracing::warn!(
                        ?sessions,
                        "terminal sessions of a replica that is gone marked interrupted"
                    );
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot look for operations of replicas that are gone; looking again")
            }
            Err(error) => {
                tracing::warn!(%error, "the look for operations of replicas that are gone failed")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = members.changed() => {}
            () = tokio::time::sleep(GONE_SWEEP_INTERVAL) => {}
        }
    }
}
