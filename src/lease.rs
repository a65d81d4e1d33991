//! The store's leader lease: with several daemons on one PostgreSQL store,
//! one is active — it holds the lease and does everything a daemon does —
//! and the others stand by, taking over once its lease passes.
//!
//! The active daemon writes only through a store fenced by the lease's epoch
//! (`Store::fenced`), so a daemon that was paused or cut off past its lease
//! writes nothing once another took over; it notices at its next renewal, or
//! stops by itself one renewal before the lease can have passed
//! (`membership::LeaseTiming::may_act`), and exits for its service manager
//! to restart it as a standby. A redb store has one daemon: no lease.
//! Sharing the machines among live replicas (member leases, rendezvous
//! ownership) stands on this; see ARCHITECTURE.md.

use std::time::{Duration, Instant};

use linkops_reconcilers::membership::LeaseTiming;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Fence, Store};

/// How often a standby asks for the lease: a takeover waits at most this
/// beyond the lease's end.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// This daemon's hold on the store.
#[derive(Debug, Clone)]
pub struct Lease {
    pub replica: String,
    pub epoch: i64,
    timing: LeaseTiming,
}

/// Waits until this daemon holds the leader lease (at once on a redb store);
/// the store fenced by it. `None` when `stop` came first.
pub async fn acquire(
    store: &Store,
    timing: LeaseTiming,
    stop: &CancellationToken,
) -> Result<Option<(Lease, Store)>, store::Error> {
    if !store.is_shared() {
        let lease = Lease {
            replica: "local".into(),
            epoch: 1,
            timing,
        };
        return Ok(Some((lease, store.clone())));
    }
    let replica = uuid::Uuid::new_v4().simple().to_string();
    let mut said = false;
    loop {
        let asking = store.clone();
        let id = replica.clone();
        let held = tokio::task::spawn_blocking(move || asking.renew_leadership(&id, timing.ttl_ms))
            .await
            .expect("the lease request does not panic");
        match held {
            Ok(Some(epoch)) => {
                tracing::info!(%replica, epoch, "this daemon holds the store's lease: active");
                let fenced = store.fenced(Fence::Leader {
                    replica: replica.clone(),
                    epoch,
                });
                let lease = Lease {
                    replica,
                    epoch,
                    timing,
                };
                return Ok(Some((lease, fenced)));
            }
            Ok(None) if !said => {
                said = true;
                tracing::info!(%replica, "another daemon holds the store's lease: standing by until it passes");
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot ask for the store's lease; asking again"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(STANDBY_POLL) => {}
        }
    }
}

/// Renews `lease` until `stop`, or until it is lost — another daemon took
/// over, or it could not be renewed in time — when it cancels `lost`.
pub async fn hold(store: Store, lease: Lease, stop: CancellationToken, lost: CancellationToken) {
    if !store.is_shared() {
        return;
    }
    let start = Instant::now();
    let since_start = || i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
    let mut renewed_at = Some(0);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(lease.timing.renew_ms as u64)) => {}
        }
        // The lease runs from no earlier than the moment it was asked for.
        let asked_at = since_start();
        let renewing = store.clone();
        let (replica, ttl) = (lease.replica.clone(), lease.timing.ttl_ms);
        let renewed = tokio::task::spawn_blocking(move || renewing.renew_leadership(&replica, ttl))
            .await
            .expect("the lease renewal does not panic");
        match renewed {
            Ok(Some(epoch)) if epoch == lease.epoch => renewed_at = Some(asked_at),
            Ok(other) => {
                tracing::error!(replica = %lease.replica, epoch = lease.epoch, now = ?other, "the store's lease passed to another daemon (this one was paused or cut off): stopping; it writes nothing more");
                lost.cancel();
                return;
            }
            Err(error) if lease.timing.may_act(renewed_at, since_start()) => {
                tracing::warn!(%error, "cannot renew the store's lease; trying again");
            }
            Err(error) => {
                tracing::error!(%error, "the store's lease could not be renewed in time: stopping before another daemon may take over");
                lost.cancel();
                return;
            }
        }
    }
}

/// Gives the lease up at a clean shutdown, so that a standby takes over at once.
pub fn release(store: &Store, lease: &Lease) {
    if !store.is_shared() {
        return;
    }
    if let Err(error) = store.leave(&lease.replica) {
        tracing::warn!(%error, "cannot give up the store's lease; a standby takes over when it passes");
    }
}
