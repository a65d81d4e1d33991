//! The daemon's HTTP serving: HTTP/1.1 with upgrades through hyper on the
//! API's listener and, with `[cluster] listen`, on the replicas' own over
//! mutual TLS; connections capped within the open-files limit, heads and
//! handshakes bounded, a graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::replica::tls::ReplicaTls;

/// Serves `router` on the API's listener, and to the other replicas on
/// theirs when bound, until `shutdown`; the replicas' listener stops once
/// `draining` is cancelled (which `shutdown` does).
pub(super) fn spawn(
    config: &Config,
    router: axum::Router,
    metrics: Arc<Metrics>,
    (listener, replicas): (TcpListener, Option<ReplicaListener>),
    shutdown: impl Future<Output = ()> + Send + 'static,
    draining: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
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
    let limits = ConnectionLimits {
        connections: Arc::new(tokio::sync::Semaphore::new(cap)),
        waiting_for_a_request: Arc::default(),
        header_timeout: config.http.header_timeout,
        metrics,
    };
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        config.http.body_timeout,
    ));
    let Some(replicas) = replicas else {
        return tokio::spawn(serve(listener, router, limits, None, shutdown));
    };
    tracing::info!(address = %replicas.address, "serving the other replicas over mutual TLS");
    let for_replicas = serve(
        replicas.listener,
        router.clone(),
        limits.clone(),
        Some(replicas.tls),
        draining.cancelled_owned(),
    );
    let api = serve(listener, router, limits, None, shutdown);
    tokio::spawn(async move {
        let (api, for_replicas) = tokio::join!(api, for_replicas);
        api.and(for_replicas)
    })
}

/// The listener replicas reach each other at, over mutual TLS.
pub(super) struct ReplicaListener {
    listener: TcpListener,
    pub address: std::net::SocketAddr,
    pub tls: ReplicaTls,
}

/// Binds `[cluster] listen` with its certificates, when it is set.
pub(super) async fn listen_for_replicas(config: &Config) -> Result<Option<ReplicaListener>, Error> {
    let crate::config::ReplicaTransport::MutualTls {
        listen,
        certificate,
        key,
        ca,
    } = config.replica_transport()?
    else {
        return Ok(None);
    };
    let tls = crate::blocking::run(move || ReplicaTls::load(&certificate, &key, &ca)).await??;
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
