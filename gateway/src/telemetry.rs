//! Logging set up once for every binary of the workspace: an env filter and text or JSON lines.

use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal or `journalctl`.
    #[default]
    Text,
    /// One JSON object per line, for journald/Loki pipelines.
    Json,
}

/// What is logged when `RUST_LOG` is not set. The embedded broker (rumqttd) logs every client
/// connect and disconnect, some at error level; it stays quiet unless asked for.
pub const DEFAULT_FILTER: &str = "info,rumqttd=off";

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter` (e.g. `info`).
/// Calling it twice is harmless: the second call keeps the first subscriber.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
