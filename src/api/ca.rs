//! `/api/ca`: the SSH certificate authority's public halves, and host
//! certificates signed for enrolling machines.

use axum::extract::State;
use linkops_reconcilers::role::Role;

use super::auth::Authenticated;
use super::extract::Json;
use super::{ApiError, AppState};
use crate::authority::{self, issue_host_certificate};
use crate::contract::{CaView, HostCertificateRequest, HostCertificateView};
use crate::ssh::ca::PublicKey;

/// `GET /api/ca`
#[utoipa::path(get, path = "/api/ca", tag = "daemon", responses((status = 200, description = "The SSH certificate authority's public keys: the user CA machines trust for the daemon's logins (`TrustedUserCAKeys`), the host CA", body = CaView)))]
pub async fn authority(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Result<Json<CaView>, ApiError> {
    let line = |key: &PublicKey| key.to_openssh().unwrap_or_default();
    let fingerprint = |key: &PublicKey| key.fingerprint(Default::default()).to_string();
    let (user, host) = (state.authority.user_public(), state.authority.host_public());
    Ok(Json(CaView {
        user_ca: line(user),
        user_ca_fingerprint: fingerprint(user),
        host_ca: line(host),
        host_ca_fingerprint: fingerprint(host),
    }))
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
    let user = caller.require(Role::Admin)?;
    let issued = issue_host_certificate(
        state.authority.clone(),
        &state.store,
        &state.metrics,
        &user.name,
        request,
    )
    .await
    .map_err(|error| match error {
        authority::Error::Invalid { field, message } => ApiError::Unprocessable {
            field: field.into(),
            message,
        },
        authority::Error::Store(error) => error.into(),
        error => ApiError::Internal(error.to_string()),
    })?;
    Ok(Json(issued))
}
