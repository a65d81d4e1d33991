//! `/api/cluster`: the replicas sharing the store, and what each owns.

use axum::extract::State;

use super::extract::Json;

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::contract::{ClusterView, MemberView};
use crate::controller::ObjectKey;

/// `GET /api/cluster`
#[utoipa::path(get, path = "/api/cluster", tag = "daemon", responses((status = 200, description = "The live replicas as the answering one sees them: which leads, where each is reached, and the machines, run-requests and states each reconciles", body = ClusterView)))]
pub async fn status(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<ClusterView>, ApiError> {
    let membership = state.controller.operations().membership().clone();
    let store = state.store.clone();
    let shared = store.is_shared();
    let (members, leader) = crate::blocking::run(move || {
        Ok::<_, crate::store::Error>((store.live_members()?, store.leader()?))
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))??;
    let view = membership.view();
    let desired = state.git.desired().borrow().clone().unwrap_or_default();
    let owned_by = |replica: &str, keys: Vec<ObjectKey>| -> Vec<String> {
        keys.into_iter()
            .filter(|key| membership.owner(&key.to_string()).as_deref() == Some(replica))
            .map(|key| match key {
                ObjectKey::Machine(id) | ObjectKey::RunRequest(id) | ObjectKey::State(id) => id,
            })
            .collect()
    };
    let member = |replica: &str, address: Option<String>, leader: bool| MemberView {
        replica: replica.to_owned(),
        address,
        leader,
        machines: owned_by(
            replica,
            desired
                .machines
                .iter()
                .map(|m| ObjectKey::Machine(m.id.clone()))
                .collect(),
        ),
        runs: owned_by(
            replica,
            desired
                .runs
                .keys()
                .cloned()
                .map(ObjectKey::RunRequest)
                .collect(),
        ),
        states: owned_by(
            replica,
            desired
                .states
                .keys()
                .cloned()
                .map(ObjectKey::State)
                .collect(),
        ),
    };
    let members = match shared {
        // The members this replica reconciles by: its view, with the addresses the store has.
        true => view
            .members
            .iter()
            .map(|replica| {
                let address = members
                    .iter()
                    .find(|member| member.replica == *replica)
                    .map(|member| member.address.clone());
                member(replica, address, leader.as_deref() == Some(replica))
            })
            .collect(),
        false => vec![member(membership.id(), None, true)],
    };
    Ok(Json(ClusterView {
        replica: membership.id().to_owned(),
        shared,
        members,
    }))
}
