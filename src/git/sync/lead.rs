//! The replica that leads: every sync, one at a time, recorded; a valid
//! revision applied and published, anything else leaving the last good one
//! in force; what other replicas asked of it taken from the store.

use super::*;

/// Queues a plan another replica passed on; it answered the push already, so
/// a full queue can only be logged.
pub(super) fn queue_relayed(plans: &PlanQueue, branch: &str, work: BranchWork) {
    if let Err(full) = plans.ask(branch, work) {
        tracing::warn!(%branch, "a plan passed on by another replica is dropped: {full}");
    }
}

/// What other replicas asked of the leader, taken from the store.
pub(super) async fn taken_asks(store: &Store) -> Vec<SyncAsk> {
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

/// The leader's loop: every sync, one at a time.
pub(super) async fn lead(
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
    tokio::spawn(super::super::plans::work(
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

pub(super) fn jittered(interval: Duration) -> Duration {
    use rand::RngExt;
    // Spreads the fleet's daemons (and our own restarts) over the interval.
    interval.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// Reads the last applied revision back from the mirror (a replica that
/// followed it from the store may not have fetched it: then `None`).
pub(super) async fn restore(context: &Arc<SyncContext>) -> Option<Arc<DesiredState>> {
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
pub(super) async fn sync_once(
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

pub(super) async fn sync_attempt(
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
pub(super) fn outgoing_of(
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

pub(super) enum Fetched {
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

pub(super) fn fetch_and_load(
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
        result: crate::sealed::load(&revision, &files, &context.keyring).map(Box::new),
        revision,
        changed_files,
        forced,
    })
}

/// Paths added, removed or modified between two revisions.
pub(super) fn changed(before: &desired::RepoFiles, after: &desired::RepoFiles) -> Vec<String> {
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

pub(super) fn log(record: &SyncRecord) {
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
pub(super) fn audit_of(record: &SyncRecord) -> Option<Audit> {
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
