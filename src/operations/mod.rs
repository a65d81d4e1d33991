//! The operation engine: runs a catalog script on machines over pooled SSH,
//! records every event in the store as it happens, and publishes it live.
//!
//! Run-requests from Git and `POST /api/operations/run` both start
//! operations here: one engine. The script text travels on the channel's
//! stdin to the catalog's interpreter; parameters travel as environment
//! variables set through quoted `env` arguments, never spliced into script
//! text. Each script runs in a session of its own so a stop ends every
//! process it started.

mod command;
mod follow;
mod host;
mod writer;

use crate::metrics::{Metrics, Open, StateLabels};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use linkops_reconcilers::certificate::Purpose;
use linkops_reconcilers::machine::Machine;
use linkops_reconcilers::operation::{
    HostResult, HostState, Operation, OperationState, RecordedEvent, Requester, summarize,
};
use linkops_reconcilers::rollout::{Progress, Rollout};
use linkops_reconcilers::run::Placement;
use linkops_reconcilers::script::{ParamValue, Script};
use linkops_reconcilers::secret::Secret;
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::replica::Membership;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::access::MachineAccess;
use crate::sealed::Keyring;
use crate::store::{self, Followed, Store, now_ms};
use host::{HostRun, Secrets};
use writer::{Update, Writer};

pub use command::{TrustFacts, command_line};
pub use follow::PAGE_BYTES;
pub use host::STOP_GRACE;

/// Live events buffered per operation for subscribers; one that falls further
/// behind reads the rest from the store.
const LIVE_BUFFER: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("parameter {name}: {message}")]
    Param { name: String, message: String },
    #[error("parameter name {0:?} cannot be passed as an environment variable")]
    ParamName(String),
}

/// What to run where.
pub struct Plan {
    pub script: Script,
    /// Checked and resolved values, by parameter name.
    pub params: BTreeMap<String, ParamValue>,
    /// Target machines in order, each to run on or to skip (with the reason).
    pub hosts: Vec<HostPlan>,
    pub requested_by: Requester,
    /// The requester's own parallelism limit, if any.
    pub concurrency: Option<usize>,
    /// Hosts in batches, canaries first, the rest held once it halts; all at once when `None`.
    pub rollout: Option<Rollout>,
    /// The operation this one retries.
    pub retry_of: Option<u64>,
    /// The secrets its `secret` parameters name, by parameter name.
    pub secrets: BTreeMap<String, Secret>,
}

/// One target of a plan.
pub enum HostPlan {
    Run(Machine),
    Skip { machine_id: String, reason: String },
}

impl HostPlan {
    /// The plan of each placement: machines not in the inventory were placed as skipped.
    pub fn from_placements(placements: Vec<(String, Placement)>) -> Vec<HostPlan> {
        placements
            .into_iter()
            .map(|(id, placement)| match placement {
                Placement::Run(machine) => HostPlan::Run(*machine),
                Placement::Skip { reason } => HostPlan::Skip {
                    machine_id: id,
                    reason,
                },
            })
            .collect()
    }

    pub fn machine_id(&self) -> &str {
        match self {
            HostPlan::Run(machine) => &machine.id,
            HostPlan::Skip { machine_id, .. } => machine_id,
        }
    }
}

/// How often a replica looks for stops asked of its operations through another.
const STOP_ASKS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// An event as broadcast to live subscribers: shared by all of them, with
/// its wire encoding made once (by whichever subscriber needs it first).
pub struct LiveEvent {
    pub recorded: RecordedEvent,
    pub encoded: std::sync::OnceLock<String>,
}

/// An operation that ended, its events all recorded: who asked for it
/// (the controller reconciles a state again when its apply ends).
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: u64,
    pub requested_by: Requester,
}

/// A check as it ran on one machine: how it ended and the start of what it printed.
#[derive(Debug, Clone)]
pub struct CheckRun {
    pub end: HostState,
    pub output: String,
    pub duration: std::time::Duration,
}

/// An operation in flight.
struct Live {
    events: broadcast::Sender<Arc<LiveEvent>>,
    stop: CancellationToken,
}

#[derive(Clone)]
pub struct Engine {
    store: Store,
    /// This replica: its member id is recorded with every operation it runs.
    membership: Membership,
    access: MachineAccess,
    /// Output kept per host and stream; the rest is counted, not stored.
    output_cap: u64,
    /// A std mutex: only held to insert, look up or remove, never across an await.
    live: Arc<Mutex<HashMap<u64, Live>>>,
    /// Bounds the store reads of subscribers catching up: each runs on the
    /// blocking pool, and hundreds at once would cost a thread (and an
    /// allocator arena) each.
    catch_up: Arc<Semaphore>,
    finished: broadcast::Sender<Finished>,
    /// What an operation's start and end tell the outside.
    notifier: Arc<crate::notify::Notifier>,
    metrics: Arc<Metrics>,
    /// Opens the secrets scripts are given, host by host.
    keyring: Arc<Keyring>,
}

impl Engine {
    /// What opens the repository's secrets (a trigger's key among them).
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn new(
        store: Store,
        membership: Membership,
        access: MachineAccess,
        output_cap: u64,
        notifier: Arc<crate::notify::Notifier>,
        metrics: Arc<Metrics>,
        keyring: Arc<Keyring>,
    ) -> Engine {
        Engine {
            keyring,
            store,
            membership,
            access,
            output_cap,
            notifier,
            metrics,
            live: Arc::default(),
            catch_up: Arc::new(Semaphore::new(4)),
            finished: broadcast::channel(256).0,
        }
    }

    /// This replica.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Operations as they end (after their last event is recorded). A
    /// receiver that lags learns how many it missed.
    pub fn finished(&self) -> broadcast::Receiver<Finished> {
        self.finished.subscribe()
    }

    /// Runs a script's check on a machine as an operation runs a host — the
    /// script's interpreter, parameters as environment, its timeout, and
    /// the same ending by SIGTERM then SIGKILL — but records nothing: the
    /// caller keeps the outcome and the first `keep` bytes of output.
    pub async fn check(
        &self,
        machine: Machine,
        script: &Script,
        params: &BTreeMap<String, ParamValue>,
        secrets: BTreeMap<String, Secret>,
        keep: usize,
    ) -> Result<CheckRun, Error> {
        let secret = |name: &str| secrets.contains_key(name);
        let command = command::command_line(script, params, secret, &self.access.trust_facts())?;
        let _session = self.access.session().await;
        let (updates, mut receiver) = mpsc::channel(64);
        let run = HostRun {
            access: self.access.clone(),
            machine,
            purpose: Purpose::Health,
            command: command.into(),
            body: script.check.as_deref().unwrap_or_default().into(),
            secrets: self.secrets(secrets),
            timeout: script.timeout,
            output_cap: keep as u64,
            updates,
            stop: CancellationToken::new(),
        };
        let started = std::time::Instant::now();
        let output = async {
            let mut output = Vec::new();
            while let Some(update) = receiver.recv().await {
                if let Update::Output { data, .. } = update {
                    let room = keep.saturating_sub(output.len());
                    output.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            output
        };
        let (end, output) = tokio::join!(run.run(), output);
        Ok(CheckRun {
            end,
            output: String::from_utf8_lossy(&output).into_owned(),
            duration: started.elapsed(),
        })
    }

    /// Waits for a turn to read the event log from the store.
    async fn catch_up_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.catch_up
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }

    /// Records the operation (and what it claims — a run-request, a state's
    /// applies — in the same transaction), then runs it in the background.
    /// Returns once recorded.
    pub fn start(&self, plan: Plan, claim: Option<store::Claim>) -> Result<Operation, Error> {
        let trust = self.access.trust_facts();
        let secret = |name: &str| plan.secrets.contains_key(name);
        let command = command::command_line(&plan.script, &plan.params, secret, &trust)?;
        let command: Arc<str> = command.into();
        let hosts: Vec<HostResult> = plan
            .hosts
            .iter()
            .map(|host| HostResult {
                machine_id: host.machine_id().to_owned(),
                state: match host {
                    HostPlan::Run(_) => HostState::Pending,
                    HostPlan::Skip { reason, .. } => HostState::Skipped {
                        reason: reason.clone(),
                    },
                },
                started_at_ms: None,
                finished_at_ms: None,
                stdout_bytes: 0,
                stderr_bytes: 0,
                certificate: None,
            })
            .collect();
        let operation = Operation {
            id: 0,
            script: plan.script.id.clone(),
            params: plan.params.clone(),
            machines: plan
                .hosts
                .iter()
                .map(|h| h.machine_id().to_owned())
                .collect(),
            requested_by: plan.requested_by.clone(),
            state: OperationState::Pending,
            created_at_ms: now_ms(),
            finished_at_ms: None,
            rollout: plan.rollout,
            retry_of: plan.retry_of,
            secrets: (plan.secrets.values())
                .map(|secret| secret.name.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let notifier = &self.notifier;
        let operation = self.store.create_operation(
            &operation,
            self.membership.id(),
            &hosts,
            claim,
            |created| {
                // A run-request's operation is pending on the commit that asked for it.
                match &created.requested_by {
                    Requester::RunRequest { id, revision } => notifier.route(
                        vec![linkops_reconcilers::outbox::for_run_started(
                            id,
                            revision,
                            created.id,
                            notifier.console_url(),
                        )],
                        vec![],
                    ),
                    _ => vec![],
                }
            },
        )?;
        tracing::info!(operation = operation.id, script = %operation.script, hosts = hosts.len(), "operation started");

        let (events, _) = broadcast::channel(LIVE_BUFFER);
        let stop = CancellationToken::new();
        self.live.lock().expect("never poisoned").insert(
            operation.id,
            Live {
                events: events.clone(),
                stop: stop.clone(),
            },
        );
        let (updates, receiver) = mpsc::channel(256);
        let writer = Writer {
            operation: operation.clone(),
            notifier: self.notifier.clone(),
            store: self.store.clone(),
            hosts: hosts
                .iter()
                .map(|h| (h.machine_id.clone(), h.clone()))
                .collect(),
            updates: receiver,
            events,
            tails: HashMap::new(),
        };
        let engine = self.clone();
        let id = operation.id;
        // Every line the operation logs, its hosts' too, says which it is.
        let span = tracing::info_span!("operation", operation.id = id, script = %operation.script);
        tokio::spawn(
            async move {
                let _running = Open::new(&engine.metrics.operations_running);
                let writing = tokio::spawn(writer.run().in_current_span());
                let requested_by = plan.requested_by.clone();
                // Certificates of its logins name it, in the machines' own logs.
                let purpose = Purpose::Operation {
                    id,
                    requested_by: requested_by.label(),
                };
                engine
                    .execute(plan, hosts, command, purpose, updates, stop)
                    .await;
                writing.await.ok();
                engine.live.lock().expect("never poisoned").remove(&id);
                // No receiver (no controller, in tests) is no error.
                let finished = Finished { id, requested_by };
                engine.finished.send(finished).ok();
            }
            .instrument(span),
        );
        Ok(operation)
    }

    /// Stops an operation: hosts not started never start; running scripts get
    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]. False if it is not running.
    pub fn stop(&self, id: u64) -> bool {
        match self.live.lock().expect("never poisoned").get(&id) {
            Some(live) => {
                live.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops operation `id` as asked by `by` (audited): here when it runs
    /// here, else through the store, which the replica running it reads.
    /// False (nothing audited) when it is not running anywhere.
    pub async fn stop_as(&self, id: u64, by: &store::Actor) -> Result<bool, store::Error> {
        let (by, action) = (by.clone(), store::AuditAction::OperationStop);
        let stopped_here = self.stop(id);
        (self.store)
            .run(move |store| match stopped_here {
                true => {
                    let target = id.to_string();
                    store.audit(&by, action, &target, store::Outcome::Success, None)?;
                    Ok(true)
                }
                false => store.ask_stop(
                    id,
                    &store::Audit {
                        actor: by,
                        action,
                        target: id.to_string(),
                        outcome: store::Outcome::Success,
                        detail: None,
                    },
                ),
            })
            .await
    }

    /// Stops the operations of this replica that the store says another
    /// replica was asked to stop (an API call that reached it), looking
    /// every [`STOP_ASKS_EVERY`] until `shutdown`. Nothing on an unshared store.
    pub async fn follow_stop_asks(self, shutdown: CancellationToken) {
        if !self.store.is_shared() {
            return;
        }
        // Asks already acted on: an ask stays in the store until its operation ends.
        let mut stopping = std::collections::HashSet::new();
        let mut asked = self.store.doorbell(Followed::StopAsks);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = asked.wait(STOP_ASKS_EVERY) => {}
            }
            if self.live.lock().expect("never poisoned").is_empty() {
                continue;
            }
            let store = self.store.clone();
            let Ok(Ok(asked)) = crate::blocking::run(move || store.stop_asks()).await else {
                continue;
            };
            stopping.retain(|id| asked.contains(id));
            for id in asked {
                if !stopping.contains(&id) && self.stop(id) {
                    tracing::info!(operation = id, "stopping, as asked through another replica");
                    stopping.insert(id);
                }
            }
        }
    }

    /// Whether operation `id` runs on this replica.
    pub fn runs_here(&self, id: u64) -> bool {
        self.live.lock().expect("never poisoned").contains_key(&id)
    }

    /// `sealed`, to be opened by each host as it runs.
    fn secrets(&self, sealed: BTreeMap<String, Secret>) -> Secrets {
        Secrets {
            keyring: self.keyring.clone(),
            sealed: Arc::new(sealed),
        }
    }

    /// Live events of a running operation; `None` once it has ended.
    fn subscribe(&self, id: u64) -> Option<broadcast::Receiver<Arc<LiveEvent>>> {
        self.live
            .lock()
            .expect("never poisoned")
            .get(&id)
            .map(|live| live.events.subscribe())
    }

    async fn execute(
        &self,
        plan: Plan,
        hosts: Vec<HostResult>,
        command: Arc<str>,
        purpose: Purpose,
        updates: mpsc::Sender<Update>,
        stop: CancellationToken,
    ) {
        updates
            .send(Update::State(OperationState::Running))
            .await
            .ok();
        // The smallest of the script's and the request's limits; the fleet's applies per session.
        let limit = [
            plan.script.max_parallel.map(|n| n as usize),
            plan.concurrency,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(usize::MAX)
        .clamp(1, Semaphore::MAX_PERMITS);
        let parallel = Arc::new(Semaphore::new(limit));
        let body: Arc<str> = plan.script.body.clone().into();
        let secrets = self.secrets(plan.secrets.clone());
        let mut tasks = tokio::task::JoinSet::new();
        let mut states = Vec::new();
        let mut rollout = plan.rollout.map(|policy| Batches {
            policy,
            progress: Progress::default(),
            left: policy.next_batch(Progress::default(), 0),
            halted: None,
        });
        for (target, host) in plan.hosts.into_iter().zip(hosts) {
            let HostPlan::Run(machine) = target else {
                states.push(host.state);
                continue;
            };
            // A batch starts once the one before it has ended; a halt holds the rest.
            if let Some(batches) = rollout.as_mut() {
                if batches.left == 0 && batches.halted.is_none() {
                    while let Some(ended) = tasks.join_next().await {
                        states.push(batches.ended(host_state(ended)));
                    }
                    batches.next();
                }
                if let Some(reason) = &batches.halted {
                    let state = HostState::Held {
                        reason: format!("the rollout halted: {reason}"),
                    };
                    let update = Update::Host {
                        machine_id: machine.id.clone(),
                        state: state.clone(),
                    };
                    updates.send(update).await.ok();
                    states.push(state);
                    continue;
                }
                batches.left -= 1;
            }
            let run = HostRun {
                access: self.access.clone(),
                machine,
                purpose: purpose.clone(),
                command: command.clone(),
                body: body.clone(),
                secrets: secrets.clone(),
                timeout: plan.script.timeout,
                output_cap: self.output_cap,
                updates: updates.clone(),
                stop: stop.clone(),
            };
            // A host's task is spawned once it has its slots, and joined as
            // soon as it ends, so the tasks alive are bounded by the slots: a
            // task per host was 83 MB at a fan-out to 10,000 machines.
            while let Some(ended) = tasks.try_join_next() {
                let state = host_state(ended);
                states.push(match rollout.as_mut() {
                    Some(batches) => batches.ended(state),
                    None => state,
                });
            }
            let slots = async {
                let slot = parallel
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let session = self
                    .access
                    .sessions
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                (slot, session)
            };
            // Biased: a stop that is already in wins over a slot that just came free.
            let slots = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                slots = slots => Some(slots),
            };
            let Some(slots) = slots else {
                // Stopped while waiting for a slot: this host never starts.
                let state = HostState::Stopped { unconfirmed: false };
                run.updates
                    .send(Update::Host {
                        machine_id: run.machine.id.clone(),
                        state: state.clone(),
                    })
                    .await
                    .ok();
                states.push(state);
                continue;
            };
            let span = tracing::info_span!("host", machine.id = %run.machine.id);
            tasks.spawn(
                async move {
                    let _slots = slots;
                    run.run().await
                }
                .instrument(span),
            );
        }
        while let Some(ended) = tasks.join_next().await {
            states.push(host_state(ended));
        }
        let state = summarize(&states);
        updates.send(Update::Finish(state)).await.ok();
        let labels = StateLabels {
            state: state.name().to_owned(),
        };
        self.metrics
            .operations_finished
            .get_or_create(&labels)
            .inc();
        tracing::info!(state = state.name(), "operation finished");
    }
}

/// An operation's rollout as its hosts run: the batch being filled and what
/// the ended hosts add up to.
struct Batches {
    policy: Rollout,
    progress: Progress,
    /// Hosts the current batch may still start.
    left: usize,
    halted: Option<String>,
}

impl Batches {
    /// Counts a host's end; returns its state.
    fn ended(&mut self, state: HostState) -> HostState {
        self.progress.count(&state);
        state
    }

    /// After a batch ended: halt, or open the next.
    fn next(&mut self) {
        match self.policy.halts(self.progress) {
            Some(reason) => {
                tracing::warn!(%reason, "rollout halted");
                self.halted = Some(reason);
            }
            None => self.left = self.policy.next_batch(self.progress, 0),
        }
    }
}

/// How a host's task ended; one that panicked failed.
fn host_state(ended: Result<HostState, tokio::task::JoinError>) -> HostState {
    ended.unwrap_or_else(|error| HostState::Failed {
        exit_code: None,
        signal: None,
        error: Some(format!("host task failed: {error}")),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use linkops_reconcilers::script::Targets;

    use super::*;

    /// Where the test's subscriber writes its JSON lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl tracing_subscriber::fmt::MakeWriter<'_> for Lines {
        type Writer = Lines;
        fn make_writer(&self) -> Lines {
            self.clone()
        }
    }

    /// One host skipped, so no SSH: the operation still runs its whole course.
    #[tokio::test]
    async fn every_line_an_operation_logs_names_it() {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(lines.clone())
            .finish();
        // The current-thread runtime runs the operation's tasks on this thread, under it.
        let _default = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let metrics = Arc::new(Metrics::new());
        let authority = crate::ssh::ca::Authority::open(&dir.path().join("ca")).unwrap();
        let certifier =
            crate::ssh::ca::Certifier::new(Arc::new(authority), "r1", Duration::from_secs(60));
        let access = MachineAccess::new(
            &crate::config::Config::default(),
            store.clone(),
            metrics.clone(),
            Arc::new(certifier),
            crate::authority::Revocations::default(),
        );
        let config = crate::config::Config::default();
        let notifier = Arc::new(crate::notify::Notifier::from_config(&config).unwrap());
        let keyring = Keyring::load_or_create(&dir.path().join("age-identity.txt")).unwrap();
        let keyring = Arc::new(keyring);
        let engine = Engine::new(
            store,
            Membership::alone(),
            access,
            1024,
            notifier,
            metrics,
            keyring,
        );
        let script = Script {
            id: "uptime".into(),
            name: "Uptime".into(),
            description: String::new(),
            body: "uptime".into(),
            check: None,
            interpreter: "/bin/sh".into(),
            params: vec![],
            timeout: Duration::from_secs(60),
            max_parallel: None,
            targets: Targets::default(),
        };
        let plan = Plan {
            script,
            params: BTreeMap::new(),
            hosts: vec![HostPlan::Skip {
                machine_id: "web1".into(),
                reason: "not enrolled".into(),
            }],
            requested_by: Requester::User { name: "ada".into() },
            concurrency: None,
            rollout: None,
            retry_of: None,
            secrets: BTreeMap::new(),
        };
        let starting = engine.clone();
        let operation = crate::blocking::run(move || starting.start(plan, None))
            .await
            .unwrap()
            .unwrap();
        // Its live channel closes once it has ended and its events are recorded.
        let mut events = engine.subscribe(operation.id).unwrap();
        while !matches!(
            events.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ) {}
        let written = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let finished = written
            .lines()
            .find(|line| line.contains("operation finished"))
            .unwrap_or_else(|| panic!("no 'operation finished' in {written}"));
        let line: serde_json::Value = serde_json::from_str(finished).unwrap();
        assert_eq!(line["span"]["name"], "operation", "{line}");
        assert_eq!(line["span"]["operation.id"], operation.id, "{line}");
        assert_eq!(line["span"]["script"], "uptime", "{line}");
    }
}
