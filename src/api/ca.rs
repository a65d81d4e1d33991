//! `/api/ca`: the SSH certificate authority's public halves.

use axum::extract::State;

use super::auth::Authenticated;
use super::extract::Json;
use super::{ApiError, AppState};
use crate::contract::CaView;
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
