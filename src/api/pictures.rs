//! The fleet's pictures (`src/pictures.rs` aggregates them): each a few
//! hundred numbers, read off the async runtime, each holding a place among
//! the table reads running at once (`[http] table_queries`).

use axum::extract::State;
use linkops_reconcilers::grant::{Need, Place};

use super::auth::Authenticated;
use super::extract::{Json, Path, Query};
use super::tables::read_permit;
use super::{ApiError, AppState};
use crate::contract::{FleetPicture, MachinePicture, PictureQuery, StateByTag};
use crate::store::now_ms;

/// `GET /api/pictures/fleet`
#[utoipa::path(get, path = "/api/pictures/fleet", tag = "pictures", params(PictureQuery), responses((status = 200, description = "The fleet over the span: availability and each state's compliance hourly (whole-fleet callers), operation durations per script and distributions of facts (of the machines the caller sees)", body = FleetPicture)))]
pub async fn fleet(
    State(state): State<AppState>,
    caller: Authenticated,
    Query(query): Query<PictureQuery>,
) -> Result<Json<FleetPicture>, ApiError> {
    let sight = caller.reach(&state).sight().clone();
    let permit = read_permit(&state, &caller.signed_in().name)?;
    let desired = state.git.desired().borrow().clone().unwrap_or_default();
    let picture = state
        .store
        .run(move |store| {
            let _permit = permit;
            crate::pictures::fleet(store, &desired, &sight, query.span, now_ms())
        })
        .await?;
    Ok(Json(picture))
}

/// `GET /api/pictures/machines/{id}`
#[utoipa::path(get, path = "/api/pictures/machines/{id}", tag = "pictures", params(("id" = String, Path, description = "Machine id"), PictureQuery), responses((status = 200, description = "The machine's reachability and SSH latency over the span, from its kept health history", body = MachinePicture), (status = 404, description = "No such machine in the applied inventory", body = crate::contract::ErrorBody)))]
pub async fn machine(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    Query(query): Query<PictureQuery>,
) -> Result<Json<MachinePicture>, ApiError> {
    let machine = super::links::desired_machine(&state, &id)?;
    caller.may(&state, Need::See(Place::from(&machine)))?;
    let permit = read_permit(&state, &caller.signed_in().name)?;
    let picture = state
        .store
        .run(move |store| {
            let _permit = permit;
            crate::pictures::machine(store, &id, query.span, now_ms())
        })
        .await?;
    Ok(Json(picture))
}

/// `GET /api/pictures/states`
#[utoipa::path(get, path = "/api/pictures/states", tag = "pictures", responses((status = 200, description = "Each declared state's machines the caller sees, by tag then standing: the states grid at fleet size", body = Vec<StateByTag>)))]
pub async fn states(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<StateByTag>>, ApiError> {
    let sight = caller.reach(&state).sight().clone();
    let permit = read_permit(&state, &caller.signed_in().name)?;
    let desired = state.git.desired().borrow().clone().unwrap_or_default();
    let grid = state
        .store
        .run(move |store| {
            let _permit = permit;
            crate::pictures::states_by_tag(store, &desired, &sight)
        })
        .await?;
    Ok(Json(grid))
}
