//! A small stderr logger for the `log` facade (glommio logs through it too).
//!
//! One line per event: seconds since the Unix epoch, level, message. The level comes from
//! `RUST_LOG` (a plain level name) or `--log-level`. Nothing logged anywhere includes a key.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}.{:03} {:5} {}",
            now.as_secs(),
            now.subsec_millis(),
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger; `RUST_LOG` (if it names a level) wins over `level`.
pub fn init(level: log::LevelFilter) {
    let level = std::env::var("RUST_LOG").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(level);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
