//! Plans of other branches: the queue of branches waiting (one entry per
//! branch — a plan fetches the branch's newest head, so a burst of pushes is
//! one plan; bounded, and a push beyond is refused rather than dropped) and
//! the task that plans them, on a mirror of its own, so that no plan ever
//! holds up the followed branch's sync.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::plan::{self, BranchWork, Queued, Waiting};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::mirror::Mirror;
use super::sync::{SyncContext, SyncError};

/// The branches waiting to be planned (or forgotten), oldest first.
#[derive(Clone)]
pub struct PlanQueue {
    waiting: Arc<Mutex<VecDeque<Waiting>>>,
    bell: Arc<Notify>,
    capacity: usize,
}

/// A push refused because the queue is full.
#[derive(Debug, thiserror::Error)]
#[error(
    "{capacity} branches already wait to be planned ([git] plan_queue): deliver this push again shortly"
)]
pub struct Full {
    pub capacity: usize,
}

impl PlanQueue {
    pub fn new(capacity: usize) -> PlanQueue {
        PlanQueue {
            waiting: Arc::default(),
            bell: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Queues work on `branch`; `Err` when the queue is full.
    pub fn ask(&self, branch: &str, work: BranchWork) -> Result<Queued, Full> {
        let asked = Waiting {
            branch: branch.to_owned(),
            work,
        };
        let queued = {
            let mut waiting = self.waiting.lock().expect("never poisoned");
            plan::queue(&mut waiting, asked, self.capacity)
        };
        match queued {
            Queued::Full => Err(Full {
                capacity: self.capacity,
            }),
            queued => {
                self.bell.notify_one();
                Ok(queued)
            }
        }
    }

    /// The oldest branch waiting, once there is one.
    pub async fn next(&self) -> Waiting {
        loop {
            let notified = self.bell.notified();
            if let Some(waiting) = self.waiting.lock().expect("never poisoned").pop_front() {
                return waiting;
            }
            notified.await;
        }
    }
}

/// Plans (and forgets) what waits in `queue`, one branch at a time, against
/// the revision in force, until `shutdown`. Runs on the leader.
pub async fn work(
    context: Arc<SyncContext>,
    queue: PlanQueue,
    applied: watch::Receiver<Option<Arc<DesiredState>>>,
    shutdown: CancellationToken,
) {
    loop {
        let waiting = tokio::select! {
            () = shutdown.cancelled() => return,
            waiting = queue.next() => waiting,
        };
        let branch = waiting.branch;
        let span = tracing::info_span!("plan", %branch);
        match waiting.work {
            BranchWork::Plan => {
                let applied = applied.borrow().clone();
                plan_branch(&context, applied, branch)
                    .instrument(span)
                    .await;
            }
            BranchWork::Forget => {
                let mirror = context.plan_mirror.clone();
                forget(mirror, branch).instrument(span).await;
            }
        }
    }
}

/// Forgets a deleted branch's fetched head (and, with the last, the objects).
async fn forget(mirror: Mirror, branch: String) {
    match crate::blocking::run(move || mirror.forget(&branch)).await {
        Ok(Ok(())) => tracing::info!("the branch was deleted: forgotten"),
        Ok(Err(error)) => tracing::warn!(%error, "cannot forget the deleted branch"),
        Err(error) => tracing::warn!(%error, "the task forgetting the branch failed"),
    }
}

/// Fetches another branch into the plans' mirror, loads its head and posts
/// what merging it would change as a `linkops/plan` status on that head.
/// Applies nothing.
async fn plan_branch(
    context: &Arc<SyncContext>,
    applied: Option<Arc<DesiredState>>,
    branch: String,
) {
    let Some(mut source) = context.source.clone() else {
        return;
    };
    source.branch = branch.clone();
    let worker = context.clone();
    let mirror: Mirror = context.plan_mirror.clone();
    let planned = crate::blocking::run(move || -> Result<_, SyncError> {
        let head = mirror.fetch(&source)?;
        let files = mirror.files_at(head)?;
        let revision = head.to_string();
        let runs = worker
            .store
            .run_records()
            .map_err(SyncError::Store)?
            .into_iter()
            .map(|record| (record.id, record.state))
            .collect();
        let applied = applied.as_deref().cloned().unwrap_or_default();
        let outcome = match crate::sealed::load(&revision, &files, &worker.keyring) {
            Ok(proposed) => {
                // What a run-request's `where` would select, on the facts as they are.
                let mut facts = BTreeMap::new();
                if proposed.runs.values().any(|run| run.targets.asks_facts()) {
                    (worker.store)
                        .scan_facts(|gathered| {
                            facts.insert(gathered.machine_id, gathered.facts);
                        })
                        .map_err(SyncError::Store)?;
                }
                Ok(plan::plan(&proposed, &applied, &runs, &facts)
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<String>>())
            }
            Err(problems) => Err(problems),
        };
        Ok((revision, outcome))
    })
    .await;
    let (head, outcome) = match planned {
        Ok(Ok(planned)) => planned,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot plan the branch");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "the plan's task failed");
            return;
        }
    };
    let notifier = &context.notifier;
    let first = match &outcome {
        Err(problems) => problems
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        Ok(_) => String::new(),
    };
    let plan = match &outcome {
        Ok(changes) => Ok(changes.as_slice()),
        Err(problems) => Err((first.as_str(), problems.len())),
    };
    let status =
        linkops_reconcilers::outbox::for_plan(&head, &branch, plan, notifier.console_url());
    tracing::info!(head = %head, state = ?status.state, description = %status.description, "planned");
    let outgoing = notifier.route(vec![status], Vec::new());
    let queued = context
        .store
        .run(move |store| store.enqueue(&outgoing))
        .await;
    if let Err(error) = queued {
        tracing::warn!(%error, "cannot queue the plan's status");
    }
}
