//! The `connections` scenario: open N authenticated connections (client key), hold them idle
//! for `--duration`, and report how fast they came up and, with `--server-pid`, how much
//! resident memory the broker spent on each.
//!
//! Connections come from source addresses 127.0.0.1 to 127.0.0.254 in turn (bound before
//! connecting, with IP_BIND_ADDRESS_NO_PORT) so the ephemeral ports of one address do not run
//! out, and at most `--concurrency` per thread are in handshake at once so the broker's listen
//! backlog is not overrun. The connect rate counts from the first connect to the last
//! connection authenticated; the handshake latency is TCP connect to connection id (middleman)
//! or PONG (NATS).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{Common, ConnectionsArgs, Side};
use crate::conn::{CloseReason, Event, Sender};
use crate::report::{self, Table};
use crate::run::{self, human, CpuSnapshot, Progress, Run};
use crate::stats::{Latency, LatencySummary};
use crate::sys;
use crate::worker::{ConnSpec, Conns, Counts, Phase, Scenario, Shared, Wake};

pub struct IdleWorker {
    specs: Vec<ConnSpec>,
    handshake: Latency,
    ready: u64,
    closed: u64,
    /// Connections that ended after they were ready (the server dropped idle ones).
    closed_after_ready: u64,
    last_ready_at: u64,
    close_reasons: BTreeMap<String, u64>,
    is_ready: Vec<bool>,
}

impl IdleWorker {
    pub fn new(
        worker: usize,
        workers: usize,
        args: &ConnectionsArgs,
        common: &Common,
        loopback: bool,
    ) -> IdleWorker {
        let specs: Vec<ConnSpec> = run::roles_of_worker(args.count, workers, worker)
            .map(|g| ConnSpec {
                key: common.client_key.as_bytes().to_vec(),
                side: Side::Other,
                rank: g,
                source: (loopback && args.source_addresses > 0).then(|| {
                    let host = 1 + (g % usize::from(args.source_addresses.min(254))) as u8;
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
                }),
            })
            .collect();
        IdleWorker {
            is_ready: vec![false; specs.len()],
            specs,
            handshake: Latency::new(),
            ready: 0,
            closed: 0,
            closed_after_ready: 0,
            last_ready_at: 0,
            close_reasons: BTreeMap::new(),
        }
    }
}

impl Scenario for IdleWorker {
    fn connections(&self) -> Vec<ConnSpec> {
        self.specs.clone()
    }

    fn on_event(&mut self, conn: usize, tx: &mut Sender, event: Event<'_>, now: u64) {
        if let Event::Ready = event {
            self.ready += 1;
            self.is_ready[conn] = true;
            self.last_ready_at = self.last_ready_at.max(now);
            self.handshake.record(now.saturating_sub(tx.started_ns));
        }
    }

    fn on_closed(&mut self, conn: usize, reason: &CloseReason, _now: u64) {
        self.closed += 1;
        if self.is_ready[conn] {
            self.closed_after_ready += 1;
        }
        *self.close_reasons.entry(reason.to_string()).or_insert(0) += 1;
    }

    fn tick(&mut self, _conns: &mut Conns<'_>, _phase: Phase, _now: u64) -> Wake {
        Wake::Idle
    }

    fn counts(&self) -> Counts {
        Counts {
            ready: self.ready,
            closed: self.closed,
            synced: self.closed_after_ready,
            gauge: self.last_ready_at,
            ..Counts::default()
        }
    }
}

#[derive(Serialize, Debug)]
pub struct ConnectionsResults {
    pub requested: usize,
    pub connected: u64,
    pub failed: u64,
    /// From the first connect to the last connection ready.
    pub connect_s: f64,
    pub connects_per_s: f64,
    pub handshake: LatencySummary,
    pub held_s: f64,
    /// Ready connections the server closed while they were held.
    pub dropped_while_held: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    /// (RSS with the connections open - RSS before) / connections, in bytes.
    pub server_bytes_per_connection: Option<f64>,
    /// The broker's CPU use while the connections sat idle, in percent of one core.
    pub server_idle_cpu_percent: Option<f64>,
    pub closed: BTreeMap<String, u64>,
}

impl Table for ConnectionsResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            (
                "connected",
                format!("{} of {} ({} failed)", self.connected, self.requested, self.failed),
            ),
            (
                "connect rate",
                format!("{}/s ({:.2} s in all)", human(self.connects_per_s), self.connect_s),
            ),
            ("handshake", report::latency_row(&self.handshake)),
            (
                "held",
                format!("{:.1} s, {} dropped by the server", self.held_s, self.dropped_while_held),
            ),
        ];
        if let (Some(before), Some(after)) = (self.server_rss_before_kib, self.server_rss_after_kib)
        {
            rows.push((
                "server RSS",
                format!(
                    "{:.1} MiB before, {:.1} MiB with the connections open",
                    before as f64 / 1024.0,
                    after as f64 / 1024.0
                ),
            ));
        }
        if let Some(per) = self.server_bytes_per_connection {
            rows.push(("per connection", format!("{:.1} KiB", per / 1024.0)));
        }
        if let Some(cpu) = self.server_idle_cpu_percent {
            rows.push(("server idle CPU", format!("{cpu:.1} % of one core")));
        }
        if !self.closed.is_empty() {
            rows.push(("closed", format!("{:?}", self.closed)));
        }
        rows
    }
}

pub fn run(common: &Common, args: &ConnectionsArgs) -> Result<(), String> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    let run = Run::new(common)?;
    let (targets, threads, shared) = (&run.targets, run.threads, &run.shared);
    let loopback = targets.loopback();
    let rss_before = common.server_pid.and_then(sys::resident_kib);
    if common.server_pid.is_some() && rss_before.is_none() {
        return Err(format!("cannot read /proc/{}/status", common.server_pid.unwrap_or_default()));
    }
    let workers =
        (0..threads).map(|w| IdleWorker::new(w, threads, args, common, loopback)).collect();
    let started = shared.clock.now();
    let per_thread = args.concurrency.div_ceil(threads).max(1);
    let handles = run::spawn(common, targets, shared, workers, Some(per_thread));
    let mut progress = Progress::new(common.json);
    let count = args.count as u64;

    // Connect everything (generous timeout: a slow broker is a result, not an error).
    let timeout = Duration::from_secs(60) + Duration::from_millis(args.count as u64);
    run::wait_until(
        shared,
        timeout,
        || shared.sum(|c| &c.ready) + shared.sum(|c| &c.closed) >= count,
        || {
            let ready = shared.sum(|c| &c.ready);
            let secs = (shared.clock.now() - started) as f64 / 1e9;
            progress.line(&format!(
                "connecting {ready}/{count} ({}/s), {} failed",
                human(ready as f64 / secs),
                shared.sum(|c| &c.closed)
            ))
        },
    );
    let connected = shared.sum(|c| &c.ready);
    let last_ready =
        shared.counters.iter().map(|c| c.gauge.load(Ordering::Relaxed)).max().unwrap_or(started);
    let connect_s = last_ready.saturating_sub(started) as f64 / 1e9;

    // Hold them idle; settle a moment before reading memory.
    let hold_start = shared.clock.now();
    shared.start_run(hold_start, Duration::ZERO, common.duration);
    // Memory and CPU are read after a settle of a second (or half the hold, if shorter).
    let settle = hold_start + (common.duration.as_nanos() / 2).min(1_000_000_000) as u64;
    let line = |shared: &Shared, progress: &mut Progress| {
        progress.line(&format!(
            "{:>5.1}s holding {} connections, {} dropped",
            (shared.clock.now() - hold_start) as f64 / 1e9,
            connected - shared.sum(|c| &c.synced),
            shared.sum(|c| &c.synced),
        ))
    };
    run::sleep_until(shared, settle, || line(shared, &mut progress));
    let cpu_start = CpuSnapshot::take(shared, common.server_pid);
    let hold_end = hold_start + common.duration.as_nanos() as u64;
    run::sleep_until(shared, hold_end, || line(shared, &mut progress));
    let cpu_end = CpuSnapshot::take(shared, common.server_pid);
    let rss_after = common.server_pid.and_then(sys::resident_kib);
    progress.finish();
    shared.set_phase(Phase::Stop);
    let workers = run::join(handles)?;

    let mut handshake = Latency::new();
    let mut closed = BTreeMap::new();
    let mut dropped = 0;
    for w in &workers {
        handshake.merge(&w.handshake);
        dropped += w.closed_after_ready;
        crate::run::add_counts(&mut closed, &w.close_reasons);
    }
    let failed = count - connected;
    let cpu = cpu_end.since(&cpu_start);
    let results = ConnectionsResults {
        requested: args.count,
        connected,
        failed,
        connect_s,
        connects_per_s: connected as f64 / connect_s.max(1e-9),
        handshake: handshake.summary(),
        held_s: common.duration.as_secs_f64(),
        dropped_while_held: dropped,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_bytes_per_connection: match (rss_before, rss_after) {
            (Some(b), Some(a)) if connected > 0 => {
                Some((a as f64 - b as f64) * 1024.0 / connected as f64)
            }
            _ => None,
        },
        server_idle_cpu_percent: cpu.server_percent(),
        closed,
    };
    let mut warnings = Vec::new();
    if failed > 0 {
        warnings.push(format!("{failed} of {count} connections failed"));
    }
    run.ending("connections", common, args, cpu, rss_after).print(results, None, warnings);
    Ok(())
}
