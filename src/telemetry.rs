//! Logging: `tracing` to stderr, human-readable or JSON, filtered by `LINKOPS_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `LINKOPS_LOG` takes `RUST_LOG`-style
/// directives (default `default`, e.g. `info`).
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_env("LINKOPS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into journald or a pipe.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
