//! The command line: every flag, its default, and how sizes and durations are spelled.
//!
//! Limits are named with the qualifier last in code (`message_bytes_max`) and as the issue
//! fixed them on the command line (`--max-message-bytes`); each doc comment names both.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::auth::Keys;
use tracing_subscriber::filter::LevelFilter;

use crate::limits::SlowConsumer;
use crate::logging::LogFormat;

/// The development keys of the original, used only on loopback when no key is configured.
pub const DEV_SERVICE_KEY: &str = "xyzzy";
pub const DEV_CLIENT_KEY: &str = "plugh";

/// middleman: a sharded WebSocket pub/sub and request/response broker.
#[derive(Parser, Clone, Debug)]
#[command(name = "middleman", version, about, long_about = None)]
pub struct Config {
    /// Address to accept WebSocket connections on (repeatable).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:8765")]
    pub listen: Vec<SocketAddr>,

    /// Address to accept TLS WebSocket connections (wss://) on (repeatable); needs --tls-cert
    /// and --tls-key.
    #[arg(long = "tls-listen", value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,

    /// PEM certificate chain for --tls-listen.
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for --tls-listen.
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Number of shards (one thread per CPU). Default: every CPU in the affinity mask.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// A key that grants the service role (repeatable; also MIDDLEMAN_SERVICE_KEYS,
    /// comma-separated).
    #[arg(
        long = "service-key",
        value_name = "KEY",
        env = "MIDDLEMAN_SERVICE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub service_keys: Vec<String>,

    /// A key that grants the client role (repeatable; also MIDDLEMAN_CLIENT_KEYS,
    /// comma-separated).
    #[arg(
        long = "client-key",
        value_name = "KEY",
        env = "MIDDLEMAN_CLIENT_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub client_keys: Vec<String>,

    /// Largest WebSocket message accepted (message_bytes_max); larger closes with 1009.
    #[arg(long = "max-message-bytes", value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub message_bytes_max: usize,

    /// Unsent bytes a connection may have queued before the slow-consumer policy applies
    /// (pending_bytes_max).
    #[arg(long = "max-pending-bytes", value_name = "BYTES", default_value = "8MiB", value_parser = parse_bytes)]
    pub pending_bytes_max: usize,

    /// What to do with a subscriber over --max-pending-bytes.
    #[arg(long = "slow-consumer", value_enum, default_value = "disconnect")]
    pub slow_consumer: SlowConsumer,

    /// How long a REQ waits for its RES before the requester gets `timeout` (0: forever).
    #[arg(long = "request-timeout", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long a new connection has to upgrade and send its key.
    #[arg(long = "auth-timeout", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// How often the broker pings a connection it has not heard from; one that shows no sign
    /// of life for two intervals is closed (0: never).
    #[arg(long = "ping-interval", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// How long shutdown waits for connections to flush and close.
    #[arg(long = "drain-timeout", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Longest topic (target) in bytes (topic_bytes_max).
    #[arg(long = "max-topic-bytes", value_name = "BYTES", default_value = "1024", value_parser = parse_bytes)]
    pub topic_bytes_max: usize,

    /// Most headers in one message (headers_max).
    #[arg(long = "max-headers", value_name = "N", default_value_t = 64)]
    pub headers_max: usize,

    /// Most connections (over all shards); past it the upgrade gets 503.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 100_000)]
    pub connections_max: usize,

    /// Most topics one connection may subscribe to (subscriptions_max).
    #[arg(long = "max-subscriptions-per-connection", value_name = "N", default_value_t = 10_000)]
    pub subscriptions_max: usize,

    /// Most unanswered REQs one connection may have (pending_requests_max).
    #[arg(long = "max-pending-requests", value_name = "N", default_value_t = 1_000)]
    pub pending_requests_max: u32,

    /// Address for the admin endpoint (GET /metrics, /healthz, /stats); off when not given.
    #[arg(long = "admin-listen", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long = "log-level", value_name = "LEVEL", default_value = "info", value_parser = parse_level)]
    pub log_level: LevelFilter,

    /// A file of keys, one `service KEY` or `client KEY` per line (`#` comments), added to
    /// the keys given otherwise; re-read on SIGHUP without dropping connections.
    #[arg(long = "keys-file", value_name = "FILE")]
    pub keys_file: Option<std::path::PathBuf>,

    /// An `Origin` a browser may connect from (repeatable; exact match, e.g.
    /// `https://app.example.com`). Default: any origin. Requests without an `Origin` header
    /// (non-browser clients) are always allowed.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// How long an idle shard spins before it parks (0: park at once). Spinning cuts the
    /// wake-up latency of a parked shard (tens of microseconds on a VM) at the price of CPU
    /// time; use it on CPUs dedicated to the broker.
    #[arg(long = "spin-before-park", value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub spin_before_park: Duration,

    /// Print the effective configuration (keys masked) and exit.
    #[arg(long = "print-config")]
    pub print_config: bool,

    /// Log line format: text, or json (one object per line).
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        // `MSG:` and a 20-character cid: every connection's private topic must fit.
        const PRIVATE_TOPIC_BYTES: usize = 4 + crate::ids::CID_LEN;
        if self.topic_bytes_max < PRIVATE_TOPIC_BYTES {
            return Err(format!(
                "--max-topic-bytes must be at least {PRIVATE_TOPIC_BYTES} (the private topic MSG:<cid>)"
            ));
        }
        if self.headers_max < 3 {
            return Err(
                "--max-headers must be at least 3 (a request's ReqID, Rid and one more)".into()
            );
        }
        if !self.tls_listen.is_empty() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("--tls-listen needs --tls-cert and --tls-key".into());
        }
        if self.message_bytes_max < 64 {
            return Err("--max-message-bytes must be at least 64".into());
        }
        Ok(())
    }

    /// The keys to accept, or why the broker must not start.
    pub fn keys(&self) -> Result<(Keys, bool), String> {
        let (mut service, mut client) = match &self.keys_file {
            Some(path) => read_keys_file(path)?,
            None => (Vec::new(), Vec::new()),
        };
        service.extend(self.flag_keys(&self.service_keys));
        client.extend(self.flag_keys(&self.client_keys));
        if !service.is_empty() || !client.is_empty() {
            return Ok((Keys::new(service, client), false));
        }
        if self.listen.iter().chain(&self.tls_listen).all(|a| a.ip().is_loopback()) {
            let keys = Keys::new(vec![DEV_SERVICE_KEY.into()], vec![DEV_CLIENT_KEY.into()]);
            return Ok((keys, true));
        }
        Err("no keys configured and a listen address is not loopback: give --service-key and \
             --client-key (or MIDDLEMAN_SERVICE_KEYS / MIDDLEMAN_CLIENT_KEYS, or --keys-file); \
             the development keys are only used on loopback"
            .into())
    }

    fn flag_keys(&self, keys: &[String]) -> Vec<Vec<u8>> {
        keys.iter().filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()).collect()
    }
}

impl Config {
    /// The effective configuration as `name = value` lines, keys masked, for
    /// `--print-config`.
    pub fn effective(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let keys = match self.keys() {
            Ok((_, true)) => "development keys (loopback only)".to_owned(),
            Ok(_) => format!(
                "{} service key(s), {} client key(s) (masked)",
                self.service_keys.iter().filter(|k| !k.is_empty()).count(),
                self.client_keys.iter().filter(|k| !k.is_empty()).count()
            ),
            Err(e) => format!("none: {e}"),
        };
        let listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
        let shards =
            self.shards.map_or_else(|| "every CPU in the affinity mask".into(), |n| n.to_string());
        let admin = self.admin_listen.map_or_else(|| "off".into(), |a| a.to_string());
        let timeout = if self.request_timeout.is_zero() {
            "off".into()
        } else {
            format!("{:?}", self.request_timeout)
        };
        for (name, value) in [
            ("listen", listen.join(", ")),
            (
                "tls-listen",
                self.tls_listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            ),
            ("shards", shards),
            ("keys", keys),
            ("max-message-bytes", self.message_bytes_max.to_string()),
            ("max-pending-bytes", self.pending_bytes_max.to_string()),
            ("slow-consumer", format!("{:?}", self.slow_consumer).to_lowercase()),
            ("request-timeout", timeout),
            ("auth-timeout", format!("{:?}", self.auth_timeout)),
            ("drain-timeout", format!("{:?}", self.drain_timeout)),
            (
                "ping-interval",
                if self.ping_interval.is_zero() {
                    "off".into()
                } else {
                    format!("{:?}", self.ping_interval)
                },
            ),
            ("max-topic-bytes", self.topic_bytes_max.to_string()),
            ("max-headers", self.headers_max.to_string()),
            ("max-connections", self.connections_max.to_string()),
            ("max-subscriptions-per-connection", self.subscriptions_max.to_string()),
            ("max-pending-requests", self.pending_requests_max.to_string()),
            ("admin-listen", admin),
            (
                "spin-before-park",
                if self.spin_before_park.is_zero() {
                    "off".into()
                } else {
                    format!("{:?}", self.spin_before_park)
                },
            ),
            ("log-level", self.log_level.to_string().to_lowercase()),
            ("log-format", format!("{:?}", self.log_format).to_lowercase()),
        ] {
            let _ = writeln!(out, "{name} = {value}");
        }
        out
    }
}

/// Service keys and client keys, in that order.
pub type KeyLists = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Reads a keys file: `service KEY` or `client KEY` per line; blank lines and lines starting
/// with `#` are skipped. The error names the line, never the key.
pub fn read_keys_file(path: &std::path::Path) -> Result<KeyLists, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    let (mut service, mut client) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (role, key) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let key = key.trim();
        let list = match role {
            "service" => &mut service,
            "client" => &mut client,
            _ => {
                return Err(format!(
                    "{} line {}: expected `service KEY` or `client KEY`",
                    path.display(),
                    n + 1
                ))
            }
        };
        if key.is_empty() {
            return Err(format!("{} line {}: the key is missing", path.display(), n + 1));
        }
        list.push(key.as_bytes().to_vec());
    }
    Ok((service, client))
}

/// Parses a log level name.
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a log level (error, warn, info, debug, trace, off)"))
}

/// Parses `1024`, `64KiB`, `1MiB`, `1GiB` (also `KB`/`MB`/`k`/`m` as binary multiples).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize =
        digits.parse().map_err(|_| format!("`{text}` is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{text}`: unknown size unit `{unit}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses `0`, `500ms`, `2s`, `1m`, `1h`, `250us`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 2s, 1m)"))?;
    Ok(match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{text}`: a duration needs a unit: us, ms, s, m or h")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("2mb"), Ok(2 << 20));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn effective_config_masks_keys() {
        let c =
            Config::parse_from(["middleman", "--service-key", "s3cret", "--client-key", "pub1"]);
        let shown = c.effective();
        assert!(!shown.contains("s3cret") && !shown.contains("pub1"), "{shown}");
        assert!(shown.contains("keys = 1 service key(s), 1 client key(s) (masked)"), "{shown}");
        assert!(shown.contains("max-pending-bytes = 8388608"), "{shown}");
    }

    #[test]
    fn dev_keys_only_on_loopback() {
        let c = Config::parse_from(["middleman"]);
        let (keys, dev) = c.keys().unwrap();
        assert!(dev);
        assert!(keys.role(b"xyzzy").is_some());
        let c = Config::parse_from(["middleman", "--listen", "0.0.0.0:8765"]);
        assert!(c.keys().is_err());
        let c = Config::parse_from(["middleman", "--listen", "0.0.0.0:8765", "--service-key", "s"]);
        let (keys, dev) = c.keys().unwrap();
        assert!(!dev);
        assert!(keys.role(b"xyzzy").is_none());
    }
}
