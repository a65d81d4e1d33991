//! Logging in, and user accounts.

use serde::{Deserialize, Serialize};

use linkops_reconcilers::role::Role;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginResponse {
    pub token: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: jiff::Timestamp,
    /// The account's role over the whole fleet; `null`: only what `access.yaml` gives.
    pub role: Option<Role>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Me {
    pub username: String,
    /// The account's role over the whole fleet; `null`: only what `access.yaml` gives.
    pub role: Option<Role>,
    /// Everything the user holds: the account's role, and what `access.yaml`
    /// gives them; the console offers what the highest of these allows.
    pub grants: Vec<linkops_reconcilers::grant::Grant>,
    /// Asked with an API token: the token's grant, which everything must fit too.
    pub within: Option<linkops_reconcilers::grant::Grant>,
    /// A TOTP second factor is enrolled.
    pub second_factor: bool,
    /// When a second factor was last given in this session.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub second_factor_at: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub username: String,
    /// Over the whole fleet; `null`: only what `access.yaml` gives.
    pub role: Option<Role>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    /// Signs in nowhere, and has no session.
    pub disabled: bool,
    /// A TOTP second factor is enrolled.
    pub second_factor: bool,
    /// For a person who signs in at an identity provider: who it says they are.
    pub sso: Option<SsoView>,
}

/// A person as an identity provider said at their last sign-in.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SsoView {
    pub provider: String,
    pub subject: String,
    /// What `access.yaml` gives to groups, they hold through these.
    pub groups: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    pub signed_in_at: jiff::Timestamp,
}

/// `PUT /api/users/{name}/disabled`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disabling {
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    /// Over the whole fleet: viewer (read), operator (+ run, stop, terminals,
    /// verify) or admin (+ users, sync); `null`: only what `access.yaml` gives.
    // Required even as `null`: a role left out is not taken for none.
    #[serde(deserialize_with = "Option::deserialize")]
    pub role: Option<Role>,
}

/// A generated password, shown this once; only its hash is stored.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// `null`: none over the whole fleet, only what `access.yaml` gives.
    #[serde(deserialize_with = "Option::deserialize")]
    pub role: Option<Role>,
}

/// How people may sign in (`GET /api/auth/providers`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignInOptions {
    pub providers: Vec<SignInProvider>,
    /// Password sign-in is for local admin accounts alone (`[auth] password_sign_in`).
    pub passwords_for_admins_only: bool,
}

/// An identity provider people sign in at.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignInProvider {
    pub name: String,
    /// "Sign in with <display_name>".
    pub display_name: String,
    /// Where the browser goes to sign in there.
    pub start: String,
}

/// `GET /api/auth/sso/{provider}/start`: where `linkops login --sso` waits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SsoStart {
    /// The loopback port `linkops login --sso` listens on.
    pub cli_port: Option<u16>,
    /// What it expects back (16-128 of letters, digits, '-', '_').
    pub cli_state: Option<String>,
    /// A step-up: the provider signs the person in again, and the session
    /// counts it as a second factor given now.
    #[serde(default)]
    pub step_up: bool,
}

/// What an identity provider sends back to `GET /api/auth/sso/{provider}/callback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
pub struct SsoCallback {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The provider's refusal (`access_denied`, …) and its words.
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Where a finished sign-in takes the browser, as a query: the console's
/// `/#/signed-in?…` (or `/#/login?error=…`), or the CLI's loopback listener
/// (with the state it chose).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignedIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<jiff::Timestamp>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/tokens`: an API token to make.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1-64 of letters, digits, '.', '_', '-'; one per owner.
    pub name: String,
    /// What it may do: a role over the whole fleet or some tags and machines,
    /// for every script or some. A personal token's must be within a grant you hold.
    pub grant: linkops_reconcilers::grant::Grant,
    /// Required, and at most `[auth] api_token_max_lifetime` away.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: jiff::Timestamp,
    /// A service token (admins): acts with its own grant alone, for no person.
    #[serde(default)]
    pub service: bool,
}

/// An API token, never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    /// The user it acts for; `null`: a service token.
    pub owner: Option<String>,
    pub grant: linkops_reconcilers::grant::Grant,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<jiff::Timestamp>,
    pub expired: bool,
}

/// A token just made: the token itself, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// `lot_<id>_<secret>`: send it as `Authorization: Bearer …` (the CLI: `LINKOPS_TOKEN`).
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// `POST /api/auth/second-factor`: a TOTP second factor being enrolled.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecondFactorEnrolment {
    /// The shared secret, base32, for apps that take it typed.
    pub secret: String,
    /// `otpauth://totp/LinkOps:<user>?…`, what the QR code holds.
    pub otpauth_url: String,
    /// The QR code, as SVG.
    pub qr_svg: String,
}

/// A code of the authenticator app.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondFactorCode {
    pub code: String,
}

/// The recovery codes of a second factor just enrolled, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    /// Each good once, in place of a code of the app.
    pub recovery_codes: Vec<String>,
}

/// `POST /api/auth/step-up`: a code of the app, or a recovery code.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    pub code: Option<String>,
    pub recovery_code: Option<String>,
}
