//! The configuration: every flag grouped by concern, its default and its `MIDDLEMAN_*`
//! variable; the checks that values can work together; the printed configuration.
//!
//! It is not the runtime: nothing here starts a thread or opens a socket, and the only file
//! it reads is `--keys-file`. It depends only on leaves of the crate: [`crate::limits`] (the
//! configurable limits, flattened in as one group), `cluster::config::ClusterFlags` (the cluster
//! flags, one group), `auth::Keys`, `logging::LogFormat` and two
//! constants (`ids::CID_LEN`, `limits::SHARDS_MAX`); never on `runtime` or `server`.
//!
//! Invariants:
//! - Every flag `--some-name` can also come from `MIDDLEMAN_SOME_NAME`, except the two key
//!   flags, which keep the original's plural `MIDDLEMAN_SERVICE_KEYS` and
//!   `MIDDLEMAN_CLIENT_KEYS`. A flag on the command line wins over its variable; repeatable
//!   flags take comma-separated lists. A unit test checks the rule against clap's `Command`.
//! - `--print-config` walks clap's `Command` and the parsed `ArgMatches`, so it lists every
//!   flag that takes a value without a line written for it. A flag whose variable's value
//!   `--help` hides (`hide_env_values`) holds keys: its values are counted, never printed.
//! - Every check that values can work together is in [`Config::validate`] (or, for keys, in
//!   [`Config::keys`]), and every failure is a [`ConfigError`], one line that names the flag.

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser};
use tracing_subscriber::filter::LevelFilter;

use crate::auth::Keys;
use crate::cluster::config::ClusterFlags;
use crate::limits::Limits;
use crate::limits::SHARDS_MAX;
use crate::logging::LogFormat;

/// The development keys of the original, used only on loopback when no key is configured.
pub const DEV_SERVICE_KEY: &str = "xyzzy";
pub const DEV_CLIENT_KEY: &str = "plugh";

/// The end of `--help`: the rule for the variables each flag shows.
const ENVIRONMENT_HELP: &str =
    "Every flag can also be set by its MIDDLEMAN_* environment variable \
     (shown with it). A flag on the command line wins over its variable; repeatable flags take \
     comma-separated lists. Sizes: 1024, 64KiB, 1MiB, 1GiB. Durations: 250us, 500ms, 2s, 1m, 1h.";

/// `--help` section of the key flags; `--print-config` adds the key count to it.
const KEYS_HEADING: &str = "Keys";

/// `MSG:` and a 20-character cid: every connection's private topic must fit in a topic.
const PRIVATE_TOPIC_BYTES: usize = 4 + crate::ids::CID_LEN;

/// A request carries `ReqID` and `Rid` headers and a peer needs room for one of its own.
const HEADERS_MIN: usize = 3;

/// Below this no useful middleman message (a command, a topic, a header) fits in one frame.
const MESSAGE_BYTES_MIN: usize = 64;

/// middleman: a sharded WebSocket pub/sub and request/response broker.
#[derive(Parser, Clone, Debug)]
#[command(name = "middleman", version, about, long_about = None, after_help = ENVIRONMENT_HELP)]
pub struct Config {
    /// Print the effective configuration (keys masked) and exit.
    #[arg(
        long = "print-config",
        env = "MIDDLEMAN_PRINT_CONFIG",
        action = ArgAction::SetTrue,
        // `1`, `yes` and `on` as well as `true`, as environment variables are usually spelt.
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub print_config: bool,

    #[command(flatten)]
    pub listeners: Listeners,

    #[command(flatten)]
    pub auth: KeySources,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub timeouts: Timeouts,

    #[command(flatten)]
    pub tuning: Tuning,

    #[command(flatten)]
    pub admin: Admin,

    #[command(flatten)]
    pub cluster: ClusterFlags,
}

/// Where the broker accepts connections, and from which browser pages.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Listeners and TLS")]
pub struct Listeners {
    /// Address to accept WebSocket connections on (repeatable).
    #[arg(
        long = "listen",
        env = "MIDDLEMAN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8765",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,

    /// Address to accept TLS WebSocket connections (wss://) on (repeatable); needs --tls-cert
    /// and --tls-key.
    #[arg(
        long = "tls-listen",
        env = "MIDDLEMAN_TLS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub tls_listen: Vec<SocketAddr>,

    /// PEM certificate chain for --tls-listen.
    #[arg(long = "tls-cert", env = "MIDDLEMAN_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-listen.
    #[arg(long = "tls-key", env = "MIDDLEMAN_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// An `Origin` a browser may connect from (repeatable; exact match, e.g.
    /// `https://app.example.com`). Default: any origin. Requests without an `Origin` header
    /// (non-browser clients) are always allowed.
    #[arg(
        long = "allowed-origin",
        env = "MIDDLEMAN_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
}

/// Where the keys come from. Their values are hidden from `--help` and `--print-config`.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = KEYS_HEADING)]
pub struct KeySources {
    /// A key that grants the service role (repeatable).
    #[arg(
        long = "service-key",
        value_name = "KEY",
        env = "MIDDLEMAN_SERVICE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub service_keys: Vec<String>,

    /// A key that grants the client role (repeatable).
    #[arg(
        long = "client-key",
        value_name = "KEY",
        env = "MIDDLEMAN_CLIENT_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub client_keys: Vec<String>,

    /// A file of keys, one `service KEY` or `client KEY` per line (`#` comments), added to
    /// the keys given otherwise; re-read on SIGHUP without dropping connections.
    #[arg(long = "keys-file", env = "MIDDLEMAN_KEYS_FILE", value_name = "FILE")]
    pub keys_file: Option<PathBuf>,
}

/// How long the broker waits for a peer, and for itself at shutdown.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Timeouts")]
pub struct Timeouts {
    /// How long a REQ waits for its RES before the requester gets `timeout` (0: forever).
    #[arg(
        long = "request-timeout",
        env = "MIDDLEMAN_REQUEST_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub request_timeout: Duration,

    /// How long a new connection has to upgrade and send its key.
    #[arg(
        long = "auth-timeout",
        env = "MIDDLEMAN_AUTH_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub auth_timeout: Duration,

    /// How often the broker pings a connection it has not heard from; one that shows no sign
    /// of life for two intervals is closed (0: never).
    #[arg(
        long = "ping-interval",
        env = "MIDDLEMAN_PING_INTERVAL",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub ping_interval: Duration,

    /// How long shutdown waits for connections to flush and close.
    #[arg(
        long = "drain-timeout",
        env = "MIDDLEMAN_DRAIN_TIMEOUT",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub drain_timeout: Duration,
}

/// How the broker uses the machine.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Runtime")]
pub struct Tuning {
    /// Number of shards (one thread per CPU), 1 to 64. Default: every CPU in the affinity
    /// mask.
    #[arg(long = "shards", env = "MIDDLEMAN_SHARDS", value_name = "N")]
    pub shards: Option<usize>,

    /// How long an idle shard spins before it parks (0: park at once). Spinning cuts the
    /// wake-up latency of a parked shard (tens of microseconds on a VM) at the price of CPU
    /// time; use it on CPUs dedicated to the broker.
    #[arg(
        long = "spin-before-park",
        env = "MIDDLEMAN_SPIN_BEFORE_PARK",
        value_name = "DURATION",
        default_value = "0",
        value_parser = parse_duration
    )]
    pub spin_before_park: Duration,
}

/// What the operator sees: the admin endpoint and the logs.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Admin and logging")]
pub struct Admin {
    /// Address for the admin endpoint (GET /metrics, /healthz, /stats); off when not given.
    #[arg(long = "admin-listen", env = "MIDDLEMAN_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(
        long = "log-level",
        env = "MIDDLEMAN_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info",
        value_parser = parse_level
    )]
    pub log_level: LevelFilter,

    /// Log line format: text, or json (one object per line).
    #[arg(long = "log-format", env = "MIDDLEMAN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Why a configuration cannot work. `Display` is the one line the broker prints before it
/// exits; it names the flag and never includes a key.
#[derive(Debug)]
pub enum ConfigError {
    TopicBytesTooSmall,
    TooFewHeaders,
    MessageBytesTooSmall,
    TlsListenWithoutCertificate,
    ShardsOutOfRange,
    /// No key anywhere, and a listen address other peers can reach.
    NoKeysOffLoopback,
    KeysFileUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A keys-file line (1-based) that is neither `service KEY` nor `client KEY`.
    KeysFileUnknownRole {
        path: PathBuf,
        line: usize,
    },
    /// A keys-file line (1-based) with a role but no key.
    KeysFileMissingKey {
        path: PathBuf,
        line: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TopicBytesTooSmall => write!(
                f,
                "--max-topic-bytes must be at least {PRIVATE_TOPIC_BYTES} (the private topic \
                 MSG:<cid>)"
            ),
            Self::TooFewHeaders => write!(
                f,
                "--max-headers must be at least {HEADERS_MIN} (a request's ReqID, Rid and one \
                 more)"
            ),
            Self::MessageBytesTooSmall => {
                write!(f, "--max-message-bytes must be at least {MESSAGE_BYTES_MIN}")
            }
            Self::TlsListenWithoutCertificate => {
                f.write_str("--tls-listen needs --tls-cert and --tls-key")
            }
            Self::ShardsOutOfRange => write!(f, "--shards must be between 1 and {SHARDS_MAX}"),
            Self::NoKeysOffLoopback => f.write_str(
                "no keys configured and a listen address is not loopback: give --service-key \
                 and --client-key (or MIDDLEMAN_SERVICE_KEYS / MIDDLEMAN_CLIENT_KEYS, or \
                 --keys-file); the development keys are only used on loopback",
            ),
            Self::KeysFileUnreadable { path, error } => {
                write!(f, "cannot read keys file {}: {error}", path.display())
            }
            Self::KeysFileUnknownRole { path, line } => {
                write!(f, "{} line {line}: expected `service KEY` or `client KEY`", path.display())
            }
            Self::KeysFileMissingKey { path, line } => {
                write!(f, "{} line {line}: the key is missing", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::KeysFileUnreadable { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The runtime reports every start-up failure as one line of text; a configuration error is
/// one of them.
impl From<ConfigError> for String {
    fn from(error: ConfigError) -> String {
        error.to_string()
    }
}

impl Config {
    /// Parses `args` (the program name first) and the `MIDDLEMAN_*` environment. The matches
    /// are returned too: they know where each value came from, for [`Config::effective`].
    pub fn parse_with_matches<I, T>(args: I) -> Result<(Config, ArgMatches), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let config = Self::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        Ok((config, matches))
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.topic_bytes_max < PRIVATE_TOPIC_BYTES {
            return Err(ConfigError::TopicBytesTooSmall);
        }
        if limits.headers_max < HEADERS_MIN {
            return Err(ConfigError::TooFewHeaders);
        }
        let listeners = &self.listeners;
        if !listeners.tls_listen.is_empty()
            && (listeners.tls_cert.is_none() || listeners.tls_key.is_none())
        {
            return Err(ConfigError::TlsListenWithoutCertificate);
        }
        if limits.message_bytes_max < MESSAGE_BYTES_MIN {
            return Err(ConfigError::MessageBytesTooSmall);
        }
        if self.tuning.shards.is_some_and(|n| n == 0 || n > SHARDS_MAX) {
            return Err(ConfigError::ShardsOutOfRange);
        }
        Ok(())
    }

    /// The keys to accept and whether they are the development keys, or why the broker must
    /// not start. Reads `--keys-file` each time (SIGHUP calls it again).
    pub fn keys(&self) -> Result<(Keys, bool), ConfigError> {
        let (lists, development) = self.key_lists()?;
        Ok((Keys::new(lists.service, lists.client), development))
    }

    /// The keys from the file and from the flags or environment, or the development keys when
    /// there are none and every listener is on loopback.
    fn key_lists(&self) -> Result<(KeyLists, bool), ConfigError> {
        let mut lists = match &self.auth.keys_file {
            Some(path) => read_keys_file(path)?,
            None => KeyLists::default(),
        };
        lists.service.extend(given_keys(&self.auth.service_keys));
        lists.client.extend(given_keys(&self.auth.client_keys));
        if !lists.service.is_empty() || !lists.client.is_empty() {
            return Ok((lists, false));
        }
        let listeners = &self.listeners;
        if listeners.listen.iter().chain(&listeners.tls_listen).all(|a| a.ip().is_loopback()) {
            let development = KeyLists {
                service: vec![DEV_SERVICE_KEY.into()],
                client: vec![DEV_CLIENT_KEY.into()],
            };
            return Ok((development, true));
        }
        Err(ConfigError::NoKeysOffLoopback)
    }

    /// The effective configuration for `--print-config`: one `name = value` line per flag
    /// that takes a value, in `--help` order and sections, each marked with where its value
    /// came from, then how many keys there are in all. `matches` must come from
    /// [`Config::parse_with_matches`] (they are what this configuration was built from).
    pub fn effective(&self, matches: &ArgMatches) -> String {
        let command = Self::command();
        let mut sections: Vec<(&str, Vec<String>)> = Vec::new();
        for arg in command.get_arguments() {
            // A switch (`--print-config`, `--help`) is an action, not configuration.
            let (Some(long), ArgAction::Set | ArgAction::Append) =
                (arg.get_long(), arg.get_action())
            else {
                continue;
            };
            let heading = arg.get_help_heading().unwrap_or("Options");
            if sections.last().is_none_or(|(h, _)| *h != heading) {
                sections.push((heading, Vec::new()));
            }
            if let Some((_, lines)) = sections.last_mut() {
                lines.push(format!("{long} = {}", shown_value(arg, matches)));
            }
        }
        let mut out = String::new();
        for (heading, lines) in sections {
            let _ = writeln!(out, "# {heading}");
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            if heading == KEYS_HEADING {
                let _ = writeln!(out, "keys = {}", self.keys_summary());
            }
        }
        out
    }

    /// How many keys the broker would accept, counting the keys file; never a key.
    fn keys_summary(&self) -> String {
        match self.key_lists() {
            Ok((_, true)) => "development keys (loopback only)".to_owned(),
            Ok((lists, false)) => format!(
                "{} service key(s), {} client key(s) (masked)",
                lists.service.len(),
                lists.client.len()
            ),
            Err(e) => format!("none: {e}"),
        }
    }
}

/// One flag's value as `--print-config` shows it: as given (command line, variable or
/// default) and where it came from; keys only counted.
fn shown_value(arg: &clap::Arg, matches: &ArgMatches) -> String {
    let id = arg.get_id().as_str();
    let raw: Vec<String> = match matches.try_get_raw(id) {
        Ok(Some(values)) => values.map(|v| v.to_string_lossy().into_owned()).collect(),
        _ => Vec::new(),
    };
    if raw.is_empty() {
        return "(not set)".to_owned();
    }
    let value = if arg.get_long() == Some("cluster-nats") {
        // NATS URLs are worth seeing; only their `user:password@` is secret.
        raw.iter().map(|u| crate::cluster::config::redact(u)).collect::<Vec<_>>().join(", ")
    } else if arg.is_hide_env_values_set() {
        // The one marker of a secret, shared with `--help`, which hides the variable's value.
        format!("{} key(s) (masked)", raw.iter().filter(|k| !k.is_empty()).count())
    } else {
        raw.join(", ")
    };
    match matches.value_source(id) {
        Some(ValueSource::EnvVariable) => {
            let variable = arg.get_env().map(|v| v.to_string_lossy()).unwrap_or_default();
            format!("{value}  # from {variable}")
        }
        Some(ValueSource::DefaultValue) => format!("{value}  # default"),
        _ => value,
    }
}

/// The keys given by flag or variable; an empty one (`a,,b`) is no key.
fn given_keys(keys: &[String]) -> impl Iterator<Item = Vec<u8>> + '_ {
    keys.iter().filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec())
}

/// Service keys and client keys, as the file or the flags gave them. No `Debug`: it holds
/// keys.
#[derive(Default)]
pub struct KeyLists {
    pub service: Vec<Vec<u8>>,
    pub client: Vec<Vec<u8>>,
}

/// Reads a keys file: `service KEY` or `client KEY` per line; blank lines and lines starting
/// with `#` are skipped. The error names the line, never the key.
pub fn read_keys_file(path: &Path) -> Result<KeyLists, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::KeysFileUnreadable { path: path.to_owned(), error })?;
    let mut lists = KeyLists::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (role, key) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let key = key.trim();
        let list = match role {
            "service" => &mut lists.service,
            "client" => &mut lists.client,
            _ => {
                return Err(ConfigError::KeysFileUnknownRole { path: path.to_owned(), line: n + 1 })
            }
        };
        if key.is_empty() {
            return Err(ConfigError::KeysFileMissingKey { path: path.to_owned(), line: n + 1 });
        }
        list.push(key.as_bytes().to_vec());
    }
    Ok(lists)
}

/// The one line `main` prints for a command line that does not parse: clap's first line,
/// plus the variable the value came from when it was not on the command line (in a container
/// the variable is easy to overlook).
pub fn error_line(error: &clap::Error, args: &[OsString]) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    let mut line = first.trim_start_matches("error: ").to_owned();
    let flag = match error.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(arg)) => arg.split([' ', '=']).next(),
        _ => None,
    };
    let command = Config::command();
    let arg = flag
        .and_then(|f| f.strip_prefix("--"))
        .and_then(|long| command.get_arguments().find(|a| a.get_long() == Some(long)));
    if let Some(arg) = arg {
        let long = format!("--{}", arg.get_long().unwrap_or_default());
        let on_command_line = args.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == long || a.strip_prefix(long.as_str()).is_some_and(|rest| rest.starts_with('='))
        });
        if let Some(variable) = arg.get_env().filter(|v| std::env::var_os(v).is_some()) {
            if !on_command_line {
                let _ = write!(line, " (from {})", variable.to_string_lossy());
            }
        }
    }
    line
}

/// Parses a log level name.
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a log level (error, warn, info, debug, trace, off)"))
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
    let too_long = || format!("`{text}` is too long");
    Ok(match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => return Err(format!("`{text}`: a duration needs a unit: us, ms, s, m or h")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> (Config, ArgMatches) {
        let args = std::iter::once("middleman").chain(args.iter().copied());
        Config::parse_with_matches(args).expect("the arguments parse")
    }

    /// A keys file in the system's temporary directory, removed on drop.
    struct KeysFile(PathBuf);

    impl KeysFile {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("middleman-config-{}-{name}.keys", std::process::id()));
            std::fs::write(&path, text).expect("write the keys file");
            Self(path)
        }
    }

    impl Drop for KeysFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("9999999999999999999h").is_err(), "overflows, must not panic");
    }

    #[test]
    fn flags_land_in_their_groups() {
        let (c, _) = parse(&[
            "--listen",
            "127.0.0.1:1,127.0.0.1:2",
            "--max-pending-bytes",
            "64KiB",
            "--slow-consumer",
            "drop",
            "--request-timeout",
            "0",
            "--shards",
            "3",
            "--admin-listen",
            "127.0.0.1:9",
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "https://b.example",
        ]);
        assert_eq!(c.listeners.listen.len(), 2, "a comma list on the command line too");
        assert_eq!(c.listeners.allowed_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(c.limits.pending_bytes_max, 64 << 10);
        assert_eq!(c.limits.slow_consumer, crate::limits::SlowConsumer::Drop);
        assert_eq!(c.timeouts.request_timeout, Duration::ZERO);
        assert_eq!(c.tuning.shards, Some(3));
        assert_eq!(c.admin.admin_listen, "127.0.0.1:9".parse().ok());
        // Untouched flags keep the defaults the README documents.
        assert_eq!(c.limits.message_bytes_max, 1 << 20);
        assert_eq!(c.limits.headers_max, 64);
        assert_eq!(c.limits.connections_max, 100_000);
        assert_eq!(c.timeouts.auth_timeout, Duration::from_secs(10));
        assert_eq!(c.timeouts.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.admin.log_format, LogFormat::Text);
        assert!(!c.print_config);
    }

    /// The naming rule of the module doc, checked against clap's own description of the
    /// flags, so a flag added without its variable (or with a misspelt one) fails here.
    #[test]
    fn every_flag_has_its_variable() {
        let command = Config::command();
        let mut seen = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let expected = match long {
                "service-key" => "MIDDLEMAN_SERVICE_KEYS".to_owned(),
                "client-key" => "MIDDLEMAN_CLIENT_KEYS".to_owned(),
                _ => format!("MIDDLEMAN_{}", long.to_ascii_uppercase().replace('-', "_")),
            };
            assert_eq!(arg.get_env().and_then(|v| v.to_str()), Some(expected.as_str()), "--{long}");
            // NATS URLs may hold `user:password@`: `--help` hides their variable's value.
            let secret = matches!(long, "service-key" | "client-key" | "cluster-nats");
            assert_eq!(arg.is_hide_env_values_set(), secret, "--{long}: hide_env_values");
            if matches!(arg.get_action(), ArgAction::Append) {
                assert_eq!(arg.get_value_delimiter(), Some(','), "--{long} takes a comma list");
            }
            seen += 1;
        }
        assert!(seen > 20, "only {seen} flags: the loop did not see them all");
    }

    #[test]
    fn validate_names_the_flag() {
        for (args, expected) in [
            (&["--max-topic-bytes", "23"][..], "--max-topic-bytes must be at least 24"),
            (&["--max-headers", "2"], "--max-headers must be at least 3"),
            (&["--max-message-bytes", "63"], "--max-message-bytes must be at least 64"),
            (&["--tls-listen", "127.0.0.1:0"], "--tls-listen needs --tls-cert and --tls-key"),
            (&["--shards", "0"], "--shards must be between 1 and 64"),
            (&["--shards", "65"], "--shards must be between 1 and 64"),
        ] {
            let (c, _) = parse(args);
            let error = c.validate().expect_err(expected).to_string();
            assert!(error.starts_with(expected), "{args:?}: {error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
        for args in [&["--shards", "1"][..], &["--shards", "64"], &["--max-topic-bytes", "24"]] {
            assert!(parse(args).0.validate().is_ok(), "{args:?}");
        }
    }

    #[test]
    fn effective_config_masks_keys() {
        let (c, m) = parse(&["--service-key", "s3cret", "--client-key", "pub1"]);
        let shown = c.effective(&m);
        assert!(!shown.contains("s3cret") && !shown.contains("pub1"), "{shown}");
        assert!(shown.contains("keys = 1 service key(s), 1 client key(s) (masked)"), "{shown}");
        assert!(shown.contains("service-key = 1 key(s) (masked)\n"), "{shown}");
        assert!(shown.contains("max-pending-bytes = 8MiB  # default"), "{shown}");
        assert!(shown.contains("shards = (not set)"), "{shown}");
    }

    #[test]
    fn effective_config_shows_cluster_flags_without_passwords() {
        let urls = "nats://u:s3cret@h:4222,nats://h2:4222";
        let (c, m) = parse(&["--cluster-nats", urls, "--node-name", "n1"]);
        assert!(c.cluster.enabled());
        let shown = c.effective(&m);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("cluster-nats = nats://***@h:4222, nats://h2:4222\n"), "{shown}");
        assert!(shown.contains("node-name = n1\n"), "{shown}");
        assert!(shown.contains("cluster-prefix = mm  # default"), "{shown}");
        assert!(shown.contains("cluster-nats-creds = (not set)"), "{shown}");
    }

    #[test]
    fn effective_config_lists_every_flag_that_takes_a_value() {
        let (c, m) = parse(&["--max-headers", "9"]);
        let shown = c.effective(&m);
        let command = Config::command();
        for arg in command.get_arguments() {
            let long = arg.get_long().expect("every argument is a flag");
            let listed = shown.lines().any(|l| l.starts_with(&format!("{long} = ")));
            assert_eq!(listed, long != "print-config", "--{long}:\n{shown}");
        }
        assert!(shown.contains("\nmax-headers = 9\n"), "no source mark on a flag: {shown}");
        assert!(shown.starts_with("# Listeners and TLS\nlisten = 127.0.0.1:8765  # default\n"));
    }

    #[test]
    fn keys_from_the_file_are_counted_and_never_shown() {
        let file = KeysFile::new(
            "count",
            "# the team's keys\nservice file-secret-1\nservice file-secret-2\n\nclient file-secret-3\n",
        );
        let path = file.0.to_str().expect("a UTF-8 temporary path");
        let (c, m) = parse(&["--keys-file", path, "--client-key", "flag-secret-4"]);
        let shown = c.effective(&m);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("keys = 2 service key(s), 2 client key(s) (masked)"), "{shown}");
        assert!(shown.contains(&format!("keys-file = {path}\n")), "{shown}");
        let (keys, development) = c.keys().expect("keys");
        assert!(!development);
        assert!(keys.role(b"file-secret-2") == Some(crate::auth::Role::Service));
        assert!(keys.role(b"flag-secret-4") == Some(crate::auth::Role::Client));
    }

    #[test]
    fn a_bad_keys_file_names_the_line_never_the_key() {
        let file = KeysFile::new("bad", "service good-secret\nadmin bad-secret\n");
        let (c, m) = parse(&["--keys-file", file.0.to_str().expect("a UTF-8 path")]);
        let error = c.keys().expect_err("an unknown role");
        assert!(matches!(error, ConfigError::KeysFileUnknownRole { line: 2, .. }), "{error:?}");
        assert!(!error.to_string().contains("secret"), "{error}");
        let shown = c.effective(&m);
        assert!(shown.contains("keys = none: ") && !shown.contains("secret"), "{shown}");
        let missing = KeysFile::new("missing", "client\n");
        let (c, _) = parse(&["--keys-file", missing.0.to_str().expect("a UTF-8 path")]);
        assert!(matches!(c.keys(), Err(ConfigError::KeysFileMissingKey { line: 1, .. })));
        let (c, _) = parse(&["--keys-file", "/nonexistent/middleman.keys"]);
        assert!(matches!(c.keys(), Err(ConfigError::KeysFileUnreadable { .. })));
    }

    #[test]
    fn dev_keys_only_on_loopback() {
        let (c, m) = parse(&[]);
        let (keys, dev) = c.keys().unwrap();
        assert!(dev);
        assert!(keys.role(b"xyzzy").is_some());
        assert!(c.effective(&m).contains("keys = development keys (loopback only)"));
        let (c, _) = parse(&["--listen", "0.0.0.0:8765"]);
        assert!(matches!(c.keys(), Err(ConfigError::NoKeysOffLoopback)));
        let (c, _) = parse(&["--listen", "0.0.0.0:8765", "--service-key", "s"]);
        let (keys, dev) = c.keys().unwrap();
        assert!(!dev);
        assert!(keys.role(b"xyzzy").is_none());
        let (c, _) = parse(&["--listen", "0.0.0.0:8765", "--service-key", ""]);
        assert!(c.keys().is_err(), "an empty key is no key");
    }
}
