//! `[forge]` and `[notify]`: commit statuses on the forge, notifications to sinks.

use secrecy::SecretString;
use serde::Deserialize;

/// Which forge API commit statuses are posted to.
/// Messages a channel holds by default (`[notify] max_queued`).
pub const MAX_QUEUED: usize = 1_000;

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
            max_queued: MAX_QUEUED,
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
