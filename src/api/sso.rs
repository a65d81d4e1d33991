//! `/api/auth/providers` and `/api/auth/sso/{provider}/…`: signing in at an
//! identity provider. The start sends the browser there with what it must
//! bring back sealed in a cookie; the callback checks it, lets the service
//! verify what the provider sent, and takes the person back — to the console
//! with their session, or to `linkops login --sso` waiting on loopback.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::extract::{Json, Path, Query};
use super::{ApiError, AppState};
use crate::auth::sso::{Back, SIGN_IN_WINDOW};
use crate::config::PasswordSignIn;
use crate::contract::{SignInOptions, SignInProvider, SignedIn, SsoCallback, SsoStart};

/// The cookie a sign-in in progress rides in.
const COOKIE: &str = "linkops_sso";

/// The longest `code`, `state` or error a provider may send back: far more
/// than any provider's, far less than a hostile one's.
const MAX_PARAMETER_BYTES: usize = 2048;

/// `GET /api/auth/providers`: how people may sign in.
#[utoipa::path(get, path = "/api/auth/providers", tag = "auth", security(()), responses((status = 200, description = "The identity providers people sign in at, and who may still sign in with a password", body = SignInOptions)))]
pub async fn providers(State(state): State<AppState>) -> Json<SignInOptions> {
    let providers = (state.auth.sso().providers())
        .map(|(name, display_name)| SignInProvider {
            name: name.to_owned(),
            display_name: display_name.to_owned(),
            start: format!("/api/auth/sso/{name}/start"),
        })
        .collect();
    Json(SignInOptions {
        providers,
        passwords_for_admins_only: state.config.auth.password_sign_in == PasswordSignIn::Admins,
    })
}

/// `GET /api/auth/sso/{provider}/start`
#[utoipa::path(get, path = "/api/auth/sso/{provider}/start", tag = "auth", security(()), params(("provider" = String, Path, description = "A provider's name in [[auth.oidc]]"), SsoStart), responses((status = 303, description = "To the provider's sign-in, with the sign-in's state in a cookie (HttpOnly, SameSite=Lax, 10 minutes)"), (status = 404, description = "No such provider", body = crate::contract::ErrorBody), (status = 503, description = "The provider does not answer", body = crate::contract::ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(query): Query<SsoStart>,
) -> Result<Response, ApiError> {
    let back = match (query.cli_port, query.cli_state) {
        (None, None) => Back::Console,
        (Some(port), Some(cli_state)) if port > 0 && cli_state_ok(&cli_state) => Back::Cli {
            port,
            state: cli_state,
        },
        _ => {
            return Err(ApiError::Unprocessable {
                field: "cli_state".into(),
                message: "cli_port and cli_state come together: a port, and 16-128 of letters, digits, '-', '_'".into(),
            });
        }
    };
    let (url, sealed) = (state.auth)
        .sso_start(&provider, back, query.step_up)
        .await?;
    let cookie = cookie(&state, &provider, &sealed, SIGN_IN_WINDOW.as_secs());
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response())
}

fn cli_state_ok(state: &str) -> bool {
    (16..=128).contains(&state.len())
        && (state.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `GET /api/auth/sso/{provider}/callback`
#[utoipa::path(get, path = "/api/auth/sso/{provider}/callback", tag = "auth", security(()), params(("provider" = String, Path, description = "A provider's name in [[auth.oidc]]"), SsoCallback), responses((status = 303, description = "Signed in: to the console (`/#/signed-in?token=…`) or to `linkops login --sso` on loopback; refused: the same places with `error`"), (status = 403, description = "No sign-in of this browser is under way here (no or a forged cookie)", body = crate::contract::ErrorBody), (status = 404, description = "No such provider", body = crate::contract::ErrorBody)))]
pub async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    Query(query): Query<SsoCallback>,
) -> Result<Response, ApiError> {
    state.auth.sso().session_lifetime(&provider)?;
    let pending = sealed_cookie(&headers)
        .and_then(|sealed| state.auth.sso_pending(sealed))
        .filter(|pending| pending.provider == provider)
        .ok_or_else(|| {
            ApiError::SignInRefused(crate::auth::sso::Error::StateMismatch.to_string())
        })?;
    let back = pending.back.clone();
    let cleared = cookie(&state, &provider, "", 0);
    let signed_in = match (query.code, query.state, query.error) {
        (_, _, Some(error)) => Err(format!(
            "{provider} refused the sign-in: {}{}",
            bounded(&error),
            query
                .error_description
                .map(|words| format!(" ({})", bounded(&words)))
                .unwrap_or_default()
        )),
        (Some(code), Some(sent_state), None)
            if code.len() <= MAX_PARAMETER_BYTES && sent_state.len() <= MAX_PARAMETER_BYTES =>
        {
            (state.auth.sso_finish(pending, &code, &sent_state).await)
                .map_err(|error| error.to_string())
        }
        _ => Err(format!(
            "{provider} sent back no code and state (or ones over {MAX_PARAMETER_BYTES} bytes)"
        )),
    };
    if let Err(reason) = &signed_in {
        tracing::warn!(%provider, %reason, "a sign-in was refused");
    }
    let mut said = match signed_in {
        Ok(login) => SignedIn {
            token: Some(login.token.token),
            user: Some(login.user.name),
            expires_at: Some(login.token.expires_at),
            ..SignedIn::default()
        },
        Err(reason) => SignedIn {
            error: Some(reason),
            ..SignedIn::default()
        },
    };
    let target = match back {
        Back::Console if said.error.is_none() => format!("/#/signed-in?{}", form(&said)),
        Back::Console => format!("/#/login?{}", form(&said)),
        Back::Cli { port, state } => {
            said.state = Some(state);
            format!("http://127.0.0.1:{port}/?{}", form(&said))
        }
    };
    Ok(([(header::SET_COOKIE, cleared)], Redirect::to(&target)).into_response())
}

/// The sign-in's cookie, scoped to the provider's paths; `Secure` when
/// browsers reach the daemon over https.
fn cookie(state: &AppState, provider: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = (state.config.auth.oidc.iter())
        .any(|p| p.name == provider && p.redirect_url.starts_with("https://"));
    let cookie = format!(
        "{COOKIE}={value}; Path=/api/auth/sso/{provider}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn sealed_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|value| !value.is_empty())
}

/// A provider's words, cut and without control characters.
fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn form(said: &SignedIn) -> String {
    serde_urlencoded::to_string(said).unwrap_or_default()
}
