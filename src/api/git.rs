//! `/api/git`: the config repository's sync status, manual syncs, and the push webhook.

use axum::body::Bytes;
use axum::extract::State;

use super::extract::Json;
use axum::http::{HeaderMap, StatusCode, header};
use secrecy::ExposeSecret;

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::contract::{
    GitStatus, PostedStatusView, SyncOutcome, SyncRequested, SyncView, WebhookAnswer,
};
use crate::git::sync::Trigger;
use crate::git::webhook::{self, Triage};
use crate::store::{self, DeliveryClaim, SyncRecord};
use linkops_reconcilers::grant::Place;
use linkops_reconcilers::outbox::FORGE;
use linkops_reconcilers::plan::BranchWork;

/// Largest webhook body accepted; push payloads are a few KiB.
pub const WEBHOOK_BODY_LIMIT: usize = 1 << 20;

impl From<SyncRecord> for SyncView {
    fn from(record: SyncRecord) -> Self {
        SyncView {
            seq: record.seq,
            started_at: at(record.started_at_ms).unwrap_or_default(),
            duration_ms: record.duration_ms,
            trigger: record.trigger,
            revision: record.revision,
            previous: record.previous,
            outcome: match record.outcome {
                store::SyncOutcome::Applied {
                    changed_files,
                    forced,
                } => SyncOutcome::Applied {
                    changed_files,
                    forced,
                },
                store::SyncOutcome::Unchanged => SyncOutcome::Unchanged,
                store::SyncOutcome::Invalid { problems } => SyncOutcome::Invalid { problems },
                store::SyncOutcome::Failed { error } => SyncOutcome::Failed { error },
            },
        }
    }
}

/// `GET /api/desired`: the desired state in force (machines, scripts,
/// run-requests, states, grants, and secrets as Git holds them: sealed, so
/// that `linkops plan` tells a changed value from an unchanged one).
#[utoipa::path(get, path = "/api/desired", tag = "git", responses((status = 200, description = "The desired state in force: machines, scripts, run-requests", body = linkops_reconcilers::desired::DesiredState), (status = 409, description = "No revision applied yet", body = crate::contract::ErrorBody)))]
pub async fn desired(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<linkops_reconcilers::desired::DesiredState>, ApiError> {
    let reach = caller.reach(&state);
    let desired = state.git.desired().borrow().clone();
    let mut desired = desired.map(|d| (*d).clone()).ok_or_else(|| {
        ApiError::NotConfigured("no revision has been applied yet: see GET /api/git/status".into())
    })?;
    // The inventory as far as the caller sees; the catalog, run-requests,
    // states and grants are the repository's, read alike by everyone.
    (desired.machines).retain(|machine| reach.sight().sees(Place::from(machine)));
    Ok(Json(desired))
}

/// Commit statuses waiting (and given up on) that `GET /api/git/status` shows.
const STATUSES_SHOWN: usize = 100;

/// `GET /api/git/status`
#[utoipa::path(get, path = "/api/git/status", tag = "git", responses((status = 200, description = "Applied and last attempted revision; problems as file:line:col", body = GitStatus)))]
pub async fn status(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<GitStatus>, ApiError> {
    let (last, applied, statuses, queued, dead) = state
        .store
        .run(|store| {
            let last = store.recent_syncs(1)?.into_iter().next();
            let looked_at = last.as_ref().and_then(|r| r.revision.clone());
            let statuses = match looked_at {
                Some(revision) => store.posted_statuses(&revision)?,
                None => Vec::new(),
            };
            Ok((
                last,
                store.last_applied_sync()?,
                statuses,
                store.queued(Some(FORGE), 0, STATUSES_SHOWN)?,
                store.dead_letters(Some(FORGE), STATUSES_SHOWN)?,
            ))
        })
        .await?;
    let last_error = match last.as_ref().map(|r| &r.outcome) {
        Some(store::SyncOutcome::Invalid { problems }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Some(store::SyncOutcome::Failed { error }) => vec![error.clone()],
        _ => Vec::new(),
    };
    let statuses = statuses
        .into_iter()
        .map(|posted| PostedStatusView {
            posted_at: at(posted.posted_at_ms),
            status: posted.status,
        })
        .collect();
    // Only the forge's messages (the oldest waiting, the newest given up on):
    // the rest is at /api/notifications. What the forge answered (redacted)
    // is for admins, as the outbox is.
    let admin = caller.is_admin(&state);
    let forge = |messages: Vec<linkops_reconcilers::outbox::Queued>| {
        messages
            .into_iter()
            .map(|queued| linkops_reconcilers::outbox::Queued {
                last_error: queued.last_error.filter(|_| admin),
                ..queued
            })
            .collect()
    };
    Ok(Json(GitStatus {
        url: state.git.source().map(|s| s.url.to_string()),
        branch: state.config.git.branch.clone(),
        applied_revision: applied.as_ref().and_then(|r| r.revision.clone()),
        applied_at: applied.and_then(|r| {
            at(r.started_at_ms
                .saturating_add(i64::try_from(r.duration_ms).unwrap_or(0)))
        }),
        statuses,
        statuses_queued: forge(queued),
        statuses_dead: forge(dead),
        last_attempt: last.map(SyncView::from),
        last_error,
    }))
}

/// `POST /api/git/sync`: syncs now and answers with what happened.
#[utoipa::path(post, path = "/api/git/sync", tag = "git", responses((status = 200, description = "Synced now (admin); the attempt's record", body = SyncView)))]
pub async fn sync(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<SyncView>, ApiError> {
    let user = caller.administers(&state)?;
    if state.git.source().is_none() {
        return Err(ApiError::NotConfigured(
            "no Git source is configured: set [git] url".into(),
        ));
    }
    let record = state
        .git
        .sync_now(Trigger::Api {
            user: user.name.clone(),
        })
        .await
        .ok_or_else(|| ApiError::Internal("the sync worker has stopped".into()))?;
    Ok(Json(record.into()))
}

/// `POST /api/git/webhook`: a push delivery from Forgejo, Gitea or GitHub.
///
/// Authenticated by its HMAC signature, not a token. A valid push to the
/// followed branch asks for a sync and answers 202 at once.
#[utoipa::path(post, path = "/api/git/webhook", tag = "git", security(()), request_body(content = Object, description = "A Forgejo, Gitea or GitHub push event, HMAC-SHA256 signed (X-Forgejo-Signature, X-Gitea-Signature or X-Hub-Signature-256)", content_type = "application/json"), responses((status = 202, description = "Accepted: a sync is queued (or another branch: ignored)", body = WebhookAnswer), (status = 401, description = "Bad signature", body = crate::contract::ErrorBody), (status = 409, description = "A replayed delivery, or webhooks not configured", body = crate::contract::ErrorBody), (status = 413, description = "Body over 1 MiB", body = crate::contract::ErrorBody), (status = 415, description = "Not JSON", body = crate::contract::ErrorBody), (status = 503, description = "Too many branches wait to be planned ([git] plan_queue): deliver again after Retry-After", body = crate::contract::ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    let Some(secret) = &state.config.webhook.secret else {
        return Err(ApiError::NotConfigured(
            "webhooks are disabled: set [webhook] secret".into(),
        ));
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected application/json, got {content_type:?}; set the webhook's content type to JSON"
        )));
    }
    webhook::verify_signature(&headers, &body, secret.expose_secret().as_bytes())
        .map_err(ApiError::Webhook)?;
    let delivery = webhook::Delivery::new(&headers, &body).map_err(ApiError::Webhook)?;
    match delivery.claim(&state.store).await? {
        DeliveryClaim::Fresh => {}
        DeliveryClaim::SeenId => {
            return Err(ApiError::Replayed(format!("delivery {}", delivery.id)));
        }
        DeliveryClaim::SeenBody => {
            return Err(ApiError::Replayed(format!(
                "the body of delivery {} (sha256 {})",
                delivery.id, delivery.digest
            )));
        }
    }
    let triage = {
        let applied = state
            .git
            .desired()
            .borrow()
            .as_ref()
            .map(|d| d.revision.clone());
        let config = &state.config;
        // Other branches are planned only when asked for, and with a forge to say it on.
        let planned = |branch: &str| config.git.plans(branch) && config.forge.kind.is_some();
        let followed = webhook::Followed {
            branch: &config.git.branch,
            applied: applied.as_deref(),
            planned: &planned,
        };
        webhook::classify(&webhook::event(&headers), &body, &followed)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?
    };
    let answer = match triage {
        Triage::Sync => {
            state.git.request(Trigger::Webhook {
                delivery: delivery.id,
            });
            WebhookAnswer::Sync(SyncRequested::Requested)
        }
        Triage::Unchanged(revision) => WebhookAnswer::Unchanged(revision),
        Triage::Plan { branch, work } => {
            if let Err(full) = state.git.request_plan(&branch, work) {
                delivery.release(&state.store).await?;
                return Err(ApiError::Unavailable {
                    message: full.to_string(),
                    retry_after_secs: 10,
                });
            }
            match work {
                BranchWork::Plan => WebhookAnswer::Plan(branch),
                BranchWork::Forget => WebhookAnswer::Forgotten(branch),
            }
        }
        Triage::Ignored(what) => WebhookAnswer::Ignored(what),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}
