//! The admin endpoint (`--admin-listen`, off by default): `GET /metrics` in the Prometheus
//! text format, `GET /healthz`, and `GET /stats` as JSON.
//!
//! It runs on its own plain thread, never on a shard, and serves one request at a time (it is
//! for a scraper and an operator, not for load). A scrape mails `Scrape` to every shard and
//! sums the answers: shards keep their counters as plain integers and nothing on the message
//! path touches a shared atomic. Nothing here ever includes a key.
//!
//! In a cluster it also reads the bridge's counters (`BridgeHandle::stats`, plain atomics the
//! bridge thread keeps; reading them never touches a shard), adds the `middleman_cluster_*`
//! series, and `/healthz` answers `200` with the body `degraded: cluster disconnected` while
//! NATS is unreachable: the node still serves its own clients, so a load balancer should keep
//! it (an operator who wants it drained alerts on `middleman_cluster_connected`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::cluster::bridge::{BridgeHandle, StatsSnapshot};
use crate::ids::ShardId;
use crate::limits::{ADMIN_REQUEST_BYTES_MAX, ADMIN_TIMEOUT};
use crate::protocol::message::Command;
use crate::protocol::reply::ErrorCode;
use crate::shard::mailbox::{Control, Mailboxes};
use crate::shard::Snapshot;

/// Binds `addr` and serves it on a new thread; returns the bound address.
pub(crate) fn spawn(
    addr: SocketAddr,
    mail: Mailboxes,
    cluster: Option<BridgeHandle>,
) -> Result<SocketAddr, String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
    let bound = listener.local_addr().map_err(|e| format!("admin listener: {e}"))?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &mail, cluster.as_ref()) {
                    tracing::debug!("admin request failed: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    Ok(bound)
}

fn handle(
    mut stream: TcpStream,
    mail: &Mailboxes,
    cluster: Option<&BridgeHandle>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || request.len() + n > ADMIN_REQUEST_BYTES_MAX {
            return respond(&mut stream, "400 Bad Request", "text/plain", "bad request\n");
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != b"GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n");
    }
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => match scrape(mail) {
            Some(s) => {
                let mut text = render_prometheus(&s);
                if let Some(bridge) = cluster {
                    render_cluster(&bridge.stats(), &mut text);
                }
                respond(&mut stream, "200 OK", PROMETHEUS_TYPE, &text)
            }
            None => unavailable(&mut stream),
        },
        b"/stats" => match scrape(mail) {
            Some(s) => respond(&mut stream, "200 OK", "application/json", &render_json(&s)),
            None => unavailable(&mut stream),
        },
        b"/healthz" => match scrape(mail) {
            Some(_) if cluster.is_some_and(|b| !b.connected()) => {
                respond(&mut stream, "200 OK", "text/plain", "degraded: cluster disconnected\n")
            }
            Some(_) => respond(&mut stream, "200 OK", "text/plain", "ok\n"),
            None => unavailable(&mut stream),
        },
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn unavailable(stream: &mut TcpStream) -> std::io::Result<()> {
    let body = "a shard did not answer in time\n";
    respond(stream, "503 Service Unavailable", "text/plain", body)
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// Asks every shard for its snapshot; `None` if one does not answer in time (a stuck shard is
/// what `/healthz` is for).
pub fn scrape(mail: &Mailboxes) -> Option<Vec<Snapshot>> {
    let shards = mail.shards();
    let (tx, rx) = crossbeam_channel::bounded(shards);
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    for s in 0..shards {
        let to = ShardId(s as u16);
        let mut letter = Control::Scrape { reply: tx.clone() };
        // An inbox can be full for a moment under load; retry rather than block.
        while let Err(back) = mail.try_send_control(to, letter) {
            if Instant::now() >= deadline {
                return None;
            }
            letter = back;
            std::thread::sleep(Duration::from_millis(1));
        }
        mail.wake(to);
    }
    let mut snapshots = Vec::with_capacity(shards);
    for _ in 0..shards {
        let left = deadline.saturating_duration_since(Instant::now());
        snapshots.push(rx.recv_timeout(left).ok()?);
    }
    snapshots.sort_by_key(|s| s.shard);
    Some(snapshots)
}

const ROLES: [&str; 2] = ["service", "client"];

/// The Prometheus text exposition (version 0.0.4).
pub fn render_prometheus(shards: &[Snapshot]) -> String {
    let mut out = String::with_capacity(4096);
    let sum = |f: &dyn Fn(&Snapshot) -> u64| shards.iter().map(f).sum::<u64>();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP middleman_{name} {help}\n# TYPE middleman_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "middleman_{name}{labels} {value}");
        }
    };
    let by_role = |f: &dyn Fn(&Snapshot, usize) -> u64| -> Vec<(String, u64)> {
        (0..2).map(|r| (format!("{{role=\"{}\"}}", ROLES[r]), sum(&|s| f(s, r)))).collect()
    };
    let one = |v: u64| vec![(String::new(), v)];
    let per_shard = |f: &dyn Fn(&Snapshot) -> u64| -> Vec<(String, u64)> {
        shards.iter().map(|s| (format!("{{shard=\"{}\"}}", s.shard), f(s))).collect()
    };

    metric(
        "connections",
        "gauge",
        "Authenticated connections now.",
        &by_role(&|s, r| s.connections[r]),
    );
    metric(
        "connections_total",
        "counter",
        "Authenticated connections since start.",
        &by_role(&|s, r| s.stats.connections_total[r]),
    );
    let mut messages: Vec<(String, u64)> = Command::ALL
        .iter()
        .map(|c| {
            (format!("{{command=\"{}\"}}", c.as_str()), sum(&|s| s.stats.messages_in[*c as usize]))
        })
        .collect();
    messages
        .push(("{command=\"unknown\"}".into(), sum(&|s| s.stats.messages_in[Command::ALL.len()])));
    metric("messages_in_total", "counter", "Messages handled, by command.", &messages);
    metric(
        "deliveries_total",
        "counter",
        "Messages queued to subscribers.",
        &one(sum(&|s| s.stats.deliveries)),
    );
    metric("bytes_in_total", "counter", "Bytes read from connections.", &one(sum(&|s| s.bytes_in)));
    metric(
        "bytes_out_total",
        "counter",
        "Bytes written to connections.",
        &one(sum(&|s| s.bytes_out)),
    );
    let errors: Vec<(String, u64)> = ErrorCode::ALL
        .iter()
        .map(|c| (format!("{{code=\"{}\"}}", c.as_str()), sum(&|s| s.stats.errors[*c as usize])))
        .collect();
    metric("errors_total", "counter", "Error messages sent, by code.", &errors);
    metric(
        "slow_consumers_total",
        "counter",
        "Slow consumers: connections closed, and messages dropped (--slow-consumer drop).",
        &[
            ("{action=\"closed\"}".into(), sum(&|s| s.slow_consumer_closes)),
            ("{action=\"dropped\"}".into(), sum(&|s| s.stats.dropped)),
        ],
    );
    metric(
        "requests_in_flight",
        "gauge",
        "Requests waiting for a response.",
        &one(sum(&|s| s.requests_in_flight)),
    );
    metric(
        "request_timeouts_total",
        "counter",
        "Requests answered with the timeout error.",
        &one(sum(&|s| s.stats.request_timeouts)),
    );
    metric(
        "auth_failures_total",
        "counter",
        "Connections refused for a bad key or an auth timeout.",
        &one(sum(&|s| s.auth_failures)),
    );
    metric(
        "protocol_errors_total",
        "counter",
        "Connections closed for breaking the WebSocket protocol.",
        &one(sum(&|s| s.protocol_errors)),
    );
    metric(
        "shard_connections",
        "gauge",
        "Authenticated connections now, per shard.",
        &per_shard(&|s| s.connections[0] + s.connections[1]),
    );
    metric(
        "shard_topics",
        "gauge",
        "Topics with local subscribers, per shard.",
        &per_shard(&|s| s.topics),
    );
    metric(
        "shard_inbox_depth",
        "gauge",
        "Mails waiting in the shard's inbox.",
        &per_shard(&|s| s.inbox_depth),
    );
    metric(
        "shard_inbox_full_total",
        "counter",
        "Mails that found a destination inbox full, per sending shard.",
        &per_shard(&|s| s.stats.mail_backlogged),
    );
    out
}

/// `/stats`: the same numbers as JSON, totals and per shard.
/// The `middleman_cluster_*` series, from the bridge's counters.
pub(crate) fn render_cluster(stats: &StatsSnapshot, out: &mut String) {
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP middleman_{name} {help}\n# TYPE middleman_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "middleman_{name}{labels} {value}");
        }
    };
    let s = stats;
    metric(
        "cluster_connected",
        "gauge",
        "1 while both NATS connections are up.",
        &[("", u64::from(s.connected))],
    );
    let both = |out: u64, inn: u64| [("{direction=\"out\"}", out), ("{direction=\"in\"}", inn)];
    let help = "Messages to and from NATS.";
    metric("cluster_messages_total", "counter", help, &both(s.messages_out, s.messages_in));
    let help = "Payload bytes to and from NATS.";
    metric("cluster_bytes_total", "counter", help, &both(s.bytes_out, s.bytes_in));
    let help = "Commands waiting in the bridge's queues.";
    metric("cluster_queue_depth", "gauge", help, &[("", s.queue_depth as u64)]);
    metric(
        "cluster_dropped_total",
        "counter",
        "Cross-node traffic dropped, by reason.",
        &[
            ("{reason=\"queue_full\"}", s.dropped_full),
            ("{reason=\"disconnected\"}", s.dropped_disconnected),
            ("{reason=\"too_large\"}", s.dropped_too_large),
            ("{reason=\"inbound\"}", s.dropped_inbound),
        ],
    );
    let help = "Reconnections to NATS since start.";
    metric("cluster_reconnects_total", "counter", help, &[("", s.reconnects)]);
    let _ = writeln!(
        out,
        "# HELP middleman_cluster_rtt_seconds The last measured NATS round trip.\n\
         # TYPE middleman_cluster_rtt_seconds gauge\nmiddleman_cluster_rtt_seconds {}",
        s.rtt_micros as f64 / 1e6
    );
}

pub fn render_json(shards: &[Snapshot]) -> String {
    fn object(s: &Snapshot, out: &mut String) {
        let _ = write!(
            out,
            "{{\"connections\":{{\"service\":{},\"client\":{}}},\"connections_total\":{{\"service\":{},\"client\":{}}},",
            s.connections[0], s.connections[1], s.stats.connections_total[0], s.stats.connections_total[1]
        );
        out.push_str("\"messages_in\":{");
        for (i, c) in Command::ALL.iter().enumerate() {
            let _ = write!(out, "\"{}\":{},", c.as_str(), s.stats.messages_in[i]);
        }
        let _ =
            write!(out, "\"unknown\":{}}},\"errors\":{{", s.stats.messages_in[Command::ALL.len()]);
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            let comma = if i + 1 < ErrorCode::ALL.len() { "," } else { "" };
            let _ = write!(out, "\"{}\":{}{comma}", c.as_str(), s.stats.errors[i]);
        }
        let _ = write!(
            out,
            "}},\"deliveries\":{},\"bytes_in\":{},\"bytes_out\":{},\"slow_consumer_closes\":{},\"dropped\":{},\
             \"requests_in_flight\":{},\"request_timeouts\":{},\"auth_failures\":{},\"protocol_errors\":{},\
             \"topics\":{},\"inbox_depth\":{},\"inbox_full\":{}}}",
            s.stats.deliveries,
            s.bytes_in,
            s.bytes_out,
            s.slow_consumer_closes,
            s.stats.dropped,
            s.requests_in_flight,
            s.stats.request_timeouts,
            s.auth_failures,
            s.protocol_errors,
            s.topics,
            s.inbox_depth,
            s.stats.mail_backlogged
        );
    }
    let mut total = Snapshot::default();
    for s in shards {
        for r in 0..2 {
            total.connections[r] += s.connections[r];
            total.stats.connections_total[r] += s.stats.connections_total[r];
        }
        for (t, v) in total.stats.messages_in.iter_mut().zip(s.stats.messages_in) {
            *t += v;
        }
        for (t, v) in total.stats.errors.iter_mut().zip(s.stats.errors) {
            *t += v;
        }
        total.stats.deliveries += s.stats.deliveries;
        total.slow_consumer_closes += s.slow_consumer_closes;
        total.stats.dropped += s.stats.dropped;
        total.stats.request_timeouts += s.stats.request_timeouts;
        total.stats.mail_backlogged += s.stats.mail_backlogged;
        total.bytes_in += s.bytes_in;
        total.bytes_out += s.bytes_out;
        total.requests_in_flight += s.requests_in_flight;
        total.auth_failures += s.auth_failures;
        total.protocol_errors += s.protocol_errors;
        total.topics += s.topics;
        total.inbox_depth += s.inbox_depth;
    }
    let mut out = String::with_capacity(2048);
    let _ = write!(out, "{{\"shards\":{},\"total\":", shards.len());
    object(&total, &mut out);
    out.push_str(",\"per_shard\":[");
    for (i, s) in shards.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        object(s, &mut out);
    }
    out.push_str("]}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_series_carry_the_bridge_counters() {
        let stats = StatsSnapshot {
            connected: true,
            messages_out: 7,
            bytes_in: 11,
            dropped_disconnected: 3,
            rtt_micros: 1500,
            queue_depth: 2,
            ..StatsSnapshot::default()
        };
        let mut text = String::new();
        render_cluster(&stats, &mut text);
        for line in [
            "middleman_cluster_connected 1\n",
            "middleman_cluster_messages_total{direction=\"out\"} 7\n",
            "middleman_cluster_bytes_total{direction=\"in\"} 11\n",
            "middleman_cluster_dropped_total{reason=\"disconnected\"} 3\n",
            "middleman_cluster_queue_depth 2\n",
            "middleman_cluster_rtt_seconds 0.0015\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let mut down = String::new();
        render_cluster(&StatsSnapshot::default(), &mut down);
        assert!(down.contains("middleman_cluster_connected 0\n"), "{down}");
    }
}
