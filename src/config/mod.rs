//! Daemon configuration: one TOML file, overridable by `LINKOPS_*` environment variables.
//!
//! Every key has a default, so `linkops serve --data-dir DIR` runs with no file
//! at all. Unknown keys are refused, naming the key. Secrets are wrapped so
//! that `Debug` of the configuration never prints them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod daemon;
mod fleet;
mod notify;
mod repo_url;
mod store;

pub use daemon::*;
pub use fleet::*;
pub use notify::*;
pub use repo_url::RepoUrl;
pub use store::*;

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

/// The daemon's age identity's file name in the keys directory by default.
pub const DEFAULT_AGE_IDENTITY: &str = "age-identity.txt";

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
    "secrets",
    "facts",
    "pictures",
    "triggers",
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
    pub secrets: SecretsConfig,
    pub facts: FactsConfig,
    pub pictures: PicturesConfig,
    pub triggers: TriggersConfig,
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
            secrets: SecretsConfig::default(),
            facts: FactsConfig::default(),
            pictures: PicturesConfig::default(),
            triggers: TriggersConfig::default(),
        }
    }
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

    /// `[cluster] lease`, refused outside 3 s to 10 minutes.
    pub fn lease(&self) -> Result<std::time::Duration, Error> {
        let lease = self.cluster.lease;
        match (3..=600).contains(&lease.as_secs()) {
            true => Ok(lease),
            false => Err(Error::Invalid {
                origin: "[cluster] lease".into(),
                message: format!("{lease:?} is not between 3s and 10m"),
            }),
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

    /// The daemon's age identity: `[secrets] identity` (in the keys dir
    /// unless absolute), else `keys/age-identity.txt`.
    pub fn age_identity_path(&self) -> PathBuf {
        let name = self.secrets.identity.as_deref();
        self.keys_dir().join(name.unwrap_or(DEFAULT_AGE_IDENTITY))
    }

    pub fn jwt_secret_path(&self) -> PathBuf {
        self.data_dir.join("jwt_secret")
    }

    /// The SSH certificate authority's keys (`user_ca`, `host_ca`) unless
    /// `[ssh] user_ca_key`/`host_ca_key` say otherwise.
    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir.join("ca")
    }

    /// The user CA's private key.
    pub fn user_ca_key(&self) -> PathBuf {
        (self.ssh.user_ca_key.clone()).unwrap_or_else(|| self.ca_dir().join("user_ca"))
    }

    /// The host CA's private key.
    pub fn host_ca_key(&self) -> PathBuf {
        (self.ssh.host_ca_key.clone()).unwrap_or_else(|| self.ca_dir().join("host_ca"))
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
    use std::time::Duration;

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
            config.git.url.as_ref().map(RepoUrl::expose),
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
            config.git.url.as_ref().map(RepoUrl::expose),
            Some("ssh://git@10.0.0.1:2222/ops/fleet.git")
        );
        assert_eq!(config.auth.token_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn bundled_example_parses_and_documents_the_defaults() {
        let example = load_from(include_str!("../../deploy/config.toml"), &[]).unwrap();
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
        assert_eq!(example.retention, defaults.retention, "[retention]");
        assert_eq!(example.ssh.pool_size, defaults.ssh.pool_size);
        assert_eq!(
            example.ssh.certificate_lifetime,
            defaults.ssh.certificate_lifetime
        );
        assert_eq!(
            example.ssh.login_per_operation,
            defaults.ssh.login_per_operation
        );
        assert_eq!(
            example.ssh.user_ca_rotate_after,
            defaults.ssh.user_ca_rotate_after
        );
        assert_eq!(example.cluster.lease, defaults.cluster.lease);
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
