//! Notification sinks: a signed JSON webhook, ntfy, a Slack-compatible webhook.

use std::path::Path;

use hmac::{KeyInit, Mac};
use linkops_reconcilers::outbox::{EventKind, Notification};
use secrecy::{ExposeSecret, SecretString};

use super::Error;
use super::request_error;
use crate::config::{SinkConfig, SinkKind};

/// The header of a webhook's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-LinkOps-Signature-256";

pub struct Sink {
    pub name: String,
    kind: SinkKind,
    url: String,
    secret: Option<SecretString>,
    token: Option<SecretString>,
    /// Empty: every kind.
    events: Vec<EventKind>,
}

impl Sink {
    /// Checks a `[[notify.sinks]]` entry and reads its secret files (blocking).
    pub fn from_config(config: &SinkConfig, keys: &Path) -> Result<Sink, Error> {
        let refuse = |message: String| Error::Sink {
            name: config.name.clone(),
            message,
        };
        let named = !config.name.is_empty()
            && config.name.len() <= 64
            && config
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !named || config.name == linkops_reconcilers::outbox::FORGE {
            return Err(refuse(
                "a sink's name is 1-64 of a-z, 0-9, '-' and '_', and not `forge`".into(),
            ));
        }
        let url = config.url.expose_secret();
        let setting = format!("allow_plain_http (of sink {:?})", config.name);
        super::check_transport(url, config.allow_plain_http, &setting)
            .map_err(|problem| refuse(format!("url: {problem}")))?;
        let read = |file: &Option<String>| -> Result<Option<SecretString>, Error> {
            file.as_ref()
                .map(|file| crate::secrets::read_private(&keys.join(file)).map(SecretString::from))
                .transpose()
                .map_err(Error::from)
        };
        Ok(Sink {
            name: config.name.clone(),
            kind: config.kind,
            url: url.to_owned(),
            secret: read(&config.secret_file)?,
            token: read(&config.token_file)?,
            events: config.events.clone(),
        })
    }

    /// `redactor` with this sink's URL, secret and token added.
    pub fn redacted_from(&self, redactor: crate::secrets::Redactor) -> crate::secrets::Redactor {
        let redactor = redactor.secret_url(&self.url);
        [&self.secret, &self.token]
            .into_iter()
            .flatten()
            .fold(redactor, |redactor, secret| {
                redactor.secret(secret.expose_secret())
            })
    }

    /// Whether the sink gets notifications of this kind.
    pub fn takes(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// Sends one notification; `seq` is its delivery id (the same on every
    /// retry). The error is redacted by the caller: it may echo the URL or token.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        event: &Notification,
        seq: u64,
    ) -> Result<(), String> {
        let request = match self.kind {
            SinkKind::Webhook => {
                let body = serde_json::to_vec(event).expect("notifications serialise");
                let mut request = client
                    .post(&self.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("X-LinkOps-Event", kind_name(event.kind))
                    .header("X-LinkOps-Delivery", seq.to_string());
                if let Some(secret) = &self.secret {
                    request = request.header(SIGNATURE_HEADER, signature(secret, &body));
                }
                request.body(body)
            }
            SinkKind::Ntfy => {
                let text = match &event.url {
                    Some(url) => format!("{}\n{url}", event.text),
                    None => event.text.clone(),
                };
                let mut request = client
                    .post(&self.url)
                    // Header values must be ASCII-safe: ntfy reads RFC 2047 too, but a plain title is enough.
                    .header("Title", ascii(&event.title))
                    .header("Tags", kind_name(event.kind))
                    .header("Priority", priority(event.kind))
                    .body(text);
                if let Some(token) = &self.token {
                    request = request.bearer_auth(token.expose_secret());
                }
                request
            }
            SinkKind::Slack => {
                let link = event
                    .url
                    .as_ref()
                    .map(|url| format!(" (<{url}|open>)"))
                    .unwrap_or_default();
                let text = format!("*{}*{link}\n{}", event.title, event.text);
                client
                    .post(&self.url)
                    .json(&serde_json::json!({ "text": text }))
            }
        };
        let answer = request
            .send()
            .await
            .map_err(|error| request_error(&error))?;
        match answer.status() {
            code if code.is_success() => Ok(()),
            code => Err(format!(
                "the sink answered {code}: {}",
                super::answer_excerpt(answer).await
            )),
        }
    }
}

/// `sha256=<hex>` over the exact body.
pub fn signature(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// ntfy's priority: failures 4 (high), the rest 3 (default).
fn priority(kind: EventKind) -> &'static str {
    match kind {
        EventKind::RevisionRefused
        | EventKind::OperationFailed
        | EventKind::DaemonRecovered
        | EventKind::StateDrifted
        | EventKind::RolloutHalted
        | EventKind::MachineUnreachable
        | EventKind::MachineUnenrolled
        | EventKind::MachineHostKeyChanged
        | EventKind::ApprovalRequested => "4",
        EventKind::RevisionRecovered | EventKind::RunRequestDone | EventKind::MachineRecovered => {
            "3"
        }
    }
}

fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}
