//! The generator's event loop: one thread, one mio `Poll`, many connections, a timerfd for
//! precise open-loop pacing, and the run phases every thread follows.
//!
//! Each turn of the loop: handle socket events (reads hand parsed messages to the scenario),
//! let the scenario send what is due, then write each connection with pending output once.
//! Counters are published to the main thread through relaxed atomic stores every turn; the
//! main thread only reads them (for the progress line and the phase decisions).

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::cli::{Protocol, Side, Targets};
use crate::conn::{self, CloseReason, Conn, Event, Sender, Stage};
use crate::sys::{Clock, Timer};

/// The phases of a run, in order. The main thread moves them forward; workers follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Opening and authenticating connections.
    Connect = 0,
    /// Setting up subscriptions / responders and proving they are in place.
    Sync = 1,
    /// Load is on: warm-up, then the measured window (times in [`Shared`]).
    Run = 2,
    /// Load is off; waiting for messages still in flight.
    Drain = 3,
    /// Workers stop and report.
    Stop = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Connect,
            1 => Phase::Sync,
            2 => Phase::Run,
            3 => Phase::Drain,
            _ => Phase::Stop,
        }
    }
}

/// Counters one worker publishes; the main thread sums them over workers. Their meaning
/// depends on the scenario (documented there). Aligned so workers do not share cache lines.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct Counters {
    /// Connections authenticated and ready.
    pub ready: AtomicU64,
    /// Connections that failed or were closed by the server.
    pub closed: AtomicU64,
    /// Scenario-specific: subscribers/responders confirmed in place.
    pub synced: AtomicU64,
    /// Messages / requests sent.
    pub sent: AtomicU64,
    /// Messages / responses received.
    pub received: AtomicU64,
    /// Error messages received.
    pub errors: AtomicU64,
    /// Scenario-specific: requests in flight; publishers finished.
    pub gauge: AtomicU64,
}

/// One worker's counts as its scenario states them each loop turn (see [`Counters`]).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ready: u64,
    pub closed: u64,
    pub synced: u64,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub gauge: u64,
}

impl Counters {
    /// Publishes `counts` for the main thread (relaxed: each figure stands on its own).
    pub fn set(&self, counts: Counts) {
        let fields = [
            (&self.ready, counts.ready),
            (&self.closed, counts.closed),
            (&self.synced, counts.synced),
            (&self.sent, counts.sent),
            (&self.received, counts.received),
            (&self.errors, counts.errors),
            (&self.gauge, counts.gauge),
        ];
        for (counter, value) in fields {
            counter.store(value, Ordering::Relaxed);
        }
    }
}

/// State shared by the main thread and the workers.
pub struct Shared {
    pub clock: Clock,
    phase: AtomicU8,
    /// Run time load starts (`Run`), measuring starts, measuring ends.
    pub load_start: AtomicU64,
    pub measure_start: AtomicU64,
    pub measure_end: AtomicU64,
    pub counters: Vec<Counters>,
    /// Set by a worker that hit an error it cannot continue from.
    pub aborted: AtomicBool,
    /// wss://: the TLS version and cipher suite the first finished handshake negotiated.
    pub tls_session: OnceLock<String>,
}

impl Shared {
    pub fn new(clock: Clock, workers: usize) -> Shared {
        Shared {
            clock,
            phase: AtomicU8::new(Phase::Connect as u8),
            load_start: AtomicU64::new(u64::MAX),
            measure_start: AtomicU64::new(u64::MAX),
            measure_end: AtomicU64::new(u64::MAX),
            counters: (0..workers).map(|_| Counters::default()).collect(),
            aborted: AtomicBool::new(false),
            tls_session: OnceLock::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase`; the times it depends on must be stored before.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Starts the load at `load_start`, measuring from `+ warmup` for `duration`.
    pub fn start_run(&self, load_start: u64, warmup: Duration, duration: Duration) {
        let measure_start = load_start + warmup.as_nanos() as u64;
        self.load_start.store(load_start, Ordering::Relaxed);
        self.measure_start.store(measure_start, Ordering::Relaxed);
        self.measure_end.store(measure_start + duration.as_nanos() as u64, Ordering::Relaxed);
        self.set_phase(Phase::Run);
    }

    /// The run's times, valid once the phase is `Run` or later.
    pub fn window(&self) -> Window {
        Window {
            load_start: self.load_start.load(Ordering::Relaxed),
            start: self.measure_start.load(Ordering::Relaxed),
            end: self.measure_end.load(Ordering::Relaxed),
        }
    }

    pub fn sum(&self, field: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| field(c).load(Ordering::Relaxed)).sum()
    }
}

/// Times of the measured window in run nanoseconds: a message counts if its intended send
/// time is in `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub load_start: u64,
    pub start: u64,
    pub end: u64,
}

impl Window {
    pub fn contains(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }
}

/// What one connection of a scenario is opened with.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    pub key: Vec<u8>,
    pub source: Option<IpAddr>,
    /// Which URL list the connection's broker comes from, and its rank there (its index among
    /// the connections of its kind over all workers; see [`Targets`]).
    pub side: Side,
    pub rank: usize,
}

/// When a scenario next needs its tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Only when something happens on a socket (or the phase changes).
    Idle,
    /// At this run time.
    At(u64),
}

/// The connections as the scenario's tick sees them: sending marks a connection for flushing.
pub struct Conns<'a> {
    conns: &'a mut [Option<Conn>],
    dirty: &'a mut Vec<usize>,
}

impl Conns<'_> {
    /// The sender of connection `i` if it is ready.
    pub fn tx(&mut self, i: usize) -> Option<&mut Sender> {
        let conn = self.conns.get_mut(i)?.as_mut()?;
        if conn.stage != Stage::Ready {
            return None;
        }
        if !conn.tx.queued {
            conn.tx.queued = true;
            self.dirty.push(i);
        }
        Some(&mut conn.tx)
    }
}

/// A workload's behaviour on one worker thread. Connection `i` of the worker is the scenario's
/// connection `i`.
pub trait Scenario {
    fn connections(&self) -> Vec<ConnSpec>;
    fn on_event(&mut self, conn: usize, tx: &mut Sender, event: Event<'_>, now: u64);
    /// The connection could not be opened, or ended.
    fn on_closed(&mut self, conn: usize, reason: &CloseReason, now: u64);
    /// Once per loop turn, after socket events: send what is due.
    fn tick(&mut self, conns: &mut Conns<'_>, phase: Phase, now: u64) -> Wake;
    /// What the main thread may see of this worker now.
    fn counts(&self) -> Counts;
}

/// Connections in handshake at once on one worker, so the broker's listen backlog is not
/// flooded with SYNs it will drop.
pub const CONNECTING_MAX_DEFAULT: usize = 200;

const TIMER: Token = Token(usize::MAX);
/// Workers look at the phase at least this often.
const PHASE_POLL: Duration = Duration::from_millis(5);

pub struct Worker<S: Scenario> {
    id: usize,
    shared: Arc<Shared>,
    targets: Targets,
    protocol: Protocol,
    scenario: S,
    specs: Vec<ConnSpec>,
    connecting_max: usize,
}

impl<S: Scenario> Worker<S> {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        targets: Targets,
        protocol: Protocol,
        scenario: S,
        connecting_max: usize,
    ) -> Worker<S> {
        let specs = scenario.connections();
        Worker {
            id,
            shared,
            targets,
            protocol,
            scenario,
            specs,
            connecting_max: connecting_max.max(1),
        }
    }

    /// Runs until the phase is `Stop`; returns the scenario for its results.
    pub fn run(mut self) -> io::Result<S> {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(1024);
        let mut timer = Timer::new()?;
        poll.registry().register(&mut SourceFd(&timer.raw_fd()), TIMER, Interest::READABLE)?;
        let clock = self.shared.clock;
        let counters = &self.shared.counters[self.id];
        let mut conns: Vec<Option<Conn>> = Vec::with_capacity(self.specs.len());
        let mut scratch = vec![0u8; conn::READ_BYTES];
        // TLS ciphertext; sized on the first TLS read.
        let mut cipher = Vec::new();
        let mut dirty: Vec<usize> = Vec::new();
        let mut closed: Vec<usize> = Vec::new();
        let mut connecting = 0usize;

        loop {
            let phase = self.shared.phase();
            if phase == Phase::Stop {
                break;
            }
            let now = clock.now();

            // Open connections, a bounded number in handshake at a time.
            while conns.len() < self.specs.len() && connecting < self.connecting_max {
                let i = conns.len();
                let spec = &self.specs[i];
                let target = self.targets.pick(spec.side, spec.rank);
                match conn::connect(target.addr, spec.source) {
                    Ok(sock) => {
                        let seed = ((self.id as u64) << 40) | i as u64;
                        let mut c = Conn::new(sock, self.protocol, &spec.key, seed, now);
                        if let Some(tls) = &target.tls {
                            c.use_tls(tls.session().map_err(io::Error::other)?);
                        }
                        poll.registry().register(
                            &mut c.sock,
                            Token(i),
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                        conns.push(Some(c));
                        connecting += 1;
                    }
                    Err(e) => {
                        conns.push(None);
                        self.scenario.on_closed(i, &CloseReason::Io(e.kind()), now);
                    }
                }
            }

            let wake = {
                let mut view = Conns { conns: &mut conns, dirty: &mut dirty };
                self.scenario.tick(&mut view, phase, now)
            };
            flush(&mut conns, &mut dirty, &mut closed);

            let timeout = match wake {
                Wake::At(at) if at <= clock.now() => Duration::ZERO,
                Wake::At(at) => {
                    timer.arm(&clock, at)?;
                    PHASE_POLL
                }
                Wake::Idle => PHASE_POLL,
            };
            match poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }

            for event in events.iter() {
                if event.token() == TIMER {
                    timer.acknowledge();
                    continue;
                }
                let i = event.token().0;
                let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else {
                    continue;
                };
                if c.stage == Stage::Connecting && (event.is_writable() || event.is_error()) {
                    let spec = &self.specs[i];
                    c.on_writable_connecting(self.targets.pick(spec.side, spec.rank));
                }
                if event.is_writable() {
                    c.tx.write_blocked = false;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    let scenario = &mut self.scenario;
                    c.on_readable(&mut scratch, &mut cipher, &clock, &mut |tx, ev, at| {
                        scenario.on_event(i, tx, ev, at)
                    });
                }
                if c.wants_flush() && !c.tx.queued {
                    c.tx.queued = true;
                    dirty.push(i);
                }
                if c.in_handshake && c.stage >= Stage::Ready {
                    c.in_handshake = false;
                    connecting -= 1;
                    if c.stage == Stage::Ready && self.shared.tls_session.get().is_none() {
                        if let Some(session) = c.tls_description() {
                            let _ = self.shared.tls_session.set(session);
                        }
                    }
                }
                if !c.is_open() {
                    closed.push(i);
                }
            }
            flush(&mut conns, &mut dirty, &mut closed);

            // Reap connections that ended this turn.
            for i in closed.drain(..) {
                if let Some(mut c) = conns[i].take() {
                    if c.in_handshake {
                        connecting -= 1;
                    }
                    let _ = poll.registry().deregister(&mut c.sock);
                    let reason = c.close_reason.clone().unwrap_or(CloseReason::Eof);
                    self.scenario.on_closed(i, &reason, clock.now());
                }
            }
            counters.set(self.scenario.counts());
        }

        // Say goodbye politely; the broker should not log these as errors.
        for c in conns.iter_mut().flatten() {
            if c.stage == Stage::Ready {
                c.goodbye();
            }
        }
        Ok(self.scenario)
    }
}

fn flush(conns: &mut [Option<Conn>], dirty: &mut Vec<usize>, closed: &mut Vec<usize>) {
    for i in dirty.drain(..) {
        if let Some(c) = conns[i].as_mut() {
            c.tx.queued = false;
            // A blocked socket is retried on its writable event, which marks it dirty again.
            if c.stage != Stage::Connecting && !c.tx.write_blocked {
                let was_open = c.is_open();
                c.flush();
                if was_open && !c.is_open() {
                    closed.push(i);
                }
            }
        }
    }
}
