//! The daemon's own settings: `[http]`, `[operations]`, `[terminal]`, `[retention]`, `[reconcile]`, `[log]`.

use std::time::Duration;

use serde::Deserialize;

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// Operations that ended longer ago go whole: record, per-machine results, events.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub operations: Duration,
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
            operations: Duration::from_secs(90 * 24 * 3600),
            sync_records: 10_000,
            departed_states: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(600),
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
