//! `/api/auth`: login, and the extractor that authenticates every other request.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};

use super::extract::Json;

use super::error::StepUp;
use super::{ApiError, AppState};
use crate::auth::Proof;
use crate::auth::Session;
use crate::contract::{
    LoginRequest, LoginResponse, Me, RecoveryCodes, SecondFactorCode, SecondFactorEnrolment,
    StepUpRequest,
};
use crate::store::User;
use crate::store::now_ms;
use crate::terminal::protocol::TOKEN_SUBPROTOCOL_PREFIX;
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{self, Held, Need, Place, Refusal, Sight};
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
        second_factor: user.second_factor_enrolled().is_some(),
        second_factor_at: caller.session.second_factor_at_ms.and_then(super::at),
    })
}

/// `POST /api/auth/second-factor`: begins enrolling a TOTP second factor.
#[utoipa::path(post, path = "/api/auth/second-factor", tag = "auth", responses((status = 200, description = "The secret, its otpauth:// URL and a QR code of it, for an authenticator app; confirm with a first code", body = SecondFactorEnrolment), (status = 409, description = "One is enrolled already (an admin removes it first)", body = crate::contract::ErrorBody)))]
pub async fn second_factor_begin(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<SecondFactorEnrolment>, ApiError> {
    let user = own_account(&caller)?;
    let (secret, otpauth_url) = state.auth.second_factor_begin(user).await?;
    let qr_svg = crate::auth::second_factor::qr_svg(&otpauth_url).unwrap_or_default();
    Ok(Json(SecondFactorEnrolment {
        secret,
        otpauth_url,
        qr_svg,
    }))
}

/// `POST /api/auth/second-factor/confirm`: a first code confirms it.
#[utoipa::path(post, path = "/api/auth/second-factor/confirm", tag = "auth", request_body = SecondFactorCode, responses((status = 200, description = "Enrolled; the recovery codes, shown this once (only their hashes are kept); audited", body = RecoveryCodes), (status = 403, description = "Not the app's code", body = crate::contract::ErrorBody)))]
pub async fn second_factor_confirm(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<SecondFactorCode>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let user = own_account(&caller)?;
    let recovery_codes = state.auth.second_factor_confirm(user, &body.code).await?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

/// `POST /api/auth/step-up`: gives the second factor in this session.
#[utoipa::path(post, path = "/api/auth/step-up", tag = "auth", request_body = StepUpRequest, responses((status = 200, description = "The same session, its second factor given now: use this token from now on (it ends when the old one would have)", body = LoginResponse), (status = 403, description = "A wrong or used code (counted like a wrong password), or no second factor enrolled", body = crate::contract::ErrorBody), (status = 429, description = "Locked out for a while (Retry-After)", body = crate::contract::ErrorBody)))]
pub async fn step_up(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<StepUpRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let user = own_account(&caller)?;
    let proof = match (body.code, body.recovery_code) {
        (Some(code), None) => Proof::Code(code),
        (None, Some(code)) => Proof::RecoveryCode(code),
        _ => {
            return Err(ApiError::Unprocessable {
                field: "code".into(),
                message: "give `code` (the app's) or `recovery_code`, one of them".into(),
            });
        }
    };
    let token = state.auth.step_up(&caller.session, user, proof).await?;
    Ok(Json(LoginResponse {
        token: token.token,
        expires_at: token.expires_at,
        role: user.role,
    }))
}

/// The caller's own account, signed in as themselves (not with an API token).
fn own_account(caller: &Authenticated) -> Result<&User, ApiError> {
    match caller.token {
        Some(_) => Err(ApiError::SignInRefused(
            "an API token has no second factor: sign in as yourself".into(),
        )),
        None => Ok(caller.signed_in()),
    }
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
        crate::auth::held(&self.user, self.token.as_ref(), desired)
    }

    /// Refuses with 403, naming the grant it would take, unless the caller's
    /// grants permit `need` — and, for what asks for it, a second factor was
    /// given within `[auth] step_up_within`.
    pub fn may(&self, state: &AppState, need: Need) -> Result<&User, ApiError> {
        self.grants(state)
            .permits(need)
            .map_err(ApiError::NotGranted)?;
        if grant::needs_second_factor(need) {
            (self.stepped_up(state, &asks(need))).map_err(ApiError::StepUpRequired)?;
        }
        Ok(&self.user)
    }

    /// Whether the caller administers the whole fleet: what they are shown
    /// (everyone's workspaces, recordings, tokens), no second factor asked.
    pub fn is_admin(&self, state: &AppState) -> bool {
        self.grants(state).permits(Need::Administer).is_ok()
    }

    /// Whether a second factor was given recently enough for what asks for
    /// one: always so with `[auth] step_up` off, and for an API token (made
    /// after one, for automation that has none).
    fn fresh(&self, state: &AppState) -> bool {
        let auth = &state.config.auth;
        let within = i64::try_from(auth.step_up_within.as_millis()).unwrap_or(i64::MAX);
        !auth.step_up
            || self.token.is_some()
            || grant::second_factor_fresh(self.session.second_factor_at_ms, now_ms(), within)
    }

    /// Refuses `what` with 403 `step_up_required` unless a second factor
    /// was given recently enough, saying how to give one.
    pub fn stepped_up(&self, state: &AppState, what: &str) -> Result<(), StepUp> {
        if self.fresh(state) {
            return Ok(());
        }
        let within = state.config.auth.step_up_within;
        let enrolled = self.user.second_factor_enrolled().is_some();
        let (how, instruction) = match (&self.user.sso, enrolled) {
            (Some(sso), _) => (
                format!("sso:{}", sso.provider),
                format!(
                    "sign in at {} again (/api/auth/sso/{}/start?step_up=true)",
                    sso.provider, sso.provider
                ),
            ),
            (None, true) => (
                "totp".to_owned(),
                "give a code of your authenticator app (POST /api/auth/step-up)".to_owned(),
            ),
            (None, false) => (
                "enrol".to_owned(),
                "enrol a second factor first (POST /api/auth/second-factor)".to_owned(),
            ),
        };
        Err(StepUp {
            message: format!(
                "{what} asks for a second factor given within the last {} minutes ([auth] step_up_within): {instruction}",
                within.as_secs() / 60
            ),
            within_secs: within.as_secs(),
            how,
        })
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
            stepped_up: self.stepped_up(state, "running on a protected machine"),
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
    /// Whether a second factor is fresh enough for protected machines; else why not.
    stepped_up: Result<(), StepUp>,
    desired: Option<Arc<DesiredState>>,
}

impl Reach {
    /// The machines it sees, decided per machine.
    pub fn sight(&self) -> &Sight {
        &self.sight
    }

    /// Machine `id` as grants see it.
    pub fn place<'a>(&'a self, id: &'a str) -> Place<'a> {
        Place::find(self.desired.as_deref(), id)
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
        (self.held.permits_run(script, &places)).map_err(ApiError::NotGranted)?;
        match places.iter().any(|place| place.protected) {
            true => self.stepped_up.clone().map_err(ApiError::StepUpRequired),
            false => Ok(()),
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
        let (signed, session) = state.auth.authenticate(token.trim()).await?;
        Ok(Authenticated {
            user: signed.user,
            session,
            token: signed.token,
        })
    }
}

/// What asks for a second factor, in words.
fn asks(need: Need) -> String {
    match need {
        Need::Terminal(machine) => format!("a terminal to {}", machine.id),
        Need::Run { machine, .. } => format!("running on protected machine {}", machine.id),
        Need::Approve { machine, .. } => {
            format!("approving a run on protected machine {}", machine.id)
        }
        Need::Administer => "changing the daemon (an admin action)".to_owned(),
        Need::See(_) | Need::Check(_) | Need::Workspaces => "this".to_owned(),
    }
}
