//! The outside world: commit statuses on the forge and notifications to
//! people's sinks (a signed webhook, ntfy, a Slack-compatible webhook).
//!
//! [`Notifier::route`] turns what `reconcilers::outbox` decided into
//! messages per channel, which the caller queues in the store in the
//! transaction of its event. One delivery task per channel then sends them
//! in order, one in flight at a time, retrying with backoff; after the last
//! attempt a message is a dead letter (`GET /api/notifications`). Nothing
//! here ever blocks or fails what it reports on.

mod forge;
mod sinks;

use std::sync::Arc;
use std::time::Duration;

use linkops_reconcilers::outbox::{CommitStatus, FORGE, Message, Notification, Outgoing, Queued};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::metrics::{ChannelLabels, Metrics};
use crate::secrets::Redactor;
use crate::store::{Followed, Ring, Store, now_ms};
pub use forge::Forge;
pub use sinks::Sink;

/// One attempt's bound: connecting, sending and reading the answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a refusal's body is read (the rest is never downloaded) and
/// how much of it, redacted, is kept with the failed delivery.
const ANSWER_READ_BYTES: usize = 4 << 10;
const ANSWER_KEPT_CHARS: usize = 300;
/// How often a delivery looks at its channel by itself: the store's doorbell
/// wakes it at once (and rings everything once its listener is back).
const LOOK_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("[forge] {0}")]
    Forge(String),
    #[error("[[notify.sinks]] {name:?}: {message}")]
    Sink { name: String, message: String },
    #[error(transparent)]
    Secret(#[from] crate::secrets::Error),
}

/// Where messages go, from the configuration. Their delivery wakes on the
/// store's doorbell, which every commit that queued some rings.
pub struct Notifier {
    forge: Option<Forge>,
    sinks: Vec<Sink>,
    console_url: Option<String>,
    /// Every secret of the daemon's, taken out of what a forge or sink answers.
    redactor: Redactor,
}

impl Notifier {
    /// Reads `[forge]` and `[[notify.sinks]]` (and their secret files: blocking).
    pub fn from_config(config: &Config) -> Result<Notifier, Error> {
        let forge = Forge::from_config(config)?;
        let mut redactor = Redactor::of_config(config);
        if let Some(forge) = &forge {
            redactor = forge.redacted_from(redactor);
        }
        let mut sinks = Vec::new();
        for sink in &config.notify.sinks {
            if sinks.iter().any(|s: &Sink| s.name == sink.name) {
                return Err(Error::Sink {
                    name: sink.name.clone(),
                    message: "two sinks have this name".into(),
                });
            }
            let sink = Sink::from_config(sink, &config.keys_dir())?;
            redactor = sink.redacted_from(redactor);
            sinks.push(sink);
        }
        Ok(Notifier {
            forge,
            sinks,
            console_url: config.forge.console_url.clone(),
            redactor,
        })
    }

    /// The console's address, for links.
    pub fn console_url(&self) -> Option<&str> {
        self.console_url.as_deref()
    }

    /// The messages for these statuses and notifications: statuses to the
    /// forge (when one is configured), each notification to every sink that
    /// takes its kind.
    pub fn route(&self, statuses: Vec<CommitStatus>, events: Vec<Notification>) -> Vec<Outgoing> {
        let mut outgoing = Vec::new();
        if self.forge.is_some() {
            outgoing.extend(statuses.into_iter().map(|status| Outgoing {
                channel: FORGE.into(),
                message: Message::CommitStatus(status),
            }));
        }
        for event in events {
            for sink in self.sinks.iter().filter(|sink| sink.takes(event.kind)) {
                outgoing.push(Outgoing {
                    channel: sink.name.clone(),
                    message: Message::Notification(event.clone()),
                });
            }
        }
        outgoing
    }

    /// Starts one delivery task per channel; they stop on `shutdown`.
    pub fn start(
        self: &Arc<Self>,
        store: Store,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // A redirect could take a token or a payload elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("linkops/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a plain HTTP client builds");
        let channels = self
            .forge
            .iter()
            .map(|_| FORGE.to_owned())
            .chain(self.sinks.iter().map(|sink| sink.name.clone()));
        channels
            .map(|channel| {
                let delivery = Delivery {
                    notifier: self.clone(),
                    client: client.clone(),
                    store: store.clone(),
                    metrics: metrics.clone(),
                    channel: channel.clone(),
                };
                let span = tracing::info_span!("delivery", channel = %channel);
                let rung = store.doorbell(Followed::Outbox);
                tokio::spawn(delivery.run(rung, shutdown.clone()).instrument(span))
            })
            .collect()
    }

    async fn send(&self, client: &reqwest::Client, queued: &Queued) -> Result<(), String> {
        match (&queued.message, queued.channel.as_str()) {
            (Message::CommitStatus(status), FORGE) => match &self.forge {
                Some(forge) => forge.post(client, status).await,
                None => Err("no [forge] is configured any more".into()),
            },
            (Message::Notification(event), name) => {
                match self.sinks.iter().find(|sink| sink.name == name) {
                    Some(sink) => sink.send(client, event, queued.seq).await,
                    None => Err(format!("no sink {name:?} is configured any more")),
                }
            }
            (Message::CommitStatus(_), name) => {
                Err(format!("a commit status queued for sink {name:?}"))
            }
        }
    }
}

/// One channel's delivery: the oldest message first, one at a time.
struct Delivery {
    notifier: Arc<Notifier>,
    client: reqwest::Client,
    store: Store,
    metrics: Arc<Metrics>,
    channel: String,
}

impl Delivery {
    async fn run(self, mut rung: Ring, shutdown: CancellationToken) {
        loop {
            // A commit that queues during the read rings the wait below.
            let channel = self.channel.clone();
            let next = match self
                .store
                .run(move |store| store.next_queued(&channel))
                .await
            {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the outbox; trying again in a second");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let wait = next.as_ref().map(|queued| {
                Duration::from_millis(u64::try_from(queued.next_at_ms - now_ms()).unwrap_or(0))
            });
            if wait != Some(Duration::ZERO) {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = rung.wait(wait.unwrap_or(LOOK_EVERY).min(LOOK_EVERY)) => {}
                }
                continue;
            }
            let Some(queued) = next else { continue };
            self.attempt(&queued).await;
        }
    }

    async fn attempt(&self, queued: &Queued) {
        let labels = |result| ChannelLabels {
            channel: self.channel.clone(),
            result,
        };
        match self.notifier.send(&self.client, queued).await {
            Ok(()) => {
                tracing::debug!(seq = queued.seq, "delivered");
                self.metrics
                    .deliveries
                    .get_or_create(&labels("delivered"))
                    .inc();
                let seq = queued.seq;
                let recorded = self.store.run(move |store| store.delivered(seq)).await;
                if let Err(error) = recorded {
                    tracing::warn!(%error, seq = queued.seq, "delivered, but cannot record it: it may be sent again");
                }
            }
            Err(error) => {
                // Whatever the far end answered, redacted before it is kept or logged.
                let error = linkops_reconcilers::outbox::cut(
                    &self.notifier.redactor.redact(&error),
                    ANSWER_KEPT_CHARS,
                );
                self.metrics
                    .deliveries
                    .get_or_create(&labels("failed"))
                    .inc();
                let (seq, message) = (queued.seq, error.clone());
                let recorded = self
                    .store
                    .run(move |store| store.delivery_failed(seq, &message))
                    .await;
                match recorded {
                    Ok(Some(failed))
                        if failed.attempts >= linkops_reconcilers::outbox::MAX_ATTEMPTS =>
                    {
                        tracing::error!(seq = queued.seq, %error, "given up after {} attempts: a dead letter (GET /api/notifications)", failed.attempts);
                        self.metrics.deliveries.get_or_create(&labels("dead")).inc();
                    }
                    Ok(_) => {
                        tracing::warn!(seq = queued.seq, %error, "delivery failed; trying again later")
                    }
                    Err(store_error) => {
                        tracing::warn!(%store_error, "cannot record a failed delivery")
                    }
                }
            }
        }
    }
}

/// Refuses a URL that would carry a secret in cleartext: `https://`, or
/// `http://` to a loopback address, or `http://` where `allowed` (the
/// setting the refusal names). Names only the host: the URL may be secret.
pub(super) fn check_transport(url: &str, allowed: bool, setting: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "is not a URL".to_owned())?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let loopback = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allowed => Ok(()),
        "http" => Err(format!(
            "http://{host} would carry a secret in cleartext: use https://, or set {setting} = true where the network is trusted"
        )),
        other => Err(format!("{other}:// is not http(s)")),
    }
}

/// The start of a refusal's body, read only that far (a hostile endpoint
/// may answer without end), as text.
pub(super) async fn answer_excerpt(mut answer: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ANSWER_READ_BYTES {
        match answer.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(ANSWER_READ_BYTES);
    String::from_utf8_lossy(&body).trim().to_owned()
}

/// A request error without the URL (it is the forge's, and a proxy's could carry credentials).
pub(super) fn request_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    match detail.is_empty() {
        true => kind.to_owned(),
        false => format!("{kind}: {detail}"),
    }
}
