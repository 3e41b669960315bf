//! What every scenario's main thread does: start the workers (pinned), wait for phase
//! conditions while printing the progress line, and collect the workers' results.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cli::{Common, Targets};
use crate::sys;
use crate::worker::{Scenario, Shared, Worker, CONNECTING_MAX_DEFAULT};

/// How the main thread prints its once-a-second line: rewritten in place on a terminal, one
/// line per second otherwise, nothing with `--json`.
pub struct Progress {
    enabled: bool,
    tty: bool,
    dirty: bool,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        Progress { enabled: !json, tty: std::io::stdout().is_terminal(), dirty: false }
    }

    pub fn line(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r{text}\x1b[K");
            self.dirty = true;
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }

    /// Ends the in-place line so the next output starts on a fresh one.
    pub fn finish(&mut self) {
        if self.dirty {
            println!();
            self.dirty = false;
        }
    }
}

/// Which of `roles` global roles worker `w` of `workers` runs: every `workers`-th one.
pub fn roles_of_worker(roles: usize, workers: usize, w: usize) -> impl Iterator<Item = usize> {
    (w..roles).step_by(workers)
}

/// Starts one worker thread per scenario, pinned as `--cpus` says.
pub fn spawn<S: Scenario + Send + 'static>(
    common: &Common,
    targets: &Targets,
    shared: &Arc<Shared>,
    scenarios: Vec<S>,
    connecting_max: Option<usize>,
) -> Vec<JoinHandle<std::io::Result<S>>> {
    scenarios
        .into_iter()
        .enumerate()
        .map(|(id, scenario)| {
            let cpu = common.cpus.as_ref().map(|c| c.0[id % c.0.len()]);
            let worker = Worker::new(
                id,
                Arc::clone(shared),
                targets.clone(),
                common.protocol,
                scenario,
                connecting_max.unwrap_or(CONNECTING_MAX_DEFAULT),
            );
            let shared = Arc::clone(shared);
            std::thread::Builder::new()
                .name(format!("loadgen-{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = sys::pin_current_thread(cpu) {
                            eprintln!("warning: cannot pin worker {id} to CPU {cpu}: {e}");
                        }
                    }
                    let result = worker.run();
                    if result.is_err() {
                        shared.aborted.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    result
                })
                // Invariant: spawning a handful of threads only fails when the process is out
                // of resources, where no measurement is possible anyway.
                .expect("spawn generator thread")
        })
        .collect()
}

pub fn join<S>(handles: Vec<JoinHandle<std::io::Result<S>>>) -> Result<Vec<S>, String> {
    handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("generator thread failed: {e}")),
            Err(_) => Err("generator thread panicked".to_string()),
        })
        .collect()
}

/// Waits until `done` holds or `timeout` passes, calling `tick` about once a second (for the
/// progress line). Returns whether `done` held.
pub fn wait_until(
    shared: &Shared,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    mut tick: impl FnMut(),
) -> bool {
    let clock = shared.clock;
    let deadline = clock.now() + timeout.as_nanos() as u64;
    let mut next_tick = clock.now() + 1_000_000_000;
    loop {
        if done() {
            return true;
        }
        if shared.aborted.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let now = clock.now();
        if now >= deadline {
            return false;
        }
        if now >= next_tick {
            tick();
            next_tick += 1_000_000_000;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sleeps until run time `at`, calling `tick` once a second.
pub fn sleep_until(shared: &Shared, at: u64, tick: impl FnMut()) {
    let clock = shared.clock;
    let remaining = at.saturating_sub(clock.now());
    wait_until(shared, Duration::from_nanos(remaining), || clock.now() >= at, tick);
}

/// Formats a rate with a k/M suffix.
pub fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// A snapshot of CPU time for the generator and, if known, the broker.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    pub at: u64,
    pub generator: Duration,
    pub server: Option<Duration>,
}

impl CpuSnapshot {
    pub fn take(shared: &Shared, server_pid: Option<u32>) -> CpuSnapshot {
        CpuSnapshot {
            at: shared.clock.now(),
            generator: sys::process_cpu_time(),
            server: server_pid.and_then(sys::process_cpu_time_of),
        }
    }

    /// CPU used between an earlier snapshot and this one.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuUse {
        CpuUse {
            wall_s: (self.at.saturating_sub(earlier.at)).max(1) as f64 / 1e9,
            generator_s: self.generator.saturating_sub(earlier.generator).as_secs_f64(),
            server_s: match (self.server, earlier.server) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b).as_secs_f64()),
                _ => None,
            },
        }
    }
}

/// CPU time (user + system) spent over a stretch of wall time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    pub wall_s: f64,
    pub generator_s: f64,
    /// The broker's, with `--server-pid` (and /proc readable at both ends).
    pub server_s: Option<f64>,
}

impl CpuUse {
    /// The generator's CPU in percent of one core.
    pub fn generator_percent(&self) -> f64 {
        self.generator_s / self.wall_s * 100.0
    }

    /// The broker's CPU in percent of one core.
    pub fn server_percent(&self) -> Option<f64> {
        self.server_s.map(|s| s / self.wall_s * 100.0)
    }
}

/// What a run's main thread holds from start to report: where it connects, how many
/// generator threads it has, and the state they share.
pub struct Run {
    pub targets: Targets,
    pub threads: usize,
    pub shared: Arc<Shared>,
}

/// The workers of a started run, and the run's progress line.
pub type Handles<S> = Vec<JoinHandle<std::io::Result<S>>>;

impl Run {
    /// Resolves the targets (`--url`, `--pub-url`, `--sub-url`, TLS options) and sets up the shared state.
    pub fn new(common: &Common) -> Result<Run, String> {
        let targets = crate::cli::targets(common)?;
        let threads = common.threads.max(1);
        let shared = Arc::new(Shared::new(crate::sys::Clock::start(), threads));
        Ok(Run { targets, threads, shared })
    }

    /// The current phase's prefix and the error and close counts, around a scenario's own
    /// progress figures.
    pub fn progress_text(&self, load_start: u64, figures: &str) -> String {
        let shared = &self.shared;
        let now = shared.clock.now();
        let phase = if now < shared.window().start { "warm-up" } else { "measuring" };
        format!(
            "{:>5.1}s {phase:<9} {figures}  errors {}  closed {}",
            now.saturating_sub(load_start) as f64 / 1e9,
            shared.sum(|c| &c.errors),
            shared.sum(|c| &c.closed),
        )
    }

    /// Starts the load 20 ms from now, measuring after `--warmup` for `--duration`; returns
    /// the load's start.
    pub fn start_load(&self, common: &Common) -> u64 {
        let load_start = self.shared.clock.now() + 20_000_000;
        self.shared.start_run(load_start, common.warmup, common.duration);
        load_start
    }

    /// Waits up to 30 s for `total` connections, as counted by `field`, or for the first
    /// one to close; whether all came up with none closed.
    pub fn wait_connected(
        &self,
        progress: &mut Progress,
        total: u64,
        field: impl Fn(&crate::worker::Counters) -> &std::sync::atomic::AtomicU64 + Copy,
    ) -> bool {
        let shared = &self.shared;
        let up = wait_until(
            shared,
            Duration::from_secs(30),
            || shared.sum(field) == total || shared.sum(|c| &c.closed) > 0,
            || progress.line(&format!("connecting {}/{total}", shared.sum(field))),
        );
        up && shared.sum(|c| &c.closed) == 0
    }
}

/// Sets up a run, builds one scenario per generator thread with `make(worker, run)` and
/// starts them.
pub fn start<S: Scenario + Send + 'static>(
    common: &Common,
    connecting_max: Option<usize>,
    make: impl Fn(usize, &Run) -> S,
) -> Result<(Run, Handles<S>, Progress), String> {
    let run = Run::new(common)?;
    let scenarios = (0..run.threads).map(|w| make(w, &run)).collect();
    let handles = spawn(common, &run.targets, &run.shared, scenarios, connecting_max);
    Ok((run, handles, Progress::new(common.json)))
}

/// Sleeps through the warm-up and the measured window (calling `tick` once a second) and
/// returns the CPU used over the window and the broker's resident memory at its end.
pub fn measure(
    shared: &Shared,
    server_pid: Option<u32>,
    mut tick: impl FnMut(),
) -> (CpuUse, Option<u64>) {
    let window = shared.window();
    sleep_until(shared, window.start, &mut tick);
    let start = CpuSnapshot::take(shared, server_pid);
    sleep_until(shared, window.end, &mut tick);
    let end = CpuSnapshot::take(shared, server_pid);
    (end.since(&start), server_pid.and_then(sys::resident_kib))
}

/// Ends the progress line, stops the workers and collects their scenarios.
pub fn finish<S>(
    shared: &Shared,
    progress: &mut Progress,
    handles: Handles<S>,
) -> Result<Vec<S>, String> {
    progress.finish();
    shared.set_phase(crate::worker::Phase::Stop);
    join(handles)
}

/// Ends the workers of a run that could not go on and lists why their connections closed.
pub fn stop_and_explain<S>(
    shared: &Shared,
    handles: Handles<S>,
    close_reasons: impl Fn(&S) -> &std::collections::BTreeMap<String, u64>,
) -> String {
    shared.set_phase(crate::worker::Phase::Stop);
    match join(handles) {
        Ok(workers) => {
            let mut all = std::collections::BTreeMap::new();
            for w in &workers {
                add_counts(&mut all, close_reasons(w));
            }
            format!("{all:?}")
        }
        Err(e) => format!("({e})"),
    }
}

/// Adds `from`'s counts to `into` (close reasons, error codes merged over workers).
pub fn add_counts(
    into: &mut std::collections::BTreeMap<String, u64>,
    from: &std::collections::BTreeMap<String, u64>,
) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_dealt_round_robin() {
        let dealt: Vec<Vec<usize>> = (0..3).map(|w| roles_of_worker(7, 3, w).collect()).collect();
        assert_eq!(dealt, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
    }

    #[test]
    fn human_rates() {
        assert_eq!(human(950.0), "950");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_280_000.0), "4.28M");
    }
}
