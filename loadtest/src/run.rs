//! What every scenario's main thread does: start the workers (pinned), wait for phase
//! conditions while printing the progress line, and collect the workers' results.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cli::{Common, Target};
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
    target: &Target,
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
                target.clone(),
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

    /// CPU use between two snapshots, in percent of one core: (generator, server).
    pub fn percent_since(&self, earlier: &CpuSnapshot) -> (f64, Option<f64>) {
        let wall = (self.at.saturating_sub(earlier.at)).max(1) as f64 / 1e9;
        let generator = (self.generator.saturating_sub(earlier.generator)).as_secs_f64() / wall;
        let server = match (self.server, earlier.server) {
            (Some(a), Some(b)) => Some(a.saturating_sub(b).as_secs_f64() / wall * 100.0),
            _ => None,
        };
        (generator * 100.0, server)
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
