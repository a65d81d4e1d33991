//! Approval requests: runs waiting for approvers, by id, with their votes.
//! A request is recorded with its audit entry and its notification; each
//! vote is written only onto the votes it was counted against (another
//! replica's vote in between makes it count again); the last approval and
//! the operation it starts are one transaction (`operations.rs` claims it).

use linkops_reconcilers::approval::{Request, RequestState};
use linkops_reconcilers::operation::Requester;
use linkops_reconcilers::outbox::Outgoing;
use linkops_reconcilers::schedule::{FireOutcome, FireRecord};

use super::audit::{Audit, append_audit};
use super::engine::{Read, Write, WriteTx};
use super::schema::APPROVALS;
use super::{Error, Result, Store};

/// What in Git asks for approvals of its own content, and starts what is approved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    RunRequest(String),
    State(String),
}

impl Store {
    /// Records `request` (its id assigned) with its audit entry and what it
    /// tells the outside (`outgoing`, made from the request as recorded);
    /// a schedule's request claims its fire with it (`fire`, recorded as
    /// awaiting this approval — or [`Error::AlreadyFired`]).
    pub fn create_approval(
        &self,
        request: &Request,
        fire: Option<&FireRecord>,
        audit: impl FnOnce(&Request) -> Audit,
        outgoing: impl FnOnce(&Request) -> Vec<Outgoing>,
    ) -> Result<Request> {
        let mut tx = self.write()?;
        let id = tx.last(APPROVALS)?.map_or(1, |(id, _)| id + 1);
        let created = Request {
            id,
            ..request.clone()
        };
        if let Some(fire) = fire {
            let awaiting = FireRecord {
                outcome: FireOutcome::AwaitingApproval { approval: id },
                ..fire.clone()
            };
            super::schedules::claim_fire(&mut tx, &awaiting)?;
        }
        tx.insert(APPROVALS, id, &created)?;
        append_audit(&mut tx, &audit(&created))?;
        super::outbox::enqueue(&mut tx, &outgoing(&created), self.outbox_bound)?;
        tx.commit()?;
        Ok(created)
    }

    pub fn approval(&self, id: u64) -> Result<Option<Request>> {
        self.read_one(APPROVALS, id)
    }

    /// The newest requests first, at most `limit`.
    pub fn approvals(&self, limit: usize) -> Result<Vec<Request>> {
        let read = self.read()?;
        read.range_rev(APPROVALS, 0_u64..)
            .take(limit)
            .map(|entry| entry.map(|(_, request)| request))
            .collect()
    }

    /// The requests `owner` made (a run-request, a state), newest first.
    pub fn approvals_of(&self, owner: &Owner) -> Result<Vec<Request>> {
        let read = self.read()?;
        let made_by = |request: &Request| match (&request.requested_by, owner) {
            (Requester::RunRequest { id, .. }, Owner::RunRequest(owner)) => id == owner,
            (Requester::State { id, .. }, Owner::State(owner)) => id == owner,
            _ => false,
        };
        read.range_rev(APPROVALS, 0_u64..)
            .filter_map(|entry| match entry {
                Ok((_, request)) if !made_by(&request) => None,
                entry => Some(entry.map(|(_, request)| request)),
            })
            .collect()
    }

    /// Writes a vote (`voted`: the request with it) and its audit entry,
    /// unless the request changed since it was read.
    pub fn record_vote(&self, voted: &Request, audit: &Audit) -> Result<()> {
        let mut tx = self.write()?;
        still_as_voted_on(&mut tx, voted)?;
        tx.insert(APPROVALS, voted.id, voted)?;
        append_audit(&mut tx, audit)?;
        tx.commit()
    }

    /// Sets an approved request's state (it could not start: why).
    pub fn set_approval_state(&self, id: u64, state: RequestState) -> Result<()> {
        let mut tx = self.write()?;
        if let Some(mut request) = tx.get(APPROVALS, id)? {
            request.state = state;
            tx.insert(APPROVALS, id, &request)?;
        }
        tx.commit()
    }
}

/// Refuses a write onto a request that changed since `voted` was read from
/// it: it must await approval with every vote but the last one `voted` adds.
pub(super) fn still_as_voted_on(tx: &mut WriteTx, voted: &Request) -> Result<()> {
    let stored = tx.get(APPROVALS, voted.id)?;
    let counted = voted.votes.len().saturating_sub(1);
    match stored {
        Some(stored)
            if stored.state == RequestState::AwaitingApproval
                && stored.votes.len() == counted
                && stored.votes[..] == voted.votes[..counted] =>
        {
            Ok(())
        }
        _ => Err(Error::VoteRaced { id: voted.id }),
    }
}
