//! The daemon: opens the store, prepares secrets and the first admin,
//! starts the workers and serves the API (`http`). `Daemon::start` is the
//! wiring; what each worker does lives in its own room.

mod http;

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::MachineAccess;
use crate::api::{self, AppState};
use crate::auth::{self, Auth, LockoutPolicy, LoginLimits};
use crate::config::Config;
use crate::controller::{self, Context};
use crate::git::mirror::{Mirror, Source};
use crate::git::sync::SyncContext;
use crate::metrics::Metrics;
use crate::operations::Engine;
use crate::replica::leading::{self, Leading};
use crate::replica::{self, Membership};
use crate::ssh::ca::{Authority, Certifier};
use crate::store::{Agreement, SharedKey};
use crate::terminal::Terminals;
use crate::{secrets, store};
use linkops_reconcilers::membership::LeaseTiming;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data dir {path} has mode {mode:04o}, but it holds the store (password hashes, output, recordings) and the keys: run `chmod 700 {path}`"
    )]
    DataDirOpen { path: std::path::PathBuf, mode: u32 },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("JWT secret: {0}")]
    Secret(#[from] secrets::Error),
    #[error("notifications: {0}")]
    Notify(#[from] crate::notify::Error),
    #[error(
        "this replica's token signing key ({key}) is not the one the live replicas of this store sign with, so their tokens would be refused here: copy jwt_secret (mode 0600) from a running replica's data dir, or set [auth] jwt_secret to the same value on every replica"
    )]
    SigningKeyDiffers { key: String },
    #[error(
        "this replica's SSH user CA ({key}) is not the one the live replicas of this store sign logins with, so machines would refuse its certificates: copy it (mode 0600) from a running replica"
    )]
    UserCaDiffers { key: std::path::PathBuf },
    #[error(
        "this replica's next SSH user CA ({key}) is not the one the live replicas of this store are rotating to: copy it (mode 0600) from a running replica, or remove it if none is rotating"
    )]
    NextUserCaDiffers { key: std::path::PathBuf },
    #[error("SSH certificate authority: {0}")]
    Authority(#[from] crate::ssh::ca::Error),
    #[error("the age identity that opens the repository's secrets ([secrets] identity): {0}")]
    Keyring(#[from] crate::sealed::Error),
    #[error("creating the first admin failed: {0}")]
    Bootstrap(#[from] auth::Error),
    #[error("single sign-on: {0}")]
    SingleSignOn(#[from] auth::sso::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot listen for the other replicas at [cluster] listen = \"{address}\": {source}")]
    ReplicaListen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS between replicas: {0}")]
    ReplicaTls(#[from] crate::replica::tls::Error),
    #[error("a start-up task panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("stopped because {0}")]
    StoreFailing(store::Error),
    #[error(
        "stopped because this replica's lease on the store passed (it was paused, or cut off from the database) and the others took its work over; the service manager restarts it as a new member"
    )]
    LeaseLost,
}

/// How long a replica whose lease passed waits for its workers to stop.
const LOST_WORKERS_WAIT: Duration = Duration::from_secs(3);

/// How long a stopping replica tries to give up its leases.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the daemon proves the store still takes writes.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the daemon on `listener` until `shutdown` completes, then stops
/// accepting connections and lets in-flight requests finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = async {
        shutdown.await;
        sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]).ok();
    };
    let daemon = Daemon::start(config, listener, shutdown).await?;
    // systemd (Type=notify) counts the daemon as started once the store is
    // open and the first sync was attempted; without NOTIFY_SOCKET this is a no-op.
    let git = daemon.git().clone();
    tokio::spawn(async move {
        git.first_attempt().await;
        if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(%error, "cannot notify systemd of readiness");
        }
    });
    daemon.wait().await
}

/// A running daemon: the HTTP server and its background workers.
pub struct Daemon {
    state: AppState,
    server: JoinHandle<std::io::Result<()>>,
    workers: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    /// A daemon dropped without [`Daemon::wait`] (its caller failed) still
    /// stops its workers: the lease renewer's threads would otherwise keep
    /// renewing, and its runtime from ever shutting down.
    _stop_when_dropped: tokio_util::sync::DropGuard,
    /// Cancelled when the store refused a write probe.
    store_failed: CancellationToken,
    /// Cancelled when this replica's lease passed (the others took over).
    lease_lost: CancellationToken,
    membership: Membership,
}

impl Daemon {
    /// Prepares the data dir, starts the workers and serves on `listener`
    /// until `shutdown` completes.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Daemon, Error> {
        let config = Arc::new(config);
        let opened = crate::blocking::run({
            let config = config.clone();
            move || open_store(&config)
        })
        .await??;
        let address = listener.local_addr().map_err(Error::Serve)?;
        // Only replicas sharing a store reach each other: at the API's
        // address, or at their own, over mutual TLS.
        let replicas = match opened.is_shared() {
            true => http::listen_for_replicas(&config).await?,
            false => {
                if config.cluster.listen.is_some() {
                    tracing::warn!(
                        "[cluster] listen is for replicas sharing a PostgreSQL store: with [store] backend = \"redb\" nothing listens there"
                    );
                }
                None
            }
        };
        let advertised = match (&replicas, opened.is_shared()) {
            (Some(replicas), _) => config.advertised_address(replicas.address)?,
            (None, true) => config.advertised_address(address)?,
            (None, false) => address.to_string(),
        };
        let lease = i64::try_from(config.lease()?.as_millis()).unwrap_or(i64::MAX);
        let timing = LeaseTiming {
            ttl_ms: lease,
            renew_ms: lease / 3,
        };
        let mut joined = replica::join(&opened, advertised, timing).await?;
        let membership = joined.membership.clone();
        let prepared = crate::blocking::run({
            let (config, store) = (config.clone(), opened.clone());
            let (fenced, membership) = (joined.store.clone(), membership.clone());
            move || {
                let prepared = prepare(config, fenced, membership.id());
                if prepared.is_err() {
                    // Not serving after all: its share of the fleet goes to the others now.
                    replica::leave(&store, &membership);
                }
                prepared
            }
        })
        .await??;

        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let sync = git_context(
            &config,
            prepared.store.clone(),
            prepared.notifier.clone(),
            prepared.keyring.clone(),
            metrics.clone(),
        );
        let (git, git_worker) =
            crate::git::sync::start(sync, membership.clone(), stop.clone()).await;
        let certifier = Certifier::new(
            prepared.authority.clone(),
            membership.id(),
            config.ssh.certificate_lifetime,
        )
        .binding_source_address(config.ssh.certificate_source_address);
        let access = MachineAccess::new(
            &config,
            prepared.store.clone(),
            metrics.clone(),
            Arc::new(certifier),
            prepared.revocations.clone(),
        );
        let reaper = access
            .pool
            .spawn_reaper(config.ssh.idle_timeout, stop.clone());
        let engine = Engine::new(
            prepared.store.clone(),
            membership.clone(),
            access.clone(),
            config.operations.output_cap,
            prepared.notifier.clone(),
            metrics.clone(),
            prepared.keyring.clone(),
        );
        let stop_asks = tokio::spawn(engine.clone().follow_stop_asks(stop.clone()));
        let terminals = Terminals::new(
            prepared.store.clone(),
            membership.id(),
            access.clone(),
            git.desired(),
            config.terminal.clone(),
            stop.clone(),
            metrics.clone(),
        );
        let context = Context::new(
            prepared.store.clone(),
            access,
            engine,
            git.desired(),
            config.reconcile.suspended,
            prepared.notifier.clone(),
            metrics.clone(),
        )
        .gathering_facts(config.facts.interval, config.facts.concurrency);
        let (controller, mut workers) = controller::start(
            context,
            config.reconcile.concurrency,
            config.reconcile.resync,
            stop.clone(),
        );
        workers.push(git_worker);
        workers.push(reaper);
        // What must happen once is the leader's: the outbox's deliveries,
        // retention, and ending what a dead replica left running.
        let leading = Leading::new(&membership, &prepared.store, &stop);
        workers.push(leading.spawn({
            let (notifier, metrics, stop) =
                (prepared.notifier.clone(), metrics.clone(), stop.clone());
            move |store| async move {
                for delivery in notifier.start(store, metrics, stop) {
                    delivery.await.ok();
                }
            }
        }));
        // A store that stopped taking writes (a full disk) stops the daemon, so
        // that systemd restarts it and redb reopens the file.
        // A shared store that does not answer is the leases' business: a
        // short outage (a restart) is ridden out, a longer one stops the replica.
        let store_failed = CancellationToken::new();
        if !prepared.store.is_shared() {
            workers.push(tokio::spawn(watch_store(
                prepared.store.clone(),
                stop.clone(),
                store_failed.clone(),
            )));
        }
        let lease_lost = CancellationToken::new();
        workers.push(tokio::spawn(joined.renew(stop.clone(), lease_lost.clone())));
        // What other replicas (or the CLI) change of shared state reaches this one.
        workers.push(stop_asks);
        workers.push(tokio::spawn(replica::following::follow_other_replicas(
            prepared.store.clone(),
            stop.clone(),
        )));
        workers.push(tokio::spawn(replica::following::follow_authority(
            prepared.authority.clone(),
            prepared.revocations.clone(),
            prepared.store.clone(),
            controller.clone(),
            stop.clone(),
        )));
        workers.push(leading.spawn({
            let (retention, metrics, stop) =
                (config.retention.clone(), metrics.clone(), stop.clone());
            move |store| leading::prune_store(store, retention, metrics, stop)
        }));
        workers.push(leading.spawn({
            let (desired, interval, stop) = (git.desired(), config.pictures.interval, stop.clone());
            move |store| crate::pictures::sample(store, desired, interval, stop)
        }));
        workers.push(leading.spawn({
            let (membership, notifier, stop) =
                (membership.clone(), prepared.notifier.clone(), stop.clone());
            move |store| leading::end_what_the_gone_left(store, membership, notifier, stop)
        }));
        // Streams that never end by themselves (the fleet's) end here, so the drain need not wait.
        let draining = CancellationToken::new();
        let shutdown = {
            let (draining, store_failed) = (draining.clone(), store_failed.clone());
            let lease_lost = lease_lost.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = store_failed.cancelled() => {}
                    () = lease_lost.cancelled() => {}
                }
                draining.cancel();
            }
        };
        let fleet =
            crate::fleet::Fleet::new(prepared.store.clone(), controller.clone(), git.desired());
        let state = AppState {
            fleet,
            config: prepared.config,
            store: prepared.store,
            auth: prepared.auth,
            git,
            controller,
            terminals,
            metrics,
            table_queries: crate::tables::Permits::new(
                config.http.table_queries,
                config.http.table_queries_per_user,
            ),
            trigger_requests: Arc::new(tokio::sync::Semaphore::new(config.triggers.concurrency)),
            draining,
            replica_tls: replicas.as_ref().map(|replicas| replicas.tls.clone()),
            membership: membership.clone(),
            authority: prepared.authority,
            revocations: prepared.revocations,
        };
        let server = http::spawn(
            &config,
            api::router(state.clone()),
            state.metrics.clone(),
            (listener, replicas),
            shutdown,
            state.draining.clone(),
        );
        tracing::info!(%address, data_dir = %config.data_dir.display(), replica = %membership.id(), "linkops serving");
        Ok(Daemon {
            state,
            server,
            workers,
            _stop_when_dropped: stop.clone().drop_guard(),
            stop,
            store_failed,
            lease_lost,
            membership,
        })
    }

    /// The Git sync handle (for the desired state and sync requests).
    pub fn git(&self) -> &crate::git::sync::GitSync {
        &self.state.git
    }

    /// Waits for the server to stop, then stops the workers and waits for
    /// them to record what they were doing.
    pub async fn wait(self) -> Result<(), Error> {
        let served = self.server.await;
        self.stop.cancel();
        let workers = async {
            for worker in self.workers {
                worker.await.ok();
            }
        };
        match self.lease_lost.is_cancelled() {
            // Fenced, they write nothing more: a worker waiting on a database
            // it is cut off from does not hold the exit up.
            true => drop(tokio::time::timeout(LOST_WORKERS_WAIT, workers).await),
            false => workers.await,
        }
        // Terminal sessions record their end before the store closes.
        self.state.terminals.wait().await;
        let failure = self
            .store_failed
            .is_cancelled()
            .then(|| self.state.store.ping().err())
            .flatten();
        // Everything is recorded (or, the lease lost, refused): the others
        // take this replica's work over at once.
        // Bounded: a replica cut off from its database must still exit.
        let (store, membership) = (self.state.store.clone(), self.membership.clone());
        let leaving = crate::blocking::run(move || replica::leave(&store, &membership));
        tokio::time::timeout(LEAVE_TIMEOUT, leaving).await.ok();
        if self.lease_lost.is_cancelled() {
            drop(self.state);
            return Err(Error::LeaseLost);
        }
        // Last: the store closes when its final handle goes.
        drop(self.state);
        served?.map_err(Error::Serve)?;
        if let Some(failure) = failure {
            return Err(Error::StoreFailing(failure));
        }
        tracing::info!("linkops stopped");
        Ok(())
    }
}

/// How the sync worker reaches the config repository.
fn git_context(
    config: &Config,
    store: store::Store,
    notifier: Arc<crate::notify::Notifier>,
    keyring: Arc<crate::sealed::Keyring>,
    metrics: Arc<Metrics>,
) -> SyncContext {
    let source = match &config.git.url {
        Some(url) => Some(Source {
            url: url.clone(),
            branch: config.git.branch.clone(),
            deploy_key: config
                .git
                .deploy_key
                .as_ref()
                .map(|key| config.keys_dir().join(key)),
            known_hosts: config.known_hosts_path(),
        }),
        None => {
            tracing::warn!("no [git] url configured: the daemon has no desired state to follow");
            None
        }
    };
    SyncContext {
        source,
        mirror: Mirror::new(config.checkout_dir()),
        plan_mirror: Mirror::new(config.plans_dir()),
        plan_queue: config.git.plan_queue,
        keep_attempts: config.retention.sync_records as u64,
        store,
        interval: config.git.interval,
        notifier,
        keyring,
        metrics,
    }
}

/// Watches the store's writes: a refused one (any write, or the probe made
/// every [`STORE_PROBE_INTERVAL`] in quiet periods) is logged, `/health`
/// says so at once and for one more interval, then `failed` is cancelled.
async fn watch_store(store: store::Store, stop: CancellationToken, failed: CancellationToken) {
    let Some(mut refusals) = store.refusals() else {
        return;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            refused = async { refusals.wait_for(Option::is_some).await.is_ok() } => match refused {
                true => break,
                false => return,
            },
            () = tokio::time::sleep(STORE_PROBE_INTERVAL) => {
                let probe = store.clone();
                // A refusal is kept by the store and wakes the arm above.
                crate::blocking::run(move || probe.probe_write()).await.ok();
            }
        }
    }
    let error = store
        .ping()
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    tracing::error!(%error, "the store refuses writes: stopping so that the service manager restarts the daemon (everything committed is kept)");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(STORE_PROBE_INTERVAL) => failed.cancel(),
    }
}

/// The parts of the state that start-up builds before the background workers.
struct Prepared {
    config: Arc<Config>,
    store: store::Store,
    auth: Auth,
    notifier: Arc<crate::notify::Notifier>,
    /// Created at first start, like the admin password.
    authority: Arc<Authority>,
    revocations: crate::authority::Revocations,
    /// Opens the repository's secrets; made at first start when the default's.
    keyring: Arc<crate::sealed::Keyring>,
}

/// The first blocking part of start-up: directories, the store.
fn open_store(config: &Config) -> Result<store::Store, Error> {
    // Private by default: the data dir holds keys, secrets and the audit log.
    for dir in [config.data_dir.clone(), config.keys_dir()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::DataDir { path: dir, source })?;
    }
    refuse_open_data_dir(&config.data_dir)?;
    let store = store::Store::open_at(&store::Location::of(config)?)?;
    Ok(store.bounding_outbox(config.notify.max_queued))
}

/// The blocking part of start-up once this daemon joined: what the last
/// one left running (the only daemon of a store; with several, the leader
/// ends what a dead one left), secrets, the first admin.
fn prepare(config: Arc<Config>, store: store::Store, replica: &str) -> Result<Prepared, Error> {
    let secret: SecretString = match &config.auth.jwt_secret {
        Some(secret) => secret.clone(),
        None => secrets::load_or_generate(&config.jwt_secret_path())?.into(),
    };
    let authority = Arc::new(Authority::open_keys(
        &config.user_ca_key(),
        &config.host_ca_key(),
    )?);
    if store.is_shared() {
        agree_on_shared_keys(&config, &store, replica, &secret, &authority)?;
    }
    let notifier = Arc::new(crate::notify::Notifier::from_config(&config)?);
    if !store.is_shared() {
        let interrupted = store.interrupt_unfinished_operations(|interrupted| {
            let events = linkops_reconcilers::outbox::for_restart(interrupted, store::now_ms());
            notifier.route(Vec::new(), events.into_iter().collect())
        })?;
        if !interrupted.is_empty() {
            // The previous process stopped while they ran: recorded as interrupted, never re-run.
            tracing::warn!(operations = ?interrupted, "operations interrupted by the last shutdown");
        }
        let interrupted = store.interrupt_open_terminal_sessions()?;
        if !interrupted.is_empty() {
            tracing::warn!(sessions = ?interrupted, "terminal sessions interrupted by the last shutdown");
        }
    }
    if let Some(generated) = auth::bootstrap_admin(&store)? {
        announce_generated_password(&generated);
    }
    let limits = LoginLimits {
        lockout: LockoutPolicy {
            attempts: config.auth.lockout_attempts,
            duration: config.auth.lockout_duration,
        },
        concurrent_hashes: match config.auth.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        },
        queue: config.auth.login_queue,
        unknown_names: config.auth.unknown_name_counters,
    };
    let sso = auth::sso::Sso::new(&config.auth.oidc, &config.keys_dir())?;
    let auth = Auth::new(store.clone(), &secret, config.auth.token_lifetime, limits)
        .signing_in(sso, config.auth.password_sign_in);
    let revocations = crate::authority::Revocations::load(&store)?;
    let keyring = Arc::new(open_keyring(&config)?);
    Ok(Prepared {
        config,
        store,
        auth,
        notifier,
        authority,
        revocations,
        keyring,
    })
}

/// The daemon's age identity: `[secrets] identity` as configured (it must
/// exist), else the keys dir's, made on first start.
fn open_keyring(config: &Config) -> Result<crate::sealed::Keyring, Error> {
    let keyring = crate::sealed::Keyring::of_config(config, true)?;
    // Public: what recipients.yaml lists so that secrets open here.
    tracing::info!(recipients = ?keyring.recipients(), "the repository's secrets open with this age identity");
    Ok(keyring)
}

/// Refuses to serve beside replicas that hold other keys: a load balancer
/// would send the console's requests to a replica that refuses its token,
/// and machines that trust the others' user CA would refuse this one's logins.
fn agree_on_shared_keys(
    config: &Config,
    store: &store::Store,
    replica: &str,
    secret: &SecretString,
    authority: &Authority,
) -> Result<(), Error> {
    let alone = store
        .live_members()?
        .iter()
        .all(|member| member.replica == replica);
    let signing = auth::signing_key_check(secret.expose_secret().as_bytes());
    match store.agree_on_key(SharedKey::TokenSigning, signing, alone)? {
        Agreement::Same | Agreement::First => {}
        Agreement::Changed => tracing::warn!(
            "the token signing key changed while every replica was stopped: tokens issued before are refused"
        ),
        Agreement::Differs => {
            return Err(Error::SigningKeyDiffers {
                key: match &config.auth.jwt_secret {
                    Some(_) => "[auth] jwt_secret".into(),
                    None => config.jwt_secret_path().display().to_string(),
                },
            });
        }
    }
    match store.agree_on_key(SharedKey::UserCa, authority.user_ca_check(), alone)? {
        Agreement::Same | Agreement::First => {}
        Agreement::Changed => tracing::warn!(
            "the SSH user CA changed while every replica was stopped: machines that trust the old one refuse the daemon's certificates until they trust this one"
        ),
        Agreement::Differs => {
            return Err(Error::UserCaDiffers {
                key: config.user_ca_key(),
            });
        }
    }
    let next = authority.next_user_ca_check();
    match store.agree_on_key(SharedKey::UserCaNext, next, alone)? {
        Agreement::Differs => Err(Error::NextUserCaDiffers {
            key: authority.next_user_path(),
        }),
        _ => Ok(()),
    }
}

/// Refuses a data dir that others can enter or read (an existing 0755 one, say).
fn refuse_open_data_dir(dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(dir).map_err(|source| Error::DataDir {
        path: dir.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(Error::DataDirOpen {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Shows the generated admin password, once, on stderr — never in the log.
fn announce_generated_password(generated: &auth::GeneratedPassword) {
    eprintln!(
        "\n==================== LINKOPS FIRST START ====================\n\
         Created user '{user}' with a generated password:\n\n    {password}\n\n\
         It is shown only this once and only its hash is stored.\n\
         Change it with: linkops user passwd {user}\n\
         =============================================================\n",
        user = generated.user,
        password = generated.password.expose_secret(),
    );
}
