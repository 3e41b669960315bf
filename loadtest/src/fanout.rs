//! The `fanout` scenario: P publishers, S subscribers, T topics.
//!
//! **Streams.** With T <= P, publisher p publishes to topic p % T; with T > P, publisher p
//! publishes to topics p, p + P, p + 2P, ... in turn. Each (publisher, topic) pair is a
//! *stream* with its own sequence numbers from 0; subscriber s subscribes to topic s % T and
//! tracks every stream of its topic, so a gap is a lost message and a step back is an order
//! violation (the protocol promises per-publisher order per topic).
//!
//! **Pacing.** With `--rate R`, publisher p sends message k at its intended time
//! `load_start + (k + p/P) * P/R` and the body carries that intended time, not the time it
//! was written: if the broker (or the socket) stalls the publisher, the stall shows up in every
//! later message's latency instead of being hidden (no coordinated omission). Messages that
//! fell due while the socket was full are sent as soon as it drains, with their original
//! stamps. With `--rate max`, a publisher may run at most `--window` messages (and at most
//! `--window-bytes` of bodies) ahead of the slowest subscriber of each of its streams, and
//! stamps are the real send times.
//!
//! **Sync.** Before the load starts, every publisher sends probes on its topics every 10 ms
//! until each subscriber has seen one from every publisher of its topic: only then are all
//! subscriptions known to be in place, so loss counts from sequence number 0 are exact.
//!
//! **Counting.** A message belongs to the measured window when its stamp falls in it. Latency
//! is recorded for those; loss and order are counted over the whole run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::body::{self, Body, BodyWriter, Stamp};
use crate::cli::{Common, FanoutArgs, Rate, Side};
use crate::conn::{CloseReason, Event, Sender};
use crate::report::{self, Table, Work};
use crate::run::{self, human, Progress};
use crate::stats::{Latency, LatencySummary, SeqTracker};
use crate::sys::Clock;
use crate::worker::{ConnSpec, Conns, Counts, Phase, Scenario, Shared, Wake, Window};

/// A publisher stops generating while this much is waiting to be written: the socket is full,
/// and what falls due meanwhile is sent (with its intended stamp) once it drains.
const PENDING_BYTES_HIGH: usize = 256 * 1024;
const PROBE_INTERVAL_NS: u64 = 10_000_000;
/// A publisher whose window is full looks again after this long.
const WINDOW_RECHECK_NS: u64 = 100_000;
/// In `--rate max`, the clock is read once per this many messages for their stamps.
const STAMP_EVERY: u32 = 32;

/// Who publishes where; pure arithmetic on P, S, T.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
}

impl Plan {
    fn topics_per_publisher(&self) -> bool {
        self.topics > self.publishers
    }

    /// Streams: one per publisher when T <= P, one per topic otherwise.
    pub fn streams(&self) -> usize {
        self.publishers.max(self.topics)
    }

    pub fn stream_topic(&self, stream: usize) -> usize {
        if self.topics_per_publisher() {
            stream
        } else {
            stream % self.topics
        }
    }

    pub fn publisher_streams(&self, p: usize) -> Vec<usize> {
        if self.topics_per_publisher() {
            (p..self.topics).step_by(self.publishers).collect()
        } else {
            vec![p]
        }
    }

    pub fn publishes_to(&self, p: usize, topic: usize) -> bool {
        if self.topics_per_publisher() {
            topic % self.publishers == p
        } else {
            p % self.topics == topic
        }
    }

    pub fn stream_of(&self, p: usize, topic: usize) -> usize {
        if self.topics_per_publisher() {
            topic
        } else {
            p
        }
    }

    pub fn subscriber_topic(&self, s: usize) -> usize {
        s % self.topics
    }

    /// Subscriber s's position among the subscribers of its topic.
    pub fn subscriber_rank(&self, s: usize) -> usize {
        s / self.topics
    }

    pub fn subscribers_of(&self, topic: usize) -> usize {
        (self.subscribers + self.topics - 1 - topic) / self.topics
    }

    pub fn publishers_of(&self, topic: usize) -> usize {
        (0..self.publishers).filter(|&p| self.publishes_to(p, topic)).count()
    }

    /// Deliveries owed when stream i sent `sent[i]` messages.
    pub fn expected_deliveries(&self, sent: &[u64]) -> u64 {
        sent.iter()
            .enumerate()
            .map(|(stream, &n)| n * self.subscribers_of(self.stream_topic(stream)) as u64)
            .sum()
    }
}

pub fn topic_name(topic: usize) -> String {
    format!("lt.t{topic}")
}

/// What publishers and subscribers on different threads share.
pub struct FanoutShared {
    plan: Plan,
    /// Messages each stream sent in all, stored when its publisher finishes.
    sent: Vec<AtomicU64>,
    /// `--rate max`: messages received so far, per (stream, subscriber rank).
    acks: Vec<AtomicU64>,
    ack_base: Vec<usize>,
}

impl FanoutShared {
    pub fn new(plan: Plan) -> FanoutShared {
        let mut ack_base = Vec::with_capacity(plan.streams());
        let mut total = 0;
        for stream in 0..plan.streams() {
            ack_base.push(total);
            total += plan.subscribers_of(plan.stream_topic(stream));
        }
        FanoutShared {
            sent: (0..plan.streams()).map(|_| AtomicU64::new(0)).collect(),
            acks: (0..total).map(|_| AtomicU64::new(0)).collect(),
            ack_base,
            plan,
        }
    }

    fn slowest(&self, stream: usize) -> u64 {
        let base = self.ack_base[stream];
        let n = self.plan.subscribers_of(self.plan.stream_topic(stream));
        self.acks[base..base + n]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX)
    }
}

struct Publisher {
    id: u32,
    streams: Vec<usize>,
    topics: Vec<Vec<u8>>,
    /// Next sequence number per stream (= messages sent on it).
    seq: Vec<u64>,
    /// Slowest subscriber's count per stream, as last read.
    acked: Vec<u64>,
    /// Index into `streams` of the next message.
    turn: usize,
    /// Open loop: index of the next message, and this publisher's phase offset in intervals.
    k: u64,
    offset: f64,
    next_probe: u64,
    finished: bool,
}

struct Subscriber {
    topic: usize,
    topic_name: String,
    /// Indexed by publisher id, so the hot path does no arithmetic on the plan.
    streams: Vec<SubStream>,
    probes_seen: usize,
    probes_needed: usize,
    synced: bool,
}

/// One publisher as one subscriber sees it.
#[derive(Clone, Copy)]
struct SubStream {
    tracker: SeqTracker,
    /// This subscriber's slot in `FanoutShared::acks`, or `NOT_OURS` if the publisher does not
    /// publish to the subscriber's topic.
    ack_slot: usize,
    probed: bool,
}

const NOT_OURS: usize = usize::MAX;

enum Role {
    Publisher(Publisher),
    Subscriber(Subscriber),
}

/// One worker's share of the fan-out.
pub struct FanoutWorker {
    shared: Arc<Shared>,
    fan: Arc<FanoutShared>,
    roles: Vec<Role>,
    /// Indices of the publishers in `roles`: the tick visits only these.
    publisher_roles: Vec<usize>,
    key: Vec<u8>,
    /// Per connection: which URL list it uses and its rank there.
    sides: Vec<(Side, usize)>,
    writer: BodyWriter,
    rate: Rate,
    window_max: u64,
    /// Open loop: nanoseconds between two messages of one publisher.
    interval_ns: f64,
    window: Option<Window>,
    clock: Clock,
    // Results.
    latency: Latency,
    send_lag: Latency,
    ready: u64,
    closed: u64,
    synced: u64,
    publishers_finished: u64,
    sent: u64,
    sent_in_window: u64,
    delivered: u64,
    delivered_in_window: u64,
    corrupt: u64,
    errors: BTreeMap<String, u64>,
    close_reasons: BTreeMap<String, u64>,
}

impl FanoutWorker {
    pub fn new(
        worker: usize,
        workers: usize,
        args: &FanoutArgs,
        common: &Common,
        shared: Arc<Shared>,
        fan: Arc<FanoutShared>,
    ) -> FanoutWorker {
        let plan = fan.plan.clone();
        let mut roles = Vec::new();
        for g in run::roles_of_worker(plan.subscribers + plan.publishers, workers, worker) {
            if g < plan.subscribers {
                let topic = plan.subscriber_topic(g);
                let rank = plan.subscriber_rank(g);
                let streams = (0..plan.publishers)
                    .map(|p| SubStream {
                        tracker: SeqTracker::default(),
                        ack_slot: if plan.publishes_to(p, topic) {
                            fan.ack_base[plan.stream_of(p, topic)] + rank
                        } else {
                            NOT_OURS
                        },
                        probed: false,
                    })
                    .collect();
                roles.push(Role::Subscriber(Subscriber {
                    topic,
                    topic_name: topic_name(topic),
                    streams,
                    probes_seen: 0,
                    probes_needed: plan.publishers_of(topic),
                    synced: false,
                }));
            } else {
                let p = g - plan.subscribers;
                let streams = plan.publisher_streams(p);
                let topics = streams
                    .iter()
                    .map(|&st| topic_name(plan.stream_topic(st)).into_bytes())
                    .collect();
                roles.push(Role::Publisher(Publisher {
                    id: p as u32,
                    seq: vec![0; streams.len()],
                    acked: vec![0; streams.len()],
                    streams,
                    topics,
                    turn: 0,
                    k: 0,
                    offset: p as f64 / plan.publishers as f64,
                    next_probe: 0,
                    finished: false,
                }));
            }
        }
        let interval_ns = match args.rate {
            Rate::PerSecond(r) => 1e9 * plan.publishers as f64 / r,
            Rate::Max => 0.0,
        };
        let publisher_roles = roles
            .iter()
            .enumerate()
            .filter_map(|(i, r)| matches!(r, Role::Publisher(_)).then_some(i))
            .collect();
        FanoutWorker {
            publisher_roles,
            clock: shared.clock,
            shared,
            fan,
            key: common.service_key.as_bytes().to_vec(),
            sides: roles
                .iter()
                .zip(run::roles_of_worker(plan.subscribers + plan.publishers, workers, worker))
                .map(|(role, g)| match role {
                    Role::Subscriber(_) => (Side::Subscriber, g),
                    Role::Publisher(_) => (Side::Publisher, g - plan.subscribers),
                })
                .collect(),
            roles,
            writer: BodyWriter::new(args.payload),
            rate: args.rate,
            window_max: args.effective_window(),
            interval_ns,
            window: None,
            latency: Latency::new(),
            send_lag: Latency::new(),
            ready: 0,
            closed: 0,
            synced: 0,
            publishers_finished: 0,
            sent: 0,
            sent_in_window: 0,
            delivered: 0,
            delivered_in_window: 0,
            corrupt: 0,
            errors: BTreeMap::new(),
            close_reasons: BTreeMap::new(),
        }
    }

    fn window(&mut self) -> Option<Window> {
        if self.window.is_none() && self.shared.phase() >= Phase::Run {
            self.window = Some(self.shared.window());
        }
        self.window
    }

    fn finish_publisher(fan: &FanoutShared, p: &mut Publisher, finished: &mut u64) {
        if p.finished {
            return;
        }
        p.finished = true;
        for (i, &stream) in p.streams.iter().enumerate() {
            fan.sent[stream].store(p.seq[i], Ordering::Relaxed);
        }
        *finished += 1;
    }

    fn on_delivery(&mut self, s_index: usize, body: &[u8], now: u64) {
        let window = self.window();
        let Role::Subscriber(sub) = &mut self.roles[s_index] else {
            return;
        };
        match body::decode(body) {
            Body::Data(Stamp { publisher, sequence, sent_ns }) => {
                let Some(stream) =
                    sub.streams.get_mut(publisher as usize).filter(|s| s.ack_slot != NOT_OURS)
                else {
                    self.corrupt += 1;
                    return;
                };
                stream.tracker.observe(sequence);
                self.delivered += 1;
                if self.rate == Rate::Max {
                    self.fan.acks[stream.ack_slot].store(stream.tracker.next, Ordering::Relaxed);
                }
                if window.is_some_and(|w| w.contains(sent_ns)) {
                    self.latency.record(now.saturating_sub(sent_ns));
                    self.delivered_in_window += 1;
                }
            }
            Body::Probe { publisher } => {
                let stream = sub.streams.get_mut(publisher as usize);
                if let Some(stream) = stream.filter(|s| !s.probed && s.ack_slot != NOT_OURS) {
                    stream.probed = true;
                    sub.probes_seen += 1;
                    if sub.probes_seen == sub.probes_needed && !sub.synced {
                        sub.synced = true;
                        self.synced += 1;
                    }
                }
            }
            Body::Invalid => self.corrupt += 1,
        }
    }

    fn generate(&mut self, conns: &mut Conns<'_>, now: u64) -> Wake {
        let Some(window) = self.window() else {
            return Wake::Idle;
        };
        let mut wake = u64::MAX;
        for &i in &self.publisher_roles {
            let Role::Publisher(p) = &mut self.roles[i] else { continue };
            if p.finished {
                continue;
            }
            let Some(tx) = conns.tx(i) else { continue };
            match self.rate {
                Rate::PerSecond(_) => loop {
                    let due =
                        window.load_start + ((p.k as f64 + p.offset) * self.interval_ns) as u64;
                    if due >= window.end {
                        Self::finish_publisher(&self.fan, p, &mut self.publishers_finished);
                        break;
                    }
                    if due > now {
                        wake = wake.min(due);
                        break;
                    }
                    if tx.pending() >= PENDING_BYTES_HIGH {
                        wake = wake.min(write_wake(tx, now));
                        break;
                    }
                    send(&mut self.writer, p, tx, due);
                    p.k += 1;
                    self.sent += 1;
                    if window.contains(due) {
                        self.sent_in_window += 1;
                        self.send_lag.record(now - due);
                    }
                },
                Rate::Max => {
                    let mut stamp = now;
                    let mut n = 0u32;
                    loop {
                        if tx.pending() >= PENDING_BYTES_HIGH {
                            wake = wake.min(write_wake(tx, now));
                            break;
                        }
                        let turn = p.turn;
                        if p.seq[turn] >= p.acked[turn].saturating_add(self.window_max) {
                            p.acked[turn] = self.fan.slowest(p.streams[turn]);
                            if p.seq[turn] >= p.acked[turn].saturating_add(self.window_max) {
                                wake = wake.min(now + WINDOW_RECHECK_NS);
                                break;
                            }
                        }
                        if n.is_multiple_of(STAMP_EVERY) {
                            stamp = self.clock.now();
                        }
                        n += 1;
                        if stamp >= window.end {
                            Self::finish_publisher(&self.fan, p, &mut self.publishers_finished);
                            break;
                        }
                        send(&mut self.writer, p, tx, stamp);
                        self.sent += 1;
                        if window.contains(stamp) {
                            self.sent_in_window += 1;
                        }
                    }
                }
            }
        }
        if wake == u64::MAX {
            Wake::Idle
        } else {
            Wake::At(wake)
        }
    }

    fn probe(&mut self, conns: &mut Conns<'_>, now: u64) -> Wake {
        let mut wake = u64::MAX;
        for &i in &self.publisher_roles {
            let Role::Publisher(p) = &mut self.roles[i] else { continue };
            let Some(tx) = conns.tx(i) else { continue };
            if now >= p.next_probe {
                for topic in &p.topics {
                    tx.publish(topic, self.writer.probe(p.id));
                }
                p.next_probe = now + PROBE_INTERVAL_NS;
            }
            wake = wake.min(p.next_probe);
        }
        if wake == u64::MAX {
            Wake::Idle
        } else {
            Wake::At(wake)
        }
    }

    /// Totals after the run; call once every publisher has finished.
    fn totals(&self) -> Totals {
        let plan = &self.fan.plan;
        let mut lost = 0;
        let mut order_violations = 0;
        for role in &self.roles {
            let Role::Subscriber(sub) = role else { continue };
            for (p, stream) in sub.streams.iter().enumerate() {
                if stream.ack_slot == NOT_OURS {
                    continue;
                }
                let sent = self.fan.sent[plan.stream_of(p, sub.topic)].load(Ordering::Relaxed);
                lost += stream.tracker.lost(sent);
                order_violations += stream.tracker.order_violations;
            }
        }
        Totals { lost, order_violations }
    }
}

struct Totals {
    lost: u64,
    order_violations: u64,
}

/// When a publisher that stopped at the pending-bytes mark should run again: right after this
/// turn's write if the socket is taking data, or (never, here) on its writable event if not.
fn write_wake(tx: &Sender, now: u64) -> u64 {
    if tx.blocked() {
        u64::MAX
    } else {
        now
    }
}

fn send(writer: &mut BodyWriter, p: &mut Publisher, tx: &mut Sender, sent_ns: u64) {
    let turn = p.turn;
    let body = writer.data(Stamp { publisher: p.id, sequence: p.seq[turn], sent_ns });
    tx.publish(&p.topics[turn], body);
    p.seq[turn] += 1;
    p.turn = if turn + 1 == p.streams.len() { 0 } else { turn + 1 };
}

fn count(map: &mut BTreeMap<String, u64>, key: &[u8]) {
    *map.entry(String::from_utf8_lossy(key).into_owned()).or_insert(0) += 1;
}

impl Scenario for FanoutWorker {
    fn connections(&self) -> Vec<ConnSpec> {
        let key = &self.key;
        let spec = |(side, rank)| ConnSpec { key: key.clone(), source: None, side, rank };
        self.sides.iter().copied().map(spec).collect()
    }

    fn on_event(&mut self, conn: usize, tx: &mut Sender, event: Event<'_>, now: u64) {
        match event {
            Event::Ready => {
                self.ready += 1;
                if let Role::Subscriber(sub) = &self.roles[conn] {
                    tx.subscribe(&sub.topic_name, 1);
                }
            }
            Event::Barrier => {}
            Event::Message(incoming) => {
                if let Some(code) = incoming.error_code() {
                    count(&mut self.errors, code);
                    return;
                }
                if matches!(self.roles[conn], Role::Subscriber(_)) {
                    self.on_delivery(conn, incoming.body(), now);
                } else {
                    self.corrupt += 1;
                }
            }
            Event::ProtocolError(text) => {
                let mut key = b"protocol: ".to_vec();
                key.extend_from_slice(&text[..text.len().min(60)]);
                count(&mut self.errors, &key);
            }
        }
    }

    fn on_closed(&mut self, conn: usize, reason: &CloseReason, _now: u64) {
        self.closed += 1;
        *self.close_reasons.entry(reason.to_string()).or_insert(0) += 1;
        if let Role::Publisher(p) = &mut self.roles[conn] {
            Self::finish_publisher(&self.fan, p, &mut self.publishers_finished);
        }
    }

    fn tick(&mut self, conns: &mut Conns<'_>, phase: Phase, now: u64) -> Wake {
        match phase {
            Phase::Connect => Wake::Idle,
            Phase::Sync => self.probe(conns, now),
            Phase::Run => self.generate(conns, now),
            Phase::Drain | Phase::Stop => {
                for role in &mut self.roles {
                    if let Role::Publisher(p) = role {
                        Self::finish_publisher(&self.fan, p, &mut self.publishers_finished);
                    }
                }
                Wake::Idle
            }
        }
    }

    fn counts(&self) -> Counts {
        let errors = self.errors.values().sum::<u64>() + self.corrupt;
        let (ready, closed, synced, sent) = (self.ready, self.closed, self.synced, self.sent);
        let (received, gauge) = (self.delivered, self.publishers_finished);
        Counts { ready, closed, synced, sent, received, errors, gauge }
    }
}

#[derive(Serialize, Debug)]
pub struct FanoutResults {
    /// Seconds in the measured window.
    pub measured_s: f64,
    /// `--rate` as a number, or null for `max`.
    pub offered_per_s: Option<f64>,
    /// Messages whose (intended) send time fell in the window.
    pub published: u64,
    pub published_per_s: f64,
    /// Deliveries of those messages (each subscriber counts once).
    pub delivered: u64,
    pub delivered_per_s: f64,
    /// Body bytes delivered per second, in MB (10^6).
    pub mb_per_s: f64,
    /// Over the whole run (warm-up and window): deliveries owed and made.
    pub expected_total: u64,
    pub delivered_total: u64,
    pub lost: u64,
    pub order_violations: u64,
    /// Deliveries whose body was not one this run sent.
    pub corrupt: u64,
    pub errors: BTreeMap<String, u64>,
    pub closed: BTreeMap<String, u64>,
    /// Intended send time to receipt, for messages in the window.
    pub latency: LatencySummary,
    /// Open loop: how late the generator handed messages to the socket, after their intended
    /// time (its own scheduling plus the broker's push-back). Part of `latency`, not extra.
    pub send_lag: Option<LatencySummary>,
}

impl Table for FanoutResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("measured", format!("{:.1} s", self.measured_s)),
            (
                "published",
                format!(
                    "{}/s{}",
                    human(self.published_per_s),
                    match self.offered_per_s {
                        Some(r) => format!(" (offered {}/s)", human(r)),
                        None => " (closed loop, --rate max)".into(),
                    }
                ),
            ),
            ("delivered", format!("{}/s  {:.1} MB/s", human(self.delivered_per_s), self.mb_per_s)),
            (
                "loss",
                format!(
                    "{} lost of {} ({} order violations, {} corrupt)",
                    self.lost, self.expected_total, self.order_violations, self.corrupt
                ),
            ),
            ("latency", report::latency_row(&self.latency)),
        ];
        if let Some(lag) = &self.send_lag {
            rows.push(("send lag", report::latency_row(lag)));
        }
        report::count_rows(&mut rows, &self.errors, &self.closed);
        rows
    }
}

pub fn run(common: &Common, args: &FanoutArgs) -> Result<(), String> {
    report::check_payload(args.payload)?;
    if args.publishers == 0 || args.subscribers == 0 || args.topics == 0 {
        return Err("--publishers, --subscribers and --topics must be at least 1".into());
    }
    if args.publishers as u64 > body::PUBLISHER_MAX + 1 {
        return Err(format!("at most {} publishers", body::PUBLISHER_MAX + 1));
    }
    let plan =
        Plan { publishers: args.publishers, subscribers: args.subscribers, topics: args.topics };
    let fan = Arc::new(FanoutShared::new(plan.clone()));
    let (run, handles, mut progress) = run::start(common, None, |w, run| {
        let (shared, fan) = (Arc::clone(&run.shared), Arc::clone(&fan));
        FanoutWorker::new(w, run.threads, args, common, shared, fan)
    })?;
    let shared = Arc::clone(&run.shared);
    let total = (args.publishers + args.subscribers) as u64;

    let abort = |shared: &Shared, handles, why: String| -> Result<(), String> {
        let reasons = run::stop_and_explain(shared, handles, |w: &FanoutWorker| &w.close_reasons);
        Err(format!("{why} {reasons}"))
    };

    // Connect.
    if !run.wait_connected(&mut progress, total, |c| &c.ready) {
        progress.finish();
        let ready = shared.sum(|c| &c.ready);
        return abort(&shared, handles, format!("only {ready} of {total} connections came up:"));
    }

    // Prove the subscriptions are in place.
    shared.set_phase(Phase::Sync);
    let subs = args.subscribers as u64;
    let synced = run::wait_until(
        &shared,
        std::time::Duration::from_secs(15),
        || shared.sum(|c| &c.synced) == subs,
        || progress.line(&format!("subscribing {}/{subs}", shared.sum(|c| &c.synced))),
    );
    if !synced {
        progress.finish();
        let n = shared.sum(|c| &c.synced);
        return abort(
            &shared,
            handles,
            format!("only {n} of {subs} subscribers received the publishers' probes within 15 s;"),
        );
    }

    // Load.
    let load_start = run.start_load(common);
    let mut last = (shared.clock.now(), 0u64, 0u64);
    let mut line = |progress: &mut Progress| {
        let now = shared.clock.now();
        let sent = shared.sum(|c| &c.sent);
        let received = shared.sum(|c| &c.received);
        let secs = (now - last.0) as f64 / 1e9;
        let figures = format!(
            "published {:>8}/s  delivered {:>8}/s",
            human((sent - last.1) as f64 / secs),
            human((received - last.2) as f64 / secs),
        );
        progress.line(&run.progress_text(load_start, &figures));
        last = (now, sent, received);
    };
    let (cpu, rss) = run::measure(&shared, common.server_pid, || line(&mut progress));

    // Drain: wait for what is still in flight.
    shared.set_phase(Phase::Drain);
    let pubs = args.publishers as u64;
    run::wait_until(
        &shared,
        std::time::Duration::from_secs(5),
        || shared.sum(|c| &c.gauge) == pubs,
        || {},
    );
    let sent: Vec<u64> = fan.sent.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let expected = plan.expected_deliveries(&sent);
    let drained = run::wait_until(
        &shared,
        common.drain,
        || shared.sum(|c| &c.received) >= expected,
        || {
            progress
                .line(&format!("draining: {} of {expected} delivered", shared.sum(|c| &c.received)))
        },
    );
    let workers = run::finish(&shared, &mut progress, handles)?;

    // Merge.
    let mut latency = Latency::new();
    let mut results = FanoutResults {
        measured_s: common.duration.as_secs_f64(),
        offered_per_s: match args.rate {
            Rate::PerSecond(r) => Some(r),
            Rate::Max => None,
        },
        published: 0,
        published_per_s: 0.0,
        delivered: 0,
        delivered_per_s: 0.0,
        mb_per_s: 0.0,
        expected_total: expected,
        delivered_total: 0,
        lost: 0,
        order_violations: 0,
        corrupt: 0,
        errors: BTreeMap::new(),
        closed: BTreeMap::new(),
        latency: LatencySummary::default(),
        send_lag: None,
    };
    let mut send_lag = Latency::new();
    for w in &workers {
        send_lag.merge(&w.send_lag);
        let totals = w.totals();
        latency.merge(&w.latency);
        results.published += w.sent_in_window;
        results.delivered += w.delivered_in_window;
        results.delivered_total += w.delivered;
        results.lost += totals.lost;
        results.order_violations += totals.order_violations;
        results.corrupt += w.corrupt;
        crate::run::add_counts(&mut results.errors, &w.errors);
        crate::run::add_counts(&mut results.closed, &w.close_reasons);
    }
    let secs = results.measured_s.max(1e-9);
    results.published_per_s = results.published as f64 / secs;
    results.delivered_per_s = results.delivered as f64 / secs;
    results.mb_per_s = results.delivered_per_s * args.payload as f64 / 1e6;
    results.latency = latency.summary();
    if results.offered_per_s.is_some() {
        results.send_lag = Some(send_lag.summary());
    }

    let mut warnings = Vec::new();
    if let Some(r) = results.offered_per_s {
        if results.published_per_s < 0.99 * r {
            warnings.push(format!(
                "published {}/s of the {}/s offered: sending fell behind (the broker pushed back, \
                 or the generator is saturated); latencies include the backlog",
                human(results.published_per_s),
                human(r)
            ));
        }
    }
    if !drained {
        warnings.push(format!(
            "drain timed out after {:.1} s: {} deliveries missing",
            common.drain.as_secs_f64(),
            expected.saturating_sub(results.delivered_total)
        ));
    }
    if results.lost > 0 || results.order_violations > 0 {
        warnings.push(format!(
            "{} messages lost, {} order violations",
            results.lost, results.order_violations
        ));
    }
    let work = (Work::Deliveries(results.delivered), results.offered_per_s.is_none());
    run.ending("fanout", common, args, cpu, rss).print(results, Some(work), warnings);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams_seen_by_subscribers(plan: &Plan) -> Vec<Vec<usize>> {
        (0..plan.subscribers)
            .map(|s| {
                let t = plan.subscriber_topic(s);
                (0..plan.publishers)
                    .filter(|&p| plan.publishes_to(p, t))
                    .map(|p| plan.stream_of(p, t))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn fewer_topics_than_publishers() {
        let plan = Plan { publishers: 4, subscribers: 6, topics: 2 };
        assert_eq!(plan.streams(), 4);
        assert_eq!(plan.publisher_streams(3), vec![3]);
        assert_eq!(plan.stream_topic(3), 1);
        assert_eq!(plan.publishers_of(0), 2);
        assert_eq!((plan.subscribers_of(0), plan.subscribers_of(1)), (3, 3));
        assert_eq!(streams_seen_by_subscribers(&plan)[1], vec![1, 3]);
        // Each stream sent 10: 4 streams x 3 subscribers x 10.
        assert_eq!(plan.expected_deliveries(&[10; 4]), 120);
    }

    #[test]
    fn more_topics_than_publishers() {
        let plan = Plan { publishers: 2, subscribers: 5, topics: 5 };
        assert_eq!(plan.streams(), 5);
        assert_eq!(plan.publisher_streams(0), vec![0, 2, 4]);
        assert_eq!(plan.publisher_streams(1), vec![1, 3]);
        assert!(plan.publishes_to(1, 3) && !plan.publishes_to(0, 3));
        assert_eq!(plan.publishers_of(4), 1);
        assert_eq!(streams_seen_by_subscribers(&plan)[4], vec![4]);
        assert_eq!(plan.subscribers_of(4), 1);
    }

    #[test]
    fn one_to_many() {
        let plan = Plan { publishers: 1, subscribers: 1000, topics: 1 };
        assert_eq!(plan.subscribers_of(0), 1000);
        assert_eq!(plan.subscriber_rank(999), 999);
        assert_eq!(plan.expected_deliveries(&[7]), 7000);
        let shared = FanoutShared::new(plan);
        assert_eq!(shared.acks.len(), 1000);
        assert_eq!(shared.slowest(0), 0);
        shared.acks[3].store(5, Ordering::Relaxed);
        assert_eq!(shared.slowest(0), 0);
    }

    #[test]
    fn subscribers_without_a_topic_peer() {
        // 3 topics, 2 subscribers: topic 2 has none and its stream owes nothing.
        let plan = Plan { publishers: 3, subscribers: 2, topics: 3 };
        assert_eq!(plan.subscribers_of(2), 0);
        assert_eq!(plan.expected_deliveries(&[1, 1, 1]), 2);
        assert_eq!(FanoutShared::new(plan).slowest(2), u64::MAX);
    }
}
