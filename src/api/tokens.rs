//! `/api/tokens`: API tokens for automation — made (shown once), listed and
//! revoked by their owner, and by admins, who alone make service tokens.

use axum::extract::State;
use axum::http::StatusCode;

use super::auth::Authenticated;
use super::extract::{Json, Path};
use super::{ApiError, AppState, at};
use crate::auth;
use crate::contract::{CreatedToken, NewToken, TokenView};
use crate::store::{Actor, ApiToken, now_ms};
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{self, Grant, Refusal};
use linkops_reconcilers::role::Role;

impl From<ApiToken> for TokenView {
    fn from(token: ApiToken) -> Self {
        TokenView {
            expired: token.expires_at_ms <= now_ms(),
            id: token.id,
            name: token.name,
            owner: token.owner,
            grant: token.grant,
            created_by: token.created_by,
            created_at: at(token.created_at_ms).unwrap_or_default(),
            expires_at: at(token.expires_at_ms).unwrap_or_default(),
            last_used_at: token.last_used_at_ms.and_then(at),
        }
    }
}

/// `POST /api/tokens`
#[utoipa::path(post, path = "/api/tokens", tag = "auth", request_body = NewToken, responses((status = 201, description = "Made: the token, shown this once (only a hash of it is kept); audited", body = CreatedToken), (status = 403, description = "A grant beyond yours, a service token by a non-admin, or asked with an API token", body = crate::contract::ErrorBody), (status = 422, description = "A bad name, an expiry in the past or beyond [auth] api_token_max_lifetime, a grant that cannot be", body = crate::contract::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let held = caller.grants(&state);
    (caller.stepped_up(&state, "making an API token")).map_err(ApiError::StepUpRequired)?;
    if caller.token.is_some() {
        return Err(ApiError::SignInRefused(
            "an API token cannot make API tokens: sign in as yourself".into(),
        ));
    }
    let owner = match body.service {
        true => {
            caller.administers(&state)?;
            None
        }
        false => Some(caller.signed_in().name.clone()),
    };
    check_grant(&body.grant, state.git.desired().borrow().as_deref())?;
    if owner.is_some() && !held.grants.iter().any(|g| grant::contains(g, &body.grant)) {
        return Err(ApiError::NotGranted(Refusal {
            needed: body.grant.role,
            reach: format!(
                "{} — a personal token's grant must be within one you hold",
                reach_words(&body.grant)
            ),
        }));
    }
    let expires_at_ms = body.expires_at.as_millisecond();
    let latest = now_ms().saturating_add(
        i64::try_from(state.config.auth.api_token_max_lifetime.as_millis()).unwrap_or(i64::MAX),
    );
    if expires_at_ms <= now_ms() || expires_at_ms > latest {
        return Err(ApiError::Unprocessable {
            field: "expires_at".into(),
            message: format!(
                "an API token expires in the future and within [auth] api_token_max_lifetime ({}) of being made",
                jiff::SignedDuration::try_from(state.config.auth.api_token_max_lifetime)
                    .unwrap_or_default()
            ),
        });
    }
    let by = Actor::user(&caller.signed_in().name);
    let store = state.store.clone();
    let (token, record) = crate::blocking::run(move || {
        let owner = owner.as_deref();
        auth::create_api_token(&store, &by, &body.name, owner, body.grant, expires_at_ms)
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))??;
    let view = record.into();
    Ok((StatusCode::CREATED, Json(CreatedToken { token, view })))
}

/// Most tags, machines or scripts a token's grant names, each.
const MAX_SCOPE_ITEMS: usize = 64;

/// A grant a token may carry, as `access.yaml`'s: admin over the whole fleet
/// alone (it changes the daemon), no scripts on a viewer (who runs none), and
/// only tags, machines and scripts the desired state in force has — a
/// mistyped one would give nothing, silently — at most [`MAX_SCOPE_ITEMS`] each.
fn check_grant(grant: &Grant, desired: Option<&DesiredState>) -> Result<(), ApiError> {
    let refuse = |message: String| {
        Err(ApiError::Unprocessable {
            field: "grant".into(),
            message,
        })
    };
    let scope = &grant.scope;
    match grant.role {
        Role::Admin if !scope.is_fleet() => {
            return refuse(
                "admin is over the whole fleet or nothing: it changes the daemon itself".into(),
            );
        }
        Role::Viewer if !scope.scripts.is_empty() => {
            return refuse("a viewer runs no script: name scripts on an operator grant".into());
        }
        _ => {}
    }
    let machines = desired.map_or(&[][..], |d| d.machines.as_slice());
    let known_tag = |tag: &String| machines.iter().any(|m| m.tags.contains(tag));
    let known_machine = |id: &String| machines.iter().any(|m| &m.id == id);
    let known_script = |id: &String| desired.is_some_and(|d| d.scripts.contains_key(id));
    for (what, items, known) in [
        ("tag", &scope.tags, &known_tag as &dyn Fn(&String) -> bool),
        ("machine", &scope.machines, &known_machine),
        ("script", &scope.scripts, &known_script),
    ] {
        if items.len() > MAX_SCOPE_ITEMS {
            return refuse(format!(
                "at most {MAX_SCOPE_ITEMS} {what}s in a token's grant"
            ));
        }
        if let Some(unknown) = items.iter().find(|item| !known(item)) {
            return refuse(format!(
                "no {what} {unknown:?} in the desired state in force"
            ));
        }
    }
    Ok(())
}

fn reach_words(grant: &Grant) -> String {
    let scope = &grant.scope;
    let mut words = match scope.is_whole_fleet() {
        true => "the whole fleet".to_owned(),
        false => format!(
            "tags [{}], machines [{}]",
            scope.tags.join(", "),
            scope.machines.join(", ")
        ),
    };
    if !scope.scripts.is_empty() {
        words.push_str(&format!(" for scripts {}", scope.scripts.join(", ")));
    }
    words
}

/// `GET /api/tokens`
#[utoipa::path(get, path = "/api/tokens", tag = "auth", responses((status = 200, description = "Your API tokens (admins: every one, service tokens too), never their secrets", body = Vec<TokenView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let admin = caller.is_admin(&state);
    let name = caller.signed_in().name.clone();
    let tokens = state.store.run(|store| store.api_tokens()).await?;
    Ok(Json(
        tokens
            .into_iter()
            .filter(|token| admin || token.owner.as_deref() == Some(name.as_str()))
            .map(TokenView::from)
            .collect(),
    ))
}

/// `DELETE /api/tokens/{id}`
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "auth", params(("id" = String, Path, description = "Token id")), responses((status = 204, description = "Revoked: it opens nothing from now on, and what it holds open ends; audited"), (status = 404, description = "No such token of yours", body = crate::contract::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let admin = caller.is_admin(&state);
    let name = caller.signed_in().name.clone();
    let asked = id.clone();
    let token = state
        .store
        .run(move |store| store.api_token(&asked))
        .await?;
    // Someone else's token is as absent as a missing one.
    if !token.is_some_and(|token| admin || token.owner.as_deref() == Some(name.as_str())) {
        return Err(ApiError::NotFound(format!("no API token {id:?} of yours")));
    }
    let by = Actor::user(&name);
    let store = state.store.clone();
    crate::blocking::run(move || auth::revoke_api_token(&store, &by, &id))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}
