//! `/api/auth`: login, and the extractor that authenticates every other request.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};

use super::extract::Json;

use super::{ApiError, AppState};
use crate::auth::{Session, Signed};
use crate::contract::{LoginRequest, LoginResponse, Me};
use crate::store::User;
use crate::terminal::protocol::TOKEN_SUBPROTOCOL_PREFIX;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{Held, Need, Place, Refusal, Sight};
use linkops_reconcilers::operation::OperationEvent;
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
pub async fn me(State(state): State<AppState>, caller: Authenticated) -> Json<Me> {
    let held = caller.grants(&state);
    let user = caller.signed_in();
    Json(Me {
        username: user.name.clone(),
        role: user.role,
        grants: held.grants,
        within: held.within,
    })
}

/// The user behind a request's bearer token, and their session (for
/// long-lived answers to re-check); rejects with 401 otherwise.
///
/// Every handler that takes one says what it checks, through one of its
/// methods: [`signed_in`](Self::signed_in) (anyone signed in),
/// [`may`](Self::may) and [`administers`](Self::administers) (a need decided
/// by `reconcilers::grant`), [`reach`](Self::reach) (reads filtered to what
/// the grants see), or [`grants`](Self::grants) handed to the service that
/// decides (a run's machines are known only once selected).
pub struct Authenticated {
    /// Who it acts for (`token:<name>` for a service token).
    pub user: User,
    pub session: Session,
    /// The API token it came with, if one.
    pub token: Option<crate::store::ApiToken>,
}

impl Authenticated {
    /// What any signed-in person may do: no grant is asked for.
    pub fn signed_in(&self) -> &User {
        &self.user
    }

    /// What the caller may do where, by the desired state in force.
    pub fn grants(&self, state: &AppState) -> Held {
        self.held(state.git.desired().borrow().as_deref())
    }

    fn held(&self, desired: Option<&DesiredState>) -> Held {
        let signed = Signed {
            user: self.user.clone(),
            token: self.token.clone(),
        };
        signed.held(desired)
    }

    /// Refuses with 403, naming the grant it would take, unless the caller's
    /// grants permit `need`.
    pub fn may(&self, state: &AppState, need: Need) -> Result<&User, ApiError> {
        self.grants(state)
            .permits(need)
            .map_err(ApiError::NotGranted)?;
        Ok(&self.user)
    }

    /// Refuses with 403 unless the user administers the whole fleet.
    pub fn administers(&self, state: &AppState) -> Result<&User, ApiError> {
        self.may(state, Need::Administer)
    }

    /// What the user's grants reach of the inventory in force.
    pub fn reach(&self, state: &AppState) -> Reach {
        let desired = state.git.desired().borrow().clone();
        let held = self.held(desired.as_deref());
        Reach {
            sight: held.sight(),
            held,
            desired,
        }
    }

    /// Completes when the user may no longer keep a long-lived answer: their
    /// session ended, or `still` no longer holds of their grants.
    pub fn lost<Still: Fn(&Held) -> bool + Send + 'static>(
        &self,
        state: &AppState,
        still: Still,
    ) -> impl Future<Output = ()> + Send + use<Still> {
        (state.auth).lost(self.session.clone(), state.git.desired(), still)
    }
}

/// What a user's grants reach, asked of machines by id against the
/// inventory in force (a machine no longer in it is reached only by a grant
/// over the whole fleet or naming its id).
pub struct Reach {
    held: Held,
    sight: Sight,
    desired: Option<Arc<DesiredState>>,
}

impl Reach {
    pub fn grants(&self) -> &Held {
        &self.held
    }

    /// The machines it sees, decided per machine.
    pub fn sight(&self) -> &Sight {
        &self.sight
    }

    /// Machine `id` as grants see it.
    pub fn place<'a>(&'a self, id: &'a str) -> Place<'a> {
        let machine = self.desired.as_ref().and_then(|d| d.machine(id));
        machine.map_or(Place::gone(id), Place::from)
    }

    pub fn sees(&self, id: &str) -> bool {
        self.sight.sees(self.place(id))
    }

    /// Refuses with 403 unless it sees at least one of `machines` (an
    /// operation, a state: each is shown to who sees part of it).
    pub fn sees_any(&self, machines: &[String]) -> Result<(), ApiError> {
        if machines.is_empty() || machines.iter().any(|id| self.sees(id)) {
            return Ok(());
        }
        Err(ApiError::NotGranted(Refusal {
            needed: Role::Viewer,
            reach: format!("one of machines {}", machines.join(", ")),
        }))
    }

    /// Whether an operation's event is about a machine it sees (or the whole operation).
    pub fn sees_event(&self, event: &OperationEvent) -> bool {
        match event {
            OperationEvent::Output { machine_id, .. } | OperationEvent::Host { machine_id, .. } => {
                self.sees(machine_id)
            }
            OperationEvent::Operation { .. } | OperationEvent::End { .. } => true,
        }
    }

    /// Refuses with 403 unless it may run `script` on every one of `machines`.
    pub fn may_run(&self, script: &str, machines: &[String]) -> Result<(), ApiError> {
        let places: Vec<Place> = machines.iter().map(|id| self.place(id)).collect();
        (self.held.permits_run(script, &places)).map_err(ApiError::NotGranted)
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
        let (signed, session) = state.auth.authenticate(token.trim()).await?;
        Ok(Authenticated {
            user: signed.user,
            session,
            token: signed.token,
        })
    }
}
