//! Approvals: runs that wait for a second pair of eyes. `access.yaml`'s
//! `approvals` name which runs need them — a script, machines by tag or id —
//! how many distinct approvers (never the requester) with which role, and
//! within how long. Here: which rules a run falls under, what a request
//! covers (its exact content, digested: a changed script or commit needs a
//! new one), and what a vote does — counted, the request approved or
//! rejected, or refused (one's own request, twice, without the role, expired).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::grant::{Held, Need, Place, Scope};
use crate::operation::Requester;
use crate::role::Role;
use crate::rollout::Rollout;
use crate::script::{ParamValue, Script};

/// The most approvers a rule may ask for.
pub const MAX_APPROVERS: u32 = 10;

/// A rule of `access.yaml`'s `approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rule {
    pub name: String,
    /// The runs it covers: its scripts (none: every one) on machines of its
    /// tags or ids (none: every machine).
    #[serde(flatten)]
    pub scope: Scope,
    /// Distinct approvers, the requester never among them.
    pub approvers: u32,
    /// What each approver holds over every machine of the run, for its script.
    pub role: Role,
    /// An approval not given within this long never runs.
    #[schema(value_type = crate::DurationSchema)]
    pub expires: Duration,
}

impl Rule {
    /// Whether running `script` on `machines` falls under the rule.
    pub fn covers(&self, script: &str, machines: &[Place]) -> bool {
        self.scope.runs(script) && machines.iter().any(|&machine| self.scope.covers(machine))
    }
}

/// What a run needs, given every rule: none, or the strictest of the rules
/// it falls under (most approvers, highest role, shortest expiry).
pub fn needed<'a>(rules: &'a [Rule], script: &str, machines: &[Place]) -> Option<Needed> {
    let matched: Vec<&'a Rule> = (rules.iter())
        .filter(|rule| rule.covers(script, machines))
        .collect();
    let first = matched.first()?;
    Some(Needed {
        rules: matched.iter().map(|rule| rule.name.clone()).collect(),
        approvers: matched
            .iter()
            .map(|rule| rule.approvers)
            .max()
            .unwrap_or(first.approvers),
        role: matched
            .iter()
            .map(|rule| rule.role)
            .max()
            .unwrap_or(first.role),
        expires: matched
            .iter()
            .map(|rule| rule.expires)
            .min()
            .unwrap_or(first.expires),
    })
}

/// What a run waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub rules: Vec<String>,
    pub approvers: u32,
    pub role: Role,
    pub expires: Duration,
}

/// What a request covers, exactly: the run as it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Content {
    pub script: String,
    pub params: BTreeMap<String, ParamValue>,
    /// The machines it runs on.
    pub machines: Vec<String>,
    pub rollout: Option<Rollout>,
    /// At most this many machines at once.
    pub concurrency: Option<usize>,
    /// The script as the catalog had it ([`script_digest`]): another body is another run.
    pub script_digest: String,
}

impl Content {
    /// The content, digested: an approval covers this and nothing else.
    pub fn digest(&self) -> String {
        crate::short_digest(&serde_json::to_vec(self).expect("serialisable"), 12)
    }
}

/// A script's definition, digested: its body, check, interpreter, parameters
/// and timeout.
pub fn script_digest(script: &Script) -> String {
    crate::short_digest(&serde_json::to_vec(script).expect("serialisable"), 12)
}

/// A run waiting for approval, or what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Request {
    pub id: u64,
    /// The rules it falls under.
    pub rules: Vec<String>,
    pub approvers: u32,
    pub role: Role,
    pub content: Content,
    /// [`Content::digest`] of `content`.
    pub digest: String,
    pub requested_by: Requester,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub votes: Vec<Vote>,
    pub state: RequestState,
}

/// One approver's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Vote {
    pub by: String,
    pub approve: bool,
    pub at_ms: i64,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for approvers (until it expires).
    AwaitingApproval,
    /// Approved; a run-request's own reconcile starts it (claiming the run-request).
    Approved,
    /// Approved; its operation started.
    Started {
        operation_id: u64,
    },
    /// Approved, but it could not start: why.
    NotStarted {
        reason: String,
    },
    Rejected {
        by: String,
    },
    /// Not approved in time: it never runs.
    Expired,
    /// What it covered changed (a new commit, another script): a new request stands for it.
    Superseded {
        reason: String,
    },
}

impl RequestState {
    pub fn name(&self) -> &'static str {
        match self {
            RequestState::AwaitingApproval => "awaiting_approval",
            RequestState::Approved => "approved",
            RequestState::Started { .. } => "started",
            RequestState::NotStarted { .. } => "not_started",
            RequestState::Rejected { .. } => "rejected",
            RequestState::Expired => "expired",
            RequestState::Superseded { .. } => "superseded",
        }
    }
}

impl Request {
    /// A new request for `content`, asked by `requested_by` at `now_ms`.
    pub fn new(needed: Needed, content: Content, requested_by: Requester, now_ms: i64) -> Request {
        Request {
            id: 0,
            rules: needed.rules,
            approvers: needed.approvers,
            role: needed.role,
            digest: content.digest(),
            content,
            requested_by,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + needed.expires.as_millis() as i64,
            votes: Vec::new(),
            state: RequestState::AwaitingApproval,
        }
    }

    /// Its state at `now_ms`: one still awaiting past its expiry has expired.
    pub fn state_at(&self, now_ms: i64) -> RequestState {
        match self.state {
            RequestState::AwaitingApproval if now_ms >= self.expires_at_ms => RequestState::Expired,
            ref state => state.clone(),
        }
    }

    /// Approvals so far.
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|vote| vote.approve).count()
    }
}

/// What a run-request that needs approval does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Approved by request `approved`: it starts.
    Start { approved: u64 },
    /// No request covers its content: one is recorded.
    Ask,
    /// It waits, saying why — until `until_ms` (the request's expiry) when it can change by itself.
    Wait {
        reason: String,
        until_ms: Option<i64>,
    },
}

/// What a run-request whose content digests to `digest` does, given the
/// requests recorded for it (newest first): an approval covers exactly its
/// content, so one for other content does not count.
pub fn gate(recorded: &[Request], digest: &str, now_ms: i64) -> Gate {
    let Some(request) = recorded.iter().find(|request| request.digest == digest) else {
        return Gate::Ask;
    };
    let again = "change the run-request (or its script) to ask again";
    let (reason, until_ms) = match request.state_at(now_ms) {
        RequestState::Approved => {
            return Gate::Start {
                approved: request.id,
            };
        }
        RequestState::AwaitingApproval => (
            format!(
                "awaiting approval: request {}, {} of {} (`linkops approve {}`)",
                request.id,
                request.approvals(),
                request.approvers,
                request.id
            ),
            Some(request.expires_at_ms),
        ),
        RequestState::Started { operation_id } => (
            format!(
                "approved by request {} as operation {operation_id}",
                request.id
            ),
            None,
        ),
        RequestState::Rejected { by } => (
            format!(
                "rejected by {by} (approval request {}): {again}",
                request.id
            ),
            None,
        ),
        RequestState::Expired => (
            format!(
                "approval request {} expired unapproved: {again}",
                request.id
            ),
            None,
        ),
        RequestState::NotStarted { .. } | RequestState::Superseded { .. } => return Gate::Ask,
    };
    Gate::Wait { reason, until_ms }
}

/// What a vote did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    /// Counted: `have` of `need` approvals.
    Counted {
        have: usize,
        need: usize,
    },
    /// The last approval needed: the run starts.
    Approved,
    Rejected,
}

/// Why a vote is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("approval request {id} is {state}, no longer awaiting approval")]
    Closed { id: u64, state: &'static str },
    #[error("approval request {id} expired: it never runs (ask again)")]
    Expired { id: u64 },
    #[error("{by} asked for this run: a requester never approves their own")]
    OwnRequest { by: String },
    #[error("{by} has voted on approval request {id} already")]
    AlreadyVoted { by: String, id: u64 },
    #[error("{by} may not approve it: {refusal}")]
    NotAnApprover {
        by: String,
        refusal: crate::grant::Refusal,
    },
}

/// What `by` (holding `grants`) approving — or not — `request` at `now_ms`
/// does; the request's votes and state as they become, or why not.
pub fn vote(
    request: &mut Request,
    by: &str,
    grants: &Held,
    machines: &[Place],
    approve: bool,
    comment: &str,
    now_ms: i64,
) -> Result<Tally, Refusal> {
    match request.state_at(now_ms) {
        RequestState::AwaitingApproval => {}
        RequestState::Expired => return Err(Refusal::Expired { id: request.id }),
        state => {
            return Err(Refusal::Closed {
                id: request.id,
                state: state.name(),
            });
        }
    }
    if let Requester::User { name } = &request.requested_by
        && name == by
    {
        return Err(Refusal::OwnRequest { by: by.to_owned() });
    }
    if request.votes.iter().any(|vote| vote.by == by) {
        return Err(Refusal::AlreadyVoted {
            by: by.to_owned(),
            id: request.id,
        });
    }
    let script = request.content.script.as_str();
    for &machine in machines {
        let need = Need::Approve {
            script,
            machine,
            role: request.role,
        };
        grants
            .permits(need)
            .map_err(|refusal| Refusal::NotAnApprover {
                by: by.to_owned(),
                refusal,
            })?;
    }
    request.votes.push(Vote {
        by: by.to_owned(),
        approve,
        at_ms: now_ms,
        comment: crate::outbox::cut(comment, 500),
    });
    if !approve {
        request.state = RequestState::Rejected { by: by.to_owned() };
        return Ok(Tally::Rejected);
    }
    let (have, need) = (request.approvals(), request.approvers as usize);
    Ok(match have >= need {
        true => Tally::Approved,
        false => Tally::Counted { have, need },
    })
}

#[cfg(test)]
mod tests;
