//! Several daemons on one PostgreSQL store: member leases, the leader lease
//! and fenced writes. Leases are rows on the database's clock, each with an
//! epoch that only grows; a write that acts as the leader or as a member
//! (a machine's owner) checks its lease and epoch in its own transaction,
//! so a replica that was paused or cut off past its lease writes nothing.
//!
//! A redb store has one daemon: it is the only member and always the leader.

pub use super::engine::doorbell::Ring;
pub use super::engine::postgres::{Fence, Member};
use super::engine::{Engine, Json, Read, Table};
use super::schema::{
    APPLIED_STATE, FLEET_CHANGES, META, OPERATION_EVENTS, OPERATIONS, OUTBOX, STOP_ASKS, SYNC_ASKS,
    SYNC_HISTORY, USERS,
};
use super::{Result, Store};

/// What a replica follows of the others' writes, each woken by the store's
/// doorbell (PostgreSQL's notifications of the tables a commit wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// Operations' event logs and ends (the streams of operations run elsewhere).
    OperationLogs,
    /// Stops asked through other replicas.
    StopAsks,
    /// Accounts and the fleet's view (revocation, `/api/fleet/events`).
    AccountsAndFleet,
    /// The revision in force and the leader's sync records.
    Sync,
    /// Syncs and plans asked of the leader.
    SyncAsks,
    /// Messages queued for the forge and the sinks (the leader delivers them).
    Outbox,
}

impl Followed {
    fn tables(self) -> &'static [&'static str] {
        match self {
            Followed::OperationLogs => &[OPERATION_EVENTS.name, OPERATIONS.name],
            Followed::StopAsks => &[STOP_ASKS.name],
            Followed::AccountsAndFleet => &[META.name, USERS.name, FLEET_CHANGES.name],
            Followed::Sync => &[APPLIED_STATE.name, SYNC_HISTORY.name],
            Followed::SyncAsks => &[SYNC_ASKS.name],
            Followed::Outbox => &[OUTBOX.name],
        }
    }
}

impl Store {
    /// Whether other daemons may share this store (PostgreSQL), so that leases matter.
    pub fn is_shared(&self) -> bool {
        matches!(&*self.engine, Engine::Postgres(_))
    }

    /// What wakes a follower of `followed` when this replica (or, on a
    /// shared store, another) commits a write of it.
    pub fn doorbell(&self, followed: Followed) -> Ring {
        match &*self.engine {
            Engine::Redb(db) => db.ring_for(followed.tables()),
            Engine::Postgres(db) => db.ring_for(followed.tables()),
        }
    }

    /// This store, every write through it fenced by `fence`.
    pub fn fenced(&self, fence: Fence) -> Store {
        Store {
            fence: Some(std::sync::Arc::new(fence)),
            ..self.clone()
        }
    }

    /// Joins, or renews this replica's member lease; its epoch.
    pub fn renew_member(&self, replica: &str, address: &str, ttl_ms: i64) -> Result<i64> {
        match &*self.engine {
            Engine::Redb(_) => Ok(1),
            Engine::Postgres(db) => Ok(db.renew_member(replica, address, ttl_ms)?),
        }
    }

    /// Takes or renews the leader lease; its epoch while this replica holds it.
    pub fn renew_leadership(&self, replica: &str, ttl_ms: i64) -> Result<Option<i64>> {
        match &*self.engine {
            Engine::Redb(_) => Ok(Some(1)),
            Engine::Postgres(db) => Ok(db.renew_leadership(replica, ttl_ms)?),
        }
    }

    /// The members whose lease has not passed (a redb store: none but itself,
    /// which the caller knows).
    pub fn live_members(&self) -> Result<Vec<Member>> {
        match &*self.engine {
            Engine::Redb(_) => Ok(Vec::new()),
            Engine::Postgres(db) => Ok(db.live_members()?),
        }
    }

    /// The replica that holds the leader lease (a redb store: none but
    /// itself, which the caller knows).
    pub fn leader(&self) -> Result<Option<String>> {
        match &*self.engine {
            Engine::Redb(_) => Ok(None),
            Engine::Postgres(db) => Ok(db.leader()?),
        }
    }

    /// The keys of `held` (what replicas hold: their running operations,
    /// open terminal sessions, by id → member id) whose replica is no live member.
    pub(super) fn held_by_gone(
        &self,
        tx: &impl Read,
        held: Table<u64, Json<String>>,
    ) -> Result<Vec<u64>> {
        let holders: Vec<(u64, String)> = tx.all(held, false).collect::<Result<_>>()?;
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        // Read after what they hold: a replica that joined and started
        // something since is among the members by then.
        let live: std::collections::HashSet<String> = self
            .live_members()?
            .into_iter()
            .map(|member| member.replica)
            .collect();
        Ok(holders
            .into_iter()
            .filter(|(_, replica)| !live.contains(replica))
            .map(|(id, _)| id)
            .collect())
    }

    /// Gives up this replica's leases at a clean shutdown.
    pub fn leave(&self, replica: &str) -> Result<()> {
        match &*self.engine {
            Engine::Redb(_) => Ok(()),
            Engine::Postgres(db) => Ok(db.leave(replica)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;
    use crate::store::{Actor, Error};
    use linkops_reconcilers::role::Role;

    const TTL: i64 = 60_000;

    /// A store call made from async code (through `Store::run`) does not
    /// hold the runtime's worker while the database takes its time: the
    /// worker's other tasks go on meanwhile (here the runtime has one
    /// worker, and the database sleeps 2 s in the call).
    #[test]
    fn a_slow_database_holds_no_runtime_worker() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let store = postgres.open();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (done, mut order) = tokio::sync::mpsc::unbounded_channel();
        let slept = done.clone();
        runtime.spawn(async move {
            let sleep = |store: &Store| {
                let Engine::Postgres(db) = &*store.engine else {
                    unreachable!("a PostgreSQL store")
                };
                Ok(db.execute("SELECT pg_sleep(2)")?)
            };
            store.run(sleep).await.unwrap();
            slept.send("the store call").unwrap();
        });
        runtime.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            done.send("another task").unwrap();
        });
        let first = runtime.block_on(order.recv());
        assert_eq!(first, Some("another task"));
        assert_eq!(runtime.block_on(order.recv()), Some("the store call"));
    }

    /// A commit through one handle rings, at the other, the followers of
    /// what it wrote and no others (their own look is an hour away); a
    /// listener whose connection was ended rings every follower once back;
    /// redb's commits ring this process's followers.
    #[test]
    fn the_doorbell_rings_for_other_replicas_writes_and_after_a_reconnect() {
        use std::time::Duration;
        const HOUR: Duration = Duration::from_secs(3600);
        let (redb, Some(postgres)) = (testing::redb(), testing::postgres()) else {
            return;
        };
        let (here, there) = (postgres.open(), postgres.open());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rung = |ring: &mut Ring, within: Duration| {
            runtime
                .block_on(async { tokio::time::timeout(within, ring.wait(HOUR)).await })
                .unwrap_or(false)
        };
        let mut asks = there.doorbell(Followed::SyncAsks);
        let mut stops = there.doorbell(Followed::StopAsks);
        assert!(
            rung(&mut asks, Duration::from_secs(30)),
            "listening rings everything once"
        );
        // Whether the first ring reached it too depends on when it subscribed.
        rung(&mut stops, Duration::ZERO);

        here.ask_sync(&super::super::SyncAsk::Sync {
            trigger: "api:ada".into(),
        })
        .unwrap();
        assert!(
            rung(&mut asks, Duration::from_secs(30)),
            "a sync asked through another handle"
        );
        assert!(
            !rung(&mut stops, Duration::from_millis(200)),
            "nothing was asked to stop"
        );

        let Engine::Postgres(db) = &*here.engine else {
            unreachable!("a PostgreSQL store")
        };
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query = 'LISTEN linkops'",
        )
        .unwrap();
        assert!(
            rung(&mut stops, Duration::from_secs(30)),
            "rung once listening again"
        );

        // An unshared store rings for its own commits: what they wrote, nothing else.
        let alone = redb.open();
        let mut asks = alone.doorbell(Followed::SyncAsks);
        let mut stops = alone.doorbell(Followed::StopAsks);
        assert!(
            !rung(&mut asks, Duration::from_millis(50)),
            "nothing written"
        );
        alone
            .ask_sync(&super::super::SyncAsk::Sync {
                trigger: "api:ada".into(),
            })
            .unwrap();
        assert!(rung(&mut asks, Duration::from_secs(30)), "its own sync ask");
        assert!(
            !rung(&mut stops, Duration::from_millis(50)),
            "nothing was asked to stop"
        );
    }

    #[test]
    fn one_leader_at_a_time_and_a_lapsed_lease_comes_back_with_a_new_epoch() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let store = postgres.open();
        let a = store
            .renew_leadership("a", TTL)
            .unwrap()
            .expect("free: a takes it");
        assert_eq!(
            store.renew_leadership("b", TTL).unwrap(),
            None,
            "a holds it"
        );
        assert_eq!(
            store.renew_leadership("a", TTL).unwrap(),
            Some(a),
            "renewed, same epoch"
        );
        assert_eq!(store.leader().unwrap().as_deref(), Some("a"));
        // a's lease passes (a 0 ms renewal ends it now): b takes over, with a greater epoch.
        store.renew_leadership("a", 0).unwrap();
        let b = store
            .renew_leadership("b", TTL)
            .unwrap()
            .expect("passed: b takes it");
        assert!(b > a);
        assert_eq!(store.renew_leadership("a", TTL).unwrap(), None);
        // A clean leave hands over at once.
        store.leave("b").unwrap();
        let again = store
            .renew_leadership("a", TTL)
            .unwrap()
            .expect("left: a takes it");
        assert!(again > b);
    }

    #[test]
    fn a_member_that_lapsed_rejoins_with_a_new_epoch_and_its_old_writes_are_refused() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let store = postgres.open();
        let first = store.renew_member("r1", "127.0.0.1:1", TTL).unwrap();
        assert_eq!(store.renew_member("r1", "127.0.0.1:1", TTL).unwrap(), first);
        store.renew_member("r2", "127.0.0.1:2", TTL).unwrap();
        let live: Vec<String> = store
            .live_members()
            .unwrap()
            .into_iter()
            .map(|m| m.replica)
            .collect();
        assert_eq!(live, ["r1", "r2"]);

        let as_first = store.fenced(Fence::Member {
            replica: "r1".into(),
            epoch: first,
        });
        as_first
            .create_user("ada", Some(Role::Admin), "h", &Actor::Cli)
            .unwrap();
        // r1 is paused past its lease: it is no member any more…
        store.renew_member("r1", "127.0.0.1:1", 0).unwrap();
        assert_eq!(store.live_members().unwrap().len(), 1);
        // …so what it still tries to write is refused, and nothing of it lands.
        let refused = as_first
            .create_user("bob", Some(Role::Viewer), "h", &Actor::Cli)
            .unwrap_err();
        assert!(matches!(refused, Error::Fenced { .. }), "{refused}");
        assert!(refused.to_string().contains("member r1"), "{refused}");
        assert!(store.user("bob").unwrap().is_none());
        // It wakes and rejoins as a new member; only the new epoch writes.
        let second = store.renew_member("r1", "127.0.0.1:1", TTL).unwrap();
        assert!(second > first);
        assert!(matches!(
            as_first.create_user("bob", Some(Role::Viewer), "h", &Actor::Cli),
            Err(Error::Fenced { .. })
        ));
        store
            .fenced(Fence::Member {
                replica: "r1".into(),
                epoch: second,
            })
            .create_user("bob", Some(Role::Viewer), "h", &Actor::Cli)
            .unwrap();
    }

    #[test]
    fn a_stale_leader_writes_nothing() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let store = postgres.open();
        let epoch = store.renew_leadership("a", TTL).unwrap().unwrap();
        let as_leader = store.fenced(Fence::Leader {
            replica: "a".into(),
            epoch,
        });
        as_leader.enqueue(&[]).unwrap();
        as_leader
            .audit(
                &Actor::System,
                crate::store::AuditAction::SshHostKeyRefused,
                "web1",
                crate::store::Outcome::Denied,
                None,
            )
            .unwrap();
        store.renew_leadership("a", 0).unwrap();
        store.renew_leadership("b", TTL).unwrap().unwrap();
        let refused = as_leader
            .audit(
                &Actor::System,
                crate::store::AuditAction::SshHostKeyRefused,
                "web2",
                crate::store::Outcome::Denied,
                None,
            )
            .unwrap_err();
        assert!(matches!(refused, Error::Fenced { .. }), "{refused}");
        assert_eq!(store.audit_entries(0, 10).unwrap().len(), 1);
    }
}
