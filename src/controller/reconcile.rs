//! The fleet's reconcilers: machines (health and enrollment) and run-requests
//! (declared states: `states.rs`).
//!
//! Each reconcile reads the current desired state and the store, asks
//! `reconcilers/` what to do, does it over SSH, and records the result.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkops_reconcilers::approval;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::facts;
use linkops_reconcilers::grant::Place;
use linkops_reconcilers::machine::{self, Machine, MachineDecision};
use linkops_reconcilers::operation::Requester;
use linkops_reconcilers::run::{self, RunDecision, RunRecord, RunState};
use linkops_reconcilers::suspension;
use rand::RngExt;
use tokio::sync::watch;

use super::facts::FactGathering;
use super::scheduler::{Action, Reason, Reconcile};
use crate::access::MachineAccess;
use crate::operations::{Engine, HostPlan, Plan};
use crate::store::{self, Actor, AuditAction, HealthSample, Store, now_ms};

/// What a reconcile is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    Machine(String),
    RunRequest(String),
    State(String),
    Schedule(String),
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Machine(id) => write!(f, "machine/{id}"),
            ObjectKey::RunRequest(id) => write!(f, "run/{id}"),
            ObjectKey::State(id) => write!(f, "state/{id}"),
            ObjectKey::Schedule(name) => write!(f, "schedule/{name}"),
        }
    }
}

/// What every reconcile works with (kube-runtime's `Context`): the store,
/// the fleet's connections, the operation engine, the desired state. Cheap to
/// clone: what a reconcile does on the blocking pool takes a clone along.
#[derive(Clone)]
pub struct Context {
    pub(super) store: Store,
    /// Where checks store what they observed (group commit).
    statuses: store::StatusWriter,
    pub(super) access: MachineAccess,
    pub(super) engine: Engine,
    pub(super) desired: watch::Receiver<Option<Arc<DesiredState>>>,
    /// Machines whose next reconcile checks them whatever their interval (a
    /// verify), with who asked (each audited with the check).
    pub(super) check_asked: Arc<Mutex<HashMap<String, Vec<Actor>>>>,
    /// `[reconcile] suspended` in the configuration.
    suspended_by_config: bool,
    /// What reconciles tell the forge and the sinks.
    pub(super) notifier: Arc<crate::notify::Notifier>,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// Whose facts are due and being gathered.
    pub(super) facts: Arc<FactGathering>,
}

impl Context {
    pub fn new(
        store: Store,
        access: MachineAccess,
        engine: Engine,
        desired: watch::Receiver<Option<Arc<DesiredState>>>,
        suspended_by_config: bool,
        notifier: Arc<crate::notify::Notifier>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Context {
        Context {
            facts: Arc::new(FactGathering::new(facts::DEFAULT_INTERVAL, 1)),
            notifier,
            statuses: store::StatusWriter::start(store.clone()),
            store,
            access,
            engine,
            desired,
            check_asked: Arc::default(),
            suspended_by_config,
            metrics,
        }
    }

    /// Gathers each enrolled machine's facts every `interval` (`[facts]
    /// interval`; zero: never) rather than hourly, at most `concurrency`
    /// machines at once.
    pub fn gathering_facts(self, interval: Duration, concurrency: usize) -> Context {
        Context {
            facts: Arc::new(FactGathering::new(interval, concurrency)),
            ..self
        }
    }
}

impl Reconcile<ObjectKey> for Context {
    type Error = store::Error;

    async fn reconcile(&self, key: ObjectKey, _reason: Reason) -> Result<Action, store::Error> {
        let Some(desired) = self.desired.borrow().clone() else {
            // Nothing is desired before the first valid revision.
            return Ok(Action::AwaitChange);
        };
        // A verify asked of this replica checks the machine whoever owns it.
        let asked = matches!(&key, ObjectKey::Machine(id)
            if self.check_asked.lock().expect("never poisoned").contains_key(id));
        if !asked && !self.owns(&key) {
            // Another replica's; it comes back when the members change.
            return Ok(Action::AwaitChange);
        }
        let (kind, result) = match &key {
            ObjectKey::Machine(id) => ("machine", self.machine(&desired, id).await),
            ObjectKey::RunRequest(id) => {
                let (context, id) = (self.clone(), id.clone());
                let decided = crate::blocking::run(move || context.run_request(&desired, &id));
                (
                    "run_request",
                    decided.await.unwrap_or(Err(store::Error::ShuttingDown)),
                )
            }
            ObjectKey::State(id) => ("state", self.declared_state(&desired, id).await),
            ObjectKey::Schedule(name) => {
                let (context, name) = (self.clone(), name.clone());
                let decided = crate::blocking::run(move || context.schedule(&desired, &name));
                (
                    "schedule",
                    decided.await.unwrap_or(Err(store::Error::ShuttingDown)),
                )
            }
        };
        let labels = crate::metrics::ReconcileLabels {
            kind,
            result: if result.is_ok() { "success" } else { "error" },
        };
        self.metrics.reconciles.get_or_create(&labels).inc();
        result
    }
}

impl Context {
    /// Whether `key` is this replica's to reconcile (every key, with one replica).
    pub fn owns(&self, key: &ObjectKey) -> bool {
        self.engine.membership().owns(&key.to_string())
    }

    /// The suspensions in force, read once (for answers about many machines).
    pub async fn held(&self) -> Result<suspension::Held, store::Error> {
        let context = self.clone();
        self.store.run(move |_| context.held_now()).await
    }

    /// [`Context::held`], on the blocking pool.
    pub fn held_now(&self) -> Result<suspension::Held, store::Error> {
        let scopes = match self.suspended_by_config {
            true => Vec::new(),
            false => self
                .store
                .suspensions()?
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
        };
        Ok(suspension::Held {
            by_config: self.suspended_by_config,
            scopes,
        })
    }

    async fn machine(&self, desired: &Arc<DesiredState>, id: &str) -> Result<Action, store::Error> {
        let Some(machine) = desired.machine(id) else {
            // Gone from the inventory: the sync marked it removed; its history stays.
            return Ok(Action::AwaitChange);
        };
        let (context, asked_for) = (self.clone(), id.to_owned());
        let (status, held) = self
            .store
            .run(move |store| Ok((store.machine_status(&asked_for)?, context.held_now()?)))
            .await?;
        let asked_by = self.check_asked.lock().expect("never poisoned").remove(id);
        let asked = machine::Asked {
            suspended: held.holds(Some(id)),
            check: asked_by.is_some(),
        };
        let decision = machine::decide(machine, status.as_ref(), now_ms(), asked);
        match decision {
            MachineDecision::Suspended => Ok(Action::AwaitChange),
            MachineDecision::WaitFor(left) => Ok(Action::Requeue(left)),
            MachineDecision::CheckNow => {
                let asked_by = asked_by.unwrap_or_default();
                let was_enrolled = status.as_ref().is_some_and(|s| s.enrollment.is_enrolled());
                let enrolled =
                    (self.check(machine, status, &desired.revision, asked.check, asked_by)).await?;
                if enrolled {
                    self.gather_facts_when_due(desired, machine, !was_enrolled);
                }
                Ok(Action::Requeue(jittered(
                    machine
                        .health_interval
                        .unwrap_or(machine::DEFAULT_HEALTH_INTERVAL),
                )))
            }
        }
    }

    /// Checks `machine` and records what it saw: whether it is enrolled.
    /// `asked`: someone asked for this check (a verify, with or without actors to audit).
    async fn check(
        &self,
        machine: &Machine,
        status: Option<machine::MachineStatus>,
        revision: &str,
        asked: bool,
        asked_by: Vec<Actor>,
    ) -> Result<bool, store::Error> {
        if machine::announces_check(status.as_ref(), asked) {
            let mut reconciling = status
                .clone()
                .unwrap_or_else(|| machine::MachineStatus::new(&machine.id));
            machine::mark_reconciling(&mut reconciling, now_ms());
            self.statuses
                .put(store::StatusWrite {
                    status: reconciling,
                    sample: None,
                    audits: Vec::new(),
                    outgoing: Vec::new(),
                })
                .await?;
        }
        let result = self.access.check(machine).await;
        let machine::Observed {
            status: mut observed,
            transitions,
        } = machine::observe(machine, status, result, revision, now_ms());
        // A machine's trouble and recovery, told to the sinks (damped).
        let (message, told) = linkops_reconcilers::outbox::for_machine(
            &observed,
            observed.told.as_ref(),
            self.notifier.console_url(),
            now_ms(),
        );
        observed.told = told;
        let outgoing = self
            .notifier
            .route(Vec::new(), message.into_iter().collect());
        // What the check's transitions mean for the audit log, written with the status.
        let mut audits: Vec<store::Audit> = transitions
            .into_iter()
            .map(|transition| match transition {
                machine::Transition::HostKeyRefused { error } => store::Audit {
                    actor: Actor::System,
                    action: AuditAction::SshHostKeyRefused,
                    target: machine.id.clone(),
                    outcome: store::Outcome::Denied,
                    detail: Some(error),
                },
            })
            .collect();
        // A verify is audited with what it found, in the check's transaction.
        let verified = match observed.enrollment.is_enrolled() {
            true => store::Outcome::Success,
            false => store::Outcome::Failure,
        };
        audits.extend(asked_by.into_iter().map(|actor| store::Audit {
            actor,
            action: AuditAction::MachineVerify,
            target: machine.id.clone(),
            outcome: verified,
            detail: Some(format!("{:?}", observed.enrollment)),
        }));
        let sample = HealthSample {
            at_ms: observed.checked_at_ms.unwrap_or_default(),
            health: observed.health.clone(),
            enrolled: observed.enrollment.is_enrolled(),
        };
        tracing::debug!(machine = %machine.id, health = ?observed.health, enrollment = ?observed.enrollment, "checked");
        let enrolled = observed.enrollment.is_enrolled();
        self.statuses
            .put(store::StatusWrite {
                status: observed,
                sample: Some(sample),
                audits,
                outgoing,
            })
            .await?;
        Ok(enrolled)
    }

    /// A run-request's reconcile, on the blocking pool (it reads, decides,
    /// records and starts; nothing in it waits for a machine).
    fn run_request(&self, desired: &DesiredState, id: &str) -> Result<Action, store::Error> {
        let written = desired.runs.get(id);
        let record = self.store.run_record(id)?;
        // Targets that ask about facts are decided on the facts as they are
        // now; what is recorded (its content, for a later edit) is the file's.
        let on_facts = match written {
            Some(request) if request.targets.asks_facts() => {
                let targets = self.store.on_facts(&request.targets, &desired.machines)?;
                Some(run::RunRequest {
                    targets,
                    ..request.clone()
                })
            }
            _ => None,
        };
        let request = on_facts.as_ref().or(written);
        let selected = request.map_or_else(Vec::new, |r| r.targets.select(&desired.machines));
        let statuses = self.store.machine_statuses(&selected)?;
        let decision = run::decide(
            request,
            record.as_ref(),
            &desired.machines,
            &statuses,
            &self.held_now()?,
            now_ms(),
        );
        match decision {
            RunDecision::Nothing => Ok(Action::AwaitChange),
            RunDecision::Suspended { reason } => {
                self.record_run(id, request, RunState::Waiting { reason }, desired)?;
                // Resuming triggers the run-requests it held again.
                Ok(Action::AwaitChange)
            }
            RunDecision::Cancel => {
                self.record_run(id, None, RunState::Cancelled, desired)?;
                Ok(Action::AwaitChange)
            }
            RunDecision::Wait {
                reason,
                retry_after_ms,
            } => {
                self.record_run(id, request, RunState::Waiting { reason }, desired)?;
                Ok(Action::Requeue(Duration::from_millis(
                    u64::try_from(retry_after_ms).unwrap_or(0),
                )))
            }
            RunDecision::AlreadyStarted { changed, .. } => {
                if let Some(mut record) = record
                    && record.changed_after_run != changed
                {
                    record.changed_after_run = changed;
                    record.updated_at_ms = now_ms();
                    let previous = record.conditions.clone();
                    self.store
                        .put_run_record(&record.with_conditions(&previous, now_ms()))?;
                }
                Ok(Action::AwaitChange)
            }
            RunDecision::Start { machines } => {
                let request = written.expect("a run decided to start is in Git");
                let approved = match self.approval_gate(request, &machines, desired)? {
                    Ok(approved) => approved,
                    Err(action) => return Ok(action),
                };
                let started = self.start_run(request, machines, desired)?;
                if let (Some(approval), Some(operation_id)) = (approved, started) {
                    let state = approval::RequestState::Started { operation_id };
                    self.store.set_approval_state(approval, state)?;
                }
                Ok(Action::AwaitChange)
            }
        }
    }

    /// Whether a run-request about to start may: `Ok(None)` when no approval
    /// rule covers it, `Ok(Some(request))` when that request approved its
    /// content; otherwise it waits (its record says why), asking for approval
    /// the first time its content does.
    fn approval_gate(
        &self,
        request: &run::RunRequest,
        machines: &[(String, run::Placement)],
        desired: &DesiredState,
    ) -> Result<Result<Option<u64>, Action>, store::Error> {
        let script = desired
            .scripts
            .get(&request.script)
            .expect("validated: the script exists");
        let places: Vec<Place> = (machines.iter())
            .map(|(id, _)| Place::find(Some(desired), id))
            .collect();
        let Some(needed) = approval::needed(&desired.approvals, &script.id, &places) else {
            return Ok(Ok(None));
        };
        let content = approval::Content {
            script: script.id.clone(),
            params: request.resolved.clone(),
            machines: machines.iter().map(|(id, _)| id.clone()).collect(),
            rollout: request.rollout,
            concurrency: None,
            script_digest: approval::script_digest(script),
        };
        let recorded = (self.store).approvals_of(&store::Owner::RunRequest(request.id.clone()))?;
        let (reason, until_ms) = match approval::gate(&recorded, &content.digest(), now_ms()) {
            approval::Gate::Start { approved } => return Ok(Ok(Some(approved))),
            approval::Gate::Wait { reason, until_ms } => (reason, until_ms),
            approval::Gate::Ask => {
                let by = Requester::RunRequest {
                    id: request.id.clone(),
                    revision: desired.revision.clone(),
                };
                let asked = approval::Request::new(needed, content, by, now_ms());
                let asked = super::approvals::record_request(&self.store, &self.notifier, &asked)?;
                let reason = format!(
                    "awaiting approval: request {}, 0 of {} (`linkops approve {}`)",
                    asked.id, asked.approvers, asked.id
                );
                (reason, Some(asked.expires_at_ms))
            }
        };
        self.record_run(
            &request.id,
            Some(request),
            RunState::Waiting { reason },
            desired,
        )?;
        // A vote wakes it; its expiry changes what it says.
        Ok(Err(match until_ms {
            Some(at) => Action::Requeue(Duration::from_millis(
                u64::try_from(at - now_ms()).unwrap_or(0),
            )),
            None => Action::AwaitChange,
        }))
    }

    /// Starts `request` on `machines`, claiming it; its operation's id when
    /// this call started it.
    fn start_run(
        &self,
        request: &run::RunRequest,
        machines: Vec<(String, run::Placement)>,
        desired: &DesiredState,
    ) -> Result<Option<u64>, store::Error> {
        let script = desired
            .scripts
            .get(&request.script)
            .expect("validated: the script exists");
        let params = request.resolved.clone();
        let hosts = HostPlan::from_placements(machines);
        let plan = Plan {
            script: script.clone(),
            secrets: linkops_reconcilers::secret::named(script, &params, &desired.secrets),
            params,
            hosts,
            requested_by: Requester::RunRequest {
                id: request.id.clone(),
                revision: desired.revision.clone(),
            },
            concurrency: None,
            rollout: request.rollout,
            retry_of: None,
        };
        // The store fills in the operation id when it creates the operation.
        let previous = self
            .store
            .run_record(&request.id)?
            .map(|r| r.conditions)
            .unwrap_or_default();
        let claim = RunRecord {
            id: request.id.clone(),
            state: RunState::Started { operation_id: 0 },
            content: request.content(),
            changed_after_run: false,
            revision: desired.revision.clone(),
            updated_at_ms: now_ms(),
            conditions: previous,
        };
        match self.engine.start(plan, Some(store::Claim::Run(claim))) {
            Ok(operation) => {
                tracing::info!(run = %request.id, operation = operation.id, "run-request started");
                Ok(Some(operation.id))
            }
            Err(crate::operations::Error::Store(store::Error::AlreadyClaimed { .. })) => Ok(None),
            Err(crate::operations::Error::Store(error)) => Err(error),
            Err(error) => self
                .record_run(
                    &request.id,
                    Some(request),
                    RunState::Waiting {
                        reason: error.to_string(),
                    },
                    desired,
                )
                .map(|()| None),
        }
    }

    fn record_run(
        &self,
        id: &str,
        request: Option<&run::RunRequest>,
        state: RunState,
        desired: &DesiredState,
    ) -> Result<(), store::Error> {
        let current = self.store.run_record(id)?;
        let content = request.map(run::RunRequest::content).unwrap_or_default();
        if current
            .as_ref()
            .is_some_and(|r| r.state == state && r.content == content)
        {
            return Ok(());
        }
        let record = RunRecord {
            id: id.to_owned(),
            state,
            content,
            changed_after_run: false,
            revision: desired.revision.clone(),
            updated_at_ms: now_ms(),
            conditions: Vec::new(),
        };
        let previous = current.map(|r| r.conditions).unwrap_or_default();
        self.store
            .put_run_record(&record.with_conditions(&previous, now_ms()))
    }
}

/// Spreads checks out: up to a tenth more than `interval`.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(1.0..1.1))
}
