//! How the daemon reaches machines: SSH targets from inventory entries, the
//! shared connection pool, the fleet-wide session limit, the check that
//! both proves a machine reachable and reads its enrollment id, and the
//! gathering of its facts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkops_reconcilers::certificate::Purpose;
use linkops_reconcilers::enrollment::{CLIENT_ID_PATH, ClientIdReading};
use linkops_reconcilers::facts::CustomFact;
use linkops_reconcilers::machine::{Auth, CheckResult, Machine};
use tokio::sync::Semaphore;

use crate::authority::Revocations;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::operations::TrustFacts;
use crate::ssh::ca::{Authority, Certifier};
use crate::ssh::{self, ExitStatus, Pool, Target};
use crate::store::{Actor, AuditAction, Outcome, Store};

/// The longest a check's command may take once connected.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest gathering facts may take once connected (a package manager
/// working out pending updates takes seconds).
const FACTS_TIMEOUT: Duration = Duration::from_secs(60);
/// What gathers a machine's facts: `name=value` lines (`reconcilers::facts::parse`).
const GATHERER: &str = include_str!("facts.sh");

#[derive(Clone)]
pub struct MachineAccess {
    pub pool: Pool,
    /// Bounds SSH sessions across the whole fleet (`[ssh] concurrency`).
    pub sessions: Arc<Semaphore>,
    /// How many `sessions` holds.
    session_limit: usize,
    keys_dir: PathBuf,
    default_user: String,
    default_key: String,
    pub command_timeout: Duration,
    /// `[ssh] login_per_operation`.
    login_per_operation: bool,
    /// Where host keys learned by trust on first use are audited.
    store: Store,
    /// Host certificates refused; user certificates scripts are told of.
    revocations: Revocations,
    /// The user CAs scripts are told of.
    authority: Arc<Authority>,
}

impl MachineAccess {
    pub fn new(
        config: &Config,
        store: Store,
        metrics: Arc<Metrics>,
        certifier: Arc<Certifier>,
        revocations: Revocations,
    ) -> MachineAccess {
        let authority = certifier.authority().clone();
        let options = ssh::ConnectOptions::new(&config.ssh, config.known_hosts_path(), metrics)
            .with_certifier(certifier)
            .with_revoked_hosts(revocations.hosts());
        MachineAccess {
            pool: Pool::new(options, config.ssh.pool_size),
            sessions: Arc::new(Semaphore::new(config.ssh.concurrency.max(1))),
            session_limit: config.ssh.concurrency.max(1),
            keys_dir: config.keys_dir(),
            default_user: config.ssh.user.clone(),
            default_key: config.ssh.key.clone(),
            command_timeout: config.ssh.command_timeout,
            login_per_operation: config.ssh.login_per_operation,
            store,
            revocations,
            authority,
        }
    }

    /// What scripts are told of the trust machines hold in the daemon: its
    /// user CAs and the user certificates revoked.
    pub fn trust_facts(&self) -> TrustFacts {
        crate::authority::trust_facts(&self.authority, &self.revocations)
    }

    /// The SSH target of an inventory entry, with the daemon's defaults filled in.
    pub fn target(&self, machine: &Machine) -> Target {
        let user = machine.user.as_ref().unwrap_or(&self.default_user);
        let key = ssh::KeyFile {
            dir: self.keys_dir.clone(),
            name: machine
                .key
                .clone()
                .unwrap_or_else(|| self.default_key.clone()),
        };
        Target {
            pinned_host_key: machine.host_key.clone(),
            auth: machine.auth,
            ..Target::new(machine.host.clone(), machine.port, user.clone(), key)
        }
    }

    /// SSH sessions the fleet may hold at once (`[ssh] concurrency`).
    pub fn session_limit(&self) -> usize {
        self.session_limit
    }

    /// A turn among the fleet's SSH sessions (`[ssh] concurrency`), held while it lives.
    pub async fn session(&self) -> tokio::sync::SemaphorePermit<'_> {
        (self.sessions.acquire().await).expect("the session semaphore is never closed")
    }

    /// Connects (or reuses the connection) and reads the client id: one
    /// round-trip answers both "is it up?" and "is it the machine we mean?".
    pub async fn check(&self, machine: &Machine) -> CheckResult {
        let _session = self.session().await;
        let target = self.target(machine);
        let started = Instant::now();
        let mut reading = self.read_client_id(&target, &machine.id).await;
        if matches!(reading, ClientIdReading::Unreachable(_)) {
            // A pooled connection may have died since its last use: one fresh try.
            self.pool.forget(&target).await;
            reading = self.read_client_id(&target, &machine.id).await;
        }
        if matches!(
            reading,
            ClientIdReading::Unreachable(_) | ClientIdReading::HostKeyMismatch(_)
        ) {
            self.pool.forget(&target).await;
        }
        CheckResult {
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            reading,
        }
    }

    /// Gathers a machine's built-in facts over its pooled connection: the
    /// gatherer's output (bounded), or why it could not be had.
    pub async fn gather_facts(&self, machine: &Machine) -> Result<String, String> {
        let limit = linkops_reconcilers::facts::MAX_OUTPUT_BYTES;
        let output = self
            .read_only(machine, GATHERER, FACTS_TIMEOUT, limit)
            .await?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A custom fact's output from `machine`, or why there is none (it
    /// failed, or printed too much).
    pub async fn gather_custom_fact(
        &self,
        machine: &Machine,
        fact: &CustomFact,
    ) -> Result<String, String> {
        let limit = linkops_reconcilers::facts::MAX_CUSTOM_OUTPUT_BYTES;
        let output = (self
            .read_only(machine, &fact.script, fact.timeout, limit)
            .await)
            .map_err(|error| format!("custom fact {}: {error}", fact.name))?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            let said = said.lines().next().unwrap_or_default();
            let ended = match output.status {
                ExitStatus::Code(code) => format!("exited with {code}"),
                ExitStatus::Signal { name, .. } => format!("killed by SIG{name}"),
                ExitStatus::Unknown => "ended without an exit status".to_owned(),
            };
            return Err(format!("custom fact {}: {ended}: {said}", fact.name));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs a read-only `sh` script on `machine` over its pooled connection
    /// and collects at most `limit` bytes of each output.
    async fn read_only(
        &self,
        machine: &Machine,
        script: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<ssh::Output, String> {
        let _session = self.session().await;
        let target = self.target(machine);
        let connection = (self.connect(&target, &machine.id, &Purpose::Health).await)
            .map_err(|error| error.to_string())?;
        let execution = (connection.exec("sh", script.as_bytes(), timeout).await)
            .map_err(|error| error.to_string())?;
        let output = (execution.collect(limit + 1).await).map_err(|error| error.to_string())?;
        match output.truncated {
            true => Err(format!("the output passed {limit} bytes")),
            false => Ok(output),
        }
    }

    /// A connection to a machine for `purpose` (auditing a host key it
    /// learned): the pooled one, opened when there is none — or, for an
    /// operation on a machine logged in to with certificates and `[ssh]
    /// login_per_operation`, one of its own, whose certificate names it.
    pub async fn connect(
        &self,
        target: &Target,
        machine_id: &str,
        purpose: &Purpose,
    ) -> ssh::Result<Arc<ssh::Connection>> {
        let own = self.login_per_operation
            && target.auth == Auth::Certificate
            && matches!(purpose, Purpose::Operation { .. });
        let connection = match own {
            true => {
                Arc::new(ssh::Connection::open_for(target, self.pool.options(), purpose).await?)
            }
            false => self.pool.get_for(target, purpose).await?,
        };
        self.audit_learned_key(&connection, machine_id).await;
        Ok(connection)
    }

    /// Audits the host key `connection` recorded by trust on first use, if any.
    pub async fn audit_learned_key(&self, connection: &ssh::Connection, machine_id: &str) {
        if let Some(key) = connection.take_learned_host_key() {
            let detail = format!("{}: {key}", connection.target());
            let machine = machine_id.to_owned();
            let audited = self
                .store
                .run(move |store| {
                    let learned = AuditAction::SshHostKeyLearned;
                    store.audit(
                        &Actor::System,
                        learned,
                        &machine,
                        Outcome::Success,
                        Some(detail),
                    )
                })
                .await;
            if let Err(error) = audited {
                tracing::error!(%error, "cannot audit a learned host key");
            }
        }
    }

    async fn read_client_id(&self, target: &Target, machine_id: &str) -> ClientIdReading {
        let connection = match self.connect(target, machine_id, &Purpose::Health).await {
            Ok(connection) => connection,
            Err(error) if error.is_host_key_refusal() => {
                return ClientIdReading::HostKeyMismatch(error.to_string());
            }
            Err(error) => return ClientIdReading::Unreachable(error.to_string()),
        };
        read_client_id(&connection).await
    }
}

/// Reads `/etc/linkops/client_id` on an open connection.
pub async fn read_client_id(connection: &ssh::Connection) -> ClientIdReading {
    let command = format!("cat {CLIENT_ID_PATH}");
    let output = match connection.exec(&command, b"", CHECK_TIMEOUT).await {
        Ok(execution) => execution.collect(4096).await,
        Err(error) => Err(error),
    };
    match output {
        Ok(output) if output.status == ExitStatus::Code(0) => {
            ClientIdReading::Content(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Ok(_) => ClientIdReading::Missing,
        Err(error) => ClientIdReading::Unreachable(error.to_string()),
    }
}
