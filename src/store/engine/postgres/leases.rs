//! The replicas' leases in the database: members and their epochs, the
//! leader, and what a fenced write acts as.

use super::{Error, Param, Postgres};

impl Postgres {
    /// Joins, or renews this replica's member lease for `ttl_ms`; returns its
    /// epoch, a new one when the lease had passed (a paused replica rejoins
    /// as a new member, its old epoch fenced).
    pub fn renew_member(&self, replica: &str, address: &str, ttl_ms: i64) -> Result<i64, Error> {
        let rows = self.autocommit(
            "renew the member lease",
            "INSERT INTO linkops_members (replica, epoch, address, valid_until) \
             VALUES ($1, nextval('linkops_epochs'), $2, now() + $3 * interval '1 millisecond') \
             ON CONFLICT (replica) DO UPDATE SET \
               epoch = CASE WHEN linkops_members.valid_until > now() \
                 THEN linkops_members.epoch ELSE EXCLUDED.epoch END, \
               address = EXCLUDED.address, valid_until = EXCLUDED.valid_until \
             RETURNING epoch",
            vec![
                Param::Text(replica.to_owned()),
                Param::Text(address.to_owned()),
                Param::Int(ttl_ms),
            ],
        )?;
        Ok(rows.first().map_or(0, |row| row.get(0)))
    }

    /// Takes the leader lease if nobody holds it, or renews it if this
    /// replica does; its epoch while held (a new one after a lapse).
    pub fn renew_leadership(&self, replica: &str, ttl_ms: i64) -> Result<Option<i64>, Error> {
        let rows = self.autocommit(
            "renew the leader lease",
            "INSERT INTO linkops_leases (name, holder, epoch, valid_until) \
             VALUES ('leader', $1, nextval('linkops_epochs'), now() + $2 * interval '1 millisecond') \
             ON CONFLICT (name) DO UPDATE SET \
               epoch = CASE WHEN linkops_leases.holder = EXCLUDED.holder \
                   AND linkops_leases.valid_until > now() \
                 THEN linkops_leases.epoch ELSE EXCLUDED.epoch END, \
               holder = EXCLUDED.holder, valid_until = EXCLUDED.valid_until \
             WHERE linkops_leases.holder = EXCLUDED.holder OR linkops_leases.valid_until <= now() \
             RETURNING epoch",
            vec![Param::Text(replica.to_owned()), Param::Int(ttl_ms)],
        )?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    /// Members whose lease has not passed, by replica id.
    pub fn live_members(&self) -> Result<Vec<Member>, Error> {
        let rows = self.autocommit(
            "read the members",
            "SELECT replica, epoch, address, \
               (extract(epoch FROM valid_until - now()) * 1000)::bigint \
             FROM linkops_members WHERE valid_until > now() ORDER BY replica",
            Vec::new(),
        )?;
        Ok(rows
            .iter()
            .map(|row| Member {
                replica: row.get(0),
                epoch: row.get(1),
                address: row.get(2),
                valid_for_ms: row.get(3),
            })
            .collect())
    }

    /// The replica whose leader lease has not passed, if any.
    pub fn leader(&self) -> Result<Option<String>, Error> {
        let rows = self.autocommit(
            "read the leader",
            "SELECT holder FROM linkops_leases WHERE name = 'leader' AND valid_until > now()",
            Vec::new(),
        )?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    /// Gives up this replica's leases (a clean shutdown): the others take
    /// over at once rather than when the leases pass.
    pub fn leave(&self, replica: &str) -> Result<(), Error> {
        self.autocommit(
            "leave",
            "WITH gone AS (DELETE FROM linkops_members WHERE replica = $1) \
             DELETE FROM linkops_leases WHERE holder = $1",
            vec![Param::Text(replica.to_owned())],
        )?;
        Ok(())
    }
}

/// What a fenced write acts as: the leader, or a live member (a machine's
/// owner), each at the epoch its lease had when its work began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    Leader { replica: String, epoch: i64 },
    Member { replica: String, epoch: i64 },
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::Leader { replica, epoch } => write!(f, "leader {replica} at epoch {epoch}"),
            Fence::Member { replica, epoch } => write!(f, "member {replica} at epoch {epoch}"),
        }
    }
}

/// A live member as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub replica: String,
    pub epoch: i64,
    /// Where the other replicas reach it (`host:port` of its API).
    pub address: String,
    /// How much longer its lease lasts, on the database's clock.
    pub valid_for_ms: i64,
}
