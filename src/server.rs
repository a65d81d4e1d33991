//! The daemon: opens the store, prepares secrets and the first admin, serves the API.

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
use crate::replica::tls::ReplicaTls;
use crate::replica::{self, Membership};
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
    #[error("creating the first admin failed: {0}")]
    Bootstrap(#[from] auth::Error),
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
        let opened = tokio::task::spawn_blocking({
            let config = config.clone();
            move || open_store(&config)
        })
        .await??;
        let address = listener.local_addr().map_err(Error::Serve)?;
        // Only replicas sharing a store reach each other: at the API's
        // address, or at their own, over mutual TLS.
        let replicas = match opened.is_shared() {
            true => listen_for_replicas(&config).await?,
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
        let mut joined = replica::join(&opened, advertised, LeaseTiming::DEFAULT).await?;
        let membership = joined.membership.clone();
        let prepared = tokio::task::spawn_blocking({
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
            metrics.clone(),
        );
        let (git, git_worker) =
            crate::git::sync::start(sync, membership.clone(), stop.clone()).await;
        let access = MachineAccess::new(&config, prepared.store.clone(), metrics.clone());
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
        );
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
        let leading = Leading {
            membership: membership.clone(),
            store: prepared.store.clone(),
            stop: stop.clone(),
        };
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
        workers.push(tokio::spawn(follow_other_replicas(
            prepared.store.clone(),
            stop.clone(),
        )));
        workers.push(leading.spawn({
            let (retention, metrics, stop) =
                (config.retention.clone(), metrics.clone(), stop.clone());
            move |store| prune_store(store, retention, metrics, stop)
        }));
        workers.push(leading.spawn({
            let (membership, notifier, stop) =
                (membership.clone(), prepared.notifier.clone(), stop.clone());
            move |store| end_what_the_gone_left(store, membership, notifier, stop)
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
        let state = AppState {
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
            draining,
            replica_tls: replicas.as_ref().map(|replicas| replicas.tls.clone()),
        };
        let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let cap = connection_cap(
            open_files,
            config.http.max_connections,
            config.ssh.pool_size,
        );
        tracing::info!(
            connections = cap,
            open_files_limit = ?open_files,
            max_connections = config.http.max_connections,
            ssh_pool_size = config.ssh.pool_size,
            "HTTP connections at once: [http] max_connections, within what the open-files limit leaves beside the SSH pool, the store and files"
        );
        tracing::info!(%address, data_dir = %config.data_dir.display(), replica = %membership.id(), "linkops serving");
        let limits = ConnectionLimits {
            connections: Arc::new(tokio::sync::Semaphore::new(cap)),
            waiting_for_a_request: Arc::default(),
            header_timeout: config.http.header_timeout,
            metrics: state.metrics.clone(),
        };
        let router = api::router(state.clone()).layer(
            tower_http::timeout::RequestBodyTimeoutLayer::new(config.http.body_timeout),
        );
        let server = match replicas {
            None => tokio::spawn(serve(listener, router, limits, None, shutdown)),
            Some(replicas) => {
                tracing::info!(address = %replicas.address, "serving the other replicas over mutual TLS");
                let drained = state.draining.clone().cancelled_owned();
                let for_replicas = serve(
                    replicas.listener,
                    router.clone(),
                    limits.clone(),
                    Some(replicas.tls),
                    drained,
                );
                let api = serve(listener, router, limits, None, shutdown);
                tokio::spawn(async move {
                    let (api, for_replicas) = tokio::join!(api, for_replicas);
                    api.and(for_replicas)
                })
            }
        };
        Ok(Daemon {
            state,
            server,
            workers,
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
        let leaving = tokio::task::spawn_blocking(move || replica::leave(&store, &membership));
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

/// The listener replicas reach each other at, over mutual TLS.
struct ReplicaListener {
    listener: TcpListener,
    address: std::net::SocketAddr,
    tls: ReplicaTls,
}

/// Binds `[cluster] listen` with its certificates, when it is set.
async fn listen_for_replicas(config: &Config) -> Result<Option<ReplicaListener>, Error> {
    let crate::config::ReplicaTransport::MutualTls {
        listen,
        certificate,
        key,
        ca,
    } = config.replica_transport()?
    else {
        return Ok(None);
    };
    let tls =
        tokio::task::spawn_blocking(move || ReplicaTls::load(&certificate, &key, &ca)).await??;
    let bound = |source| Error::ReplicaListen {
        address: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bound)?;
    let address = listener.local_addr().map_err(bound)?;
    Ok(Some(ReplicaListener {
        listener,
        address,
        tls,
    }))
}

/// How the sync worker reaches the config repository.
fn git_context(
    config: &Config,
    store: store::Store,
    notifier: Arc<crate::notify::Notifier>,
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
                tokio::task::spawn_blocking(move || probe.probe_write()).await.ok();
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

/// Lets the store go of what `[retention]` no longer keeps, every `interval`
/// (the first pass right after start).
async fn prune_store(
    store: store::Store,
    retention: crate::config::RetentionConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let policy = retention.policy();
    loop {
        let pass = store.clone();
        let pruned =
            tokio::task::spawn_blocking(move || pass.prune(&policy, store::now_ms())).await;
        match pruned {
            Ok(Ok(pruned)) => {
                for (kind, count) in [
                    ("health_sample", pruned.health_samples),
                    ("output_event", pruned.output_events),
                    ("state_record", pruned.state_records),
                ] {
                    metrics
                        .store_pruned
                        .get_or_create(&crate::metrics::KindLabels { kind })
                        .inc_by(count);
                }
                if pruned != store::Pruned::default() {
                    tracing::info!(
                        ?pruned,
                        "the store let go of what [retention] no longer keeps"
                    );
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the retention pass failed; it runs again later")
            }
            Err(error) => tracing::warn!(%error, "the retention pass stopped"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(retention.interval) => {}
        }
    }
}

/// Starts the work that must happen once among the replicas, when this one leads.
struct Leading {
    membership: Membership,
    store: store::Store,
    stop: CancellationToken,
}

impl Leading {
    /// Runs `work` with the store fenced by the leader lease once this
    /// replica leads (at once on an unshared store); nothing if it stops first.
    fn spawn<F: Future<Output = ()> + Send + 'static>(
        &self,
        work: impl FnOnce(store::Store) -> F + Send + 'static,
    ) -> JoinHandle<()> {
        let (membership, store, stop) = (
            self.membership.clone(),
            self.store.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                leader = membership.leader_store(&store) => work(leader).await,
            }
        })
    }
}

/// How soon what another replica (or the CLI) changed reaches this one's
/// long-lived connections (a revoked account's, the fleet's followers)
/// without the store's doorbell, which rings at once.
const OTHERS_EVERY: Duration = Duration::from_secs(2);

/// Tells this replica's long-lived connections of what other replicas
/// changed: accounts (revoking what they must) and machines' views (for
/// `/api/fleet/events`); they hear of this one's own at once. Nothing on an
/// unshared store.
async fn follow_other_replicas(store: store::Store, stop: CancellationToken) {
    if !store.is_shared() {
        return;
    }
    let (mut accounts, mut fleet) = (None, None);
    let mut changed = store.doorbell(store::Followed::AccountsAndFleet);
    loop {
        let looking = store.clone();
        let looked = tokio::task::spawn_blocking(move || {
            let noticed = looking
                .notice_account_changes(&mut accounts)
                .and_then(|()| looking.follow_fleet_changes(&mut fleet));
            (noticed, accounts, fleet)
        })
        .await;
        if let Ok((noticed, seen_accounts, seen_fleet)) = looked {
            (accounts, fleet) = (seen_accounts, seen_fleet);
            if let Err(error) = noticed {
                tracing::warn!(%error, "cannot read what other replicas changed; reading again");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = changed.wait(OTHERS_EVERY) => {}
        }
    }
}

/// How often the leader looks for operations of replicas that are gone,
/// besides whenever the members change.
const GONE_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The leader's part when a replica dies: its running operations are marked
/// interrupted (hosts that had not finished too; nothing is re-run), their
/// ends told like a restart's, and their followers on any replica see `end`;
/// its open terminal sessions are marked interrupted.
async fn end_what_the_gone_left(
    store: store::Store,
    membership: Membership,
    notifier: Arc<crate::notify::Notifier>,
    stop: CancellationToken,
) {
    let mut members = membership.changes();
    loop {
        let (sweeping, telling) = (store.clone(), notifier.clone());
        let swept = tokio::task::spawn_blocking(move || {
            let operations = sweeping.interrupt_operations_of_gone(|interrupted| {
                let events = linkops_reconcilers::outbox::for_restart(interrupted, store::now_ms());
                telling.route(Vec::new(), events.into_iter().collect())
            })?;
            Ok::<_, store::Error>((operations, sweeping.interrupt_terminal_sessions_of_gone()?))
        })
        .await;
        match swept {
            Ok(Ok((operations, sessions))) => {
                if !operations.is_empty() {
                    notifier.ring();
                    tracing::warn!(
                        ?operations,
                        "operations of a replica that is gone marked interrupted"
                    );
                }
                if !sessions.is_empty() {
                    tracing::warn!(
                        ?sessions,
                        "terminal sessions of a replica that is gone marked interrupted"
                    );
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot look for operations of replicas that are gone; looking again")
            }
            Err(error) => {
                tracing::warn!(%error, "the look for operations of replicas that are gone failed")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = members.changed() => {}
            () = tokio::time::sleep(GONE_SWEEP_INTERVAL) => {}
        }
    }
}

/// The parts of the state that start-up builds before the background workers.
struct Prepared {
    config: Arc<Config>,
    store: store::Store,
    auth: Auth,
    notifier: Arc<crate::notify::Notifier>,
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
    let store = store::Store::open_at(&config.store_location()?)?;
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
    if store.is_shared() {
        agree_on_signing_key(&config, &store, replica, &secret)?;
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
    let auth = Auth::new(store.clone(), &secret, config.auth.token_lifetime, limits);
    Ok(Prepared {
        config,
        store,
        auth,
        notifier,
    })
}

/// Refuses to serve beside replicas that sign tokens with another key: a
/// load balancer would send the console's requests to a replica that
/// refuses its token.
fn agree_on_signing_key(
    config: &Config,
    store: &store::Store,
    replica: &str,
    secret: &SecretString,
) -> Result<(), Error> {
    let check = auth::signing_key_check(secret.expose_secret().as_bytes());
    let alone = store
        .live_members()?
        .iter()
        .all(|member| member.replica == replica);
    match store.agree_on_signing_key(check, alone)? {
        store::SigningKey::Same | store::SigningKey::First => Ok(()),
        store::SigningKey::Changed => {
            tracing::warn!(
                "the token signing key changed while every replica was stopped: tokens issued before are refused"
            );
            Ok(())
        }
        store::SigningKey::Differs => Err(Error::SigningKeyDiffers {
            key: match &config.auth.jwt_secret {
                Some(_) => "[auth] jwt_secret".into(),
                None => config.jwt_secret_path().display().to_string(),
            },
        }),
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

/// Most bytes hyper buffers per connection. Its default (~400 KiB) times a few
/// hundred slow SSE clients is most of the daemon's memory; a live client
/// keeps up with far less.
const CONNECTION_BUFFER: usize = 64 << 10;

/// How long shutdown waits for open connections (an SSE stream of a running
/// operation would otherwise hold it open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors kept beside the SSH pool for everything else: the store (its
/// file, or PostgreSQL's pool and listener), Git, key and log files,
/// terminal panes' own SSH connections, the listeners.
const OTHER_FILES: u64 = 128;

/// Connections to serve at once: `[http] max_connections`, within what the
/// open-files `limit` leaves beside the SSH pool and [`OTHER_FILES`] — but
/// at least a quarter of it, so that a low limit still serves. Beyond the
/// cap a connection is answered 503 at once (or takes the place of one that
/// has not sent a request), instead of the process running out of files.
fn connection_cap(limit: Option<u64>, configured: usize, pool_size: usize) -> usize {
    let Some(limit) = limit else {
        return configured;
    };
    let left = limit.saturating_sub(pool_size as u64 + OTHER_FILES);
    let cap = left.max(limit / 4);
    configured
        .min(usize::try_from(cap).unwrap_or(usize::MAX))
        .max(1)
}

/// Connections that have not sent a whole request yet, oldest first, each
/// with the token that ends it: at the cap, a new connection takes the place
/// of the oldest (a flood of half-sent heads must not keep `/health` out).
#[derive(Default)]
struct WaitingForARequest {
    next: std::sync::atomic::AtomicU64,
    connections: std::sync::Mutex<std::collections::BTreeMap<u64, CancellationToken>>,
}

impl WaitingForARequest {
    fn add(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut connections = self.connections.lock().expect("never poisoned");
        connections.insert(id, evicted.clone());
        (id, evicted)
    }

    /// The connection sent a request (or ended): no longer evicted.
    fn remove(&self, id: u64) {
        self.connections.lock().expect("never poisoned").remove(&id);
    }

    /// Ends the connection that has waited longest for a request; whether there was one.
    fn evict_oldest(&self) -> bool {
        let oldest = self.connections.lock().expect("never poisoned").pop_first();
        oldest.map(|(_, evicted)| evicted.cancel()).is_some()
    }
}

/// A connection's place among those waiting for a request, left when dropped.
struct Waiting {
    set: Arc<WaitingForARequest>,
    id: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.set.remove(self.id);
    }
}

/// What bounds the connections of [`serve`] (of both listeners, when replicas have their own).
#[derive(Clone)]
struct ConnectionLimits {
    /// A permit per open connection (`[http] max_connections`, within the open-files limit).
    connections: Arc<tokio::sync::Semaphore>,
    waiting_for_a_request: Arc<WaitingForARequest>,
    /// Headers must arrive within it; an idle keep-alive connection closes after it.
    header_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// The answer to a connection beyond the cap, written raw: it must cost nothing.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 166\r\n\r\n\
    {\"error\":{\"code\":\"busy\",\"message\":\"too many connections: the limit is [http] max_connections, within the open-files limit (see the log at start); try again shortly\"}}";

/// How long the refusal may take to write.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Accept errors (out of file descriptors, say) pause accepting, doubling up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Accept errors are logged at most once per this.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on `listener` until `shutdown`, then drains connections;
/// with `tls`, each connection first completes a replica's TLS handshake.
///
/// Every connection holds a permit of `limits.connections` (one beyond is
/// answered 503 and closed); every header read (and handshake) is bounded by
/// the header timeout. An accept error backs off instead of spinning, and is
/// logged at most once per [`ACCEPT_LOG_INTERVAL`] with the count since.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    tls: Option<ReplicaTls>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connections that have not sent a byte yet are not hyper's: they end here on shutdown.
    let stopping = CancellationToken::new();
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_errors.backoff = Duration::ZERO;
                    accepted
                }
                Err(error) => {
                    let pause = accept_errors.failed(&error);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match limits.connections.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Full: the connection waiting longest for a request makes room.
            Err(_) if limits.waiting_for_a_request.evict_oldest() => {
                let freed = limits.connections.clone().acquire_owned();
                tokio::time::timeout(REFUSAL_TIMEOUT, freed)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            limits.metrics.http_connections_refused.inc();
            tokio::spawn(async move {
                let mut stream = stream;
                tokio::time::timeout(REFUSAL_TIMEOUT, stream.write_all(TOO_MANY_CONNECTIONS))
                    .await
                    .ok();
            });
            continue;
        };
        stream.set_nodelay(true).ok();
        let open = crate::metrics::Open::new(&limits.metrics.http_connections);
        let waiting = limits.waiting_for_a_request.clone();
        let (id, evicted) = waiting.add();
        let connection = Connection {
            router: router.clone(),
            watcher: graceful.watcher(),
            header_timeout: limits.header_timeout,
            evicted,
            waiting: waiting.clone(),
            id,
        };
        let (stopping, tls) = (stopping.clone(), tls.clone());
        tokio::spawn(async move {
            let _held = (permit, open);
            // Whatever ends the connection, it waits for nothing any more.
            let _waiting = Waiting { set: waiting, id };
            // hyper times a header from its first byte: a client that sends nothing
            // is bounded here (a peek waits for a byte; readiness alone can be spurious).
            let mut first = [0u8; 1];
            let first_byte =
                tokio::time::timeout(connection.header_timeout, stream.peek(&mut first));
            tokio::select! {
                peeked = first_byte => if !matches!(peeked, Ok(Ok(1..))) { return },
                () = stopping.cancelled() => return,
                () = connection.evicted.cancelled() => return,
            }
            let Some(tls) = tls else {
                return connection.serve(stream).await;
            };
            let handshake = tokio::time::timeout(connection.header_timeout, tls.accept(stream));
            tokio::select! {
                accepted = handshake => match accepted {
                    Ok(Ok(stream)) => connection.serve(stream).await,
                    // Not above debug: anyone who reaches the port could fill the log.
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "refused a connection to [cluster] listen: only replicas with a certificate from [cluster] tls_ca are served there");
                    }
                    Err(_) => {}
                },
                () = stopping.cancelled() => {}
                () = connection.evicted.cancelled() => {}
            }
        });
    }
    drop(listener);
    stopping.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

/// One accepted connection of [`serve`], about to be served.
struct Connection {
    router: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
    header_timeout: Duration,
    /// Cancelled when it must make room for a newer one.
    evicted: CancellationToken,
    waiting: Arc<WaitingForARequest>,
    id: u64,
}

impl Connection {
    /// HTTP/1.1 on `stream` until the client or the drain ends it.
    async fn serve<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;

        let mut http =
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
        http.http1()
            .max_buf_size(CONNECTION_BUFFER)
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        // HTTP/1.1 only, with upgrades for the terminal WebSockets. An
        // upgraded socket leaves hyper (and this drain); it ends with the
        // terminals' shutdown.
        // Its first request head makes it a connection that is served.
        let (waiting, id) = (self.waiting, self.id);
        let router = tower::ServiceExt::map_request(self.router, move |request| {
            waiting.remove(id);
            request
        });
        let connection = http
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(router));
        tokio::select! {
            served = self.watcher.watch(connection) => if let Err(error) = served {
                tracing::debug!(%error, "connection ended with an error");
            },
            () = self.evicted.cancelled() => {
                tracing::debug!("a connection that sent no whole request made room for a new one");
            }
        }
    }
}

/// Accept failures: the current pause, and the rate limit of their log lines.
#[derive(Default)]
struct AcceptErrors {
    backoff: Duration,
    logged_at: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Records a failure; returns how long to pause before accepting again.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
        let due = self
            .logged_at
            .is_none_or(|at| at.elapsed() >= ACCEPT_LOG_INTERVAL);
        if due {
            tracing::warn!(
                %error,
                since_last_report = self.unlogged,
                pause_ms = self.backoff.as_millis() as u64,
                "accepting a connection failed (at the open-files limit, raise LimitNOFILE or lower [http] max_connections)"
            );
            self.logged_at = Some(std::time::Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_doubling_and_are_logged_at_most_once_per_interval() {
        let mut errors = AcceptErrors::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..9).map(|_| errors.failed(&emfile).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // The first was logged; the rest within the interval are counted for the next line.
        assert_eq!(errors.unlogged, 8);
    }

    #[test]
    fn the_connection_cap_leaves_files_for_the_pool_and_the_store() {
        let cases = [
            // (open-files limit, [http] max_connections, [ssh] pool_size, cap)
            (Some(65_536), 2_048, 256, 2_048),
            (Some(1_024), 2_048, 256, 640),
            (Some(256), 2_048, 256, 64),
            (Some(256), 16, 256, 16),
            (None, 2_048, 256, 2_048),
            (Some(0), 2_048, 256, 1),
        ];
        for (limit, configured, pool, cap) in cases {
            assert_eq!(
                connection_cap(limit, configured, pool),
                cap,
                "{limit:?} {configured} {pool}"
            );
        }
    }

    #[test]
    fn the_connection_refusal_is_well_formed_http() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "busy");
    }
}
