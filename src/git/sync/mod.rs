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
//! them (the API, webhooks) to the leader through it (`follow`, `lead`).

mod follow;
mod lead;

use follow::{FOLLOW_EVERY, follow, follow_applied};
use lead::{lead, restore};

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
    /// Opens the repository's secrets: a revision with one it cannot open is refused.
    pub keyring: Arc<crate::sealed::Keyring>,
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

/// What the worker tells the rest of the daemon.
struct Published {
    desired: watch::Sender<Option<Arc<DesiredState>>>,
    attempts: watch::Sender<u64>,
}

/// The worker's ends of the handle's channels.
struct Channels {
    queue: mpsc::Receiver<Request>,
    plans: PlanQueue,
    publish: Published,
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
