//! What other replicas (or the CLI) change of shared state, brought to this
//! replica's long-lived connections.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store;

/// How soon what another replica (or the CLI) changed reaches this one's
/// long-lived connections (a revoked account's, the fleet's followers)
/// without the store's doorbell, which rings at once.
const OTHERS_EVERY: Duration = Duration::from_secs(2);

/// Tells this replica's long-lived connections of what other replicas
/// changed: accounts (revoking what they must) and machines' views (for
/// `/api/fleet/events`); they hear of this one's own at once. Nothing on an
/// unshared store.
pub async fn follow_other_replicas(store: store::Store, stop: CancellationToken) {
    if !store.is_shared() {
        return;
    }
    let (mut accounts, mut fleet) = (None, None);
    let mut changed = store.doorbell(store::Followed::AccountsAndFleet);
    loop {
        let looking = store.clone();
        let looked = crate::blocking::run(move || {
            let noticed = looking
                .notice_account_changes(&mut accounts)
                .and_then(|()| looking.follow_fleet_changes(&mut fleet));
            (noticed, accounts, fleet)
        })
        .await;
        if let Ok((noticed, seen_accounts, seen_fleet)) = looked {
            (accounts, fleet) = (seen_accounts, seen_fleet);
            if let Err(error) = noticed {
                tracing::warn!(%error, "cannot read what other replicas changed; reading again");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = changed.wait(OTHERS_EVERY) => {}
        }
    }
}

/// Keeps this replica's revocations as the store holds them: what another
/// replica revoked is in force here within [`OTHERS_EVERY`] (its own at
/// once). Nothing on an unshared store.
pub async fn follow_revocations(
    revocations: crate::authority::Revocations,
    store: store::Store,
    stop: CancellationToken,
) {
    if !store.is_shared() {
        return;
    }
    loop {
        if let Err(error) = revocations.refresh(&store).await {
            tracing::warn!(%error, "cannot read the revocations; reading again");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(OTHERS_EVERY) => {}
        }
    }
}
