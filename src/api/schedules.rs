//! `/api/schedules`: the schedules Git declares, when each fires next and
//! what became of its fires.

use axum::extract::State;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::schedule::Schedule;
use linkops_reconcilers::suspension::Held;

use super::auth::Authenticated;
use super::extract::{Json, Path};
use super::{ApiError, AppState};
use crate::contract::{ScheduleDetail, ScheduleView};
use crate::store::{self, Store, now_ms};

/// Fires a schedule's detail shows.
const FIRES_SHOWN: usize = 50;

/// `GET /api/schedules`
#[utoipa::path(get, path = "/api/schedules", tag = "schedules", responses((status = 200, description = "Every schedule of the applied revision, by name, with its next fire and its latest one", body = Vec<ScheduleView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    // Schedules are the repository's, read alike by everyone.
    caller.signed_in();
    let desired = state.git.desired().borrow().clone().unwrap_or_default();
    let held = state.controller.held().await?;
    let views = state
        .store
        .run(move |store| {
            (desired.schedules.values())
                .map(|schedule| Ok(view(store, schedule, &desired, &held, 1)?.0))
                .collect::<Result<Vec<_>, store::Error>>()
        })
        .await?;
    Ok(Json(views))
}

/// `GET /api/schedules/{name}`
#[utoipa::path(get, path = "/api/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")), responses((status = 200, description = "A schedule with its latest fires", body = ScheduleDetail), (status = 404, description = "No such schedule in the applied revision", body = crate::contract::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<ScheduleDetail>, ApiError> {
    caller.signed_in();
    let desired = state.git.desired().borrow().clone().unwrap_or_default();
    if !desired.schedules.contains_key(&name) {
        return Err(ApiError::NotFound(format!(
            "no schedule {name:?} in the applied revision"
        )));
    }
    let held = state.controller.held().await?;
    let (view, fires) = state
        .store
        .run(move |store| {
            let schedule = &desired.schedules[&name];
            view(store, schedule, &desired, &held, FIRES_SHOWN)
        })
        .await?;
    Ok(Json(ScheduleDetail { view, fires }))
}

/// A schedule's view and its latest `fires`. Reads only: a schedule never
/// seen by its reconcile yet counts its fires from now.
fn view(
    store: &Store,
    schedule: &Schedule,
    desired: &DesiredState,
    held: &Held,
    fires: usize,
) -> Result<(ScheduleView, Vec<linkops_reconcilers::schedule::FireRecord>), store::Error> {
    let fires = store.schedule_fires(&schedule.name, fires)?;
    let since = store
        .schedule_since_if_seen(&schedule.name)?
        .unwrap_or(now_ms());
    let now = jiff::Timestamp::now();
    let next = crate::schedules::next_fire(schedule, fires.first(), since, now);
    let zone = crate::schedules::zone(&schedule.zone).ok();
    let view = ScheduleView {
        schedule: schedule.clone(),
        next_fire: next,
        next_fire_in_zone: next
            .zip(zone)
            .map(|(at, zone)| linkops_reconcilers::schedule::in_zone(at, &zone)),
        // Said of a fire due, not of one to come.
        held: next
            .filter(|at| *at <= now)
            .and_then(|_| crate::schedules::hold(schedule, desired, held, now))
            .map(|hold| hold.reason),
        last_fire: fires.first().cloned(),
    };
    Ok((view, fires))
}
