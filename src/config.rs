//! Daemon configuration: one TOML file, overridable by `LINKOPS_*` environment variables.
//!
//! Every key has a default, so `linkops serve --data-dir DIR` runs with no file
//! at all. Unknown keys are refused, naming the key. Secrets are wrapped so
//! that `Debug` of the configuration never prints them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Where `linkops` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/linkops/config.toml";

/// Environment variables that start with the prefix but are not settings.
const NOT_SETTINGS: &[&str] = &[
    "LINKOPS_CONFIG",
    "LINKOPS_LOG",
    "LINKOPS_SERVER",
    "LINKOPS_TOKEN",
];

const ENV_PREFIX: &str = "LINKOPS_";

/// Sections of the file; `LINKOPS_<SECTION>_<KEY>` sets `[section] key`.
const SECTIONS: &[&str] = &[
    "http",
    "git",
    "ssh",
    "auth",
    "webhook",
    "log",
    "reconcile",
    "operations",
    "terminal",
    "retention",
    "forge",
    "store",
    "cluster",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("[store] password_file: {0}")]
    StorePassword(#[from] crate::secrets::Error),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Holds the store, keys, known_hosts, the Git checkout and the JWT secret.
    pub data_dir: PathBuf,
    /// Serve the web console from this directory instead of the one compiled in
    /// (console development: `npm --prefix src/web run build` writes `src/web/dist`).
    pub console_dir: Option<PathBuf>,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub git: GitConfig,
    pub ssh: SshConfig,
    pub auth: AuthConfig,
    pub webhook: WebhookConfig,
    pub reconcile: ReconcileConfig,
    pub operations: OperationsConfig,
    pub terminal: TerminalConfig,
    pub retention: RetentionConfig,
    pub forge: ForgeConfig,
    pub notify: NotifyConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("/var/lib/linkops"),
            console_dir: None,
            http: HttpConfig::default(),
            log: LogConfig::default(),
            git: GitConfig::default(),
            ssh: SshConfig::default(),
            auth: AuthConfig::default(),
            webhook: WebhookConfig::default(),
            reconcile: ReconcileConfig::default(),
            operations: OperationsConfig::default(),
            terminal: TerminalConfig::default(),
            retention: RetentionConfig::default(),
            forge: ForgeConfig::default(),
            notify: NotifyConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Which engine holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One file in the data dir (`linkops.redb`): one daemon.
    #[default]
    Redb,
    /// A PostgreSQL database, which several daemons can share.
    Postgres,
}

/// Where observed state and history live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// `postgres://USER@HOST:PORT/DATABASE`, without a password (backend `postgres`).
    pub url: Option<String>,
    /// The database user's password: a file in the keys directory, mode 0600.
    /// Absent file: no password (peer or certificate authentication).
    pub password_file: String,
    /// Connections to the database kept at most.
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Redb,
            url: None,
            password_file: "postgres_password".into(),
            pool_size: 16,
        }
    }
}

/// Several daemons on one PostgreSQL store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `HOST:PORT` the other replicas reach this one at (they forward a
    /// terminal workspace's requests to the replica that holds its
    /// sessions). Unset: `[cluster] listen`, else `listen`, unless that is
    /// every address (`0.0.0.0`).
    pub advertise: Option<String>,
    /// An address of its own for what replicas send each other, over mutual
    /// TLS (`tls_certificate`, `tls_key`, `tls_ca`): only a replica with a
    /// certificate from `tls_ca` is served there. Unset: replicas reach each
    /// other at `listen`, in plain HTTP.
    pub listen: Option<SocketAddr>,
    /// This replica's certificate (PEM, the chain after it), a file in the keys dir.
    pub tls_certificate: Option<String>,
    /// Its private key (PEM), a file in the keys dir, mode 0600.
    pub tls_key: Option<String>,
    /// The authority whose certificates replicas accept of each other (PEM), in the keys dir.
    pub tls_ca: Option<String>,
}

/// How replicas reach each other: their own mutual-TLS listener, or the API's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaTransport {
    Plain,
    MutualTls {
        listen: SocketAddr,
        certificate: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

/// Which forge API commit statuses are posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    /// Forgejo (and Gitea: the same API): `POST {api}/repos/{owner}/{repo}/statuses/{sha}`.
    Forgejo,
    Gitea,
    /// GitHub: the same path under `https://api.github.com`.
    Github,
}

/// Commit statuses on the config repository's forge: off unless `kind` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForgeConfig {
    pub kind: Option<ForgeKind>,
    /// The API's base URL: `https://forgejo.example/api/v1`; by default
    /// derived from `[git] url`'s host (GitHub: `https://api.github.com`).
    pub api_url: Option<String>,
    /// `owner/repo`; by default derived from `[git] url`'s path.
    pub repository: Option<String>,
    /// The API token (scope `write:repository`): a file in the keys directory, mode 0600.
    pub token_file: String,
    /// The console's address as people reach it, for links in statuses and
    /// notifications (`https://linkops.example`).
    pub console_url: Option<String>,
    /// Sends the token over a plain `http://` `api_url` that is not
    /// loopback (refused unless this is true: it would travel in cleartext).
    pub allow_plain_http: bool,
}

impl Default for ForgeConfig {
    fn default() -> Self {
        ForgeConfig {
            kind: None,
            api_url: None,
            repository: None,
            token_file: "forge_token".into(),
            console_url: None,
            allow_plain_http: false,
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `[[notify.sinks]]`, each delivered on its own, in order.
    pub sinks: Vec<SinkConfig>,
    /// Messages one channel (the forge, each sink) holds while it cannot be
    /// reached; beyond, its oldest go to the dead letters.
    pub max_queued: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            sinks: Vec::new(),
            max_queued: crate::store::MAX_QUEUED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A JSON `Notification`, signed with HMAC-SHA256 when `secret_file` is set.
    Webhook,
    /// ntfy: the title and text, to a topic URL (`https://ntfy.sh/my-topic`).
    Ntfy,
    /// A Slack-compatible incoming webhook (`{"text"}`; Mattermost, Rocket.Chat and Matrix bridges accept it).
    Slack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Names the sink in the API, metrics and logs: `[a-z0-9_-]`, at most 64.
    pub name: String,
    pub kind: SinkKind,
    /// Secret, as Slack's and ntfy's URLs are: never shown in a log or an answer.
    pub url: SecretString,
    /// Webhook: the HMAC-SHA256 key, a file in the keys directory (0600).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// ntfy: an access token, a file in the keys directory (0600).
    #[serde(default)]
    pub token_file: Option<String>,
    /// The events it gets (`revision_refused`, `operation_failed`,
    /// `machine_unreachable`, …: every `EventKind`); all when empty.
    #[serde(default)]
    pub events: Vec<linkops_reconcilers::outbox::EventKind>,
    /// Sends to a plain `http://` URL that is not loopback (refused unless
    /// this is true: the URL, token and payload would travel in cleartext).
    #[serde(default)]
    pub allow_plain_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections served at once (SSE and WebSocket clients included); beyond, 503.
    pub max_connections: usize,
    /// A request's headers must arrive within this; also how long an idle
    /// keep-alive connection stays open.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub body_timeout: Duration,
    /// Table queries running at once, in all and per user; beyond, 429.
    pub table_queries: usize,
    pub table_queries_per_user: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 2048,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            table_queries: 8,
            table_queries_per_user: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperationsConfig {
    /// Output kept per host and stream, in bytes; the rest is counted and dropped with a marker.
    pub output_cap: u64,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        OperationsConfig {
            output_cap: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalConfig {
    /// How long a terminal session outlives its dropped WebSocket, waiting for a reconnect.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub grace: Duration,
    /// A session with no input and no output for this long is closed.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub idle_timeout: Duration,
    /// Bytes of recent output each pane keeps to redraw the screen on reconnect.
    pub scrollback: usize,
    /// Record keystrokes too (they include passwords typed at prompts). Off by default.
    pub record_input: bool,
    /// Bytes of asciicast recorded per session; the session goes on unrecorded beyond.
    pub recording_cap: u64,
    /// Browser origins (`https://console.example`) allowed to open terminal
    /// WebSockets besides the daemon's own.
    pub allowed_origins: Vec<String>,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            grace: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(3600),
            scrollback: 64 << 10,
            record_input: false,
            recording_cap: 64 << 20,
            allowed_origins: Vec::new(),
        }
    }
}

/// What the store keeps, so its size is bounded by these settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Every health sample of a machine younger than this is kept…
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub health_full: Duration,
    /// …older ones are thinned to one per this long (and every change of state)…
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub health_bucket: Duration,
    /// …and dropped at this age.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub health_window: Duration,
    /// At most this many samples per machine, a flapping one's included.
    pub health_max_samples: usize,
    /// Output of operations that ended longer ago goes (records and results stay).
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub operation_output: Duration,
    /// Sync attempts kept besides those that applied a revision (the deploy
    /// history, which stays).
    pub sync_records: usize,
    /// A declared state's records (its status, its record and checks on each
    /// machine) stay this long after it left Git, or the machine its targets.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub departed_states: Duration,
    /// How often the store lets go of what the settings above no longer keep.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            health_full: Duration::from_secs(3600),
            health_bucket: Duration::from_secs(3600),
            health_window: Duration::from_secs(7 * 24 * 3600),
            health_max_samples: 1000,
            operation_output: Duration::from_secs(30 * 24 * 3600),
            sync_records: 10_000,
            departed_states: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(600),
        }
    }
}

impl RetentionConfig {
    pub fn policy(&self) -> crate::store::Retention {
        crate::store::Retention {
            health: linkops_reconcilers::retention::HealthRetention {
                full: self.health_full,
                bucket: self.health_bucket,
                window: self.health_window,
                max_samples: self.health_max_samples,
            },
            operation_output: self.operation_output,
            departed_states: self.departed_states,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Observe nothing and start nothing (the API can also suspend, fleet-wide or per machine).
    pub suspended: bool,
    /// Most reconciles at once.
    pub concurrency: usize,
    /// How often every object is reconciled even when nothing says it changed.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub resync: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            suspended: false,
            concurrency: 16,
            resync: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for journald or Loki.
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    /// Remote of the config repository (`git@host:owner/repo.git`, `ssh://…`, a path, `file://…`, `https://…`).
    pub url: Option<crate::git::RepoUrl>,
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
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Shared secret of the Forgejo push webhook (HMAC-SHA256).
    pub secret: Option<SecretString>,
}

impl Config {
    /// Loads the configuration: defaults, then the file (if any), then `LINKOPS_*` variables.
    ///
    /// `path` is the file named on the command line; without one the default
    /// path is read when it exists.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        let default_path = Path::new(DEFAULT_CONFIG_PATH);
        let path = path.or(default_path.exists().then_some(default_path));
        let (mut table, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let table = toml::from_str::<toml::Table>(&text).map_err(|e| Error::Invalid {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
                (table, path.display().to_string())
            }
            None => (toml::Table::new(), "(defaults)".to_owned()),
        };
        apply_env(&mut table, std::env::vars())?;
        Config::deserialize(table).map_err(|e| Error::Invalid {
            origin: format!("{origin} with LINKOPS_* overrides"),
            message: e.to_string(),
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("linkops.redb")
    }

    /// Where the store is, the PostgreSQL password read (from its 0600 file).
    pub fn store_location(&self) -> Result<crate::store::Location, Error> {
        use crate::store::Location;
        let invalid = |message: &str| Error::Invalid {
            origin: "[store]".into(),
            message: message.into(),
        };
        match self.store.backend {
            StoreBackend::Redb => Ok(Location::Redb(self.store_path())),
            StoreBackend::Postgres => {
                let url = self.store.url.clone().ok_or_else(|| {
                    invalid(
                        "backend \"postgres\" needs url = \"postgres://USER@HOST:PORT/DATABASE\"",
                    )
                })?;
                crate::store::engine::postgres::check_url(&url)
                    .map_err(|message| invalid(&message))?;
                let path = self.keys_dir().join(&self.store.password_file);
                let password = match path.exists() {
                    true => Some(SecretString::from(crate::secrets::read_private(&path)?)),
                    false => None,
                };
                Ok(Location::Postgres(
                    crate::store::engine::postgres::Options {
                        url,
                        password,
                        pool_size: self.store.pool_size.max(2),
                    },
                ))
            }
        }
    }

    /// How replicas reach each other: `[cluster] listen` and its three TLS
    /// files all set, or none of them.
    pub fn replica_transport(&self) -> Result<ReplicaTransport, Error> {
        let cluster = &self.cluster;
        let files = [
            ("tls_certificate", &cluster.tls_certificate),
            ("tls_key", &cluster.tls_key),
            ("tls_ca", &cluster.tls_ca),
        ];
        let missing: Vec<&str> = files
            .iter()
            .filter(|(_, file)| file.is_none())
            .map(|(name, _)| *name)
            .collect();
        match (cluster.listen, &files.map(|(_, file)| file.as_deref())) {
            (None, [None, None, None]) => Ok(ReplicaTransport::Plain),
            (Some(listen), [Some(certificate), Some(key), Some(ca)]) => {
                let keys = self.keys_dir();
                Ok(ReplicaTransport::MutualTls {
                    listen,
                    certificate: keys.join(certificate),
                    key: keys.join(key),
                    ca: keys.join(ca),
                })
            }
            (Some(_), _) => Err(Error::Invalid {
                origin: "[cluster] listen".into(),
                message: format!(
                    "replicas are served there over mutual TLS only: set {} too (files in the keys dir)",
                    missing.join(", ")
                ),
            }),
            (None, _) => Err(Error::Invalid {
                origin: "[cluster] tls_*".into(),
                message: "TLS between replicas is served on an address of its own: set [cluster] listen = \"HOST:PORT\"".into(),
            }),
        }
    }

    /// Where the other replicas reach this one, listening on `bound` (the
    /// replicas' own listener, or else the API's).
    pub fn advertised_address(&self, bound: SocketAddr) -> Result<String, Error> {
        let invalid = |message: String| Error::Invalid {
            origin: "[cluster] advertise".into(),
            message,
        };
        match &self.cluster.advertise {
            Some(address) => {
                let port = address
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                match port {
                    Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(address.clone()),
                    _ => Err(invalid(format!("{address:?} is no HOST:PORT"))),
                }
            }
            None if bound.ip().is_unspecified() => Err(invalid(format!(
                "{} = \"{bound}\" is every address of this machine, which names none the other replicas can reach it at: set advertise = \"HOST:{}\"",
                match self.cluster.listen {
                    Some(_) => "[cluster] listen",
                    None => "listen",
                },
                bound.port()
            ))),
            None => Ok(bound.to_string()),
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    pub fn known_hosts_path(&self) -> PathBuf {
        self.data_dir.join("ssh").join("known_hosts")
    }

    pub fn checkout_dir(&self) -> PathBuf {
        self.data_dir.join("git-repo")
    }

    /// The mirror other branches are fetched into for plans (apart from the
    /// followed branch's, so that plans never hold up a sync).
    pub fn plans_dir(&self) -> PathBuf {
        self.data_dir.join("git-plans")
    }

    pub fn jwt_secret_path(&self) -> PathBuf {
        self.data_dir.join("jwt_secret")
    }
}

/// Merges `LINKOPS_*` variables into the parsed file.
///
/// `LINKOPS_SSH_CONNECT_TIMEOUT=5s` sets `[ssh] connect_timeout`;
/// `LINKOPS_LISTEN` sets the top-level `listen`. A value is read as a TOML
/// value when it is one (`50`, `true`), otherwise as a string.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), Error> {
    for (name, raw) in vars {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NOT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let value = parse_env_value(&raw);
        let section = SECTIONS.iter().find(|s| {
            key.strip_prefix(**s)
                .is_some_and(|rest| rest.starts_with('_'))
        });
        match section {
            Some(section) => {
                let field = key[section.len() + 1..].to_owned();
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(section_table) = entry else {
                    return Err(Error::Invalid {
                        origin: name,
                        message: format!("`{section}` must be a table to take this override"),
                    });
                };
                section_table.insert(field, value);
            }
            None => {
                table.insert(key, value);
            }
        }
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as the right-hand side of `v = …`; anything that is not a TOML
    // scalar (a URL, a path, `5s`) is taken as a string.
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_from(text: &str, env: &[(&str, &str)]) -> Result<Config, Error> {
        let mut table: toml::Table = toml::from_str(text).unwrap();
        let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        apply_env(&mut table, vars)?;
        Config::deserialize(table).map_err(|e| Error::Invalid {
            origin: "test".into(),
            message: e.to_string(),
        })
    }

    #[test]
    fn replicas_are_reached_at_listen_or_advertise() {
        let bound: SocketAddr = "10.0.0.5:8000".parse().unwrap();
        let every: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let mut config = Config::default();
        assert_eq!(config.advertised_address(bound).unwrap(), "10.0.0.5:8000");
        let refused = config.advertised_address(every).unwrap_err().to_string();
        assert!(
            refused.contains("[cluster] advertise") && refused.contains("HOST:8000"),
            "{refused}"
        );
        config.cluster.advertise = Some("linkops-2.example:8000".into());
        assert_eq!(
            config.advertised_address(every).unwrap(),
            "linkops-2.example:8000"
        );
        for wrong in ["linkops-2.example", ":8000", "host:0", "host:http"] {
            config.cluster.advertise = Some(wrong.into());
            let refused = config.advertised_address(every).unwrap_err().to_string();
            assert!(refused.contains("is no HOST:PORT"), "{wrong}: {refused}");
        }
    }

    #[test]
    fn replicas_have_mutual_tls_on_their_own_address_or_plain_http() {
        assert_eq!(
            Config::default().replica_transport().unwrap(),
            ReplicaTransport::Plain
        );
        let whole = "[cluster]\nlisten = \"10.0.0.5:8443\"\ntls_certificate = \"r.crt\"\ntls_key = \"r.key\"\ntls_ca = \"ca.crt\"\n";
        let config = load_from(whole, &[]).unwrap();
        let keys = config.keys_dir();
        assert_eq!(
            config.replica_transport().unwrap(),
            ReplicaTransport::MutualTls {
                listen: "10.0.0.5:8443".parse().unwrap(),
                certificate: keys.join("r.crt"),
                key: keys.join("r.key"),
                ca: keys.join("ca.crt"),
            }
        );
        let every = load_from(&whole.replace("10.0.0.5:8443", "0.0.0.0:8443"), &[]).unwrap();
        let refused = every
            .advertised_address("0.0.0.0:8443".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("[cluster] listen") && refused.contains("HOST:8443"),
            "{refused}"
        );
        let no_key = load_from(&whole.replace("tls_key = \"r.key\"\n", ""), &[]).unwrap();
        let refused = no_key.replica_transport().unwrap_err().to_string();
        assert!(
            refused.contains("[cluster] listen") && refused.contains("set tls_key"),
            "{refused}"
        );
        let no_listen = load_from(&whole.replace("listen = \"10.0.0.5:8443\"\n", ""), &[]).unwrap();
        let refused = no_listen.replica_transport().unwrap_err().to_string();
        assert!(refused.contains("set [cluster] listen"), "{refused}");
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = load_from("", &[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/linkops"));
        assert_eq!(config.git.interval, Duration::from_secs(900));
        assert_eq!(config.git.branch, "main");
        assert_eq!(config.auth.token_lifetime, Duration::from_secs(86_400));
        assert_eq!(config.auth.lockout_attempts, 5);
        assert_eq!(config.auth.lockout_duration, Duration::from_secs(300));
        assert!(!config.ssh.trust_on_first_use);
    }

    #[test]
    fn file_values_and_friendly_durations_are_read() {
        let config = load_from(
            "listen = \"0.0.0.0:9000\"\n[git]\nurl = \"git@forgejo:ops/fleet.git\"\ninterval = \"5m\"\n[ssh]\nconnect_timeout = \"3s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(
            config.git.url.as_ref().map(crate::git::RepoUrl::expose),
            Some("git@forgejo:ops/fleet.git")
        );
        assert_eq!(config.git.interval, Duration::from_secs(300));
        assert_eq!(config.ssh.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn environment_overrides_file() {
        let config = load_from(
            "[ssh]\nconcurrency = 10\n",
            &[
                ("LINKOPS_SSH_CONCURRENCY", "64"),
                ("LINKOPS_SSH_TRUST_ON_FIRST_USE", "true"),
                ("LINKOPS_DATA_DIR", "/srv/linkops"),
                ("LINKOPS_GIT_URL", "ssh://git@10.0.0.1:2222/ops/fleet.git"),
                ("LINKOPS_AUTH_TOKEN_LIFETIME", "1h"),
                ("LINKOPS_LOG", "debug"),
                ("PATH", "/usr/bin"),
            ],
        )
        .unwrap();
        assert_eq!(config.ssh.concurrency, 64);
        assert!(config.ssh.trust_on_first_use);
        assert_eq!(config.data_dir, PathBuf::from("/srv/linkops"));
        assert_eq!(
            config.git.url.as_ref().map(crate::git::RepoUrl::expose),
            Some("ssh://git@10.0.0.1:2222/ops/fleet.git")
        );
        assert_eq!(config.auth.token_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn bundled_example_parses_and_documents_the_defaults() {
        let example = load_from(include_str!("../deploy/config.toml"), &[]).unwrap();
        let defaults = Config::default();
        assert_eq!(example.listen, defaults.listen);
        assert_eq!(example.data_dir, defaults.data_dir);
        assert_eq!(example.git.interval, defaults.git.interval);
        assert_eq!(example.ssh.command_timeout, defaults.ssh.command_timeout);
        assert_eq!(
            example.auth.lockout_duration,
            defaults.auth.lockout_duration
        );
        assert_eq!(example.terminal.grace, defaults.terminal.grace);
        assert_eq!(example.terminal.scrollback, defaults.terminal.scrollback);
        assert_eq!(
            example.retention.policy(),
            defaults.retention.policy(),
            "[retention]"
        );
        assert_eq!(example.retention.interval, defaults.retention.interval);
        assert_eq!(example.ssh.pool_size, defaults.ssh.pool_size);
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let err = load_from("[ssh]\nconect_timeout = \"3s\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("conect_timeout"), "{err}");
    }

    #[test]
    fn unknown_environment_setting_is_named() {
        let err = load_from("", &[("LINKOPS_SSH_PROT", "22")]).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let err = load_from("", &[("LINKOPS_LISTN", "x")]).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = load_from(
            "[auth]\njwt_secret = \"hunter2-jwt\"\n[webhook]\nsecret = \"hunter2-hook\"\n[[notify.sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"https://hooks.slack.example/services/hunter2-url\"\n",
            &[],
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(config.webhook.secret.is_some());
        assert_eq!(config.notify.sinks.len(), 1);
    }
}
