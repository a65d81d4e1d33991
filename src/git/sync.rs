//! Following the config repository: the sync worker and its triggers.
//!
//! One task owns the mirror and does every sync, one at a time; triggers
//! (the interval, the API, the webhook, a file watch) only send it requests,
//! and requests that queue up while a sync runs are answered by the next one.
//! A valid revision is applied to the store and published on a
//! `watch` channel; anything else leaves the last good revision in force.
//!
//! Only the replica that leads fetches and applies. The others follow the
//! state in force from the store, and pass the syncs and plans asked of
//! them (the API, webhooks) to the leader through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::ObjectId;
use linkops_reconcilers::desired::{self, DesiredState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::mirror::{self, Mirror, Source};
use super::plans::{Full, PlanQueue};
use crate::replica::Membership;
use crate::store::{
    self, Actor, Audit, AuditAction, Followed, Outcome, Store, SyncAsk, SyncOutcome, SyncRecord,
};
use linkops_reconcilers::plan::{BranchWork, Queued};

/// Why a sync was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Interval,
    Api {
        user: String,
    },
    Webhook {
        delivery: String,
    },
    Watch,
    /// Asked through another replica; its trigger as that one named it.
    Relayed(String),
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Startup => f.write_str("startup"),
            Trigger::Interval => f.write_str("interval"),
            Trigger::Api { user } => write!(f, "api:{user}"),
            Trigger::Webhook { delivery } => write!(f, "webhook:{delivery}"),
            Trigger::Watch => f.write_str("watch"),
            Trigger::Relayed(trigger) => f.write_str(trigger),
        }
    }
}

struct Request {
    trigger: Trigger,
    reply: Option<oneshot::Sender<SyncRecord>>,
}

/// The handle the rest of the daemon uses: ask for syncs, read the desired state.
#[derive(Clone)]
pub struct GitSync {
    source: Option<Source>,
    requests: mpsc::Sender<Request>,
    /// Branches to plan (`linkops/plan` on their heads); never applied.
    plans: PlanQueue,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
    /// Sync attempts made since start.
    attempts: watch::Receiver<u64>,
}

impl GitSync {
    /// Waits until the first sync since start was attempted (at once without a source).
    pub async fn first_attempt(&self) {
        if self.source.is_some() {
            self.attempts.clone().wait_for(|n| *n > 0).await.ok();
        }
    }

    /// The source being followed, if one is configured.
    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// The desired state in force (`None` until a first valid revision).
    pub fn desired(&self) -> watch::Receiver<Option<Arc<DesiredState>>> {
        self.desired.clone()
    }

    /// Asks for a sync and waits for its record.
    pub async fn sync_now(&self, trigger: Trigger) -> Option<SyncRecord> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request {
                trigger,
                reply: Some(reply),
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Asks for a plan of `branch` (or, deleted, to forget it): fetched,
    /// loaded and compared with the revision in force; the result is a commit
    /// status on its head. Nothing is applied. Refused when the queue is full.
    pub fn request_plan(&self, branch: &str, work: BranchWork) -> Result<Queued, Full> {
        self.plans.ask(branch, work)
    }

    /// Asks for a sync without waiting for it.
    pub fn request(&self, trigger: Trigger) {
        // Full means a sync is already queued, which serves this request too.
        self.requests
            .try_send(Request {
                trigger,
                reply: None,
            })
            .ok();
    }
}

/// What the worker needs.
#[derive(Clone)]
pub struct SyncContext {
    pub source: Option<Source>,
    pub mirror: Mirror,
    pub store: Store,
    /// Time between scheduled syncs; each wait is jittered by up to a tenth.
    pub interval: Duration,
    /// Attempts kept besides those that applied a revision (`[retention] sync_records`).
    pub keep_attempts: u64,
    /// Where other branches are fetched for plans (never the followed one's).
    pub plan_mirror: Mirror,
    /// Branches waiting to be planned at most (`[git] plan_queue`).
    pub plan_queue: usize,
    /// What a fetched revision tells the forge and the sinks.
    pub notifier: Arc<crate::notify::Notifier>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Starts the sync worker (and, for a local source, the file watch).
///
/// Before returning it restores the last applied revision from the mirror,
/// so a restart serves the last good state at once, even when the remote is down.
pub async fn start(
    context: SyncContext,
    membership: Membership,
    shutdown: CancellationToken,
) -> (GitSync, tokio::task::JoinHandle<()>) {
    let context = Arc::new(context);
    let leading_at_start = membership.view().leading.is_some();
    let applied = match leading_at_start {
        true => restore(&context).await,
        false => follow_applied(&context.store, None).await,
    };
    let (requests, queue) = mpsc::channel(16);
    let plans = PlanQueue::new(context.plan_queue);
    let (publish, desired) = watch::channel(applied.clone());
    let (attempted, attempts) = watch::channel(0);
    let handle = GitSync {
        source: context.source.clone(),
        requests,
        plans: plans.clone(),
        desired,
        attempts,
    };
    if let Some(path) = context.source.as_ref().and_then(Source::local_path) {
        super::watch::spawn(path, handle.clone(), shutdown.clone());
    }
    let published = Published {
        desired: publish,
        attempts: attempted,
    };
    let worker = tokio::spawn(async move {
        let channels = Channels {
            queue,
            plans,
            publish: published,
        };
        let Some((leader, applied, channels, relayed)) =
            follow(&context, applied, channels, &membership, &shutdown).await
        else {
            return;
        };
        let context = Arc::new(SyncContext {
            store: leader,
            ..(*context).clone()
        });
        // What was followed may be older than the mirror's last applied revision.
        let restored = match leading_at_start {
            true => None,
            false => restore(&context).await,
        };
        let applied = match restored {
            Some(restored) => {
                if applied
                    .as_ref()
                    .is_none_or(|a| a.revision != restored.revision)
                {
                    channels
                        .publish
                        .desired
                        .send_replace(Some(restored.clone()));
                }
                Some(restored)
            }
            None => applied,
        };
        lead(context, applied, channels, relayed, shutdown).await;
    });
    (handle, worker)
}

/// The worker's ends of the handle's channels.
struct Channels {
    queue: mpsc::Receiver<Request>,
    plans: PlanQueue,
    publish: Published,
}

/// How often a replica that does not lead reads the store for a new
/// revision in force (and for the records of the syncs it passed on), and
/// the leader for what was asked of it, by themselves: the store's doorbell
/// wakes them as soon as it is written.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// How long a sync passed to the leader is waited for.
const RELAYED_WAIT: Duration = Duration::from_secs(120);

/// Until this replica leads: publishes the state in force as the store has
/// it, and passes syncs and plans asked of it to the leader. Returns the
/// store fenced by the leader lease once it leads; `None` at shutdown.
async fn follow(
    context: &SyncContext,
    mut applied: Option<Arc<DesiredState>>,
    mut channels: Channels,
    membership: &Membership,
    shutdown: &CancellationToken,
) -> Option<(Store, Option<Arc<DesiredState>>, Channels, Vec<Request>)> {
    let leading = membership.leader_store(&context.store);
    tokio::pin!(leading);
    // Syncs passed on, waiting for their record: (asked after this attempt, the request, until when).
    let mut relayed: Vec<(u64, Request, Instant)> = Vec::new();
    let mut synced = context.store.doorbell(Followed::Sync);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            leader = &mut leading => {
                // Those still waiting are the leader's own requests now.
                let relayed = relayed.into_iter().map(|(_, request, _)| request).collect();
                return Some((leader, applied, channels, relayed));
            }
            Some(request) = channels.queue.recv() => {
                // The leader has its own timer and file watch.
                if matches!(request.trigger, Trigger::Interval | Trigger::Watch | Trigger::Startup) {
                    continue;
                }
                let ask = SyncAsk::Sync { trigger: request.trigger.to_string() };
                match relay(&context.store, ask).await {
                    Some(seq) => relayed.push((seq, request, Instant::now() + RELAYED_WAIT)),
                    None => drop(request),
                }
            }
            waiting = channels.plans.next() => {
                let ask = match waiting.work {
                    BranchWork::Plan => SyncAsk::Plan { branch: waiting.branch },
                    BranchWork::Forget => SyncAsk::Forget { branch: waiting.branch },
                };
                relay(&context.store, ask).await;
            }
            _ = synced.wait(FOLLOW_EVERY) => {
                let followed = follow_applied(&context.store, applied.as_deref()).await;
                if let Some(state) = followed {
                    tracing::info!(revision = %state.revision, "following the revision the leader applied");
                    applied = Some(state.clone());
                    channels.publish.desired.send_replace(Some(state));
                }
                relayed = answer_relayed(&context.store, relayed).await;
                channels.publish.attempts.send_if_modified(|n| {
                    let first = *n == 0;
                    *n = n.saturating_add(u64::from(first));
                    first
                });
            }
        }
    }
}

/// Queues a plan another replica passed on; it answered the push already, so
/// a full queue can only be logged.
fn queue_relayed(plans: &PlanQueue, branch: &str, work: BranchWork) {
    if let Err(full) = plans.ask(branch, work) {
        tracing::warn!(%branch, "a plan passed on by another replica is dropped: {full}");
    }
}

/// What other replicas asked of the leader, taken from the store.
async fn taken_asks(store: &Store) -> Vec<SyncAsk> {
    let taking = store.clone();
    match crate::blocking::run(move || taking.take_sync_asks()).await {
        Ok(Ok(asks)) => asks,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read what other replicas asked for; reading again");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Passes `ask` to the leader through the store; the attempt it comes after.
async fn relay(store: &Store, ask: SyncAsk) -> Option<u64> {
    let asking = store.clone();
    match crate::blocking::run(move || asking.ask_sync(&ask)).await {
        Ok(Ok(seq)) => Some(seq),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot pass the request to the replica that leads");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "passing the request on failed");
            None
        }
    }
}

/// Answers the relayed syncs whose record the leader wrote (or that waited
/// too long: no answer); the rest still wait.
async fn answer_relayed(
    store: &Store,
    relayed: Vec<(u64, Request, Instant)>,
) -> Vec<(u64, Request, Instant)> {
    if relayed.is_empty() {
        return relayed;
    }
    let reading = store.clone();
    let asked: Vec<(u64, String)> = relayed
        .iter()
        .map(|(seq, request, _)| (*seq, request.trigger.to_string()))
        .collect();
    let found = crate::blocking::run(move || -> Result<Vec<Option<SyncRecord>>, store::Error> {
        asked
            .iter()
            .map(|(seq, trigger)| reading.sync_by(*seq, trigger))
            .collect()
    })
    .await;
    let Ok(Ok(found)) = found else {
        return relayed;
    };
    let now = Instant::now();
    let mut waiting = Vec::new();
    for ((seq, request, until), record) in relayed.into_iter().zip(found) {
        match record {
            Some(record) => {
                if let Some(reply) = request.reply {
                    reply.send(record).ok();
                }
            }
            None if now < until => waiting.push((seq, request, until)),
            None => {
                tracing::warn!(trigger = %request.trigger, "the replica that leads did not record the sync passed to it in time")
            }
        }
    }
    waiting
}

/// The state in force in the store, when its revision is not `current`'s.
async fn follow_applied(
    store: &Store,
    current: Option<&DesiredState>,
) -> Option<Arc<DesiredState>> {
    let current = current.map(|state| state.revision.clone());
    let reading = store.clone();
    let read = crate::blocking::run(move || -> Result<_, store::Error> {
        let Some(revision) = reading
            .last_applied_sync()?
            .and_then(|record| record.revision)
        else {
            return Ok(None);
        };
        if current.as_deref() == Some(revision.as_str()) {
            return Ok(None);
        }
        let Some(state) = reading.applied_state(&revision)? else {
            return Ok(None);
        };
        Ok(Some(state))
    })
    .await;
    match read {
        Ok(Ok(state)) => state.map(Arc::new),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the revision in force from the store; reading again");
            None
        }
        Err(_) => None,
    }
}

/// The leader's loop: every sync, one at a time.
async fn lead(
    context: Arc<SyncContext>,
    mut applied: Option<Arc<DesiredState>>,
    channels: Channels,
    mut pending: Vec<Request>,
    shutdown: CancellationToken,
) {
    let Channels {
        mut queue,
        plans,
        publish,
    } = channels;
    // Plans run beside syncs, on their own mirror: a burst of branch pushes
    // never holds up the followed branch.
    tokio::spawn(super::plans::work(
        context.clone(),
        plans.clone(),
        publish.desired.subscribe(),
        shutdown.clone(),
    ));
    // The head last looked at, whatever came of it: a timer or file-watch sync
    // that finds the ref where it was records nothing (no commit, no log line,
    // no audit entry), even when that head is a bad one.
    let reading = context.store.clone();
    let mut last_attempted = crate::blocking::run(move || reading.recent_syncs(1))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|mut last| last.pop())
        .and_then(|record| record.revision);
    if context.source.is_some() {
        pending.push(Request {
            trigger: Trigger::Startup,
            reply: None,
        });
    }
    // Syncs other replicas passed on: each its own attempt, recorded with its trigger.
    let mut relayed: std::collections::VecDeque<Trigger> = Default::default();
    let mut next_interval = tokio::time::Instant::now() + jittered(context.interval);
    let mut asked = context.store.doorbell(Followed::SyncAsks);
    loop {
        if pending.is_empty()
            && let Some(trigger) = relayed.pop_front()
        {
            pending.push(Request {
                trigger,
                reply: None,
            });
        }
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                request = queue.recv() => match request {
                    Some(request) => pending.push(request),
                    None => return,
                },
                _ = tokio::time::sleep_until(next_interval), if context.source.is_some() => {
                    pending.push(Request { trigger: Trigger::Interval, reply: None });
                }
                _ = asked.wait(FOLLOW_EVERY), if context.store.is_shared() => {
                    for ask in taken_asks(&context.store).await {
                        match ask {
                            SyncAsk::Sync { trigger } => relayed.push_back(Trigger::Relayed(trigger)),
                            SyncAsk::Plan { branch } => queue_relayed(&plans, &branch, BranchWork::Plan),
                            SyncAsk::Forget { branch } => queue_relayed(&plans, &branch, BranchWork::Forget),
                        }
                    }
                    continue;
                }
            }
        }
        next_interval = tokio::time::Instant::now() + jittered(context.interval);
        // Whatever queued up meanwhile is served by this one sync.
        while let Ok(request) = queue.try_recv() {
            pending.push(request);
        }
        let trigger = pending[0].trigger.clone();
        let passive = pending
            .iter()
            .all(|request| matches!(request.trigger, Trigger::Interval | Trigger::Watch));
        let skip_at = last_attempted.as_deref().filter(|_| passive);
        let Some((record, state)) =
            sync_once(&context, &trigger, applied.as_deref(), skip_at).await
        else {
            pending.clear();
            publish.attempts.send_modify(|n| *n += 1);
            continue;
        };
        last_attempted = record.revision.clone().or(last_attempted);
        if let Some(state) = state {
            applied = Some(state.clone());
            publish.desired.send_replace(Some(state));
        }
        publish.attempts.send_modify(|n| *n += 1);
        for request in pending.drain(..) {
            if let Some(reply) = request.reply {
                reply.send(record.clone()).ok();
            }
        }
    }
}

/// What the worker tells the rest of the daemon.
struct Published {
    desired: watch::Sender<Option<Arc<DesiredState>>>,
    attempts: watch::Sender<u64>,
}

fn jittered(interval: Duration) -> Duration {
    use rand::RngExt;
    // Spreads the fleet's daemons (and our own restarts) over the interval.
    interval.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// Reads the last applied revision back from the mirror (a replica that
/// followed it from the store may not have fetched it: then `None`).
async fn restore(context: &Arc<SyncContext>) -> Option<Arc<DesiredState>> {
    let context = context.clone();
    crate::blocking::run(move || {
        let record = context.store.last_applied_sync().ok()??;
        let revision: ObjectId = record.revision.as_deref()?.parse().ok()?;
        match context.mirror.files_at(revision) {
            Ok(files) => {
                let state = desired::load(&revision.to_string(), &files).ok()?;
                // The other replicas follow it from the store (one written before they did lacks it).
                if let Err(error) = context.store.keep_applied_state(&state) {
                    tracing::warn!(%error, "cannot record the revision in force for the other replicas");
                }
                Some(Arc::new(state))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot restore the last applied revision; waiting for a sync");
                None
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// One sync attempt, recorded. Returns the record and, when a new revision
/// was applied, its desired state; nothing when the head is still `skip_at`.
async fn sync_once(
    context: &Arc<SyncContext>,
    trigger: &Trigger,
    applied: Option<&DesiredState>,
    skip_at: Option<&str>,
) -> Option<(SyncRecord, Option<Arc<DesiredState>>)> {
    // Instrumented, not entered: a guard held across `.await` would tag other tasks' lines.
    let span = tracing::info_span!("sync", %trigger);
    sync_attempt(context, trigger, applied, skip_at)
        .instrument(span)
        .await
}

async fn sync_attempt(
    context: &Arc<SyncContext>,
    trigger: &Trigger,
    applied: Option<&DesiredState>,
    skip_at: Option<&str>,
) -> Option<(SyncRecord, Option<Arc<DesiredState>>)> {
    let started_at_ms = store::now_ms();
    let started = Instant::now();
    let previous = applied.map(|state| state.revision.clone());
    let attempt = {
        let context = context.clone();
        let previous = previous.clone();
        let skip_at = skip_at.map(str::to_owned);
        crate::blocking::run(move || {
            fetch_and_load(&context, previous.as_deref(), skip_at.as_deref())
        })
    };
    let (revision, outcome, state) = match attempt.await {
        Ok(Ok(Fetched::NotMoved)) => {
            tracing::trace!("the ref has not moved");
            let labels = crate::metrics::ResultLabels {
                result: "not_moved",
            };
            context.metrics.syncs.get_or_create(&labels).inc();
            return None;
        }
        Ok(Ok(Fetched::Unchanged(revision))) => (Some(revision), SyncOutcome::Unchanged, None),
        Ok(Ok(Fetched::Loaded {
            revision,
            result,
            changed_files,
            forced,
        })) => match result {
            Ok(state) => (
                Some(revision),
                SyncOutcome::Applied {
                    changed_files,
                    forced,
                },
                Some(Arc::new(*state)),
            ),
            Err(problems) => (Some(revision), SyncOutcome::Invalid { problems }, None),
        },
        Ok(Err(error)) => (
            None,
            SyncOutcome::Failed {
                error: error.to_string(),
            },
            None,
        ),
        Err(error) => (
            None,
            SyncOutcome::Failed {
                error: format!("sync task failed: {error}"),
            },
            None,
        ),
    };
    let record = SyncRecord {
        seq: 0,
        started_at_ms,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        trigger: trigger.to_string(),
        revision,
        previous,
        outcome,
    };
    let recording = (context.clone(), record.clone(), state.clone());
    let recorded = context
        .store
        .run(move |store| {
            let (context, record, state) = recording;
            let audit = audit_of(&record);
            let outgoing = outgoing_of(&context, &record);
            let keep = context.keep_attempts;
            store.record_sync(record, state.as_deref(), audit.as_ref(), keep, &outgoing)
        })
        .await;
    let record = match recorded {
        Ok(record) => record,
        Err(error) => {
            // Not applied if not recorded: the store is the truth after a restart.
            tracing::error!(%error, "cannot record the sync; the revision is not applied");
            return Some((record, None));
        }
    };
    context
        .metrics
        .syncs
        .get_or_create(&crate::metrics::ResultLabels {
            result: record.outcome.name(),
        })
        .inc();
    log(&record);
    Some((record, state))
}

/// The commit statuses and notifications of a sync that fetched a revision
/// (a refused one, or one applied; unchanged heads and failed fetches say
/// nothing). On the blocking pool: it reads the sync history.
fn outgoing_of(
    context: &SyncContext,
    record: &SyncRecord,
) -> Vec<linkops_reconcilers::outbox::Outgoing> {
    use linkops_reconcilers::outbox::{self, SyncEnd};
    let Some(revision) = &record.revision else {
        return Vec::new();
    };
    let first;
    let end = match &record.outcome {
        SyncOutcome::Applied { .. } => SyncEnd::Applied,
        SyncOutcome::Invalid { problems } => {
            first = problems
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            SyncEnd::Refused {
                first: &first,
                count: problems.len(),
            }
        }
        SyncOutcome::Unchanged | SyncOutcome::Failed { .. } => return Vec::new(),
    };
    // Whether the last revision looked at before this one was refused (for "recovered").
    let refused_before = context
        .store
        .recent_syncs(50)
        .unwrap_or_default()
        .into_iter()
        .find(|r| {
            matches!(
                r.outcome,
                SyncOutcome::Applied { .. } | SyncOutcome::Invalid { .. }
            )
        })
        .is_some_and(|r| matches!(r.outcome, SyncOutcome::Invalid { .. }));
    let notifier = &context.notifier;
    let (statuses, events) = outbox::for_sync(
        revision,
        end,
        refused_before,
        notifier.console_url(),
        record.started_at_ms,
    );
    notifier.route(statuses, events)
}

enum Fetched {
    /// The head is the one last looked at (only asked for by passive triggers).
    NotMoved,
    Unchanged(String),
    Loaded {
        revision: String,
        /// Boxed: a desired state is a few hundred bytes of maps inline.
        result: Result<Box<DesiredState>, Vec<desired::Problem>>,
        changed_files: Vec<String>,
        forced: bool,
    },
}

fn fetch_and_load(
    context: &SyncContext,
    previous: Option<&str>,
    skip_at: Option<&str>,
) -> Result<Fetched, SyncError> {
    let source = context.source.as_ref().ok_or(SyncError::NotConfigured)?;
    let commit = context.mirror.fetch(source)?;
    let revision = commit.to_string();
    if skip_at == Some(revision.as_str()) {
        return Ok(Fetched::NotMoved);
    }
    if previous == Some(revision.as_str()) {
        return Ok(Fetched::Unchanged(revision));
    }
    let files = context.mirror.files_at(commit)?;
    let previous: Option<ObjectId> = previous.and_then(|p| p.parse().ok());
    let (changed_files, forced) = match previous {
        Some(previous) => {
            let forced = !context.mirror.is_ancestor(previous, commit)?;
            let before = context.mirror.files_at(previous).unwrap_or_default();
            (changed(&before, &files), forced)
        }
        None => (files.keys().cloned().collect(), false),
    };
    Ok(Fetched::Loaded {
        result: desired::load(&revision, &files).map(Box::new),
        revision,
        changed_files,
        forced,
    })
}

/// Paths added, removed or modified between two revisions.
fn changed(before: &desired::RepoFiles, after: &desired::RepoFiles) -> Vec<String> {
    let mut paths: Vec<String> = after
        .iter()
        .filter(|(path, content)| before.get(*path) != Some(content))
        .map(|(path, _)| path.clone())
        .chain(
            before
                .keys()
                .filter(|path| !after.contains_key(*path))
                .cloned(),
        )
        .collect();
    paths.sort();
    paths
}

fn log(record: &SyncRecord) {
    let revision = record.revision.as_deref().unwrap_or("-");
    match &record.outcome {
        SyncOutcome::Applied {
            changed_files,
            forced,
        } => tracing::info!(
            revision,
            files = changed_files.len(),
            forced,
            "applied a new revision"
        ),
        SyncOutcome::Unchanged => tracing::debug!(revision, "no new revision"),
        SyncOutcome::Invalid { problems } => {
            for problem in problems {
                tracing::warn!(revision, %problem, "revision rejected");
            }
        }
        SyncOutcome::Failed { error } => {
            tracing::warn!(%error, "sync failed; the last good revision stays in force")
        }
    }
}

/// A sync's audit entry, recorded with it: revisions applied or refused, and
/// failed fetches (an unchanged look is no event).
fn audit_of(record: &SyncRecord) -> Option<Audit> {
    let revision = record.revision.as_deref().unwrap_or("-");
    let (target, outcome, detail) = match &record.outcome {
        SyncOutcome::Applied { forced, .. } => (
            revision,
            Outcome::Success,
            format!(
                "{} -> {revision}{}",
                record.previous.as_deref().unwrap_or("(none)"),
                if *forced { " (force-pushed)" } else { "" }
            ),
        ),
        SyncOutcome::Unchanged => return None,
        SyncOutcome::Invalid { problems } => (
            revision,
            Outcome::Failure,
            format!(
                "{} problem(s); first: {}",
                problems.len(),
                problems
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        ),
        SyncOutcome::Failed { error } => (
            record.previous.as_deref().unwrap_or("-"),
            Outcome::Failure,
            error.clone(),
        ),
    };
    Some(Audit {
        actor: Actor::Sync(record.trigger.clone()),
        action: AuditAction::GitSync,
        target: target.to_owned(),
        outcome,
        detail: Some(detail),
    })
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SyncError {
    #[error("no Git source is configured (set [git] url)")]
    NotConfigured,
    #[error(transparent)]
    Mirror(#[from] mirror::Error),
    #[error(transparent)]
    Store(store::Error),
}
