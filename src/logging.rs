//! Logs through `tracing`, to standard error, as text or JSON lines.
//!
//! The level comes from `RUST_LOG` (any `tracing` filter, e.g. `info` or
//! `middleman=debug,glommio=warn`) or else from `--log-level`. glommio logs through the `log`
//! crate; those records are forwarded too. Nothing logged anywhere includes a key: connection
//! events name the connection id and the peer address.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the subscriber; `RUST_LOG`, when set and valid, wins over `level`.
pub fn init(level: LevelFilter, format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level.to_string()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
