//! The controller's runner: a scheduler that dedupes by key (the earliest due
//! time wins) and a bounded set of reconciles, never two of one key at once.
//!
//! Generic over what a reconcile does, so that its timing rules are tested
//! with tokio's paused clock and a recording reconciler.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long, even if nothing changes.
    Requeue(Duration),
    /// Nothing to do until a trigger says something changed.
    AwaitChange,
}

/// Why a reconcile runs (for logs only: reconciles read the current state, whatever the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Startup,
    Revision,
    Requeue,
    Backoff,
    Api,
    Resync,
}

impl Reason {
    /// Asked for by a new revision or a caller: run before the routine
    /// (requeues, resyncs, backoffs, the startup sweep), so that a commit's
    /// run-request does not wait behind a sweep of the fleet.
    fn is_asked(self) -> bool {
        matches!(self, Reason::Revision | Reason::Api)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Startup => "startup",
            Reason::Revision => "revision",
            Reason::Requeue => "requeue",
            Reason::Backoff => "error-backoff",
            Reason::Api => "api",
            Reason::Resync => "resync",
        })
    }
}

/// Reconciles one object by key.
pub trait Reconcile<K>: Send + Sync + 'static {
    /// What a failed reconcile says; it is logged, retried with backoff and
    /// handed, shared, to every `reconcile_now` caller.
    type Error: std::error::Error + Send + Sync + 'static;

    fn reconcile(
        &self,
        key: K,
        reason: Reason,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;
}

/// Why a `reconcile_now` has no action to show.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: std::error::Error + 'static> {
    #[error("the controller has stopped")]
    Stopped,
    #[error(transparent)]
    Failed(Arc<E>),
}

/// A reconcile's outcome, as its waiters share it.
type Outcome<E> = Result<Action, Arc<E>>;

/// Capped exponential backoff after `attempt` consecutive failures (1 → 1 s, 2 → 2 s, …, ≤ 5 min).
pub fn backoff(attempt: u32) -> Duration {
    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);
    BASE.saturating_mul(
        1u32.checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX),
    )
    .min(CAP)
}

/// The furthest ahead a reconcile is scheduled.
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

enum Command<K, E> {
    Schedule {
        key: K,
        reason: Reason,
        at: Instant,
    },
    Now {
        key: K,
        reply: oneshot::Sender<Outcome<E>>,
    },
}

/// The handle triggers use; `E` is the reconciler's error.
pub struct Scheduler<K, E> {
    commands: mpsc::UnboundedSender<Command<K, E>>,
    debounce: Duration,
    /// Keys waiting (scheduled or due), as the runner last counted them.
    depth: Arc<AtomicUsize>,
}

impl<K, E> Clone for Scheduler<K, E> {
    fn clone(&self) -> Self {
        Scheduler {
            commands: self.commands.clone(),
            depth: self.depth.clone(),
            debounce: self.debounce,
        }
    }
}

impl<K: Send + 'static, E: std::error::Error + Send + Sync + 'static> Scheduler<K, E> {
    /// How many keys wait for a reconcile (for metrics).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Asks for a reconcile soon: after the debounce, so a burst of triggers is one reconcile.
    pub fn trigger(&self, key: K, reason: Reason) {
        let at = Instant::now() + self.debounce;
        self.commands
            .send(Command::Schedule { key, reason, at })
            .ok();
    }

    /// Reconciles `key` as soon as it may run, and answers with its result.
    pub async fn reconcile_now(&self, key: K) -> Result<Action, Error<E>> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Now { key, reply })
            .map_err(|_| Error::Stopped)?;
        answer
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(Error::Failed)
    }
}

/// Starts the runner. On `shutdown` it starts nothing new and returns once
/// the reconciles in flight have finished (and so recorded what they did).
pub fn spawn<K, R>(
    reconciler: Arc<R>,
    concurrency: usize,
    debounce: Duration,
    shutdown: CancellationToken,
) -> (Scheduler<K, R::Error>, JoinHandle<()>)
where
    K: Clone + Eq + std::hash::Hash + fmt::Display + Send + Sync + 'static,
    R: Reconcile<K>,
{
    let (commands, receiver) = mpsc::unbounded_channel();
    let depth = Arc::new(AtomicUsize::new(0));
    let runner = Runner {
        depth: depth.clone(),
        reconciler,
        concurrency: concurrency.max(1),
        queue: DelayQueue::new(),
        scheduled: HashMap::new(),
        ready: Ready::default(),
        running: HashSet::new(),
        rerun: HashMap::new(),
        waiting: HashMap::new(),
        answering: HashMap::new(),
        attempts: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let handle = tokio::spawn(runner.run(receiver, shutdown));
    (
        Scheduler {
            commands,
            debounce,
            depth,
        },
        handle,
    )
}

struct Runner<K, R: Reconcile<K>> {
    reconciler: Arc<R>,
    depth: Arc<AtomicUsize>,
    concurrency: usize,
    queue: DelayQueue<K>,
    /// Keys waiting in `queue`: their entry, due time and reason.
    scheduled: HashMap<K, (delay_queue::Key, Instant, Reason)>,
    /// Due, waiting for a free slot.
    ready: Ready<K>,
    running: HashSet<K>,
    /// Asked for while running: run again when done, at the earliest time asked.
    rerun: HashMap<K, (Instant, Reason)>,
    /// `reconcile_now` callers for the next run of a key.
    waiting: HashMap<K, Vec<oneshot::Sender<Outcome<R::Error>>>>,
    /// Callers of the run in flight.
    answering: HashMap<K, Vec<oneshot::Sender<Outcome<R::Error>>>>,
    /// Consecutive failures per key.
    attempts: HashMap<K, u32>,
    tasks: JoinSet<(K, Outcome<R::Error>)>,
}

/// Due keys in the order they start: asked-for ones first, each class in
/// the order it became due; a key is in it at most once.
struct Ready<K> {
    asked: VecDeque<(K, Reason)>,
    routine: VecDeque<(K, Reason)>,
    keys: HashSet<K>,
}

impl<K> Default for Ready<K> {
    fn default() -> Self {
        Ready {
            asked: VecDeque::new(),
            routine: VecDeque::new(),
            keys: HashSet::new(),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Ready<K> {
    fn push(&mut self, key: K, reason: Reason) {
        if self.keys.insert(key.clone()) {
            match reason.is_asked() {
                true => self.asked.push_back((key, reason)),
                false => self.routine.push_back((key, reason)),
            }
        }
    }

    fn pop(&mut self) -> Option<(K, Reason)> {
        let next = self
            .asked
            .pop_front()
            .or_else(|| self.routine.pop_front())?;
        self.keys.remove(&next.0);
        Some(next)
    }

    fn contains(&self, key: &K) -> bool {
        self.keys.contains(key)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

impl<K, R> Runner<K, R>
where
    K: Clone + Eq + std::hash::Hash + fmt::Display + Send + Sync + 'static,
    R: Reconcile<K>,
{
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command<K, R::Error>>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command::Schedule { key, reason, at }) => self.schedule(key, reason, at),
                    Some(Command::Now { key, reply }) => {
                        self.waiting.entry(key.clone()).or_default().push(reply);
                        self.schedule(key, Reason::Api, Instant::now());
                    }
                    None => break,
                },
                Some(expired) = self.queue.next(), if !self.queue.is_empty() => {
                    let key = expired.into_inner();
                    if let Some((_, _, reason)) = self.scheduled.remove(&key) {
                        self.ready.push(key, reason);
                    }
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok((key, result)) = done {
                        self.finished(key, result);
                    }
                },
            }
            self.start_ready();
            self.depth
                .store(self.scheduled.len() + self.ready.len(), Ordering::Relaxed);
        }
        // Let in-flight reconciles finish and record their state.
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((key, result)) = done {
                for reply in self.answering.remove(&key).unwrap_or_default() {
                    reply.send(result.clone()).ok();
                }
            }
        }
    }

    /// Earliest due time wins; a running key is remembered for a rerun.
    fn schedule(&mut self, key: K, reason: Reason, at: Instant) {
        // The delay queue's horizon is about two years; a day is plenty, the
        // reconcile will simply ask again.
        let at = at.min(Instant::now() + MAX_DELAY);
        if self.running.contains(&key) {
            let entry = self.rerun.entry(key).or_insert((at, reason));
            if at < entry.0 {
                *entry = (at, reason);
            }
            return;
        }
        match self.scheduled.get_mut(&key) {
            Some((entry, due, why)) => {
                if at < *due {
                    self.queue.reset_at(entry, at);
                    *due = at;
                    *why = reason;
                }
            }
            None => {
                if self.ready.contains(&key) {
                    return;
                }
                let entry = self.queue.insert_at(key.clone(), at);
                self.scheduled.insert(key, (entry, at, reason));
            }
        }
    }

    fn start_ready(&mut self) {
        while self.running.len() < self.concurrency {
            let Some((key, reason)) = self.ready.pop() else {
                break;
            };
            if self.running.contains(&key) {
                self.schedule(key, reason, Instant::now());
                continue;
            }
            self.running.insert(key.clone());
            let replies = self.waiting.remove(&key).unwrap_or_default();
            self.answering.insert(key.clone(), replies);
            let reconciler = self.reconciler.clone();
            let span = tracing::info_span!("reconcile", object = %key, %reason);
            self.tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let result = reconciler.reconcile(key.clone(), reason).await;
                    (key, result.map_err(Arc::new))
                },
                span,
            ));
        }
    }

    fn finished(&mut self, key: K, result: Outcome<R::Error>) {
        self.running.remove(&key);
        for reply in self.answering.remove(&key).unwrap_or_default() {
            reply.send(result.clone()).ok();
        }
        let now = Instant::now();
        match &result {
            Ok(action) => {
                self.attempts.remove(&key);
                if let Action::Requeue(after) = action {
                    self.schedule(key.clone(), Reason::Requeue, now + *after);
                }
            }
            Err(error) => {
                let attempt = self.attempts.entry(key.clone()).or_insert(0);
                *attempt += 1;
                let delay = backoff(*attempt);
                tracing::warn!(object = %key, attempt = *attempt, retry_in = ?delay, %error, "reconcile failed");
                self.schedule(key.clone(), Reason::Backoff, now + delay);
            }
        }
        if let Some((at, reason)) = self.rerun.remove(&key) {
            self.schedule(key, reason, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records every reconcile; takes `work` of (paused) time; fails while `failures` lasts.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(String, Instant, Reason)>>,
        in_flight: Mutex<HashMap<String, u32>>,
        max_in_flight_per_key: Mutex<u32>,
        max_in_flight: Mutex<usize>,
        failures: Mutex<u32>,
        work: Duration,
        action: Option<Action>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    impl Reconcile<String> for Recorder {
        type Error = Boom;

        async fn reconcile(&self, key: String, reason: Reason) -> Result<Action, Boom> {
            self.calls
                .lock()
                .unwrap()
                .push((key.clone(), Instant::now(), reason));
            {
                let mut in_flight = self.in_flight.lock().unwrap();
                let count = in_flight.entry(key.clone()).or_default();
                *count += 1;
                let mut max = self.max_in_flight_per_key.lock().unwrap();
                *max = (*max).max(*count);
                let total: u32 = in_flight.values().sum();
                let mut max_total = self.max_in_flight.lock().unwrap();
                *max_total = (*max_total).max(total as usize);
            }
            tokio::time::sleep(self.work).await;
            *self.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(Boom);
            }
            Ok(self.action.unwrap_or(Action::AwaitChange))
        }
    }

    fn start(recorder: Recorder, concurrency: usize) -> (Arc<Recorder>, Scheduler<String, Boom>) {
        let recorder = Arc::new(recorder);
        let (scheduler, _) = spawn(
            recorder.clone(),
            concurrency,
            Duration::from_millis(100),
            CancellationToken::new(),
        );
        (recorder, scheduler)
    }

    fn calls(recorder: &Recorder) -> Vec<String> {
        recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _, _)| k.clone())
            .collect()
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 40]
            .iter()
            .map(|a| backoff(*a).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_triggers_is_one_reconcile() {
        let (recorder, scheduler) = start(Recorder::default(), 4);
        let begin = Instant::now();
        for _ in 0..10 {
            scheduler.trigger("machine/a".into(), Reason::Revision);
        }
        scheduler.trigger("machine/b".into(), Reason::Revision);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut seen = calls(&recorder);
        seen.sort();
        assert_eq!(seen, ["machine/a", "machine/b"]);
        let (_, at, reason) = recorder.calls.lock().unwrap()[0].clone();
        assert_eq!(at - begin, Duration::from_millis(100), "debounced");
        assert_eq!(reason, Reason::Revision);
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_due_time_wins() {
        let (recorder, scheduler) = start(Recorder::default(), 4);
        let begin = Instant::now();
        scheduler
            .commands
            .send(Command::Schedule {
                key: "k".into(),
                reason: Reason::Requeue,
                at: begin + Duration::from_secs(60),
            })
            .unwrap();
        scheduler
            .commands
            .send(Command::Schedule {
                key: "k".into(),
                reason: Reason::Revision,
                at: begin + Duration::from_secs(5),
            })
            .unwrap();
        scheduler
            .commands
            .send(Command::Schedule {
                key: "k".into(),
                reason: Reason::Resync,
                at: begin + Duration::from_secs(30),
            })
            .unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let calls = recorder.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].1 - begin, calls[0].2),
            (Duration::from_secs(5), Reason::Revision)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_never_runs_twice_at_once_but_runs_again_after() {
        let (recorder, scheduler) = start(
            Recorder {
                work: Duration::from_secs(10),
                ..Default::default()
            },
            4,
        );
        scheduler.trigger("k".into(), Reason::Revision);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Asked for while running: waits, then runs once more.
        scheduler.trigger("k".into(), Reason::Api);
        scheduler.trigger("k".into(), Reason::Api);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(calls(&recorder), ["k", "k"]);
        assert_eq!(*recorder.max_in_flight_per_key.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let (recorder, scheduler) = start(
            Recorder {
                work: Duration::from_secs(1),
                ..Default::default()
            },
            3,
        );
        for i in 0..10 {
            scheduler.trigger(format!("machine/{i}"), Reason::Startup);
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(calls(&recorder).len(), 10);
        assert_eq!(*recorder.max_in_flight.lock().unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_revision_asks_for_runs_before_a_sweeps_backlog() {
        let (recorder, scheduler) = start(
            Recorder {
                work: Duration::from_secs(1),
                ..Default::default()
            },
            1,
        );
        for i in 0..5 {
            scheduler.trigger(format!("machine/{i}"), Reason::Resync);
        }
        // Due while machine/0 runs and the other four wait for its slot.
        tokio::time::sleep(Duration::from_millis(500)).await;
        scheduler.trigger("run/deploy".into(), Reason::Revision);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let seen = calls(&recorder);
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], "machine/0");
        assert_eq!(seen[1], "run/deploy", "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_success_resets() {
        let (recorder, scheduler) = start(
            Recorder {
                failures: Mutex::new(4),
                ..Default::default()
            },
            1,
        );
        let begin = Instant::now();
        scheduler.trigger("k".into(), Reason::Revision);
        tokio::time::sleep(Duration::from_secs(600)).await;
        let calls = recorder.calls.lock().unwrap().clone();
        let offsets: Vec<u64> = calls
            .iter()
            .map(|(_, at, _)| (*at - begin).as_millis() as u64)
            .collect();
        // 0.1 s debounce, then failures retried after 1, 2, 4, 8 s; the fifth succeeds.
        assert_eq!(offsets, [100, 1_100, 3_100, 7_100, 15_100]);
        assert!(
            calls[1..]
                .iter()
                .all(|(_, _, reason)| *reason == Reason::Backoff)
        );
        drop(calls);
        // After a success the count starts again: the next failure waits 1 s.
        *recorder.failures.lock().unwrap() = 1;
        scheduler.trigger("k".into(), Reason::Revision);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let calls = recorder.calls.lock().unwrap().clone();
        let last_two: Vec<Instant> = calls.iter().rev().take(2).map(|(_, at, _)| *at).collect();
        assert_eq!(last_two[0] - last_two[1], Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_runs_again_after_the_delay_and_now_answers() {
        let (recorder, scheduler) = start(
            Recorder {
                action: Some(Action::Requeue(Duration::from_secs(60))),
                ..Default::default()
            },
            2,
        );
        let begin = Instant::now();
        assert_eq!(
            scheduler.reconcile_now("k".into()).await.unwrap(),
            Action::Requeue(Duration::from_secs(60))
        );
        tokio::time::sleep(Duration::from_secs(150)).await;
        let offsets: Vec<u64> = recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at, _)| (*at - begin).as_secs())
            .collect();
        assert_eq!(offsets, [0, 60, 120]);
    }
}
