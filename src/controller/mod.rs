//! The reconcile loop, in the style of kube-runtime's `Controller`.
//!
//! Triggers — a new applied revision (diffed: only objects that changed), a
//! periodic resync, requeues, API requests, a state's apply ending — become
//! reconcile requests for keyed objects; the [`scheduler`] dedupes and runs
//! them; the reconcilers ([`reconcile`], `states.rs`) decide with
//! `reconcilers/` and act over SSH.

mod approvals;
mod facts;
pub mod reconcile;
mod runs;
pub mod scheduler;
mod schedules;
mod states;
mod triggers;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use linkops_reconcilers::desired::DesiredState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use approvals::{ApprovalError, Voter};
pub use reconcile::{Context, ObjectKey};
pub use runs::{Caller, RunError};
pub use scheduler::{Action, Reason, Scheduler};
pub use triggers::{Proof, TriggerError};

use linkops_reconcilers::suspension::{self, Scope};

use linkops_reconcilers::operation::Requester;
use tokio::sync::broadcast::error::RecvError;

use crate::operations::Engine;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reconciling {key}: {source}")]
    Reconcile {
        key: ObjectKey,
        source: scheduler::Error<store::Error>,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Triggers that arrive together (a revision touching many objects) are one reconcile per object.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The running controller, and the one way into it: what the API may ask.
#[derive(Clone)]
pub struct Controller {
    scheduler: Scheduler<ObjectKey, store::Error>,
    context: Arc<Context>,
}

impl Controller {
    /// Checks a machine now, through its reconciler (so the result is recorded
    /// like any check), whatever its interval; returns when it is done. Asked
    /// `by` someone, the check's record carries its `machine.verify` audit
    /// entry (in the same transaction).
    pub async fn verify(&self, machine: &str, by: Option<&store::Actor>) -> Result<(), Error> {
        self.context
            .check_asked
            .lock()
            .expect("never poisoned")
            .entry(machine.to_owned())
            .or_default()
            .extend(by.cloned());
        let key = ObjectKey::Machine(machine.to_owned());
        self.scheduler
            .reconcile_now(key.clone())
            .await
            .map(drop)
            .map_err(|source| Error::Reconcile { key, source })
    }

    /// The suspensions in force, read once (for answers about many machines).
    pub async fn held(&self) -> Result<suspension::Held, store::Error> {
        self.context.held().await
    }

    /// [`Controller::held`], for code on the blocking pool.
    pub fn held_now(&self) -> Result<suspension::Held, store::Error> {
        self.context.held_now()
    }

    /// Suspends or resumes `scope` (audited as done `by`); a resume reconciles
    /// at once what it held back.
    pub async fn set_suspended(
        &self,
        scope: &Scope,
        suspended: bool,
        by: &store::Actor,
    ) -> Result<(), store::Error> {
        let (held, by) = (scope.clone(), by.clone());
        self.context
            .store
            .run(move |store| store.set_suspended(&held, suspended, &by))
            .await?;
        let desired = self.context.desired.borrow().clone();
        if !suspended && let Some(desired) = desired {
            let released = suspension::released(scope, &desired);
            let keys = (released.machines.into_iter().map(ObjectKey::Machine))
                .chain(released.runs.into_iter().map(ObjectKey::RunRequest))
                .chain(released.states.into_iter().map(ObjectKey::State))
                .chain(released.schedules.into_iter().map(ObjectKey::Schedule));
            for key in keys {
                self.scheduler.trigger(key, Reason::Api);
            }
        }
        Ok(())
    }

    /// Resumes a state's halted rollout (audited as done `by`) and reconciles
    /// the state at once; its new status, `None` if it was never reconciled.
    pub async fn resume_state(
        &self,
        id: &str,
        by: &store::Actor,
    ) -> Result<Option<linkops_reconcilers::state::StateStatus>, store::Error> {
        let audit = store::Audit {
            actor: by.clone(),
            action: store::AuditAction::StateRolloutResume,
            target: id.to_owned(),
            outcome: store::Outcome::Success,
            detail: None,
        };
        let asked = id.to_owned();
        let resumed = self
            .context
            .store
            .run(move |store| store.resume_state_rollout(&asked, &audit, store::now_ms()))
            .await?;
        self.scheduler
            .trigger(ObjectKey::State(id.to_owned()), Reason::Api);
        Ok(resumed)
    }

    /// The trust changed (a revocation): connections to `machines` (whose
    /// host certificates were revoked) are dropped, so the next one judges
    /// their host keys anew, and every declared state looks again at once
    /// (its digest says whether its machines are checked again).
    pub async fn trust_changed(&self, machines: &[String]) {
        let desired = self.context.desired.borrow().clone();
        let Some(desired) = desired else {
            return;
        };
        let access = &self.context.access;
        for machine in machines.iter().filter_map(|id| desired.machine(id)) {
            access.pool.forget(&access.target(machine)).await;
        }
        for id in desired.states.keys() {
            self.scheduler
                .trigger(ObjectKey::State(id.clone()), Reason::Api);
        }
    }

    /// Operations: start, stop, follow.
    pub fn operations(&self) -> &Engine {
        &self.context.engine
    }

    /// Reconciles waiting to run (for `/metrics`).
    pub fn queue_depth(&self) -> usize {
        self.scheduler.depth()
    }
}

/// Starts the runner and the trigger task. Both stop on `shutdown`; the
/// returned handles finish once in-flight reconciles have recorded their state.
pub fn start(
    context: Context,
    concurrency: usize,
    resync: Duration,
    shutdown: CancellationToken,
) -> (Controller, Vec<JoinHandle<()>>) {
    let context = Arc::new(context);
    let (scheduler, runner) =
        scheduler::spawn(context.clone(), concurrency, DEBOUNCE, shutdown.clone());
    let triggers = tokio::spawn(watch_desired(
        context.clone(),
        scheduler.clone(),
        resync,
        shutdown.clone(),
    ));
    let facts = context.facts.clone();
    let gatherings = tokio::spawn(async move {
        shutdown.cancelled().await;
        facts.stop().await;
    });
    (
        Controller { scheduler, context },
        vec![runner, triggers, gatherings],
    )
}

/// Turns revisions, the resync timer, the end of a state's apply and
/// changes of the members (objects moving to this replica) into reconcile
/// requests, for the objects this replica owns.
async fn watch_desired(
    context: Arc<Context>,
    scheduler: Scheduler<ObjectKey, store::Error>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    let (mut desired, mut finished) = (context.desired.clone(), context.engine.finished());
    let mut members = context.engine.membership().changes();
    let store = &context.store;
    let owned = |keys: Vec<ObjectKey>| keys.into_iter().filter(|key| context.owns(key));
    // Everything once at start: state may have changed while the daemon was down.
    let mut current = desired.borrow_and_update().clone();
    members.borrow_and_update();
    for key in owned(all_keys(current.as_deref(), store).await) {
        scheduler.trigger(key, Reason::Startup);
    }
    let mut resync_timer = tokio::time::interval(resync);
    resync_timer.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = desired.borrow_and_update().clone();
                for key in owned(changed_keys(current.as_deref(), next.as_deref())) {
                    scheduler.trigger(key, Reason::Revision);
                }
                current = next;
            }
            _ = members.changed() => {
                members.borrow_and_update();
                // What moved here is looked at now (what moved away waits, unowned).
                for key in owned(all_keys(current.as_deref(), store).await) {
                    scheduler.trigger(key, Reason::Resync);
                }
            }
            _ = resync_timer.tick() => {
                for key in owned(all_keys(current.as_deref(), store).await) {
                    scheduler.trigger(key, Reason::Resync);
                }
            }
            ended = finished.recv() => match ended {
                Ok(operation) => match operation.requested_by {
                    Requester::State { id, .. } => {
                        scheduler.trigger(ObjectKey::State(id), Reason::Api);
                    }
                    // A fire queued behind this one starts now; a state it
                    // applied is checked at once.
                    Requester::Schedule { name, .. } => {
                        let applied = (current.as_deref())
                            .and_then(|d| d.schedules.get(&name)?.state.clone());
                        if let Some(state) = applied {
                            scheduler.trigger(ObjectKey::State(state), Reason::Api);
                        }
                        scheduler.trigger(ObjectKey::Schedule(name), Reason::Api);
                    }
                    Requester::User { .. }
                    | Requester::RunRequest { .. }
                    | Requester::Trigger { .. } => {}
                },
                // Missed some: every state looks at its applies again.
                Err(RecvError::Lagged(_)) => {
                    for id in current.iter().flat_map(|d| d.states.keys()) {
                        scheduler.trigger(ObjectKey::State(id.clone()), Reason::Api);
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Every machine, run-request and state of the revision, and run-requests
/// the store knows that left Git (to settle them; read off the async runtime).
async fn all_keys(desired: Option<&DesiredState>, store: &crate::store::Store) -> Vec<ObjectKey> {
    let mut keys: Vec<ObjectKey> = desired
        .into_iter()
        .flat_map(|d| {
            d.machines
                .iter()
                .map(|m| ObjectKey::Machine(m.id.clone()))
                .chain(d.runs.keys().map(|id| ObjectKey::RunRequest(id.clone())))
                .chain(d.states.keys().map(|id| ObjectKey::State(id.clone())))
                .chain(
                    d.schedules
                        .keys()
                        .map(|name| ObjectKey::Schedule(name.clone())),
                )
        })
        .collect();
    let in_git: HashSet<&str> = desired
        .map(|d| d.runs.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let reading = store.clone();
    let records = crate::blocking::run(move || reading.run_records())
        .await
        .expect("reading run-request records does not panic");
    match records {
        Ok(records) => keys.extend(
            records
                .into_iter()
                .filter(|record| !in_git.contains(record.id.as_str()))
                .map(|record| ObjectKey::RunRequest(record.id)),
        ),
        // Git's own objects are still reconciled; the next resync reads the records again.
        Err(error) => tracing::warn!(
            %error,
            "reading run-request records failed: those that left Git are settled at the next resync"
        ),
    }
    keys
}

/// Objects added, changed or removed between two revisions.
pub fn changed_keys(before: Option<&DesiredState>, after: Option<&DesiredState>) -> Vec<ObjectKey> {
    let empty = DesiredState::default();
    let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let mut keys = Vec::new();
    for machine in &after.machines {
        if before.machine(&machine.id) != Some(machine) {
            keys.push(ObjectKey::Machine(machine.id.clone()));
        }
    }
    for machine in &before.machines {
        if after.machine(&machine.id).is_none() {
            keys.push(ObjectKey::Machine(machine.id.clone()));
        }
    }
    for (id, run) in &after.runs {
        let script_changed = before.scripts.get(&run.script) != after.scripts.get(&run.script);
        if before.runs.get(id) != Some(run) || script_changed {
            keys.push(ObjectKey::RunRequest(id.clone()));
        }
    }
    for id in before.runs.keys() {
        if !after.runs.contains_key(id) {
            keys.push(ObjectKey::RunRequest(id.clone()));
        }
    }
    // A schedule when it changed or left (what its next fire is, or none).
    for (name, schedule) in &after.schedules {
        if before.schedules.get(name) != Some(schedule) {
            keys.push(ObjectKey::Schedule(name.clone()));
        }
    }
    // A state is looked at again when it, its script, or its machines changed
    // (a machine that joins its tag converges without a commit to the state).
    for (id, state) in &after.states {
        let targeted = |desired: &DesiredState| state.targets.select(&desired.machines);
        let selected = targeted(after);
        let changed = before.states.get(id) != Some(state)
            || before.scripts.get(&state.script) != after.scripts.get(&state.script)
            || targeted(before) != selected
            || selected
                .iter()
                .any(|machine| before.machine(machine) != after.machine(machine));
        if changed {
            keys.push(ObjectKey::State(id.clone()));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkops_reconcilers::desired::{self, RepoFiles};

    fn state(links: &str, runs: &[(&str, &str)]) -> DesiredState {
        let mut files = RepoFiles::new();
        files.insert("links.yaml".into(), links.as_bytes().to_vec());
        files.insert(
            "scripts.yaml".into(),
            b"scripts:\n  - id: up\n    name: Up\n    body: uptime\n".to_vec(),
        );
        for (name, content) in runs {
            files.insert(format!("runs/{name}.yaml"), content.as_bytes().to_vec());
        }
        desired::load("r", &files).unwrap()
    }

    const A: &str =
        "  - {id: a, name: A, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935}\n";
    const B: &str =
        "  - {id: b, name: B, host: 10.0.0.2, uuid: c90a6b3e-2f15-4e8d-b7a4-61d3f5e2a8c7}\n";
    const B_MOVED: &str =
        "  - {id: b, name: B, host: 10.0.0.9, uuid: c90a6b3e-2f15-4e8d-b7a4-61d3f5e2a8c7}\n";
    const RUN: &str = "id: r1\nscript: up\ntargets: {machines: [a]}\n";

    #[test]
    fn only_changed_objects_are_reconciled() {
        let before = state(&format!("machines:\n{A}{B}"), &[("r1", RUN)]);
        let after = state(&format!("machines:\n{A}{B_MOVED}"), &[]);
        let keys = changed_keys(Some(&before), Some(&after));
        assert_eq!(
            keys,
            [
                ObjectKey::Machine("b".into()),
                ObjectKey::RunRequest("r1".into())
            ]
        );
        assert!(changed_keys(Some(&after), Some(&after)).is_empty());
    }

    #[test]
    fn the_first_revision_reconciles_everything() {
        let first = state(&format!("machines:\n{A}"), &[("r1", RUN)]);
        let keys = changed_keys(None, Some(&first));
        assert_eq!(
            keys,
            [
                ObjectKey::Machine("a".into()),
                ObjectKey::RunRequest("r1".into())
            ]
        );
    }
}
