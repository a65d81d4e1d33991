//! `/api/cluster`: the replicas sharing the store, and what each owns.

use axum::extract::State;

use super::extract::Json;

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::contract::{ClusterView, MemberView};
use crate::controller::ObjectKey;
use linkops_reconcilers::membership::shares;

/// `GET /api/cluster`
#[utoipa::path(get, path = "/api/cluster", tag = "daemon", responses((status = 200, description = "The live replicas as the answering one sees them: which leads, where each is reached, and the machines, run-requests and states each reconciles", body = ClusterView)))]
pub async fn status(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<ClusterView>, ApiError> {
    caller.signed_in();
    let shared = state.store.is_shared();
    let (members, leader) = state
        .store
        .run(|store| Ok((store.live_members()?, store.leader()?)))
        .await?;
    let membership = &state.membership;
    // The members this replica reconciles by: its view, with the addresses the store has.
    let replicas: Vec<String> = match shared {
        true => membership.view().members,
        false => vec![membership.id().to_owned()],
    };
    let names: Vec<&str> = replicas.iter().map(String::as_str).collect();
    let desired = state.git.desired().borrow().clone().unwrap_or_default();
    let share = |keys: Vec<ObjectKey>| shares(keys, ObjectKey::to_string, &names).into_iter();
    let machines = share(
        desired
            .machines
            .iter()
            .map(|m| ObjectKey::Machine(m.id.clone()))
            .collect(),
    );
    let runs = share(
        desired
            .runs
            .keys()
            .cloned()
            .map(ObjectKey::RunRequest)
            .collect(),
    );
    let states = share(
        desired
            .states
            .keys()
            .cloned()
            .map(ObjectKey::State)
            .collect(),
    );
    let members = replicas
        .iter()
        .zip(machines.zip(runs).zip(states))
        .map(|(replica, ((machines, runs), states))| MemberView {
            replica: replica.clone(),
            address: shared
                .then(|| members.iter().find(|member| member.replica == *replica))
                .flatten()
                .map(|member| member.address.clone()),
            leader: !shared || leader.as_deref() == Some(replica.as_str()),
            machines: ids(machines),
            runs: ids(runs),
            states: ids(states),
        })
        .collect();
    Ok(Json(ClusterView {
        replica: membership.id().to_owned(),
        shared,
        members,
    }))
}

/// The ids of `keys`.
fn ids(keys: Vec<ObjectKey>) -> Vec<String> {
    keys.into_iter()
        .map(|key| match key {
            ObjectKey::Machine(id)
            | ObjectKey::RunRequest(id)
            | ObjectKey::State(id)
            | ObjectKey::Schedule(id) => id,
        })
        .collect()
}
