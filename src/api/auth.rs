//! `/api/auth`: login, and the extractor that authenticates every other request.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};

use super::extract::Json;

use super::{ApiError, AppState};
use crate::auth::Grant;
use crate::contract::{LoginRequest, LoginResponse, Me};
use crate::store::User;
use crate::terminal::protocol::TOKEN_SUBPROTOCOL_PREFIX;
use linkops_reconcilers::grant;
use linkops_reconcilers::role::Role;

/// `POST /api/auth/login`
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", security(()), request_body = LoginRequest, responses((status = 200, description = "A session token", body = LoginResponse), (status = 401, description = "Wrong user name or password", body = crate::contract::ErrorBody), (status = 429, description = "Locked out for a while (Retry-After)", body = crate::contract::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Json(request): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let login = state
        .auth
        .login(&request.username, &request.password)
        .await?;
    Ok(Json(LoginResponse {
        token: login.token.token,
        expires_at: login.token.expires_at,
        role: login.user.role,
    }))
}

/// `GET /api/auth/me`: who the token belongs to.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth", responses((status = 200, description = "Who the token belongs to", body = Me)))]
pub async fn me(Authenticated(user, _): Authenticated) -> Json<Me> {
    Json(Me {
        username: user.name,
        role: user.role,
    })
}

/// The user behind a request's bearer token, and what the token grants
/// (for long-lived answers to re-check); rejects with 401 otherwise.
pub struct Authenticated(pub User, pub Grant);

impl Authenticated {
    /// What the user may do where: their account's role over the whole fleet,
    /// and what `access.yaml` in the desired state in force gives them.
    pub fn grants(&self, state: &AppState) -> Vec<grant::Grant> {
        let desired = state.git.desired().borrow().clone();
        let given = desired.as_ref().map_or(&[][..], |desired| &desired.grants);
        std::iter::once(grant::Grant::fleet(self.0.role))
            .chain(grant::held_by(given, &self.0.name, &[]))
            .collect()
    }

    /// Refuses with 403 unless the user has at least `role`.
    pub fn require(&self, role: Role) -> Result<&User, ApiError> {
        if self.0.role >= role {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden { needed: role })
        }
    }
}

/// The token a request presents: `Authorization: Bearer`, or — browsers
/// cannot set headers on EventSource or WebSocket — `?access_token=`, or a
/// WebSocket subprotocol `linkops.token.<JWT>`.
pub fn presented_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_query = || {
        uri.query().and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("access_token="))
                .map(str::to_owned)
        })
    };
    let from_protocol = || {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .find_map(|offer| offer.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
            .map(str::to_owned)
    };
    from_header.or_else(from_query).or_else(from_protocol)
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = presented_token(&parts.headers, &parts.uri).ok_or(ApiError::Unauthorized)?;
        let (user, grant) = state.auth.authenticate(token.trim()).await?;
        Ok(Authenticated(user, grant))
    }
}
