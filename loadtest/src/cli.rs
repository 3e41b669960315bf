//! Command-line arguments and the small value parsers behind them (durations, sizes, rates,
//! CPU lists, `ws://` and `wss://` URLs).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::tls::ClientTls;

#[derive(Parser, Debug)]
#[command(
    name = "middleman-loadtest",
    version,
    about = "Load generator for middleman (and nats-server, for comparison)",
    long_about = "Drives a middleman broker (or nats-server's WebSocket listener) with fan-out, \
                  request/response or idle-connection load and reports throughput, loss, \
                  order violations, latency percentiles and its own CPU use."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// WebSocket URL(s) of the broker: ws://, or wss:// for TLS (needs --tls-ca). Repeat it
    /// or separate URLs with commas to spread connections over several brokers (nodes): the
    /// i-th connection of a kind goes to URL i % count.
    #[arg(long, global = true, value_delimiter = ',', default_value = "ws://127.0.0.1:8765/")]
    pub url: Vec<String>,
    /// URL(s) for publishers and requesters only (default: --url), dealt the same way.
    #[arg(long = "pub-url", global = true, value_delimiter = ',', value_name = "URL")]
    pub pub_url: Vec<String>,
    /// URL(s) for subscribers and responders only (default: --url), dealt the same way.
    #[arg(long = "sub-url", global = true, value_delimiter = ',', value_name = "URL")]
    pub sub_url: Vec<String>,
    /// wss://: PEM certificate(s) to trust, e.g. the broker's self-signed certificate.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// wss://: the name the broker's certificate must carry (default: the URL's host; an IP
    /// address is checked as an IP address).
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Service (trusted) API key: used by publishers, subscribers, requesters and responders.
    #[arg(long, global = true, default_value = "xyzzy")]
    pub service_key: String,
    /// Client (untrusted) API key: used by the idle connections of `connections`.
    #[arg(long, global = true, default_value = "plugh")]
    pub client_key: String,
    /// Generator threads; connections are spread over them round-robin.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Pin generator thread i to CPU cpus[i % len], e.g. `0` or `0,1` or `0-3`.
    #[arg(long, global = true, value_parser = parse_cpus)]
    #[serde(skip)]
    pub cpus: Option<CpuList>,
    /// How long to measure, after the warm-up (`10s`, `500ms`, `1m`).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// Load before measuring starts; not counted.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "seconds")]
    pub warmup: Duration,
    /// After the run, how long to wait for messages still in flight before counting the
    /// missing ones as lost.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "seconds")]
    pub drain: Duration,
    /// Print exactly one JSON object on stdout and nothing else.
    #[arg(long, global = true)]
    pub json: bool,
    /// Wire protocol of the broker under test.
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Middleman)]
    pub protocol: Protocol,
    /// The broker's process id: its CPU use and resident memory are reported too.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// middleman protocol in WebSocket text frames.
    Middleman,
    /// NATS text protocol in WebSocket binary frames (nats-server `websocket {}` listener).
    Nats,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Publishers to subscribers over topics: throughput, loss, order, latency.
    Fanout(FanoutArgs),
    /// Requesters with a fixed number of requests in flight against echoing responders.
    Reqres(ReqresArgs),
    /// Many idle authenticated connections: connect rate and server memory per connection.
    Connections(ConnectionsArgs),
    /// Markdown table of medians from `label<TAB>broker<TAB>json` lines (used by compare.sh).
    Summarize(SummarizeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SummarizeArgs {
    /// File of run lines; `-` reads standard input.
    #[arg(default_value = "-")]
    pub input: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Publisher p publishes to topic p % topics (or, with more topics than publishers, to
    /// topics p, p + P, ... in turn); subscriber s subscribes to topic s % topics.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Body bytes per message (at least 16), e.g. `128`, `4KiB`.
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub payload: usize,
    /// Total messages per second over all publishers (`100000`, `250k`, `1.5M`), sent open
    /// loop at their intended times; or `max`: each publisher as fast as its window allows.
    #[arg(long, default_value = "max", value_parser = parse_rate)]
    pub rate: Rate,
    /// With `--rate max`: how many messages a publisher may be ahead of the slowest subscriber
    /// of its topic.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// With `--rate max`: also keep the messages ahead under this many body bytes, so large
    /// payloads do not queue gigabytes in the broker (the window is the smaller of the two).
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    pub window_bytes: usize,
}

impl FanoutArgs {
    /// Messages a `--rate max` publisher may be ahead: `--window`, capped by `--window-bytes`.
    pub fn effective_window(&self) -> u64 {
        let by_bytes = (self.window_bytes / self.payload.max(1)).max(1) as u64;
        self.window.min(by_bytes).max(1)
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ReqresArgs {
    #[arg(long, default_value_t = 1)]
    pub requesters: usize,
    /// Requests each requester keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub outstanding: usize,
    #[arg(long, default_value_t = 1)]
    pub responders: usize,
    /// Body bytes per request (at least 16); responses echo it.
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub payload: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectionsArgs {
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Connection attempts in progress at once, per thread (keeps the listen backlog sane).
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Spread connections over this many loopback source addresses (127.0.0.1 up to
    /// 127.0.0.254) so the ephemeral ports of one address do not run out. 0 disables.
    #[arg(long, default_value_t = 254)]
    pub source_addresses: u8,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

/// A number of messages per second, or the string `"max"`.
impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::PerSecond(r) => s.serialize_f64(*r),
            Rate::Max => s.serialize_str("max"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// `2s`, `500ms`, `250us`, `1m`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration (like 2s, 500ms, 1m)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit `{other}` in `{text}`")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `128`, `4KiB`, `1MiB`, `4k` (decimal kilo), `2kB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize =
        number.parse().map_err(|_| format!("`{text}` is not a size (like 128, 4KiB)"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1000,
        "KiB" | "Ki" => 1024,
        "M" | "MB" => 1_000_000,
        "MiB" | "Mi" => 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    value.checked_mul(scale).ok_or_else(|| format!("`{text}` is too large"))
}

/// `max`, or messages per second: `5000`, `250k`, `1.5M`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    let (number, scale) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 1e3),
        Some(b'M') => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a rate (like 10000, 250k, 1M, max)"))?;
    let rate = value * scale;
    if !rate.is_finite() || rate <= 0.0 {
        return Err(format!("rate `{text}` must be positive"));
    }
    Ok(Rate::PerSecond(rate))
}

/// `0`, `0,1`, `0-3`, `0,2-3`.
pub fn parse_cpus(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a CPU number or range");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err("empty CPU list".to_string());
    }
    Ok(CpuList(cpus))
}

/// Where to connect and what to put in the upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as written, for the Host header.
    pub host: String,
    /// The host without the port (IPv6 addresses keep their brackets): the default TLS server
    /// name.
    pub hostname: String,
    pub path: String,
    /// The URL is `wss://`.
    pub secure: bool,
    /// Set for `wss://` by [`target`] (not by [`parse_url`], which reads no files).
    pub tls: Option<ClientTls>,
}

/// Parses a `ws://` or `wss://` URL (default ports 80 and 443) and resolves its host.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else {
        return Err(format!("`{url}`: only ws:// and wss:// URLs are supported"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("`{url}`: no host"));
    }
    let (host, hostname) = match authority.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') => (authority.to_string(), name.to_string()),
        _ => {
            let port = if secure { 443 } else { 80 };
            (format!("{authority}:{port}"), authority.to_string())
        }
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("`{url}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{url}`: host has no address"))?;
    Ok(Target { addr, host, hostname, path: path.to_string(), secure, tls: None })
}

/// Which URL list a connection takes its URL from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Publishers and requesters: `--pub-url`, else `--url`.
    Publisher,
    /// Subscribers and responders: `--sub-url`, else `--url`.
    Subscriber,
    /// Idle connections: `--url`.
    Other,
}

/// The brokers of a run and which connection goes where. A side's list is dealt round-robin
/// by the connection's rank within its kind: publisher p gets `pub[p % len]`, subscriber s gets
/// `sub[s % len]`, idle connection c gets `url[c % len]`. So "publisher on node A, subscribers
/// on A and B" is `--pub-url A --sub-url A,B`.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Every distinct URL, in the order first named.
    pub list: Vec<Target>,
    pub urls: Vec<String>,
    publishers: Vec<usize>,
    subscribers: Vec<usize>,
    others: Vec<usize>,
}

impl Targets {
    /// Index into `list` of the target of the `rank`-th connection of `side`.
    pub fn index(&self, side: Side, rank: usize) -> usize {
        let dealt = match side {
            Side::Publisher => &self.publishers,
            Side::Subscriber => &self.subscribers,
            Side::Other => &self.others,
        };
        dealt[rank % dealt.len()]
    }

    pub fn pick(&self, side: Side, rank: usize) -> &Target {
        &self.list[self.index(side, rank)]
    }

    /// Some connection uses TLS.
    pub fn tls(&self) -> bool {
        self.list.iter().any(|t| t.tls.is_some())
    }

    /// Every target is an IPv4 loopback address.
    pub fn loopback(&self) -> bool {
        self.list.iter().all(|t| match t.addr.ip() {
            std::net::IpAddr::V4(ip) => ip.is_loopback(),
            std::net::IpAddr::V6(_) => false,
        })
    }

    /// The URLs, comma-separated, for the report.
    pub fn describe(&self) -> String {
        self.urls.join(",")
    }
}

/// The run's targets from `--url`, `--pub-url` and `--sub-url`, with the TLS configuration for
/// `wss://` ones (`--tls-ca`, `--tls-server-name`).
pub fn targets(common: &Common) -> Result<Targets, String> {
    let mut targets = Targets {
        list: Vec::new(),
        urls: Vec::new(),
        publishers: Vec::new(),
        subscribers: Vec::new(),
        others: Vec::new(),
    };
    let lists = [(&common.url, 0), (&common.pub_url, 1), (&common.sub_url, 2)];
    for (urls, which) in lists {
        for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
            let i = match targets.urls.iter().position(|u| u == url) {
                Some(i) => i,
                None => {
                    targets.list.push(target(common, url)?);
                    targets.urls.push(url.to_string());
                    targets.list.len() - 1
                }
            };
            [&mut targets.others, &mut targets.publishers, &mut targets.subscribers][which].push(i);
        }
    }
    if targets.others.is_empty() {
        return Err("--url: no URL given".into());
    }
    if targets.publishers.is_empty() {
        targets.publishers = targets.others.clone();
    }
    if targets.subscribers.is_empty() {
        targets.subscribers = targets.others.clone();
    }
    if !targets.tls() && (common.tls_ca.is_some() || common.tls_server_name.is_some()) {
        return Err("--tls-ca and --tls-server-name need a wss:// URL".into());
    }
    Ok(targets)
}

/// One target, with its TLS configuration if it is `wss://`.
fn target(common: &Common, url: &str) -> Result<Target, String> {
    let mut target = parse_url(url)?;
    if !target.secure {
        return Ok(target);
    }
    let ca = common.tls_ca.as_ref().ok_or_else(|| {
        format!("`{url}`: wss:// needs --tls-ca FILE (the PEM certificate(s) to trust)")
    })?;
    let name = common.tls_server_name.as_deref().unwrap_or(&target.hostname);
    target.tls = Some(ClientTls::new(ca, name)?);
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128"), Ok(128));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4k"), Ok(4000));
        assert_eq!(parse_size("16B"), Ok(16));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("MAX"), Ok(Rate::Max));
        assert_eq!(parse_rate("5000"), Ok(Rate::PerSecond(5000.0)));
        assert_eq!(parse_rate("250k"), Ok(Rate::PerSecond(250_000.0)));
        assert_eq!(parse_rate("1.5M"), Ok(Rate::PerSecond(1_500_000.0)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0"), Ok(CpuList(vec![0])));
        assert_eq!(parse_cpus("0,1"), Ok(CpuList(vec![0, 1])));
        assert_eq!(parse_cpus("0,2-4"), Ok(CpuList(vec![0, 2, 3, 4])));
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("a").is_err());
        assert!(parse_cpus("").is_err());
    }

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:8765/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8765".parse().unwrap());
        assert_eq!((t.host.as_str(), t.path.as_str()), ("127.0.0.1:8765", "/"));
        let t = parse_url("ws://127.0.0.1:9/x/y").unwrap();
        assert_eq!(t.path, "/x/y");
        let t = parse_url("ws://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert!(!t.secure);
        assert_eq!(t.hostname, "127.0.0.1");
        assert!(parse_url("http://127.0.0.1/").is_err());
        assert!(parse_url("ws:///").is_err());
    }

    #[test]
    fn wss_urls() {
        let t = parse_url("wss://127.0.0.1").unwrap();
        assert!(t.secure);
        assert_eq!(t.addr, "127.0.0.1:443".parse().unwrap());
        assert_eq!((t.host.as_str(), t.hostname.as_str()), ("127.0.0.1:443", "127.0.0.1"));
        assert_eq!(t.path, "/");
        assert_eq!(t.tls, None, "parse_url reads no certificates");
        let t = parse_url("wss://127.0.0.1:8443/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!((t.host.as_str(), t.hostname.as_str()), ("127.0.0.1:8443", "127.0.0.1"));
        assert_eq!(t.path, "/ws");
        let t = parse_url("wss://[::1]/").unwrap();
        assert_eq!(t.addr, "[::1]:443".parse().unwrap());
        assert_eq!(t.hostname, "[::1]");
        assert!(parse_url("wss:/127.0.0.1/").is_err());
    }

    #[test]
    fn wss_needs_a_ca_and_ws_refuses_tls_options() {
        let common = |args: &[&str]| {
            let mut all = vec!["middleman-loadtest"];
            all.extend(args);
            all.push("reqres");
            Cli::try_parse_from(all).unwrap().common
        };
        let err = targets(&common(&["--url", "wss://127.0.0.1:9/"])).unwrap_err();
        assert!(err.contains("--tls-ca"), "{err}");
        let err =
            targets(&common(&["--url", "ws://127.0.0.1:9/", "--tls-ca", "x.pem"])).unwrap_err();
        assert!(err.contains("wss://"), "{err}");
        assert!(!targets(&common(&["--url", "ws://127.0.0.1:9/"])).unwrap().tls());
    }

    #[test]
    fn url_lists_are_dealt_round_robin_per_side() {
        let common = |args: &[&str]| {
            let mut all = vec!["middleman-loadtest"];
            all.extend(args);
            all.push("fanout");
            Cli::try_parse_from(all).unwrap().common
        };
        let (a, b, c) = ("ws://127.0.0.1:1/", "ws://127.0.0.1:2/", "ws://127.0.0.1:3/");
        // Comma-separated and repeated are the same list.
        let list = format!("{a},{b}");
        let t = targets(&common(&["--url", &list, "--url", c])).unwrap();
        assert_eq!(t.urls, vec![a, b, c]);
        let dealt: Vec<usize> = (0..5).map(|r| t.index(Side::Subscriber, r)).collect();
        assert_eq!(dealt, vec![0, 1, 2, 0, 1]);
        assert_eq!(t.index(Side::Publisher, 4), 1);
        assert_eq!(t.describe(), format!("{a},{b},{c}"));
        // Publisher on A, subscribers on A and B; idle connections keep --url.
        let t = targets(&common(&["--url", c, "--pub-url", a, "--sub-url", &list])).unwrap();
        assert_eq!(t.urls, vec![c, a, b]);
        assert_eq!((0..3).map(|r| t.index(Side::Publisher, r)).collect::<Vec<_>>(), vec![1; 3]);
        let subs: Vec<usize> = (0..4).map(|r| t.index(Side::Subscriber, r)).collect();
        assert_eq!(subs, vec![1, 2, 1, 2]);
        assert_eq!(t.index(Side::Other, 7), 0);
        assert_eq!(t.pick(Side::Subscriber, 1).addr, "127.0.0.1:2".parse().unwrap());
        assert!(targets(&common(&["--url", "http://127.0.0.1:1/"])).is_err());
    }

    #[test]
    fn window_is_capped_by_bytes() {
        let mut args = FanoutArgs {
            publishers: 1,
            subscribers: 1,
            topics: 1,
            payload: 128,
            rate: Rate::Max,
            window: 1000,
            window_bytes: 256 * 1024,
        };
        assert_eq!(args.effective_window(), 1000);
        args.payload = 4096;
        assert_eq!(args.effective_window(), 64);
        args.payload = 1 << 20;
        assert_eq!(args.effective_window(), 1);
    }

    #[test]
    fn command_line() {
        let cli = Cli::try_parse_from([
            "middleman-loadtest",
            "fanout",
            "--publishers",
            "4",
            "--subscribers",
            "100",
            "--payload",
            "4KiB",
            "--rate",
            "100k",
            "--duration",
            "500ms",
            "--cpus",
            "0",
            "--json",
        ])
        .unwrap();
        assert!(cli.common.json);
        assert_eq!(cli.common.duration, Duration::from_millis(500));
        assert_eq!(cli.common.cpus, Some(CpuList(vec![0])));
        assert_eq!(cli.common.protocol, Protocol::Middleman);
        match cli.command {
            Command::Fanout(f) => {
                assert_eq!((f.publishers, f.subscribers, f.payload), (4, 100, 4096));
                assert_eq!(f.rate, Rate::PerSecond(100_000.0));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "middleman-loadtest",
            "--protocol",
            "nats",
            "reqres",
            "--outstanding",
            "8",
        ])
        .unwrap();
        assert_eq!(cli.common.protocol, Protocol::Nats);
        assert!(matches!(cli.command, Command::Reqres(ReqresArgs { outstanding: 8, .. })));
        assert!(Cli::try_parse_from(["middleman-loadtest", "fanout", "--rate", "x"]).is_err());
    }
}
