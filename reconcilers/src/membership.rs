//! Several daemons sharing one fleet: which replica owns which machine, and
//! how long a replica may act on a lease it could not renew.
//!
//! Ownership is rendezvous (highest-random-weight) hashing over the live
//! members.
//! Every replica computes the same owner from the same member list, with no
//! coordination; when a member joins or leaves, only the machines it gains
//! or held move (about 1/N of them), unlike a plain `hash % N`. The weight is
//! SHA-256 of the member and the machine — a specified hash, so replicas of
//! different builds agree (Rust's `DefaultHasher` may change between releases).

use sha2::{Digest, Sha256};

/// The weight of `machine` on `member`: the first 8 bytes of
/// SHA-256(member, 0x00, machine), big-endian.
pub fn weight(member: &str, machine: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(member.as_bytes());
    hash.update([0]);
    hash.update(machine.as_bytes());
    let digest = hash.finalize();
    let mut head = [0; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

/// The member that owns `machine`: the one of greatest weight (ties, which
/// SHA-256 makes vanishingly rare, go to the least member id). `None` with no members.
pub fn owner<'a>(machine: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members.into_iter().max_by(|a, b| {
        weight(a, machine)
            .cmp(&weight(b, machine))
            .then_with(|| b.cmp(a))
    })
}

/// Each member's share of `keys`: the keys it owns, in the keys' order,
/// members in their order (a member that owns none has an empty share).
pub fn shares<K>(
    keys: impl IntoIterator<Item = K>,
    named: impl Fn(&K) -> String,
    members: &[&str],
) -> Vec<Vec<K>> {
    let mut shares: Vec<Vec<K>> = members.iter().map(|_| Vec::new()).collect();
    for key in keys {
        let owned_by = owner(&named(&key), members.iter().copied());
        if let Some(at) = owned_by.and_then(|m| members.iter().position(|member| *member == m)) {
            shares[at].push(key);
        }
    }
    shares
}

/// A lease's timing: valid for `ttl_ms` on the database's clock from each
/// renewal, renewed every `renew_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl_ms: i64,
    pub renew_ms: i64,
}

impl LeaseTiming {
    /// 6 s leases renewed every 2 s: a dead replica's work moves within
    /// about 6 s (client-go's Lease takes 15–17 s; AWX 2 minutes).
    pub const DEFAULT: LeaseTiming = LeaseTiming {
        ttl_ms: 6_000,
        renew_ms: 2_000,
    };

    /// Whether a holder may still act `now_ms` on its own monotonic clock,
    /// its last successful renewal having *started* at `renewed_at_ms`: the
    /// lease ran from no earlier than that on the database's clock, so
    /// acting stops a margin (one renewal interval) before it can have
    /// passed there — before any other replica can take it over.
    pub fn may_act(self, renewed_at_ms: Option<i64>, now_ms: i64) -> bool {
        renewed_at_ms.is_some_and(|at| now_ms < self.acts_until(at))
    }

    /// Until when (on the holder's clock) a holder whose last successful
    /// renewal started at `renewed_at_ms` may act: a renewal still waiting
    /// for its answer then is as good as failed.
    pub fn acts_until(self, renewed_at_ms: i64) -> i64 {
        renewed_at_ms + self.ttl_ms - self.renew_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machines(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("web-{i:05}")).collect()
    }

    fn owners<'a>(machines: &'a [String], members: &[&'a str]) -> Vec<&'a str> {
        machines
            .iter()
            .map(|m| owner(m, members.iter().copied()).unwrap())
            .collect()
    }

    #[test]
    fn a_holder_stops_acting_a_renewal_before_its_lease_can_pass() {
        let timing = LeaseTiming::DEFAULT;
        assert!(!timing.may_act(None, 0), "never renewed");
        assert!(timing.may_act(Some(1_000), 1_000));
        assert!(timing.may_act(Some(1_000), 4_999));
        // Renewals failed (a pause, a cut network): it stops at 4 s, the
        // lease it last renewed passes at 6 s at the earliest.
        assert!(!timing.may_act(Some(1_000), 5_000));
        assert!(!timing.may_act(Some(1_000), 60_000));
        assert_eq!(timing.acts_until(1_000), 5_000);
    }

    #[test]
    fn every_replica_computes_the_same_owner_whatever_the_order_of_members() {
        let fleet = machines(200);
        let forward = owners(&fleet, &["a", "b", "c"]);
        let backward = owners(&fleet, &["c", "b", "a"]);
        assert_eq!(forward, backward);
        assert_eq!(owner("web-1", std::iter::empty()), None);
        // The weight is specified: a replica of another build agrees.
        assert_eq!(weight("a", "web-00000"), weight("a", "web-00000"));
        assert_ne!(weight("a", "web-00000"), weight("b", "web-00000"));
    }

    #[test]
    fn shares_split_the_keys_among_the_members_as_their_owners_say() {
        let fleet = machines(300);
        let members = ["a", "b", "c"];
        let shares = shares(fleet.clone(), String::clone, &members);
        assert_eq!(
            shares.iter().map(Vec::len).sum::<usize>(),
            300,
            "each key once"
        );
        for (member, share) in members.iter().zip(&shares) {
            assert!(!share.is_empty(), "{member} owns some");
            for key in share {
                assert_eq!(owner(key, members), Some(*member));
            }
            assert!(share.is_sorted(), "in the keys' order");
        }
        assert!(super::shares(fleet, String::clone, &[]).is_empty());
    }

    #[test]
    fn machines_spread_evenly_and_a_join_or_leave_moves_about_a_share() {
        let fleet = machines(3000);
        let three = owners(&fleet, &["r1", "r2", "r3"]);
        for member in ["r1", "r2", "r3"] {
            let held = three.iter().filter(|o| **o == member).count();
            assert!(
                (850..=1150).contains(&held),
                "{member} holds {held} of 3000"
            );
        }
        // A fourth replica joins: only what it takes moves, about a quarter.
        let four = owners(&fleet, &["r1", "r2", "r3", "r4"]);
        let moved: Vec<usize> = (0..fleet.len()).filter(|&i| three[i] != four[i]).collect();
        assert!(
            moved.iter().all(|&i| four[i] == "r4"),
            "only to the new member"
        );
        assert!((600..=900).contains(&moved.len()), "{} moved", moved.len());
        // r2 leaves: only its machines move, spread over the others.
        let without = owners(&fleet, &["r1", "r3"]);
        for i in 0..fleet.len() {
            if three[i] != "r2" {
                assert_eq!(three[i], without[i], "{} stays", fleet[i]);
            }
        }
    }
}
