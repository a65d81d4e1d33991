//! What other replicas (or the CLI) change of shared state, brought to this
//! replica's long-lived connections.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ssh::ca::Authority;
use crate::store::{self, SharedKey};

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

/// Keeps this replica's revocations and user CAs as the store holds them:
/// what another replica revoked is in force here within [`OTHERS_EVERY`]
/// (its own at once), and a rotation step another replica took is taken
/// here too (the keys read again from this replica's files; the declared
/// states look again). Nothing on an unshared store.
pub async fn follow_authority(
    authority: Arc<Authority>,
    revocations: crate::authority::Revocations,
    store: store::Store,
    controller: crate::controller::Controller,
    stop: CancellationToken,
) {
    if !store.is_shared() {
        return;
    }
    // Said once for each thing that stands in the way, not every 2 s.
    let mut said = None;
    loop {
        if let Err(error) = revocations.refresh(&store).await {
            tracing::warn!(%error, "cannot read the revocations; reading again");
        }
        match follow_rotation(&authority, &store).await {
            Ok(true) => controller.trust_changed(&[]).await,
            Ok(false) => {}
            Err(error) => {
                let text = error.to_string();
                if said.as_ref() != Some(&text) {
                    tracing::error!(error = %text, "cannot follow the user CA's rotation");
                    said = Some(text);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(OTHERS_EVERY) => {}
        }
    }
}

/// Why a rotation another replica took cannot be followed here.
#[derive(Debug, thiserror::Error)]
enum RotationError {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Keys(#[from] crate::ssh::ca::Error),
    #[error(
        "the other replicas rotated the user CA, but this replica's keys ({user_ca}, {next}) are not theirs: copy theirs here (mode 0600)"
    )]
    NotTheirs {
        user_ca: std::path::PathBuf,
        next: std::path::PathBuf,
    },
}

/// Takes the rotation step the store says the replicas took: a finish (the
/// next key this replica holds becomes its user CA, as on the replica that
/// finished), else whatever this replica's files now hold (the operator
/// copied the next key here). Whether the keys changed.
async fn follow_rotation(
    authority: &Arc<Authority>,
    store: &store::Store,
) -> Result<bool, RotationError> {
    let checks = (authority.user_ca_check(), authority.next_user_ca_check());
    let (looking, reading) = (store.clone(), authority.clone());
    let followed = crate::blocking::run(move || {
        let recorded = (
            looking.key_check(SharedKey::UserCa)?,
            looking.key_check(SharedKey::UserCaNext)?.unwrap_or(0),
        );
        let Some(current) = recorded.0 else {
            return Ok(false);
        };
        if (current, recorded.1) == checks {
            return Ok(false);
        }
        let (_, next) = checks;
        if current == next && next != 0 {
            reading.finish_rotation()?;
        } else {
            reading.reload_user_cas()?;
        }
        let now = (reading.user_ca_check(), reading.next_user_ca_check());
        if now != (current, recorded.1) {
            return Err(RotationError::NotTheirs {
                user_ca: reading.user_ca_path().to_owned(),
                next: reading.next_user_path(),
            });
        }
        Ok(now != checks)
    })
    .await;
    followed.unwrap_or(Ok(false))
}
