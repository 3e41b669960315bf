//! The `reqres` scenario: C requesters each keep Q requests in flight against K responders that
//! share one topic and answer every request at once with its own body (echo).
//!
//! middleman: responders `EREQ lt.req`; a request is `REQ lt.req` with `ReqID: <n>`, and the
//! response comes back as a `RES` carrying the same `ReqID`. NATS: responders subscribe to
//! `lt.req` in queue group `lt` (so exactly one gets each request); a request is published with
//! the reply subject `_INBOX.<id>.<n>`.
//!
//! This is a closed loop by design (a requester sends its next request when a response
//! arrives), like `nats bench`'s request/reply, so the numbers compare; the round-trip time is
//! measured from the moment the request was written to the buffer. Responses are checked: the
//! echoed body must be the request's own, so misrouted responses show up as `corrupt`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::body::{self, Body, BodyWriter, Stamp};
use crate::cli::{Common, ReqresArgs, Side};
use crate::conn::{CloseReason, Event, Incoming, Sender};
use crate::report::{self, Table, Work};
use crate::run::{self, human, Progress};
use crate::stats::{Latency, LatencySummary};
use crate::worker::{ConnSpec, Conns, Counts, Phase, Scenario, Shared, Wake, Window};

pub const TOPIC: &str = "lt.req";

struct Requester {
    id: u32,
    /// Request id to the time it was sent.
    in_flight: HashMap<u64, u64>,
    next_id: u64,
}

enum Role {
    Requester(Requester),
    Responder,
}

pub struct ReqresWorker {
    shared: Arc<Shared>,
    roles: Vec<Role>,
    key: Vec<u8>,
    /// Per connection: which URL list it uses and its rank there.
    sides: Vec<(Side, usize)>,
    outstanding: usize,
    writer: BodyWriter,
    window: Option<Window>,
    // Results.
    rtt: Latency,
    ready: u64,
    closed: u64,
    synced: u64,
    sent: u64,
    completed: u64,
    completed_in_window: u64,
    answered: u64,
    corrupt: u64,
    unmatched: u64,
    errors: BTreeMap<String, u64>,
    warmup_errors: u64,
    close_reasons: BTreeMap<String, u64>,
}

impl ReqresWorker {
    pub fn new(
        worker: usize,
        workers: usize,
        args: &ReqresArgs,
        common: &Common,
        shared: Arc<Shared>,
    ) -> ReqresWorker {
        let roles = run::roles_of_worker(args.responders + args.requesters, workers, worker)
            .map(|g| {
                if g < args.responders {
                    Role::Responder
                } else {
                    Role::Requester(Requester {
                        id: ((g - args.responders) as u64 % (body::PUBLISHER_MAX + 1)) as u32,
                        in_flight: HashMap::with_capacity(args.outstanding * 2),
                        next_id: 0,
                    })
                }
            })
            .collect();
        ReqresWorker {
            shared,
            sides: run::roles_of_worker(args.responders + args.requesters, workers, worker)
                .map(|g| match g.checked_sub(args.responders) {
                    None => (Side::Subscriber, g),
                    Some(requester) => (Side::Publisher, requester),
                })
                .collect(),
            roles,
            key: common.service_key.as_bytes().to_vec(),
            outstanding: args.outstanding.max(1),
            writer: BodyWriter::new(args.payload),
            window: None,
            rtt: Latency::new(),
            ready: 0,
            closed: 0,
            synced: 0,
            sent: 0,
            completed: 0,
            completed_in_window: 0,
            answered: 0,
            corrupt: 0,
            unmatched: 0,
            errors: BTreeMap::new(),
            warmup_errors: 0,
            close_reasons: BTreeMap::new(),
        }
    }

    fn window(&mut self) -> Option<Window> {
        if self.window.is_none() && self.shared.phase() >= Phase::Run {
            self.window = Some(self.shared.window());
        }
        self.window
    }

    fn in_flight(&self) -> u64 {
        self.roles
            .iter()
            .map(|r| match r {
                Role::Requester(q) => q.in_flight.len() as u64,
                Role::Responder => 0,
            })
            .sum()
    }

    /// Tops requester `r` up to Q requests in flight while the load is on.
    fn fill(&mut self, r: usize, tx: &mut Sender, now: u64) {
        let Some(window) = self.window() else { return };
        if now >= window.end || self.shared.phase() != Phase::Run {
            return;
        }
        let Role::Requester(q) = &mut self.roles[r] else {
            return;
        };
        while q.in_flight.len() < self.outstanding {
            let id = q.next_id;
            q.next_id += 1;
            let body = self.writer.data(Stamp {
                publisher: q.id,
                sequence: id & body::SEQUENCE_MAX,
                sent_ns: now,
            });
            tx.request(TOPIC.as_bytes(), id, body);
            q.in_flight.insert(id, now);
            self.sent += 1;
        }
    }

    fn on_response(&mut self, r: usize, incoming: &Incoming<'_>, now: u64) {
        let window = self.window();
        let Role::Requester(q) = &mut self.roles[r] else {
            return;
        };
        let error = incoming.error_code();
        let Some(sent_at) =
            incoming.request_id().and_then(|id| q.in_flight.remove(&id).map(|at| (id, at)))
        else {
            match error {
                Some(code) => count(&mut self.errors, code),
                None => self.unmatched += 1,
            }
            return;
        };
        let (id, sent_at) = sent_at;
        let in_window = window.is_some_and(|w| w.contains(sent_at));
        if let Some(code) = error {
            if in_window {
                count(&mut self.errors, code);
            } else {
                self.warmup_errors += 1;
            }
            return;
        }
        let echoed = matches!(
            body::decode(incoming.body()),
            Body::Data(Stamp { publisher, sequence, sent_ns })
                if publisher == q.id && sequence == id & body::SEQUENCE_MAX && sent_ns == sent_at
        );
        if !echoed {
            self.corrupt += 1;
        }
        self.completed += 1;
        if in_window {
            self.rtt.record(now.saturating_sub(sent_at));
            self.completed_in_window += 1;
        }
    }
}

fn count(map: &mut BTreeMap<String, u64>, key: &[u8]) {
    *map.entry(String::from_utf8_lossy(key).into_owned()).or_insert(0) += 1;
}

impl Scenario for ReqresWorker {
    fn connections(&self) -> Vec<ConnSpec> {
        let spec = |(side, rank)| ConnSpec { key: self.key.clone(), source: None, side, rank };
        self.sides.iter().copied().map(spec).collect()
    }

    fn on_event(&mut self, conn: usize, tx: &mut Sender, event: Event<'_>, now: u64) {
        match event {
            Event::Ready => {
                self.ready += 1;
                match self.roles[conn] {
                    Role::Responder => tx.register_responder(TOPIC, 1),
                    Role::Requester(_) => tx.prepare_requests(1),
                }
                tx.barrier();
            }
            Event::Barrier => self.synced += 1,
            Event::Message(incoming) => match self.roles[conn] {
                Role::Responder => {
                    if let Some(code) = incoming.error_code() {
                        count(&mut self.errors, code);
                    } else if tx.respond(&incoming, incoming.body()) {
                        self.answered += 1;
                    } else {
                        self.corrupt += 1;
                    }
                }
                Role::Requester(_) => {
                    self.on_response(conn, &incoming, now);
                    self.fill(conn, tx, now);
                }
            },
            Event::ProtocolError(text) => {
                let mut key = b"protocol: ".to_vec();
                key.extend_from_slice(&text[..text.len().min(60)]);
                count(&mut self.errors, &key);
            }
        }
    }

    fn on_closed(&mut self, _conn: usize, reason: &CloseReason, _now: u64) {
        self.closed += 1;
        *self.close_reasons.entry(reason.to_string()).or_insert(0) += 1;
    }

    fn tick(&mut self, conns: &mut Conns<'_>, phase: Phase, now: u64) -> Wake {
        if phase == Phase::Run {
            for r in 0..self.roles.len() {
                let needs = matches!(&self.roles[r], Role::Requester(q) if q.in_flight.len() < self.outstanding);
                if needs {
                    if let Some(tx) = conns.tx(r) {
                        self.fill(r, tx, now);
                    }
                }
            }
            if let Some(w) = self.window {
                if now < w.end {
                    return Wake::At(w.end);
                }
            }
        }
        Wake::Idle
    }

    fn counts(&self) -> Counts {
        let errors = self.errors.values().sum::<u64>() + self.warmup_errors;
        let (ready, closed, synced, sent) = (self.ready, self.closed, self.synced, self.sent);
        let (received, gauge) = (self.completed, self.in_flight());
        Counts { ready, closed, synced, sent, received, errors, gauge }
    }
}

#[derive(Serialize, Debug)]
pub struct ReqresResults {
    pub measured_s: f64,
    /// Requests sent in the window that got their response.
    pub completed: u64,
    pub requests_per_s: f64,
    /// Time from writing the request to reading its response, for requests sent in the window.
    pub rtt: LatencySummary,
    /// Error responses to requests sent in the window, by `Code`.
    pub errors: BTreeMap<String, u64>,
    /// Error responses to requests sent during the warm-up.
    pub warmup_errors: u64,
    /// Requests still without a response when the drain ended.
    pub unanswered: u64,
    /// Responses for no request in flight, or whose body was not the request's.
    pub unmatched: u64,
    pub corrupt: u64,
    pub closed: BTreeMap<String, u64>,
}

impl Table for ReqresResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("measured", format!("{:.1} s", self.measured_s)),
            (
                "requests",
                format!("{}/s ({} completed)", human(self.requests_per_s), self.completed),
            ),
            ("round trip", report::latency_row(&self.rtt)),
            (
                "problems",
                format!(
                    "{} unanswered, {} unmatched, {} corrupt, {} warm-up errors",
                    self.unanswered, self.unmatched, self.corrupt, self.warmup_errors
                ),
            ),
        ];
        report::count_rows(&mut rows, &self.errors, &self.closed);
        rows
    }
}

pub fn run(common: &Common, args: &ReqresArgs) -> Result<(), String> {
    report::check_payload(args.payload)?;
    if args.requesters == 0 || args.responders == 0 || args.outstanding == 0 {
        return Err("--requesters, --responders and --outstanding must be at least 1".into());
    }
    let (run, handles, mut progress) = run::start(common, None, |w, run| {
        ReqresWorker::new(w, run.threads, args, common, Arc::clone(&run.shared))
    })?;
    let shared = Arc::clone(&run.shared);
    let total = (args.requesters + args.responders) as u64;

    if !run.wait_connected(&mut progress, total, |c| &c.synced) {
        progress.finish();
        let n = shared.sum(|c| &c.synced);
        let reasons = run::stop_and_explain(&shared, handles, |w: &ReqresWorker| &w.close_reasons);
        return Err(format!("only {n} of {total} connections came up: {reasons}"));
    }

    let load_start = run.start_load(common);
    let mut last = (shared.clock.now(), 0u64);
    let mut line = |progress: &mut Progress| {
        let now = shared.clock.now();
        let done = shared.sum(|c| &c.received);
        let secs = (now - last.0) as f64 / 1e9;
        let figures = format!(
            "requests {:>8}/s  in flight {}",
            human((done - last.1) as f64 / secs),
            shared.sum(|c| &c.gauge),
        );
        progress.line(&run.progress_text(load_start, &figures));
        last = (now, done);
    };
    let (cpu, rss) = run::measure(&shared, common.server_pid, || line(&mut progress));

    shared.set_phase(Phase::Drain);
    // Let the workers see the phase before trusting their in-flight gauge.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let drained = run::wait_until(
        &shared,
        common.drain,
        || shared.sum(|c| &c.gauge) == 0,
        || progress.line(&format!("draining: {} in flight", shared.sum(|c| &c.gauge))),
    );
    let workers = run::finish(&shared, &mut progress, handles)?;

    let mut rtt = Latency::new();
    let mut results = ReqresResults {
        measured_s: common.duration.as_secs_f64(),
        completed: 0,
        requests_per_s: 0.0,
        rtt: LatencySummary::default(),
        errors: BTreeMap::new(),
        warmup_errors: 0,
        unanswered: 0,
        unmatched: 0,
        corrupt: 0,
        closed: BTreeMap::new(),
    };
    for w in &workers {
        rtt.merge(&w.rtt);
        results.completed += w.completed_in_window;
        results.warmup_errors += w.warmup_errors;
        results.unanswered += w.in_flight();
        results.unmatched += w.unmatched;
        results.corrupt += w.corrupt;
        crate::run::add_counts(&mut results.errors, &w.errors);
        crate::run::add_counts(&mut results.closed, &w.close_reasons);
    }
    results.requests_per_s = results.completed as f64 / results.measured_s.max(1e-9);
    results.rtt = rtt.summary();

    let mut warnings = Vec::new();
    if !drained {
        warnings.push(format!(
            "{} requests unanswered after the {:.1} s drain",
            results.unanswered,
            common.drain.as_secs_f64()
        ));
    }
    let work = (Work::Requests(results.completed), true);
    run.ending("reqres", common, args, cpu, rss).print(results, Some(work), warnings);
    Ok(())
}
