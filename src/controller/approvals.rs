//! Runs that wait for approvers: a request recorded (audited, told to the
//! sinks with a link to approve it), each vote decided by
//! `reconcilers::approval::vote` and written onto the votes it counted, and
//! the last approval starting exactly the content approved — in the
//! operation's own transaction — or saying why it cannot.

use linkops_reconcilers::approval::{self, Content, Needed, Request, RequestState, Tally};
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{Held, Place};
use linkops_reconcilers::operation::Requester;
use linkops_reconcilers::run;
use linkops_reconcilers::script::Targets;

use super::Controller;
use crate::operations::{self, HostPlan, Plan};
use crate::store::{self, Actor, Audit, AuditAction, Outcome, now_ms};

/// Why a vote was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval request {0}")]
    NoSuchRequest(u64),
    #[error("no desired state has been applied yet")]
    NothingApplied,
    #[error(transparent)]
    Refused(#[from] approval::Refusal),
    /// Protected machines among the request's, and no fresh second factor.
    #[error("approving a run on protected machines {} asks for a fresh second factor", .0.join(", "))]
    SecondFactor(Vec<String>),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Who votes: their name, the grants they hold now, and whether they gave
/// a second factor recently enough for protected machines.
#[derive(Debug, Clone, Copy)]
pub struct Voter<'a> {
    pub name: &'a str,
    pub grants: &'a Held,
    pub second_factor_fresh: bool,
}

impl Controller {
    /// Records a request for `content`, which `needed` says waits for
    /// approvers, as asked by `requested_by`.
    pub(super) async fn request_approval(
        &self,
        needed: Needed,
        content: Content,
        requested_by: Requester,
    ) -> Result<Request, store::Error> {
        let request = Request::new(needed, content, requested_by, now_ms());
        let notifier = self.context.notifier.clone();
        (self.context.store)
            .run(move |store| record_request(store, &notifier, &request))
            .await
    }

    /// `by` approves (or rejects) request `id`, with `comment`; the request
    /// as it is after the vote (started, when it was the last approval needed).
    pub async fn vote(
        &self,
        id: u64,
        by: Voter<'_>,
        approve: bool,
        comment: &str,
    ) -> Result<Request, ApprovalError> {
        let desired = self.context.desired.borrow().clone();
        let desired = desired.ok_or(ApprovalError::NothingApplied)?;
        let stored = (self.context.store)
            .run(move |store| store.approval(id))
            .await?;
        let mut request = stored.ok_or(ApprovalError::NoSuchRequest(id))?;
        let ids = request.content.machines.clone();
        let machines: Vec<Place> = (ids.iter())
            .map(|id| Place::find(Some(&desired), id))
            .collect();
        let protected: Vec<String> = (machines.iter())
            .filter(|place| place.protected)
            .map(|place| place.id.to_owned())
            .collect();
        if !protected.is_empty() && !by.second_factor_fresh {
            return Err(ApprovalError::SecondFactor(protected));
        }
        let tally = approval::vote(
            &mut request,
            by.name,
            by.grants,
            &machines,
            approve,
            comment,
            now_ms(),
        )?;
        let audit = Audit {
            actor: Actor::user(by.name),
            action: match approve {
                true => AuditAction::ApprovalApprove,
                false => AuditAction::ApprovalReject,
            },
            target: id.to_string(),
            outcome: Outcome::Success,
            detail: Some(match &tally {
                Tally::Counted { have, need } => format!("{have} of {need} approvals"),
                Tally::Approved => "the last approval needed: the run starts".to_owned(),
                Tally::Rejected => format!("rejected: {comment}"),
            }),
        };
        // A run-request's or a state's own reconcile starts what is approved
        // for it (a run-request claiming itself, once; a state applying its content).
        let owner = match &request.requested_by {
            Requester::RunRequest { id, .. } => Some(super::ObjectKey::RunRequest(id.clone())),
            Requester::State { id, .. } => Some(super::ObjectKey::State(id.clone())),
            _ => None,
        };
        if tally == Tally::Approved && owner.is_none() {
            return self.start_approved(&desired, request, audit).await;
        }
        if tally == Tally::Approved {
            request.state = RequestState::Approved;
        }
        let voted = request.clone();
        (self.context.store)
            .run(move |store| store.record_vote(&voted, &audit))
            .await?;
        if let Some(key) = owner.filter(|_| tally == Tally::Approved) {
            self.scheduler.trigger(key, super::Reason::Api);
        }
        Ok(request)
    }

    /// Starts what `voted` (approved by its last vote) covers, exactly: the
    /// script as it was asked for, on its machines as they are placed now.
    async fn start_approved(
        &self,
        desired: &DesiredState,
        voted: Request,
        audit: Audit,
    ) -> Result<Request, ApprovalError> {
        let content = &voted.content;
        let script = (desired.scripts.get(&content.script))
            .filter(|script| approval::script_digest(script) == content.script_digest);
        let Some(script) = script.cloned() else {
            let reason = format!(
                "script {} changed (or left the catalog) since the run was asked for: ask again",
                content.script
            );
            return self
                .end_unstarted(voted, audit, RequestState::Superseded { reason })
                .await;
        };
        let targets = Targets {
            machines: content.machines.clone(),
            ..Targets::default()
        };
        let held = self.held().await?;
        if let Some(reason) = run::refused_by_suspension(&held, &content.machines) {
            return self
                .end_unstarted(voted, audit, RequestState::NotStarted { reason })
                .await;
        }
        // Machines not checked since the daemon started are checked first.
        let unchecked = {
            let ids = content.machines.clone();
            let statuses = (self.context.store)
                .run(move |store| store.machine_statuses(&ids))
                .await?;
            (content.machines.iter())
                .filter(|id| run::first_unchecked(std::slice::from_ref(id), &statuses).is_some())
                .cloned()
                .collect::<Vec<_>>()
        };
        for id in &unchecked {
            // A machine that cannot be checked is skipped by its placement, with why.
            let _ = self.verify(id, None).await;
        }
        let ids = content.machines.clone();
        let statuses = (self.context.store)
            .run(move |store| store.machine_statuses(&ids))
            .await?;
        let placements = run::place(&targets, &desired.machines, &statuses, &held);
        let plan = Plan {
            secrets: linkops_reconcilers::secret::named(&script, &content.params, &desired.secrets),
            script,
            params: content.params.clone(),
            hosts: HostPlan::from_placements(placements),
            requested_by: voted.requested_by.clone(),
            concurrency: content.concurrency,
            rollout: content.rollout,
            retry_of: None,
        };
        let claim = store::Claim::Approval {
            voted: Box::new(voted.clone()),
            audit: audit.clone(),
        };
        let engine = self.context.engine.clone();
        let started = crate::blocking::run(move || engine.start(plan, Some(claim)))
            .await
            .map_err(|_| store::Error::ShuttingDown)?;
        match started {
            Ok(operation) => {
                tracing::info!(
                    approval = voted.id,
                    operation = operation.id,
                    "an approved run started"
                );
                if let Requester::Schedule { name, due_ms, .. } = &voted.requested_by {
                    let (name, due_ms, id) = (name.clone(), *due_ms, operation.id);
                    (self.context.store)
                        .run(move |store| store.set_fire_started(&name, due_ms, id))
                        .await?;
                }
                Ok(Request {
                    state: RequestState::Started {
                        operation_id: operation.id,
                    },
                    ..voted
                })
            }
            Err(operations::Error::Store(error)) => Err(error.into()),
            Err(error) => {
                let reason = error.to_string();
                self.end_unstarted(voted, audit, RequestState::NotStarted { reason })
                    .await
            }
        }
    }

    /// Records the last vote, and that the run it approved could not start.
    async fn end_unstarted(
        &self,
        voted: Request,
        audit: Audit,
        state: RequestState,
    ) -> Result<Request, ApprovalError> {
        let ended = Request {
            state,
            ..voted.clone()
        };
        let (id, end) = (voted.id, ended.state.clone());
        (self.context.store)
            .run(move |store| {
                store.record_vote(&voted, &audit)?;
                store.set_approval_state(id, end)
            })
            .await?;
        tracing::warn!(approval = ended.id, state = ?ended.state, "an approved run did not start");
        Ok(ended)
    }
}

/// Records `request` (awaiting approval) with its audit entry, and tells
/// the sinks it waits, with a link to approve it; the request as recorded.
pub(super) fn record_request(
    store: &store::Store,
    notifier: &crate::notify::Notifier,
    request: &Request,
) -> Result<Request, store::Error> {
    record_request_with(store, notifier, request, None)
}

/// [`record_request`], claiming a schedule's `fire` with it.
pub(super) fn record_request_with(
    store: &store::Store,
    notifier: &crate::notify::Notifier,
    request: &Request,
    fire: Option<&linkops_reconcilers::schedule::FireRecord>,
) -> Result<Request, store::Error> {
    let created = store.create_approval(
        request,
        fire,
        |created| Audit {
            actor: actor_of(&created.requested_by),
            action: AuditAction::ApprovalRequest,
            target: created.id.to_string(),
            outcome: Outcome::Success,
            detail: Some(format!(
                "script {} on {}: {} approval(s) by rules {}",
                created.content.script,
                created.content.machines.join(", "),
                created.approvers,
                created.rules.join(", ")
            )),
        },
        |created| {
            let told = linkops_reconcilers::outbox::for_approval(
                created,
                notifier.console_url(),
                now_ms(),
            );
            notifier.route(Vec::new(), vec![told])
        },
    )?;
    tracing::info!(approval = created.id, script = %created.content.script, by = %created.requested_by.label(), "a run awaits approval");
    Ok(created)
}

/// Who asked, as the audit log names them.
fn actor_of(requested_by: &Requester) -> Actor {
    match requested_by {
        Requester::User { name } => Actor::user(name),
        Requester::RunRequest { revision, .. }
        | Requester::State { revision, .. }
        | Requester::Schedule { revision, .. } => Actor::Git {
            revision: revision.clone(),
        },
        Requester::Trigger { name, .. } => Actor::Trigger(name.clone()),
    }
}
