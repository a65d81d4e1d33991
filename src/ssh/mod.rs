//! SSH to fleet machines (russh): key and certificate authentication,
//! host-key checking, command execution, and the certificate authority that
//! signs the daemon's logins (`ca`).
//!
//! Only this module opens SSH connections. A [`Connection`] is one
//! authenticated session; every command runs on its own channel, so one
//! connection serves many commands.

pub mod ca;
mod exec;
pub mod host_key;
mod known_hosts;
mod pool;
mod shell;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{Certificate, PrivateKey, PrivateKeyWithHashAlg, PublicKey};

pub use exec::{Execution, ExitStatus, Output, OutputEvent};
pub use host_key::RevokedHosts;
use host_key::{ExpectedKeys, Verdict, fingerprint};
pub use known_hosts::KnownHosts;

use ca::Certifier;
use linkops_reconcilers::certificate::{CertificateLogin, Purpose};
use linkops_reconcilers::machine::Auth;

use crate::config::SshConfig;
use crate::metrics::{Metrics, Open};
pub use pool::Pool;
pub use shell::{ShellInput, ShellOutput};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("connecting to {target} timed out after {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    #[error(
        "host key of {target} ({fingerprint}) is not known: verify it, then add it to {known_hosts} (e.g. `ssh-keyscan -p {port} {host} >> {known_hosts}`) or pin it as host_key in links.yaml"
    )]
    HostKeyUnknown {
        target: String,
        host: String,
        port: u16,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "HOST KEY CHANGED for {target}: it presented {fingerprint}, but {recorded}; refusing to connect (a man-in-the-middle, or a reinstalled machine whose known_hosts entry must be replaced)"
    )]
    HostKeyChanged {
        target: String,
        fingerprint: String,
        recorded: String,
    },
    #[error(
        "host certificate of {target} ({fingerprint}) is not trusted: {reason}; and its key is neither pinned nor in {known_hosts} (enroll the machine again with `linkops enroll` to renew its certificate, or verify the key and pin it)"
    )]
    HostCertificate {
        target: String,
        fingerprint: String,
        reason: String,
        known_hosts: PathBuf,
    },
    #[error("invalid pinned host_key for {target}: {reason}")]
    PinnedKey { target: String, reason: String },
    #[error("known_hosts {path}: {reason}")]
    KnownHosts { path: PathBuf, reason: String },
    #[error("{target} refused the login of user {user} with {key}")]
    AuthRejected {
        target: String,
        user: String,
        key: String,
    },
    #[error(
        "the ssh-agent at {socket}: {reason} (is SSH_AUTH_SOCK right? `ssh-add -l` lists its keys)"
    )]
    Agent { socket: PathBuf, reason: String },
    #[error("private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "key name {name:?} is not a plain file name in {dir}: use letters, digits, '.', '_' and '-', not starting with a dot"
    )]
    KeyName { name: String, dir: PathBuf },
    #[error("SSH session with {target} failed: {source}")]
    Protocol {
        target: String,
        source: russh::Error,
    },
    #[error("`{command}` on {target} did not finish within {after:?}; it was sent SIGKILL")]
    CommandTimeout {
        target: String,
        command: String,
        after: Duration,
    },
    #[error(
        "{target} is to be reached with a certificate (auth: certificate in links.yaml), but this connection has no certificate authority to sign one"
    )]
    NoCertifier { target: String },
    #[error(transparent)]
    Certificate(#[from] ca::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<russh::Error> for Error {
    fn from(source: russh::Error) -> Self {
        // Only reached inside the handshake; `connect` adds the target.
        Error::Protocol {
            target: String::from("(handshake)"),
            source,
        }
    }
}

/// A machine to connect to and the identity to use.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key file (OpenSSH format, ed25519 or RSA); must be mode 0600 or
    /// stricter. Unused when `auth` is a certificate.
    pub key: KeyFile,
    /// A host key pinned in the inventory (OpenSSH public key line).
    pub pinned_host_key: Option<String>,
    /// With the key file, or with a certificate [`ConnectOptions::certifier`] signs.
    pub auth: Auth,
}

/// A private key named inside a keys directory. The name comes from the
/// inventory (outside input): it must be a plain file name, checked here, at
/// the point of use, as well as when the inventory is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub dir: PathBuf,
    pub name: String,
}

impl KeyFile {
    /// The key at `path`: its directory and file name.
    pub fn at(path: &Path) -> KeyFile {
        KeyFile {
            dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            name: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The file's path, or a refusal when the name is not a plain file name.
    pub fn path(&self) -> Result<PathBuf> {
        if linkops_reconcilers::machine::is_plain_file_name(&self.name) {
            Ok(self.dir.join(&self.name))
        } else {
            Err(Error::KeyName {
                name: self.name.clone(),
                dir: self.dir.clone(),
            })
        }
    }
}

impl fmt::Display for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dir.join(&self.name).display())
    }
}

impl Target {
    /// `user@host:port` with `key`, its host key looked up in known_hosts (none pinned).
    pub fn new(host: String, port: u16, user: String, key: KeyFile) -> Target {
        Target {
            host,
            port,
            user,
            key,
            pinned_host_key: None,
            auth: Auth::Key,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// How connections are made; one per daemon, from the `[ssh]` config.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Shared, so every connect reads the file only when it changed.
    pub known_hosts: Arc<KnownHosts>,
    pub connect_timeout: Duration,
    pub trust_on_first_use: bool,
    /// A keepalive goes out after this much silence; after `keepalive_max`
    /// unanswered ones the connection is dead (a silent partition is noticed
    /// within interval × (max + 1)).
    pub keepalive_interval: Duration,
    pub keepalive_max: usize,
    /// Where connects, their latency and failures are counted.
    pub metrics: Arc<Metrics>,
    /// Signs the certificates of targets whose `auth` is a certificate.
    pub certifier: Option<Arc<Certifier>>,
    /// The host CA whose host certificates prove machines' keys.
    pub host_ca: Option<PublicKey>,
    /// Host certificates revoked: they prove nothing.
    pub revoked_hosts: RevokedHosts,
}

/// The host-key algorithms whose certificates a connection asks for when it
/// trusts a host CA (a machine with a certificate then presents it rather
/// than its bare key): russh's own preference, as certificates.
const HOST_CERTIFICATE_ALGORITHMS: &[russh::keys::Algorithm] = &[
    russh::keys::Algorithm::Ed25519,
    russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP256,
    },
    russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP384,
    },
    russh::keys::Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP521,
    },
    russh::keys::Algorithm::Rsa {
        hash: Some(russh::keys::HashAlg::Sha512),
    },
    russh::keys::Algorithm::Rsa {
        hash: Some(russh::keys::HashAlg::Sha256),
    },
];

impl ConnectOptions {
    /// Connections as `[ssh]` says, trusting the host keys in `known_hosts`.
    pub fn new(ssh: &SshConfig, known_hosts: PathBuf, metrics: Arc<Metrics>) -> ConnectOptions {
        ConnectOptions {
            known_hosts: Arc::new(KnownHosts::new(known_hosts)),
            connect_timeout: ssh.connect_timeout,
            trust_on_first_use: ssh.trust_on_first_use,
            keepalive_interval: ssh.keepalive_interval,
            keepalive_max: ssh.keepalive_max,
            metrics,
            certifier: None,
            host_ca: None,
            revoked_hosts: RevokedHosts::default(),
        }
    }

    /// These options, signing certificates with `certifier` and trusting
    /// its authority's host certificates.
    pub fn with_certifier(self, certifier: Arc<Certifier>) -> ConnectOptions {
        ConnectOptions {
            host_ca: Some(certifier.host_ca().clone()),
            certifier: Some(certifier),
            ..self
        }
    }

    /// These options, refusing the host certificates `revoked` holds.
    pub fn with_revoked_hosts(self, revoked: RevokedHosts) -> ConnectOptions {
        ConnectOptions {
            revoked_hosts: revoked,
            ..self
        }
    }

    /// These options, trusting the host certificates of `host_ca`.
    pub fn with_host_ca(self, host_ca: PublicKey) -> ConnectOptions {
        ConnectOptions {
            host_ca: Some(host_ca),
            ..self
        }
    }
}

/// An authenticated SSH session with one machine.
pub struct Connection {
    handle: client::Handle<HostKeyCheck>,
    target: String,
    /// Set when this connection recorded the host key by trust on first use,
    /// until someone takes it to audit.
    learned_host_key: std::sync::Mutex<Option<String>>,
    /// The certificate it logged in with, if it did not use a key.
    certificate: Option<CertificateLogin>,
    /// Counts the connection as open until it is dropped.
    _open: Open,
}

/// What a connection logs in with.
enum Login {
    /// The target's key file.
    KeyFile,
    /// A user certificate of the daemon's CA (boxed: a certificate is large).
    Certified(Box<Certified>),
    /// A user certificate `Certifier` signs for this purpose once the
    /// connection's own address is known (it may bind the certificate to it).
    Certify(Arc<Certifier>, Purpose),
    /// The keys of the ssh-agent at this socket.
    Agent(PathBuf),
    /// A password the operator typed (never stored, never shown).
    Password(secrecy::SecretString),
}

/// Logs in as `user` with `certified`: whether it was let in, and the
/// certificate as an error would name it.
async fn present(
    handle: &mut client::Handle<HostKeyCheck>,
    user: &str,
    certified: Certified,
) -> Result<(bool, String), russh::Error> {
    let credential = certified.to_string();
    let Certified { key, certificate } = certified;
    let auth = handle.authenticate_openssh_cert(user, key, certificate);
    Ok((auth.await?.success(), credential))
}

/// Tries each key the agent at `socket` holds until `user` is let in.
async fn agent_login(
    handle: &mut client::Handle<HostKeyCheck>,
    user: &str,
    socket: &Path,
    target: &str,
) -> Result<bool> {
    use russh::keys::agent::AgentIdentity;
    use russh::keys::agent::client::AgentClient;
    let agent_failed = |reason: String| Error::Agent {
        socket: socket.to_owned(),
        reason,
    };
    let mut agent = AgentClient::connect_uds(socket)
        .await
        .map_err(|error| agent_failed(error.to_string()))?;
    let identities = agent
        .request_identities()
        .await
        .map_err(|error| agent_failed(error.to_string()))?;
    for identity in identities {
        let AgentIdentity::PublicKey { key, .. } = identity else {
            continue;
        };
        let hash_alg = match key.algorithm().is_rsa() {
            true => handle
                .best_supported_rsa_hash()
                .await
                .map_err(|source| Error::Protocol {
                    target: target.to_owned(),
                    source,
                })?
                .flatten(),
            false => None,
        };
        let tried = handle
            .authenticate_publickey_with(user, key, hash_alg, &mut agent)
            .await;
        match tried {
            Ok(result) if result.success() => return Ok(true),
            Ok(_) => continue,
            Err(error) => return Err(agent_failed(error.to_string())),
        }
    }
    Ok(false)
}

/// A key held in memory and a user certificate the user CA signed for it:
/// what a connection to a machine that trusts the CA logs in with.
#[derive(Clone)]
pub struct Certified {
    pub key: Arc<PrivateKey>,
    pub certificate: Certificate,
}

impl Certified {
    /// What the machine's sshd logs of a login with this certificate.
    pub fn login(&self) -> CertificateLogin {
        CertificateLogin {
            serial: self.certificate.serial(),
            key_id: self.certificate.key_id().to_owned(),
        }
    }
}

impl fmt::Display for Certified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certificate = &self.certificate;
        write!(
            f,
            "certificate {} (serial {})",
            certificate.key_id(),
            certificate.serial()
        )
    }
}

impl Connection {
    /// Opens a TCP connection, checks the host key, authenticates as the
    /// target says: for the daemon's own checks ([`Purpose::Health`]).
    pub async fn open(target: &Target, options: &ConnectOptions) -> Result<Connection> {
        Connection::open_for(target, options, &Purpose::Health).await
    }

    /// [`Connection::open`] for `purpose`, which a certificate names (the
    /// machine's sshd logs it with the login).
    pub async fn open_for(
        target: &Target,
        options: &ConnectOptions,
        purpose: &Purpose,
    ) -> Result<Connection> {
        let login = match target.auth {
            Auth::Key => Login::KeyFile,
            Auth::Certificate => {
                let certifier = options.certifier.clone().ok_or(Error::NoCertifier {
                    target: target.to_string(),
                })?;
                Login::Certify(certifier, purpose.clone())
            }
        };
        Connection::open_as(target, options, login).await
    }

    /// [`Connection::open`], logging in with a user certificate instead of
    /// the target's key file.
    pub async fn open_certified(
        target: &Target,
        options: &ConnectOptions,
        certified: Certified,
    ) -> Result<Connection> {
        Connection::open_as(target, options, Login::Certified(Box::new(certified))).await
    }

    /// [`Connection::open`], logging in with the keys of the ssh-agent
    /// listening at `socket` (the operator's own access, for `linkops enroll`).
    pub async fn open_with_agent(
        target: &Target,
        options: &ConnectOptions,
        socket: &Path,
    ) -> Result<Connection> {
        Connection::open_as(target, options, Login::Agent(socket.to_owned())).await
    }

    /// [`Connection::open`], logging in with `password` (the operator's own
    /// access, typed once, for `linkops enroll`).
    pub async fn open_with_password(
        target: &Target,
        options: &ConnectOptions,
        password: &secrecy::SecretString,
    ) -> Result<Connection> {
        let login = Login::Password(password.clone());
        Connection::open_as(target, options, login).await
    }

    async fn open_as(
        target: &Target,
        options: &ConnectOptions,
        login: Login,
    ) -> Result<Connection> {
        let started = std::time::Instant::now();
        let opened = Connection::connect(target, options, login).await;
        match &opened {
            Ok(_) => options.metrics.ssh_connected(started.elapsed()),
            Err(error) => options.metrics.ssh_failed(error.kind()),
        }
        opened
    }

    async fn connect(
        target: &Target,
        options: &ConnectOptions,
        login: Login,
    ) -> Result<Connection> {
        let name = target.to_string();
        let key_file = matches!(login, Login::KeyFile);
        let (key, expected) = load_identity_and_expectations(target, options, key_file).await?;
        // The handler moves into the session; what it learns comes back through this slot.
        let learned = Arc::new(std::sync::Mutex::new(None));

        let handshake = async {
            let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|source| Error::Connect {
                    target: name.clone(),
                    source,
                })?;
            stream.set_nodelay(true).ok();
            let local = stream.local_addr().map_err(|source| Error::Connect {
                target: name.clone(),
                source,
            })?;
            let mut config = client::Config {
                // Keeps pooled connections alive through NAT and firewalls, and
                // notices a peer that stopped answering.
                keepalive_interval: Some(options.keepalive_interval),
                keepalive_max: options.keepalive_max,
                ..Default::default()
            };
            if expected.host_ca.is_some() {
                config.preferred.host_key_certificates =
                    std::borrow::Cow::Borrowed(HOST_CERTIFICATE_ALGORITHMS);
            }
            let config = Arc::new(config);
            let check = HostKeyCheck {
                target: name.clone(),
                host: target.host.clone(),
                port: target.port,
                known_hosts: options.known_hosts.path().to_owned(),
                expected,
                trust_on_first_use: options.trust_on_first_use,
                learned: learned.clone(),
            };
            let handle = client::connect_stream(config, stream, check).await?;
            Ok::<_, Error>((handle, local.ip()))
        };
        let (mut handle, local) = tokio::time::timeout(options.connect_timeout, handshake)
            .await
            .map_err(|_| Error::ConnectTimeout {
                target: name.clone(),
                after: options.connect_timeout,
            })?
            .map_err(|error| with_target(error, &name))?;

        let learned_host_key = learned.lock().ok().and_then(|mut slot| slot.take());
        if let Some(key) = &learned_host_key {
            learn_host_key(options.known_hosts.path(), &target.host, target.port, key).await?;
            tracing::warn!(target = %name, host_key = %fingerprint(key), "host key recorded by trust on first use");
        }

        let protocol = |source| Error::Protocol {
            target: name.clone(),
            source,
        };
        let mut certificate = None;
        let (accepted, credential) = match (login, key) {
            (Login::Certified(certified), _) => {
                certificate = Some(certified.login());
                let presented = present(&mut handle, &target.user, *certified).await;
                presented.map_err(protocol)?
            }
            (Login::Certify(certifier, purpose), _) => {
                // Signed now: the connection's own address is known (`source-address`).
                let certified = certifier.certify(&target.user, &purpose, local)?;
                options.metrics.certificate_issued("user");
                certificate = Some(certified.login());
                let presented = present(&mut handle, &target.user, certified).await;
                presented.map_err(protocol)?
            }
            (Login::Agent(socket), _) => {
                let accepted = agent_login(&mut handle, &target.user, &socket, &name).await?;
                (
                    accepted,
                    format!("the keys of the ssh-agent at {}", socket.display()),
                )
            }
            (Login::Password(password), _) => {
                use secrecy::ExposeSecret;
                let auth = handle.authenticate_password(&target.user, password.expose_secret());
                let accepted = auth.await.map_err(protocol)?.success();
                (accepted, "the password given".to_owned())
            }
            (Login::KeyFile, key) => {
                let key = key.expect("loaded when no certificate is given");
                let hash_alg = match key.algorithm().is_rsa() {
                    true => handle
                        .best_supported_rsa_hash()
                        .await
                        .map_err(protocol)?
                        .flatten(),
                    false => None,
                };
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash_alg);
                let auth = handle.authenticate_publickey(&target.user, key);
                let accepted = auth.await.map_err(protocol)?.success();
                (accepted, format!("key {}", target.key))
            }
        };
        if !accepted {
            return Err(Error::AuthRejected {
                target: name,
                user: target.user.clone(),
                key: credential,
            });
        }
        Ok(Connection {
            handle,
            target: name,
            learned_host_key: std::sync::Mutex::new(
                learned_host_key.map(|k| k.to_openssh().unwrap_or_default()),
            ),
            certificate,
            _open: Open::new(&options.metrics.ssh_connections),
        })
    }

    /// The host key this connection recorded by trust on first use, once:
    /// whoever takes it audits it.
    pub fn take_learned_host_key(&self) -> Option<String> {
        self.learned_host_key.lock().expect("never poisoned").take()
    }

    /// The certificate this connection logged in with (`None`: a key).
    pub fn certificate(&self) -> Option<&CertificateLogin> {
        self.certificate.as_ref()
    }

    /// `user@host:port` of this connection.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the session has ended (the server closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }
}

impl Error {
    /// Whether the machine's host key was refused (unknown, changed, badly
    /// certified, or the pin itself unreadable): not a machine to talk to.
    pub fn is_host_key_refusal(&self) -> bool {
        matches!(
            self,
            Error::HostKeyUnknown { .. }
                | Error::HostKeyChanged { .. }
                | Error::HostCertificate { .. }
                | Error::PinnedKey { .. }
        )
    }

    /// The failure class metrics count connects by.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "unreachable",
            Error::ConnectTimeout { .. } => "timeout",
            error if error.is_host_key_refusal() => "host_key",
            Error::AuthRejected { .. }
            | Error::Agent { .. }
            | Error::Key { .. }
            | Error::KeyName { .. } => "auth",
            _ => "other",
        }
    }
}

fn with_target(error: Error, target: &str) -> Error {
    match error {
        Error::Protocol { source, .. } => Error::Protocol {
            target: target.to_owned(),
            source,
        },
        other => other,
    }
}

/// Reads the private key (when `key_file`) and the recorded host keys off the async runtime.
async fn load_identity_and_expectations(
    target: &Target,
    options: &ConnectOptions,
    key_file: bool,
) -> Result<(Option<PrivateKey>, ExpectedKeys)> {
    let target = target.clone();
    let known_hosts = options.known_hosts.clone();
    let host_ca = options.host_ca.clone();
    let revoked = options.revoked_hosts.current();
    crate::blocking::run(move || {
        let key = match key_file {
            true => Some(load_private_key(&target.key.path()?)?),
            false => None,
        };
        let pinned = target
            .pinned_host_key
            .as_deref()
            .map(|line| {
                PublicKey::from_openssh(line.trim()).map_err(|e| Error::PinnedKey {
                    target: target.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let known = known_hosts.keys(&target.host, target.port)?;
        Ok((
            key,
            ExpectedKeys {
                pinned,
                known,
                host_ca,
                revoked,
            },
        ))
    })
    .await?
}

/// Loads an OpenSSH private key after checking that only its owner can read it.
pub fn load_private_key(path: &Path) -> Result<PrivateKey> {
    crate::secrets::check_private(path).map_err(|e| Error::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    russh::keys::load_secret_key(path, None).map_err(|e| Error::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

async fn learn_host_key(known_hosts: &Path, host: &str, port: u16, key: &PublicKey) -> Result<()> {
    let (path, host, key) = (known_hosts.to_owned(), host.to_owned(), key.clone());
    crate::blocking::run(move || {
        russh::keys::known_hosts::learn_known_hosts_path(&host, port, &key, &path).map_err(|e| {
            Error::KnownHosts {
                path: path.clone(),
                reason: format!("cannot record the host key: {e}"),
            }
        })
    })
    .await?
}

/// The host key a machine presents, with the host certificate it has for it
/// (when asked for one: the options trust a host CA).
#[derive(Debug, Clone)]
pub struct Presented {
    pub key: PublicKey,
    pub certificate: Option<Certificate>,
}

impl Presented {
    /// `SHA256:…` of the key, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }

    /// Whether its certificate proves it is `host` to `host_ca`; else why not.
    pub fn certified(&self, host_ca: &PublicKey, host: &str) -> Result<(), String> {
        let Some(certificate) = &self.certificate else {
            return Err("it presents no host certificate".into());
        };
        let expected = ExpectedKeys {
            host_ca: Some(host_ca.clone()),
            ..ExpectedKeys::default()
        };
        match expected.judge_certificate(certificate, host, unix_now()) {
            Verdict::Trusted => Ok(()),
            Verdict::Uncertified { reason } => Err(reason),
            other => Err(format!("{other:?}")),
        }
    }
}

/// Now, in Unix seconds (what certificates' validity is written in).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Reads the host key (and host certificate) `host:port` presents, trusting
/// nothing and logging in to nothing — as `ssh-keyscan` does, for the
/// operator to confirm before anything is sent.
pub async fn scan_host_key(host: &str, port: u16, options: &ConnectOptions) -> Result<Presented> {
    let name = format!("{host}:{port}");
    let slot = Arc::new(std::sync::Mutex::new(None));
    let scan = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|source| Error::Connect {
                target: name.clone(),
                source,
            })?;
        let mut config = client::Config::default();
        if options.host_ca.is_some() {
            config.preferred.host_key_certificates =
                std::borrow::Cow::Borrowed(HOST_CERTIFICATE_ALGORITHMS);
        }
        let scan = Scan { slot: slot.clone() };
        // Refused by `Scan` once the key is seen: the handshake ends there.
        client::connect_stream(Arc::new(config), stream, scan)
            .await
            .map(drop)
            .map_err(|source| Error::Protocol {
                target: name.clone(),
                source,
            })
    };
    let ended = tokio::time::timeout(options.connect_timeout, scan)
        .await
        .map_err(|_| Error::ConnectTimeout {
            target: name.clone(),
            after: options.connect_timeout,
        })?;
    let presented = slot.lock().expect("never poisoned").take();
    match (presented, ended) {
        (Some(presented), _) => Ok(presented),
        (None, Err(error)) => Err(error),
        (None, Ok(())) => Err(Error::Protocol {
            target: name,
            source: russh::Error::UnknownKey,
        }),
    }
}

/// The russh client handler of [`scan_host_key`]: keeps what is presented, trusts nothing.
struct Scan {
    slot: Arc<std::sync::Mutex<Option<Presented>>>,
}

impl client::Handler for Scan {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, russh::Error> {
        let seen = match presented {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => Presented {
                key: key.clone(),
                certificate: None,
            },
            russh::keys::PublicKeyOrCertificate::Certificate(certificate) => Presented {
                key: PublicKey::from(certificate.public_key().clone()),
                certificate: Some(certificate.clone()),
            },
        };
        *self.slot.lock().expect("never poisoned") = Some(seen);
        Ok(false)
    }
}

/// The russh client handler: decides whether to trust the server's host key.
struct HostKeyCheck {
    target: String,
    host: String,
    port: u16,
    known_hosts: PathBuf,
    expected: ExpectedKeys,
    trust_on_first_use: bool,
    learned: Arc<std::sync::Mutex<Option<PublicKey>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = Error;

    async fn check_server_key(
        &mut self,
        presented: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Error> {
        let (verdict, key) = match presented {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                (self.expected.judge(key), key.clone())
            }
            russh::keys::PublicKeyOrCertificate::Certificate(certificate) => {
                let verdict = self
                    .expected
                    .judge_certificate(certificate, &self.host, unix_now());
                (verdict, PublicKey::from(certificate.public_key().clone()))
            }
        };
        let key = &key;
        match verdict {
            Verdict::Trusted => Ok(true),
            Verdict::Unknown if self.trust_on_first_use => {
                *self
                    .learned
                    .lock()
                    .expect("learned-key slot is never poisoned") = Some(key.clone());
                Ok(true)
            }
            Verdict::Unknown => Err(Error::HostKeyUnknown {
                target: self.target.clone(),
                host: self.host.clone(),
                port: self.port,
                fingerprint: fingerprint(key),
                known_hosts: self.known_hosts.clone(),
            }),
            Verdict::Changed { recorded } => Err(Error::HostKeyChanged {
                target: self.target.clone(),
                fingerprint: fingerprint(key),
                recorded,
            }),
            Verdict::Uncertified { reason } => Err(Error::HostCertificate {
                target: self.target.clone(),
                fingerprint: fingerprint(key),
                reason,
                known_hosts: self.known_hosts.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_name_that_leaves_the_keys_directory_is_refused_at_use() {
        let key = |name: &str| KeyFile {
            dir: PathBuf::from("/var/lib/linkops/keys"),
            name: name.to_owned(),
        };
        assert_eq!(
            key("fleet_key").path().unwrap(),
            Path::new("/var/lib/linkops/keys/fleet_key")
        );
        for name in ["../outside/k", "..", ".", "a/b", "/etc/shadow", ""] {
            let refused = key(name).path().unwrap_err();
            assert!(
                matches!(refused, Error::KeyName { .. }),
                "{name}: {refused}"
            );
        }
    }
}
