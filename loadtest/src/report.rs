//! The end of a run: one JSON object (`--json`) or a human-readable table, with the run's
//! parameters, the scenario's results, and what the generator (and, if known, the broker) cost.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{Common, Protocol};
use crate::run::{CpuUse, Run};

/// A scenario's results, printable as rows.
pub trait Table {
    fn rows(&self) -> Vec<(&'static str, String)>;
}

#[derive(Serialize, Debug)]
pub struct Report<R: Serialize> {
    pub scenario: &'static str,
    pub protocol: Protocol,
    pub url: String,
    /// The connections used TLS (`wss://`).
    pub tls: bool,
    /// The negotiated TLS version and cipher suite (`TLSv1_3 TLS13_AES_256_GCM_SHA384`), from
    /// the first connection that completed its handshake.
    pub tls_session: Option<String>,
    pub parameters: serde_json::Value,
    #[serde(flatten)]
    pub results: R,
    pub generator: GeneratorUse,
    pub server: Option<ServerUse>,
    /// What the broker's CPU bought (with `--server-pid`, for fan-out and request/response).
    pub cost: Option<Cost>,
    /// The rate is the generator's limit rather than the broker's (see [`generator_limited`]):
    /// it is not the broker's maximum.
    pub limited_by_generator: bool,
    /// Anything that makes the numbers less trustworthy (the generator near saturation, a rate
    /// not reached, connections lost).
    pub warnings: Vec<String>,
}

#[derive(Serialize, Debug, Clone)]
pub struct GeneratorUse {
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    /// User + system CPU time over the measured window, in percent of one core.
    pub cpu_percent: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct ServerUse {
    pub pid: u32,
    pub cpu_percent: Option<f64>,
    /// The broker's CPU time (user + system) over the measured window, in seconds.
    pub cpu_s: Option<f64>,
    pub rss_kib: Option<u64>,
}

/// The broker's CPU per unit of work over the measured window: per delivery for fan-out, per
/// request for request/response. `server_cpu_s` = cost per unit × units.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Cost {
    pub server_cpu_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ns_per_delivery: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_server_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_request: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_server_cpu_s: Option<f64>,
}

/// What a scenario's work is counted in, for its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Deliveries in the measured window (fan-out).
    Deliveries(u64),
    /// Requests answered in the measured window (request/response).
    Requests(u64),
}

impl Cost {
    /// The cost of `work` that took `server_cpu_s` of broker CPU; `None` without work or CPU.
    pub fn of(work: Work, server_cpu_s: f64) -> Option<Cost> {
        let none = Cost {
            server_cpu_s,
            deliveries: None,
            server_cpu_ns_per_delivery: None,
            deliveries_per_server_cpu_s: None,
            requests: None,
            server_cpu_us_per_request: None,
            requests_per_server_cpu_s: None,
        };
        let per_cpu_s = |n: u64| (server_cpu_s > 0.0).then(|| n as f64 / server_cpu_s);
        match work {
            Work::Deliveries(0) | Work::Requests(0) => None,
            Work::Deliveries(n) => Some(Cost {
                deliveries: Some(n),
                server_cpu_ns_per_delivery: Some(server_cpu_s * 1e9 / n as f64),
                deliveries_per_server_cpu_s: per_cpu_s(n),
                ..none
            }),
            Work::Requests(n) => Some(Cost {
                requests: Some(n),
                server_cpu_us_per_request: Some(server_cpu_s * 1e6 / n as f64),
                requests_per_server_cpu_s: per_cpu_s(n),
                ..none
            }),
        }
    }
}

/// Above this share of a core per generator thread, the generator is the bottleneck.
pub const GENERATOR_SATURATED_PERCENT: f64 = 85.0;
/// In a closed loop: a generator this busy per thread while the broker used less than
/// [`BROKER_IDLE_PERCENT`] of a core means the broker was waiting for the generator.
pub const GENERATOR_BUSY_PERCENT: f64 = 70.0;
pub const BROKER_IDLE_PERCENT: f64 = 70.0;

/// Whether the rate measured was the generator's limit, not the broker's, and why:
/// - the generator used more than 85 % of a core per thread (it cannot go faster), or
/// - in a closed loop (`--rate max`, request/response), it used more than 70 % per thread while
///   the broker used less than 70 % of one core: the broker had room and was kept waiting.
///
/// An open-loop run that reached its offered rate has no maximum to misread, so only the first
/// rule applies to it.
pub fn generator_limited(
    generator_percent: f64,
    threads: usize,
    server_percent: Option<f64>,
    closed_loop: bool,
) -> Option<String> {
    let per_thread = generator_percent / threads.max(1) as f64;
    if per_thread > GENERATOR_SATURATED_PERCENT {
        return Some(format!(
            "limited by the generator: it used {per_thread:.0} % of a core per thread{}; the \
             rate is not the broker's maximum (add --threads / --cpus)",
            match server_percent {
                Some(s) => format!(" (the broker {s:.0} % of a core)"),
                None => String::new(),
            }
        ));
    }
    match server_percent {
        Some(s)
            if closed_loop && per_thread > GENERATOR_BUSY_PERCENT && s < BROKER_IDLE_PERCENT =>
        {
            Some(format!(
                "limited by the generator: it used {per_thread:.0} % of a core per thread while \
                 the broker used only {s:.0} % of one; the rate is not the broker's maximum"
            ))
        }
        _ => None,
    }
}

/// What every scenario hands over once its results are merged: the run's context and what
/// it cost. [`Ending::print`] assembles and prints the report, so the scenarios share one way
/// of stating the generator's and the broker's use.
pub struct Ending<'a, A: Serialize> {
    pub scenario: &'static str,
    pub common: &'a Common,
    pub run: &'a Run,
    pub args: &'a A,
    /// CPU time over the measured window.
    pub cpu: CpuUse,
    /// The broker's resident memory at the end, with `--server-pid`.
    pub rss_kib: Option<u64>,
}

impl Run {
    /// The report's context: this run, its options and the CPU and memory it measured.
    pub fn ending<'a, A: serde::Serialize>(
        &'a self,
        scenario: &'static str,
        common: &'a Common,
        args: &'a A,
        cpu: CpuUse,
        rss_kib: Option<u64>,
    ) -> Ending<'a, A> {
        Ending { scenario, common, run: self, args, cpu, rss_kib }
    }
}

impl<A: Serialize> Ending<'_, A> {
    /// Prints the report of `results`; `warnings` are the scenario's own. `work` (with
    /// `closed_loop`, whether the rate is a maximum) gives the cost figures and the
    /// generator-limited mark; without it (idle connections) there are none.
    pub fn print<R: Serialize + Table>(
        self,
        results: R,
        work: Option<(Work, bool)>,
        mut warnings: Vec<String>,
    ) {
        let common = self.common;
        let generator = GeneratorUse {
            threads: self.run.threads,
            cpus: common.cpus.as_ref().map(|c| c.0.clone()),
            cpu_percent: self.cpu.generator_percent(),
        };
        let server = common.server_pid.map(|pid| ServerUse {
            pid,
            cpu_percent: self.cpu.server_percent(),
            cpu_s: self.cpu.server_s,
            rss_kib: self.rss_kib,
        });
        let cost = match (work, self.cpu.server_s) {
            (Some((work, _)), Some(cpu_s)) => Cost::of(work, cpu_s),
            _ => None,
        };
        let limited = work.and_then(|(_, closed_loop)| {
            generator_limited(
                self.cpu.generator_percent(),
                self.run.threads,
                self.cpu.server_percent(),
                closed_loop,
            )
        });
        let limited_by_generator = limited.is_some();
        warnings.extend(limited);
        let report = Report {
            scenario: self.scenario,
            protocol: common.protocol,
            url: self.run.targets.describe(),
            tls: self.run.targets.tls(),
            tls_session: self.run.shared.tls_session.get().cloned(),
            parameters: parameters(common, self.args),
            results,
            generator,
            server,
            cost,
            limited_by_generator,
            warnings,
        };
        report.print(common.json);
    }
}

/// The common options as they went into this run (for the report's `parameters`).
pub fn parameters(common: &Common, args: &impl Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(args).unwrap_or(serde_json::Value::Null);
    let common = serde_json::to_value(common).unwrap_or(serde_json::Value::Null);
    if let (Some(map), serde_json::Value::Object(common)) = (value.as_object_mut(), common) {
        for (k, v) in common {
            if k != "service_key" && k != "client_key" {
                map.insert(k, v);
            }
        }
    }
    value
}

impl<R: Serialize + Table> Report<R> {
    pub fn print(&self, json: bool) {
        if json {
            // Invariant: every field is plain data (numbers, strings, maps with string keys),
            // which serde_json always serialises.
            println!("{}", serde_json::to_string(self).expect("report serialises"));
            return;
        }
        let mut rows: Vec<(&str, String)> = vec![
            ("scenario", format!("{} ({:?})", self.scenario, self.protocol).to_lowercase()),
            ("url", self.url.clone()),
            (
                "TLS",
                match (&self.tls, &self.tls_session) {
                    (false, _) => "no".to_string(),
                    (true, Some(session)) => format!("yes ({session})"),
                    (true, None) => "yes (no handshake completed)".to_string(),
                },
            ),
            ("parameters", compact_parameters(&self.parameters)),
        ];
        rows.extend(self.results.rows());
        rows.push((
            "generator CPU",
            format!(
                "{:.0} % of one core ({} thread{}{})",
                self.generator.cpu_percent,
                self.generator.threads,
                if self.generator.threads == 1 { "" } else { "s" },
                match &self.generator.cpus {
                    Some(c) => format!(", pinned to {c:?}"),
                    None => String::new(),
                }
            ),
        ));
        if let Some(server) = &self.server {
            if let Some(cpu) = server.cpu_percent {
                rows.push(("server CPU", format!("{cpu:.0} % of one core (pid {})", server.pid)));
            }
            if let Some(cost) = &self.cost {
                rows.push(("server cost", cost_row(cost)));
            }
            if let Some(rss) = server.rss_kib {
                rows.push(("server RSS", format!("{:.1} MiB", rss as f64 / 1024.0)));
            }
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in rows {
            println!("{key:>width$}  {value}");
        }
        for warning in &self.warnings {
            println!("{:>width$}  {warning}", "WARNING");
        }
    }
}

fn cost_row(cost: &Cost) -> String {
    let per = match (cost.server_cpu_ns_per_delivery, cost.server_cpu_us_per_request) {
        (Some(ns), _) => format!(
            "{ns:.0} ns of broker CPU per delivery, {} deliveries per broker CPU-second",
            crate::run::human(cost.deliveries_per_server_cpu_s.unwrap_or(0.0))
        ),
        (None, Some(us)) => format!(
            "{us:.1} µs of broker CPU per request, {} requests per broker CPU-second",
            crate::run::human(cost.requests_per_server_cpu_s.unwrap_or(0.0))
        ),
        (None, None) => String::new(),
    };
    format!("{per} ({:.3} s of CPU)", cost.server_cpu_s)
}

fn compact_parameters(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, v)| !v.is_null() && *k != "url" && *k != "json")
            .filter(|(_, v)| v.as_array().is_none_or(|a| !a.is_empty()))
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// The rows every scenario ends its table with: error responses by code and connections
/// closed by reason, when there were any.
pub fn count_rows(
    rows: &mut Vec<(&'static str, String)>,
    errors: &BTreeMap<String, u64>,
    closed: &BTreeMap<String, u64>,
) {
    if !errors.is_empty() {
        rows.push(("errors", format!("{errors:?}")));
    }
    if !closed.is_empty() {
        rows.push(("closed", format!("{closed:?}")));
    }
}

/// Refuses a body too short for the stamp every message carries.
pub fn check_payload(payload: usize) -> Result<(), String> {
    if payload < crate::body::HEADER_BYTES {
        return Err(format!("--payload must be at least {} bytes", crate::body::HEADER_BYTES));
    }
    Ok(())
}

/// Formats microseconds for the table.
pub fn us(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1} ms", value / 1000.0)
    } else {
        format!("{value:.1} µs")
    }
}

pub fn latency_row(s: &crate::stats::LatencySummary) -> String {
    if s.count == 0 {
        return "no samples".to_string();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
        us(s.p50_us),
        us(s.p90_us),
        us(s.p99_us),
        us(s.p999_us),
        us(s.max_us),
        us(s.mean_us),
        s.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saturated_generator_limits_the_rate() {
        // One thread at 95 %: limited, open or closed loop, whatever the broker did.
        assert!(generator_limited(95.0, 1, Some(66.0), true).is_some());
        assert!(generator_limited(95.0, 1, Some(100.0), false).is_some());
        assert!(generator_limited(95.0, 1, None, true).is_some());
        // Two threads at 160 % in all are 80 % each: below saturation.
        assert!(generator_limited(160.0, 2, Some(100.0), true).is_none());
        // Two threads at 180 % in all are 90 % each.
        assert!(generator_limited(180.0, 2, Some(100.0), true).is_some());
    }

    #[test]
    fn a_busy_generator_and_an_idle_broker_in_a_closed_loop() {
        // 75 % of the generator while the broker used 40 %: the broker was kept waiting.
        let why = generator_limited(75.0, 1, Some(40.0), true).expect("limited");
        assert!(why.contains("75 %") && why.contains("40 %"), "{why}");
        // The same in an open loop is a fixed rate, not a maximum.
        assert!(generator_limited(75.0, 1, Some(40.0), false).is_none());
        // A busy broker is the limit.
        assert!(generator_limited(75.0, 1, Some(98.0), true).is_none());
        // A light load limits nothing.
        assert!(generator_limited(30.0, 1, Some(20.0), true).is_none());
        // Without the broker's CPU only saturation counts.
        assert!(generator_limited(75.0, 1, None, true).is_none());
    }

    #[test]
    fn cost_per_delivery_and_per_request() {
        let c = Cost::of(Work::Deliveries(2_000_000), 0.5).expect("cost");
        assert_eq!(c.server_cpu_ns_per_delivery, Some(250.0));
        assert_eq!(c.deliveries_per_server_cpu_s, Some(4_000_000.0));
        assert_eq!(c.requests, None);
        let c = Cost::of(Work::Requests(10_000), 0.8).expect("cost");
        assert_eq!(c.server_cpu_us_per_request, Some(80.0));
        assert_eq!(c.requests_per_server_cpu_s, Some(12_500.0));
        assert_eq!(Cost::of(Work::Deliveries(0), 0.5), None);
        // No CPU measured (an idle broker between two ticks): per second is undefined.
        assert_eq!(
            Cost::of(Work::Requests(5), 0.0).and_then(|c| c.requests_per_server_cpu_s),
            None
        );
    }
}
