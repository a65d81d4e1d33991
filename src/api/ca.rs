//! `/api/ca`: the SSH certificate authority's public halves, and host
//! certificates signed for enrolling machines.

use axum::extract::State;

use super::auth::Authenticated;
use super::extract::Json;
use super::{ApiError, AppState};
use crate::authority::{self, Revoke, RotationStep, issue_host_certificate};
use crate::contract::{
    CaView, HostCertificateRequest, HostCertificateView, RevokeRequest, RotateRequest, RotationView,
};
use crate::ssh::ca::PublicKey;
use linkops_reconcilers::certificate::Revocation;
use linkops_reconcilers::trust::RotationWait;

/// The host certificates `GET /api/ca` lists at most.
const HOST_CERTIFICATES_SHOWN: usize = 1_000;

/// `GET /api/ca`
#[utoipa::path(get, path = "/api/ca", tag = "daemon", responses((status = 200, description = "The SSH certificate authority's public keys: the user CA machines trust for the daemon's logins (`TrustedUserCAKeys`), the host CA; the user CA's age and the rotation under way; the host certificates signed and the certificates revoked", body = CaView)))]
pub async fn authority(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<CaView>, ApiError> {
    let mut view = view(&state).await?;
    // Host certificates name machines: those of machines the caller sees.
    let reach = caller.reach(&state);
    (view.host_certificates).retain(|certificate| reach.sees(&certificate.machine));
    Ok(Json(view))
}

async fn view(state: &AppState) -> Result<CaView, ApiError> {
    let line = |key: &PublicKey| key.to_openssh().unwrap_or_default();
    let fingerprint = |key: &PublicKey| key.fingerprint(Default::default()).to_string();
    let authority = &state.authority;
    let (user, host) = (authority.user_public(), authority.host_public());
    let host_certificates = state
        .store
        .run(|store| store.all_host_certificates(HOST_CERTIFICATES_SHOWN))
        .await?;
    let rotation = match authority.next_user_public() {
        None => None,
        Some(next) => Some(RotationView {
            next_user_ca: line(&next),
            next_user_ca_fingerprint: fingerprint(&next),
            waiting_for: rotation_waits(state).await?,
        }),
    };
    let since = authority.user_ca_since();
    Ok(CaView {
        user_ca: line(&user),
        user_ca_fingerprint: fingerprint(&user),
        host_ca: line(host),
        host_ca_fingerprint: fingerprint(host),
        revocations: state.revocations.all().to_vec(),
        host_certificates,
        user_ca_since: since.and_then(|since| jiff::Timestamp::try_from(since).ok()),
        user_ca_rotation_due_days: since.map(|since| {
            authority::rotation_due_days(since, state.config.ssh.user_ca_rotate_after)
        }),
        rotation,
    })
}

/// `POST /api/ca/rotation` (admin; audited)
#[utoipa::path(post, path = "/api/ca/rotation", tag = "daemon", request_body = RotateRequest, responses(
    (status = 200, description = "The authority after the step. Begun: the next user CA is trusted beside the current one (which still signs) and every script is told both, so the trust state rolls it out; finished: the next one signs, the old key is gone and the trust state stops trusting it", body = CaView),
    (status = 409, description = "Finishing while machines logged in to with certificates might not trust the next CA yet (they are named; `force` finishes anyway), or with no rotation under way", body = crate::contract::ErrorBody),
))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(request): Json<RotateRequest>,
) -> Result<Json<CaView>, ApiError> {
    let user = caller.administers(&state)?;
    let step = match request.finish {
        false => RotationStep::Begin,
        true => RotationStep::Finish {
            force: request.force,
        },
    };
    let waits = match step {
        RotationStep::Finish { .. } if state.authority.next_user_public().is_some() => {
            rotation_waits(&state).await?
        }
        _ => Vec::new(),
    };
    authority::rotate(&state.authority, &state.store, &user.name, step, waits)
        .await
        .map_err(refused)?;
    state.controller.trust_changed(&[]).await;
    Ok(Json(view(&state).await?))
}

/// The machines the rotation under way waits for, as things stand now.
async fn rotation_waits(state: &AppState) -> Result<Vec<RotationWait>, ApiError> {
    let facts = authority::trust_facts(&state.authority, &state.revocations);
    let desired = state.git.desired().borrow().clone();
    Ok(authority::rotation_waits_now(desired, &state.store, &facts).await?)
}

/// `POST /api/ca/host-certificates` (admin; audited)
#[utoipa::path(post, path = "/api/ca/host-certificates", tag = "daemon", request_body = HostCertificateRequest, responses(
    (status = 200, description = "A host certificate of the host CA for the key and names (what `linkops enroll` installs)", body = HostCertificateView),
    (status = 422, description = "A machine id, name or host key that is not one, or too many names", body = crate::contract::ErrorBody),
))]
pub async fn host_certificate(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(request): Json<HostCertificateRequest>,
) -> Result<Json<HostCertificateView>, ApiError> {
    let user = caller.administers(&state)?;
    let issued = issue_host_certificate(
        &state.authority,
        &state.store,
        &state.metrics,
        &user.name,
        request,
    )
    .await
    .map_err(refused)?;
    Ok(Json(issued))
}

fn refused(error: authority::Error) -> ApiError {
    match error {
        authority::Error::Invalid { field, message } => ApiError::Unprocessable {
            field: field.into(),
            message,
        },
        authority::Error::Store(error) => error.into(),
        error @ (authority::Error::RotationWaits(_)
        | authority::Error::Sign(crate::ssh::ca::Error::NoRotation { .. })) => {
            ApiError::Conflict(error.to_string())
        }
        error => ApiError::Internal(error.to_string()),
    }
}

/// `POST /api/ca/revocations` (admin; audited)
#[utoipa::path(post, path = "/api/ca/revocations", tag = "daemon", request_body = RevokeRequest, responses(
    (status = 200, description = "What was revoked: a host certificate is refused by the daemon at once; a user certificate's serial is told to every script (`LINKOPS_CA_REVOKED_SERIALS`) until it expires, which the trust state writes into the machines' revocation list", body = Vec<Revocation>),
    (status = 422, description = "Neither or both of serial and machine, a serial that is no number, a machine no host certificate was signed for, or no reason", body = crate::contract::ErrorBody),
))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(request): Json<RevokeRequest>,
) -> Result<Json<Vec<Revocation>>, ApiError> {
    let user = caller.administers(&state)?;
    let what = match (&request.serial, &request.machine) {
        (Some(serial), None) => {
            Revoke::Serial(serial.trim().parse().map_err(|_| ApiError::Unprocessable {
                field: "serial".into(),
                message: format!("{serial:?} is no certificate serial (a decimal number)"),
            })?)
        }
        (None, Some(machine)) => Revoke::Machine(machine.clone()),
        _ => {
            return Err(ApiError::Unprocessable {
                field: "serial".into(),
                message: "give either serial or machine".into(),
            });
        }
    };
    let revoked = authority::revoke(
        &state.revocations,
        &state.store,
        &user.name,
        what,
        &request.reason,
        state.config.ssh.certificate_lifetime,
    )
    .await
    .map_err(refused)?;
    let machines: Vec<String> = revoked.iter().filter_map(|r| r.machine.clone()).collect();
    state.controller.trust_changed(&machines).await;
    Ok(Json(revoked))
}
