//! `/api/states`: declared states, where each stands on its machines, and
//! resuming a halted rollout.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};

use super::extract::{Json, Path, Query};

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::contract::{
    ApplyView, CheckView, HaltView, StateDetail, StateMachineView, StateMachinesQuery, StateView,
};
use crate::store::Actor;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::state::{DeclaredState, Standing, StateStatus, Target};

/// `GET /api/states`: every state of the applied revision.
#[utoipa::path(get, path = "/api/states", tag = "states", responses((status = 200, description = "Declared states of the applied revision, by id", body = Vec<StateView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<StateView>>, ApiError> {
    // States are the repository's, read alike by everyone; where each stands
    // per machine, as far as the caller sees (`GET /api/states/{id}`).
    caller.signed_in();
    let desired = state.git.desired().borrow().clone();
    let Some(desired) = desired else {
        return Ok(Json(Vec::new()));
    };
    let mut statuses: std::collections::BTreeMap<String, StateStatus> = state
        .store
        .run(|store| store.state_statuses())
        .await?
        .into_iter()
        .map(|s| (s.state_id.clone(), s))
        .collect();
    let views = desired
        .states
        .values()
        .map(|declared| view(declared, statuses.remove(&declared.id)))
        .collect();
    Ok(Json(views))
}

/// `GET /api/states/{id}`
#[utoipa::path(get, path = "/api/states/{id}", tag = "states", params(("id" = String, Path, description = "State id"), StateMachinesQuery), responses((status = 200, description = "The state and its machines the caller sees, in inventory order, filtered and paged as asked", body = StateDetail, headers(("X-Total-Count" = u64, description = "How many of its machines match, over all pages"), ("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when there is one"))), (status = 422, description = "An unknown standing, or a limit out of range; details.field names it", body = crate::contract::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    Query(query): Query<StateMachinesQuery>,
) -> Result<(HeaderMap, Json<StateDetail>), ApiError> {
    check_query(&query)?;
    let reach = caller.reach(&state);
    let desired = state.git.desired().borrow().clone();
    let desired = desired.unwrap_or_default();
    let declared = declared(Some(&desired), &id)?;
    let asked = id.clone();
    let (status, mut targets) = state
        .store
        .run(move |store| store.state_detail(&asked))
        .await?;
    let tagged = |machine: &str| {
        (query.tag.as_ref()).is_none_or(|tag| {
            (desired.machine(machine)).is_some_and(|m| m.tags.iter().any(|t| t == tag))
        })
    };
    let matching = (declared.targets.select(&desired.machines).into_iter())
        .filter(|machine| reach.sees(machine) && tagged(machine))
        .map(|machine| (targets.remove(&machine)).unwrap_or_else(|| Target::new(&id, &machine, 0)))
        .filter(|target| {
            (query.standing.as_deref()).is_none_or(|standing| target.standing.name() == standing)
        });
    let Page { total, page, more } = page_of(matching, query.after.as_deref(), query.limit);
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    if more {
        let next = StateMachinesQuery {
            after: page.last().map(|target| target.machine_id.clone()),
            ..query
        };
        super::links::link_next(&mut headers, &format!("/api/states/{id}"), &next);
    }
    let machines = page.into_iter().map(machine_view).collect();
    let detail = StateDetail {
        state: view(declared, status),
        machines,
    };
    Ok((headers, Json(detail)))
}

/// A page of a state's machines, and how many match over all pages.
struct Page {
    total: u64,
    page: Vec<Target>,
    /// Matches follow the page.
    more: bool,
}

/// The page after machine `after` (in `matching`'s order) of at most `limit`,
/// counting every match: at 10,000 machines the whole list is megabytes.
fn page_of(
    matching: impl Iterator<Item = Target>,
    after: Option<&str>,
    limit: Option<usize>,
) -> Page {
    let limit = limit.unwrap_or(usize::MAX);
    let mut skipping = after.is_some();
    let mut paged = Page {
        total: 0,
        page: Vec::new(),
        more: false,
    };
    for target in matching {
        paged.total += 1;
        if skipping {
            skipping = after != Some(target.machine_id.as_str());
        } else if paged.page.len() < limit {
            paged.page.push(target);
        } else {
            paged.more = true;
        }
    }
    paged
}

/// Refuses a standing no machine can have, and a page size out of range.
fn check_query(query: &StateMachinesQuery) -> Result<(), ApiError> {
    if let Some(standing) = query.standing.as_deref()
        && !Standing::NAMES.contains(&standing)
    {
        return Err(ApiError::Unprocessable {
            field: "standing".into(),
            message: format!(
                "no standing {standing:?}; one of {}",
                Standing::NAMES.join(", ")
            ),
        });
    }
    if query
        .limit
        .is_some_and(|limit| !(1..=super::links::MAX_PAGE).contains(&limit))
    {
        return Err(ApiError::Unprocessable {
            field: "limit".into(),
            message: format!("limit is 1 to {} machines", super::links::MAX_PAGE),
        });
    }
    Ok(())
}

/// `POST /api/states/{id}/resume`: resumes a halted rollout (operator).
#[utoipa::path(post, path = "/api/states/{id}/resume", tag = "states", params(("id" = String, Path, description = "State id")), responses((status = 200, description = "Resumed: failures so far no longer count, and machines whose apply failed are applied again", body = StateView), (status = 409, description = "The rollout is not halted", body = crate::contract::ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<StateView>, ApiError> {
    let desired = state.git.desired().borrow().clone();
    let declared = declared(desired.as_deref(), &id)?.clone();
    let machines = desired
        .as_ref()
        .map(|d| declared.targets.select(&d.machines));
    (caller.reach(&state)).may_run(&declared.script, &machines.unwrap_or_default())?;
    let user = caller.signed_in();
    let asked = id.clone();
    let halted = state
        .store
        .run(move |store| store.state_status(&asked))
        .await?
        .is_some_and(|status| status.halted.is_some());
    if !halted {
        return Err(ApiError::Conflict(format!(
            "the rollout of state {id:?} is not halted"
        )));
    }
    let status = state
        .controller
        .resume_state(&id, &Actor::user(&user.name))
        .await?;
    Ok(Json(view(&declared, status)))
}

fn declared<'a>(
    desired: Option<&'a DesiredState>,
    id: &str,
) -> Result<&'a DeclaredState, ApiError> {
    desired
        .and_then(|d| d.states.get(id))
        .ok_or_else(|| ApiError::NotFound(format!("no state {id:?} in the applied revision")))
}

fn view(declared: &DeclaredState, status: Option<StateStatus>) -> StateView {
    let status = status.as_ref();
    StateView {
        id: declared.id.clone(),
        declared: declared.clone(),
        digest: status.map(|s| s.digest.clone()),
        revision: status.map(|s| s.revision.clone()),
        counts: status.map(|s| s.counts).unwrap_or_default(),
        progress: status.map(|s| s.progress).unwrap_or_default(),
        halted: status.and_then(|s| s.halted.as_ref()).map(|halt| HaltView {
            reason: halt.reason.clone(),
            at: at(halt.at_ms),
        }),
        conditions: status.map(|s| s.conditions.clone()).unwrap_or_default(),
        updated_at: status.and_then(|s| at(s.updated_at_ms)),
    }
}

fn machine_view(target: Target) -> StateMachineView {
    StateMachineView {
        since: (target.since_ms > 0).then(|| at(target.since_ms)).flatten(),
        drifted_since: target.drifted_since_ms.and_then(at),
        check: target.check.map(|check| CheckView {
            digest: check.digest,
            at: at(check.at_ms),
            duration_ms: check.duration_ms,
            outcome: check.outcome,
            output: check.output,
        }),
        apply: target.apply.map(|apply| ApplyView {
            digest: apply.digest,
            operation_id: apply.operation_id,
            started_at: at(apply.started_at_ms),
            finished_at: apply.finished_at_ms.and_then(at),
            result: apply.result,
        }),
        machine_id: target.machine_id,
        standing: target.standing,
    }
}
