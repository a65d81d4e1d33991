//! `/api/users`: user accounts (admin only). Password hashes never leave the store.

use axum::extract::State;
use axum::http::StatusCode;
use secrecy::ExposeSecret;

use super::auth::Authenticated;
use super::extract::{Json, Path};
use super::{ApiError, AppState, at};
use crate::auth::{self, GeneratedPassword};
use crate::contract::{Credentials, Disabling, NewUser, RoleChange, SsoView, UserView};
use crate::store::{Actor, User};
use linkops_reconcilers::grant::{self, Need};

/// `GET /api/users`
#[utoipa::path(get, path = "/api/users", tag = "users", responses((status = 200, description = "Every user (admin); never a password hash", body = Vec<UserView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Vec<UserView>>, ApiError> {
    caller.administers(&state)?;
    let users = state
        .store
        .run(|store| store.users())
        .await?
        .into_iter()
        .map(UserView::from)
        .collect();
    Ok(Json(users))
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        let second_factor = user.second_factor_enrolled().is_some();
        UserView {
            username: user.name,
            role: user.role,
            created_at: at(user.created_at_ms).unwrap_or_default(),
            disabled: user.disabled,
            second_factor,
            sso: user.sso.map(|sso| SsoView {
                provider: sso.provider,
                subject: sso.subject,
                groups: sso.groups,
                signed_in_at: at(sso.signed_in_at_ms).unwrap_or_default(),
            }),
        }
    }
}

impl From<GeneratedPassword> for Credentials {
    fn from(generated: GeneratedPassword) -> Self {
        Credentials {
            username: generated.user,
            password: generated.password.expose_secret().to_owned(),
        }
    }
}

/// `POST /api/users`
#[utoipa::path(post, path = "/api/users", tag = "users", request_body = NewUser, responses((status = 201, description = "Created (admin), with a generated password shown this once", body = Credentials), (status = 409, description = "The name is taken, or was a deleted account's", body = crate::contract::ErrorBody), (status = 422, description = "An invalid name", body = crate::contract::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<Credentials>), ApiError> {
    let admin = Actor::user(&caller.administers(&state)?.name);
    let store = state.store.clone();
    let created =
        crate::blocking::run(move || auth::create_user(&store, &admin, &body.username, body.role))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// `POST /api/users/{name}/password`
#[utoipa::path(post, path = "/api/users/{name}/password", tag = "users", params(("name" = String, Path, description = "User name")), responses((status = 200, description = "A new generated password (admin), shown this once; the user's older tokens stop working and a lockout is lifted", body = Credentials), (status = 404, description = "No such user", body = crate::contract::ErrorBody)))]
pub async fn reset_password(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<Credentials>, ApiError> {
    let admin = Actor::user(&caller.administers(&state)?.name);
    let store = state.store.clone();
    let reset = crate::blocking::run(move || auth::reset_password(&store, &admin, &name))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(Json(reset.into()))
}

/// `PATCH /api/users/{name}`
#[utoipa::path(patch, path = "/api/users/{name}", tag = "users", params(("name" = String, Path, description = "User name")), request_body = RoleChange, responses((status = 200, description = "The user with the new role (admin); takes effect on their next request, and below operator their terminals close", body = UserView), (status = 404, description = "No such user", body = crate::contract::ErrorBody), (status = 409, description = "The last admin cannot be demoted", body = crate::contract::ErrorBody)))]
pub async fn change_role(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
    Json(body): Json<RoleChange>,
) -> Result<Json<UserView>, ApiError> {
    let admin = Actor::user(&caller.administers(&state)?.name);
    let store = state.store.clone();
    let user = crate::blocking::run(move || auth::change_role(&store, &admin, &name, body.role))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    // Without a terminal anywhere, their sessions end (a socket also ends on its own).
    let grants = auth::grants(&user, state.git.desired().borrow().as_deref());
    if grant::permits(&grants, Need::Workspaces).is_err() {
        state.terminals.revoke(&user.name).await?;
    }
    Ok(Json(user.into()))
}

/// `PUT /api/users/{name}/disabled`
#[utoipa::path(put, path = "/api/users/{name}/disabled", tag = "users", params(("name" = String, Path, description = "User name")), request_body = Disabling, responses((status = 200, description = "Disabled or enabled again (admin): a disabled user signs in nowhere, a password nor an identity provider, and their sessions, streams and terminals end at once", body = UserView), (status = 404, description = "No such user", body = crate::contract::ErrorBody), (status = 409, description = "The last admin cannot be disabled", body = crate::contract::ErrorBody)))]
pub async fn set_disabled(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
    Json(body): Json<Disabling>,
) -> Result<Json<UserView>, ApiError> {
    let admin = Actor::user(&caller.administers(&state)?.name);
    let store = state.store.clone();
    let user =
        crate::blocking::run(move || auth::set_disabled(&store, &admin, &name, body.disabled))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))??;
    if user.disabled {
        state.terminals.revoke(&user.name).await?;
    }
    Ok(Json(user.into()))
}

/// `DELETE /api/users/{name}/second-factor`
#[utoipa::path(delete, path = "/api/users/{name}/second-factor", tag = "users", params(("name" = String, Path, description = "User name")), responses((status = 200, description = "Removed (admin; a lost phone): they enrol again; audited", body = UserView), (status = 404, description = "No such user", body = crate::contract::ErrorBody)))]
pub async fn remove_second_factor(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let admin = Actor::user(&caller.administers(&state)?.name);
    let store = state.store.clone();
    let user = crate::blocking::run(move || auth::remove_second_factor(&store, &admin, &name))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(Json(user.into()))
}

/// `DELETE /api/users/{name}`
#[utoipa::path(delete, path = "/api/users/{name}", tag = "users", params(("name" = String, Path, description = "User name")), responses((status = 204, description = "Deleted (admin): their tokens stop working, their open streams and terminals close, their workspaces go; records and recordings stay, and the name is retired (never an account again)"), (status = 404, description = "No such user", body = crate::contract::ErrorBody), (status = 409, description = "The last admin cannot be deleted", body = crate::contract::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let admin = Actor::user(&caller.administers(&state)?.name);
    let store = state.store.clone();
    let deleted = crate::blocking::run(move || auth::delete_user(&store, &admin, &name))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))??;
    state.terminals.end_workspaces(&deleted.workspaces).await;
    Ok(StatusCode::NO_CONTENT)
}
