//! Reaching the config repository and the fleet, and who may: `[git]`, `[ssh]`, `[auth]`, `[webhook]`,
//! and opening the repository's secrets: `[secrets]`.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    /// Remote of the config repository (`git@host:owner/repo.git`, `ssh://…`, a path, `file://…`, `https://…`).
    pub url: Option<super::RepoUrl>,
    pub branch: String,
    /// Deploy key: a file name in the keys directory, or an absolute path.
    pub deploy_key: Option<String>,
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub interval: Duration,
    /// Other branches whose pushes (by webhook) are planned: what merging
    /// them would change, as a `linkops/plan` commit status on their head.
    /// Names, or prefixes ending in `*` (`feature/*`); `*` is every branch.
    pub plan_branches: Vec<String>,
    /// Branches waiting to be planned at most; a push beyond is answered 503
    /// with `Retry-After` (forges redeliver), never dropped.
    pub plan_queue: usize,
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig {
            url: None,
            branch: "main".into(),
            deploy_key: None,
            interval: Duration::from_secs(15 * 60),
            plan_branches: vec!["*".into()],
            plan_queue: 64,
        }
    }
}

impl GitConfig {
    /// Whether a push to `branch` (not the followed one) is planned.
    pub fn plans(&self, branch: &str) -> bool {
        branch != self.branch
            && self
                .plan_branches
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => branch.starts_with(prefix),
                    None => pattern == branch,
                })
    }
}

/// What the daemon gathers from each machine: its facts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FactsConfig {
    /// How often each enrolled machine's facts are gathered (spread by up to a
    /// tenth per machine), and at once when it is enrolled; `0s` gathers none.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub interval: Duration,
    /// Machines whose facts are gathered at once, beside (never in) the
    /// reconcile's own `concurrency`.
    pub concurrency: usize,
}

impl Default for FactsConfig {
    fn default() -> Self {
        FactsConfig {
            interval: linkops_reconcilers::facts::DEFAULT_INTERVAL,
            concurrency: 4,
        }
    }
}

/// The fleet's pictures in the console: what the leader samples for them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PicturesConfig {
    /// How often machines by health and each state's machines by standing are
    /// sampled into hourly rollups (kept eight days).
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub interval: Duration,
}

impl Default for PicturesConfig {
    fn default() -> Self {
        PicturesConfig {
            interval: Duration::from_secs(300),
        }
    }
}

/// Inbound triggers (`triggers/*.yaml`, `POST /api/triggers/<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    /// Where a trigger that names no sealed secret keeps its token or HMAC
    /// key: `<secrets_dir>/<trigger>.secret`, mode 0600.
    pub secrets_dir: std::path::PathBuf,
    /// The largest request body a trigger reads, in bytes (Alertmanager's
    /// groups are a few KiB an alert).
    pub max_body: usize,
    /// Trigger requests answered at once; more wait for a turn.
    pub concurrency: usize,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        TriggersConfig {
            secrets_dir: "/etc/linkops/triggers".into(),
            max_body: 256 << 10,
            concurrency: 8,
        }
    }
}

/// The repository's secrets (`secrets/*.yaml`), sealed with age to the
/// daemon's recipient among others.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The daemon's age identity (`AGE-SECRET-KEY-1…` lines, mode 0600): a
    /// file name in the keys directory, or an absolute path. Made on first
    /// start when it is the default's and absent; several lines (an old and a
    /// new key, while rotating) all open secrets.
    pub identity: Option<String>,
    /// Instead of a file: a command (`sh -c`) that prints the identity —
    /// `systemd-creds decrypt /etc/linkops/age.cred -`, a password manager —
    /// run once at start, within 30 s, at most 64 KiB.
    pub identity_command: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Login user when the inventory names none.
    pub user: String,
    /// Private key (a file in the keys directory) when the inventory names none.
    pub key: String,
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub connect_timeout: Duration,
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub command_timeout: Duration,
    /// Most SSH sessions open across the whole fleet at once.
    pub concurrency: usize,
    /// Connections kept open at most; beyond, the least recently used idle
    /// ones close (about 100 KiB and a file descriptor each).
    pub pool_size: usize,
    /// A pooled connection unused for this long is closed.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub idle_timeout: Duration,
    /// Record unknown host keys instead of refusing them (audited). Off by default.
    pub trust_on_first_use: bool,
    /// Silence on a connection after which a keepalive is sent.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub keepalive_interval: Duration,
    /// Unanswered keepalives after which the machine counts as gone.
    pub keepalive_max: usize,
    /// How long the certificate of a login lasts (machines with `auth:
    /// certificate`): sshd checks it as the connection logs in, so minutes do.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub certificate_lifetime: Duration,
    /// Each operation logs in to each `auth: certificate` machine on its own
    /// connection, so the machine's sshd log names the operation and who asked
    /// for it; false: operations share the pooled connection (no handshake,
    /// the log names what opened it).
    pub login_per_operation: bool,
    /// Binds each login's certificate to the address its connection leaves
    /// from (`source-address`), so a certificate copied off the wire is good
    /// from nowhere else. Only when machines see the daemon's own address:
    /// with NAT between (a container's bridge network), they refuse it.
    pub certificate_source_address: bool,
    /// The user CA's private key (OpenSSH format, 0600); unset: `ca/user_ca`
    /// in the data dir. Elsewhere (an encrypted volume, a systemd credential),
    /// a copy of the data dir holds no key that opens the fleet. A rotation
    /// keeps the next key beside it (`<file>.next`).
    pub user_ca_key: Option<PathBuf>,
    /// The host CA's private key; unset: `ca/host_ca` in the data dir.
    pub host_ca_key: Option<PathBuf>,
    /// How long a user CA signs before it is due to be rotated
    /// (`linkops_ssh_user_ca_rotation_due_days` counts down to it).
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub user_ca_rotate_after: Duration,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            user: "root".into(),
            key: "id_ed25519".into(),
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(300),
            concurrency: 50,
            pool_size: 256,
            idle_timeout: Duration::from_secs(300),
            trust_on_first_use: false,
            keepalive_interval: Duration::from_secs(10),
            keepalive_max: 3,
            certificate_lifetime: Duration::from_secs(600),
            login_per_operation: true,
            certificate_source_address: false,
            user_ca_key: None,
            host_ca_key: None,
            user_ca_rotate_after: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub token_lifetime: Duration,
    /// Failed logins in a row that lock an account.
    pub lockout_attempts: u32,
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub lockout_duration: Duration,
    /// JWT signing secret; generated into the data dir (mode 0600) when unset.
    pub jwt_secret: Option<SecretString>,
    /// Password hashes computed at once (argon2 takes ~19 MiB and a core each); 0: one per core.
    pub max_concurrent_hashes: usize,
    /// Logins waiting for a hash slot; beyond it a login is answered 429 with Retry-After.
    pub login_queue: usize,
    /// Unknown user names whose failed logins are counted (in memory, for the
    /// lockout duration); the oldest is forgotten beyond it.
    pub unknown_name_counters: usize,
    /// Who may sign in with a password: everyone, or — once people sign in
    /// with an identity provider — admins alone (the break-glass way in).
    pub password_sign_in: PasswordSignIn,
    /// The identity providers people sign in with (`[[auth.oidc]]`).
    pub oidc: Vec<OidcConfig>,
    /// A terminal, running on a `protected` machine and every admin action
    /// ask for a second factor (a TOTP code, or a fresh sign-in at the
    /// identity provider) given within `step_up_within`.
    pub step_up: bool,
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub step_up_within: Duration,
    /// An API token expires within this of being made.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub api_token_max_lifetime: Duration,
}

/// Who may sign in with a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordSignIn {
    Everyone,
    /// Local accounts with the admin role; everyone else signs in with a provider.
    Admins,
}

/// An OpenID Connect provider people sign in with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Names it in URLs (`/api/auth/sso/<name>/…`) and the audit log: 1-32 of a-z, 0-9, '-'.
    pub name: String,
    /// What the console's button says: "Sign in with <display_name>"; default: the name.
    pub display_name: Option<String>,
    /// The issuer (`https://forgejo.example/`): its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`. https, or http on loopback.
    pub issuer: String,
    pub client_id: String,
    /// The client secret: a file in the keys directory (or an absolute path), mode 0600.
    pub client_secret_file: String,
    /// Where the provider sends people back, as registered there: the
    /// daemon's address as browsers reach it, then `/api/auth/sso/<name>/callback`.
    pub redirect_url: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim that lists the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The ID token claim that is their user name in LinkOps.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// A session signed in here lasts at most this (and at most `token_lifetime`).
    #[serde(
        default = "default_session_lifetime",
        with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required"
    )]
    pub session_lifetime: Duration,
    /// Each request to the provider (discovery, keys, the code's exchange) ends within this.
    #[serde(
        default = "default_provider_timeout",
        with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required"
    )]
    pub timeout: Duration,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "groups"].map(String::from).to_vec()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_username_claim() -> String {
    "preferred_username".into()
}

fn default_session_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_provider_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_lifetime: Duration::from_secs(24 * 3600),
            lockout_attempts: 5,
            lockout_duration: Duration::from_secs(5 * 60),
            jwt_secret: None,
            max_concurrent_hashes: 0,
            login_queue: 32,
            unknown_name_counters: 10_000,
            password_sign_in: PasswordSignIn::Everyone,
            oidc: Vec::new(),
            api_token_max_lifetime: Duration::from_secs(90 * 24 * 3600),
            step_up: true,
            step_up_within: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Shared secret of the Forgejo push webhook (HMAC-SHA256).
    pub secret: Option<SecretString>,
}
