//! This daemon as one replica of several sharing a PostgreSQL store: its
//! member lease, the leader lease, and the view of the live members that
//! decides which machines it owns.
//!
//! Every replica serves the API and reconciles the machines (and
//! run-requests, states) it owns — `membership::owner` over the live members
//! — writing through a store fenced by its member epoch. One of them also
//! holds the leader lease and does what must happen once: fetching Git and
//! applying a revision, retention, the outbox's deliveries, and marking a
//! dead replica's operations interrupted; it writes that through a store
//! fenced by the leader epoch.
//!
//! A replica that loses a lease — paused or cut off past it, another took
//! over — writes nothing more (fencing) and stops, for its service manager to
//! restart it as a new member. It also stops by itself one renewal before a
//! lease it could not renew can have passed (`LeaseTiming::may_act`). A redb
//! store has one daemon: the only member, always the leader, no leases.

pub mod following;
pub mod leading;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use linkops_reconcilers::membership::{self, LeaseTiming};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Fence, Store};

/// How often a replica renews its leases and reads the members: a dead
/// member's work moves at most this beyond its lease's end.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// What this replica knows of the replicas, as of its last renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Its member epoch: fences what it writes as an owner.
    pub epoch: i64,
    /// Its leader epoch, while it leads.
    pub leading: Option<i64>,
    /// The live members' ids, itself among them, in order.
    pub members: Vec<String>,
}

/// This replica's identity and its current [`View`].
#[derive(Clone)]
pub struct Membership {
    id: Arc<str>,
    view: watch::Receiver<View>,
    /// Held so that the view never closes while the daemon looks at it.
    publish: Arc<watch::Sender<View>>,
}

impl Membership {
    /// The one member of an unshared (redb) store: it owns everything and leads.
    pub fn alone() -> Membership {
        let view = View {
            epoch: 1,
            leading: Some(1),
            members: vec![LOCAL.to_owned()],
        };
        Membership::new(LOCAL, view)
    }

    fn new(id: &str, view: View) -> Membership {
        let (publish, view) = watch::channel(view);
        Membership {
            id: id.into(),
            view,
            publish: Arc::new(publish),
        }
    }

    /// This replica's id (a new one at every start).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The view as of the last renewal.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Changes of the view (members joining or leaving, leadership taken).
    pub fn changes(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Whether this replica owns `key` (a machine, run-request or state).
    pub fn owns(&self, key: &str) -> bool {
        let view = self.view.borrow();
        membership::owner(key, view.members.iter().map(String::as_str)) == Some(&*self.id)
    }

    /// The owner of `key` among the live members.
    pub fn owner(&self, key: &str) -> Option<String> {
        let view = self.view.borrow();
        membership::owner(key, view.members.iter().map(String::as_str)).map(str::to_owned)
    }

    /// Waits until this replica leads; `store` fenced by its leader lease
    /// (on an unshared store, `store` itself, at once).
    pub async fn leader_store(&self, store: &Store) -> Store {
        let mut view = self.view.clone();
        let epoch = match view.wait_for(|view| view.leading.is_some()).await {
            Ok(view) => view.leading.unwrap_or_default(),
            Err(_) => unreachable!("the membership holds its sender"),
        };
        match store.is_shared() {
            true => store.fenced(Fence::Leader {
                replica: self.id().to_owned(),
                epoch,
            }),
            false => store.clone(),
        }
    }
}

/// The member id of the only daemon of an unshared store.
const LOCAL: &str = "local";

/// A replica that joined: its membership, the store fenced by its member
/// lease (what it writes as an owner, and through the API), and the worker
/// that renews its leases.
pub struct Joined {
    pub membership: Membership,
    pub store: Store,
    renewing: Option<Renewing>,
}

struct Renewing {
    store: Store,
    address: String,
    timing: LeaseTiming,
}

/// Joins the replicas of `store` as a new member reached at `address`
/// (`host:port` of its API), asking for the leader lease at once.
pub async fn join(
    store: &Store,
    address: String,
    timing: LeaseTiming,
) -> Result<Joined, store::Error> {
    if !store.is_shared() {
        return Ok(Joined {
            membership: Membership::alone(),
            store: store.clone(),
            renewing: None,
        });
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let asking = store.clone();
    let (replica, at) = (id.clone(), address.clone());
    let view = crate::blocking::run(move || -> Result<View, store::Error> {
        let epoch = asking.renew_member(&replica, &at, timing.ttl_ms)?;
        let leading = asking.renew_leadership(&replica, timing.ttl_ms)?;
        let members = asking.live_members()?;
        Ok(View {
            epoch,
            leading,
            members: members.into_iter().map(|member| member.replica).collect(),
        })
    })
    .await
    .expect("joining does not panic")?;
    tracing::info!(replica = %id, epoch = view.epoch, leading = view.leading.is_some(), members = view.members.len(), %address, "joined the replicas of the store");
    let fenced = store.fenced(Fence::Member {
        replica: id.clone(),
        epoch: view.epoch,
    });
    Ok(Joined {
        membership: Membership::new(&id, view),
        store: fenced,
        renewing: Some(Renewing {
            store: store.clone(),
            address,
            timing,
        }),
    })
}

impl Joined {
    /// Renews the leases every [`RENEW_EVERY`] until `stop`, publishing the
    /// view; cancels `lost` when a lease passed to another or could not be
    /// renewed in time. Nothing to do on an unshared store.
    pub fn renew(
        &mut self,
        stop: CancellationToken,
        lost: CancellationToken,
    ) -> impl Future<Output = ()> + use<> {
        let renewing = self.renewing.take();
        let membership = self.membership.clone();
        async move {
            if let Some(renewing) = renewing {
                renewing.run(membership, stop, lost).await;
            }
        }
    }
}

/// Gives up this replica's leases at a clean shutdown, so that the others
/// take its machines (and the leadership) over at once.
pub fn leave(store: &Store, membership: &Membership) {
    if !store.is_shared() {
        return;
    }
    match store.leave(membership.id()) {
        Ok(()) => tracing::info!(replica = %membership.id(), "left the replicas of the store"),
        Err(error) => {
            tracing::warn!(%error, "cannot give up this replica's leases; the others take over when they pass")
        }
    }
}

/// How often the watchdog looks whether the last renewal is still good, and
/// a sleeping renewer whether to stop.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// What the stop of a replica that could not renew in time says.
const NOT_RENEWED: &str = "this replica could not renew its leases in time (it was paused, or the database did not answer): stopping before another replica may take its work over; it writes nothing more";

/// The renewer's and the watchdog's clock: milliseconds since the renewals
/// began, and when the last successful one was asked for.
struct Clock {
    start: Instant,
    renewed_at: AtomicI64,
}

impl Clock {
    fn now(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn renewed_at(&self) -> i64 {
        self.renewed_at.load(Ordering::Acquire)
    }
}

/// Sleeps `pause`, in steps, unless `stop` or `lost` comes first (false then).
fn sleep_unless(pause: Duration, stop: &CancellationToken, lost: &CancellationToken) -> bool {
    let until = Instant::now() + pause;
    while Instant::now() < until {
        if stop.is_cancelled() || lost.is_cancelled() {
            return false;
        }
        std::thread::sleep(WATCH_EVERY.min(until.saturating_duration_since(Instant::now())));
    }
    true
}

impl Renewing {
    /// Renews on threads of their own (the blocking pool), never on the
    /// async runtime: store calls made from async code may hold its workers
    /// for as long as the database does not answer, and neither a renewal
    /// nor the watchdog that stops a replica whose renewal hangs may wait on that.
    async fn run(self, membership: Membership, stop: CancellationToken, lost: CancellationToken) {
        // Joining renewed the leases just before.
        let clock = Arc::new(Clock {
            start: Instant::now(),
            renewed_at: AtomicI64::new(0),
        });
        let watchdog = {
            let (clock, timing) = (clock.clone(), self.timing);
            let (stop, lost, id) = (stop.clone(), lost.clone(), membership.id.clone());
            crate::blocking::run(move || {
                while sleep_unless(WATCH_EVERY, &stop, &lost) {
                    if !timing.may_act(Some(clock.renewed_at()), clock.now()) {
                        tracing::error!(replica = %id, "{NOT_RENEWED}");
                        lost.cancel();
                    }
                }
            })
        };
        let renewer =
            crate::blocking::run(move || self.renew_until(&membership, &stop, &lost, &clock));
        renewer.await.expect("renewing does not panic");
        watchdog.await.expect("the watchdog does not panic");
    }

    fn renew_until(
        &self,
        membership: &Membership,
        stop: &CancellationToken,
        lost: &CancellationToken,
        clock: &Clock,
    ) {
        let id = membership.id();
        while sleep_unless(RENEW_EVERY, stop, lost) {
            // A lease runs from no earlier than the moment it was asked for.
            let asked_at = clock.now();
            let before = membership.view();
            let ttl = self.timing.ttl_ms;
            let renewed = (|| -> Result<View, store::Error> {
                let epoch = self.store.renew_member(id, &self.address, ttl)?;
                let leading = self.store.renew_leadership(id, ttl)?;
                let members = self.store.live_members()?;
                Ok(View {
                    epoch,
                    leading,
                    members: members.into_iter().map(|member| member.replica).collect(),
                })
            })();
            if lost.is_cancelled() {
                // The watchdog stopped it while the answer was awaited.
                return;
            }
            match renewed {
                Ok(view) => {
                    if let Some(passed) = passed(&before, &view) {
                        tracing::error!(replica = %id, lease = passed, "this replica's {passed} lease passed (it was paused, or cut off from the database): stopping; it writes nothing more");
                        lost.cancel();
                        return;
                    }
                    clock.renewed_at.store(asked_at, Ordering::Release);
                    if view.leading.is_some() && before.leading.is_none() {
                        tracing::info!(replica = %id, epoch = view.leading, "this replica leads: it fetches Git, applies revisions, keeps retention and delivers the outbox");
                    }
                    if view.members != before.members {
                        tracing::info!(replica = %id, members = ?view.members, "the live replicas changed: machines move to their new owners");
                    }
                    membership.publish.send_if_modified(|current| {
                        let changed = *current != view;
                        *current = view;
                        changed
                    });
                }
                // The watchdog stops it once the last renewal is too old.
                Err(error) => {
                    tracing::warn!(%error, "cannot renew this replica's leases; trying again")
                }
            }
        }
    }
}

/// Which lease of `before` a renewal that answered `after` shows was lost:
/// the member lease came back with a new epoch, or the leadership went.
fn passed(before: &View, after: &View) -> Option<&'static str> {
    if after.epoch != before.epoch {
        return Some("member");
    }
    match (before.leading, after.leading) {
        (Some(held), now) if now != Some(held) => Some("leader"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: i64, leading: Option<i64>) -> View {
        View {
            epoch,
            leading,
            members: vec!["a".into()],
        }
    }

    #[test]
    fn a_lease_is_lost_when_its_epoch_changes_or_the_leadership_goes() {
        assert_eq!(passed(&view(1, None), &view(1, None)), None);
        assert_eq!(passed(&view(1, None), &view(1, Some(4))), None, "taken");
        assert_eq!(passed(&view(1, Some(4)), &view(1, Some(4))), None);
        assert_eq!(passed(&view(1, None), &view(5, None)), Some("member"));
        assert_eq!(passed(&view(1, Some(4)), &view(1, None)), Some("leader"));
        assert_eq!(passed(&view(1, Some(4)), &view(1, Some(7))), Some("leader"));
    }

    #[test]
    fn the_only_daemon_of_an_unshared_store_owns_everything_and_leads() {
        let alone = Membership::alone();
        assert!(alone.owns("web1") && alone.owns("run/r1"));
        assert_eq!(alone.view().leading, Some(1));
    }
}
