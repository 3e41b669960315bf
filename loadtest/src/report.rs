//! The end of a run: one JSON object (`--json`) or a human-readable table, with the run's
//! parameters, the scenario's results, and what the generator (and, if known, the broker) cost.

use serde::Serialize;

use crate::cli::{Common, Protocol};

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
    pub rss_kib: Option<u64>,
}

/// What the generator and (with `--server-pid`) the broker used, as every subcommand reports it.
pub fn usage(
    common: &Common,
    threads: usize,
    generator_cpu: f64,
    server_cpu: Option<f64>,
    rss_kib: Option<u64>,
) -> (GeneratorUse, Option<ServerUse>) {
    let generator = GeneratorUse {
        threads,
        cpus: common.cpus.as_ref().map(|c| c.0.clone()),
        cpu_percent: generator_cpu,
    };
    let server = common.server_pid.map(|pid| ServerUse { pid, cpu_percent: server_cpu, rss_kib });
    (generator, server)
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

fn compact_parameters(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, v)| !v.is_null() && *k != "url" && *k != "json")
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
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

/// A warning if the generator itself was busy enough to distort the numbers.
pub fn saturation_warning(cpu_percent: f64, threads: usize) -> Option<String> {
    let per_thread = cpu_percent / threads.max(1) as f64;
    (per_thread > 85.0).then(|| {
        format!(
            "the generator used {per_thread:.0} % of a core per thread: it may be the bottleneck \
             (add --threads / --cpus)"
        )
    })
}
