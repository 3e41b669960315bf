//! `summarize`: turns the JSON reports of repeated runs into Markdown tables of medians with
//! the ratios of the first broker to each other one (used by `compare.sh`, so the script needs
//! no JSON tool).
//!
//! Input: one run per line, `<scenario label> TAB <broker name> TAB <json report or "failed">`.
//! Scenarios keep the order of their first line, brokers the order of their first line within
//! a scenario. Consecutive scenarios with the same brokers share one table; the first broker
//! (middleman, as compare.sh writes them) is the numerator of every ratio. A rate most of whose
//! runs were limited by the generator (`limited_by_generator`) is marked †: it is not the
//! broker's maximum.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// One figure taken from a report, and whether a larger value is better (`None`: neither,
/// no ratio is given).
struct Metric {
    label: &'static str,
    path: &'static [&'static str],
    unit: Unit,
    higher_is_better: Option<bool>,
    /// The figure is a rate that the generator may have capped.
    rate: bool,
}

#[derive(Clone, Copy)]
enum Unit {
    Rate,
    Micros,
    Nanos,
    Percent,
    KiB,
    Count,
}

const UP: Option<bool> = Some(true);
const DOWN: Option<bool> = Some(false);

fn metrics_for(scenario: &str, open_loop: bool) -> Vec<Metric> {
    let cpu =
        |better| m("broker CPU, % of a core", &["server", "cpu_percent"], Unit::Percent, better);
    let per_delivery =
        || m("broker CPU per delivery", &["cost", "server_cpu_ns_per_delivery"], Unit::Nanos, DOWN);
    let per_cpu_s = || {
        m("deliveries per broker CPU-s", &["cost", "deliveries_per_server_cpu_s"], Unit::Rate, UP)
    };
    match scenario {
        "fanout" if open_loop => vec![
            m("delivered msg/s", &["delivered_per_s"], Unit::Rate, UP),
            cpu(DOWN),
            per_delivery(),
            m("latency p50", &["latency", "p50_us"], Unit::Micros, DOWN),
            m("latency p99", &["latency", "p99_us"], Unit::Micros, DOWN),
            m("latency p99.9", &["latency", "p999_us"], Unit::Micros, DOWN),
            m("lost", &["lost"], Unit::Count, None),
        ],
        "fanout" => vec![
            Metric { rate: true, ..m("delivered msg/s", &["delivered_per_s"], Unit::Rate, UP) },
            cpu(None),
            per_delivery(),
            per_cpu_s(),
            m("latency p99 (saturated)", &["latency", "p99_us"], Unit::Micros, DOWN),
            m("lost", &["lost"], Unit::Count, None),
        ],
        "reqres" => vec![
            Metric { rate: true, ..m("requests/s", &["requests_per_s"], Unit::Rate, UP) },
            cpu(None),
            m("broker CPU per request", &["cost", "server_cpu_us_per_request"], Unit::Micros, DOWN),
            m("requests per broker CPU-s", &["cost", "requests_per_server_cpu_s"], Unit::Rate, UP),
            m("round trip p50", &["rtt", "p50_us"], Unit::Micros, DOWN),
            m("round trip p99", &["rtt", "p99_us"], Unit::Micros, DOWN),
        ],
        "connections" => vec![
            m("server memory per connection", &["server_bytes_per_connection"], Unit::KiB, DOWN),
            m("connects/s", &["connects_per_s"], Unit::Rate, UP),
            m("connected", &["connected"], Unit::Count, UP),
        ],
        _ => Vec::new(),
    }
}

fn m(
    label: &'static str,
    path: &'static [&'static str],
    unit: Unit,
    higher: Option<bool>,
) -> Metric {
    Metric { label, path, unit, higher_is_better: higher, rate: false }
}

fn lookup(report: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(report, |v, key| v.get(key))?.as_f64()
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

fn format(value: Option<f64>, unit: Unit) -> String {
    let Some(v) = value else { return "–".to_string() };
    match unit {
        Unit::Rate => crate::run::human(v),
        Unit::Micros if v >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
        Unit::Micros if v < 10.0 => format!("{v:.1} µs"),
        Unit::Micros => format!("{v:.0} µs"),
        Unit::Nanos if v >= 10_000.0 => format!("{:.1} µs", v / 1000.0),
        Unit::Nanos => format!("{v:.0} ns"),
        Unit::Percent => format!("{v:.1} %"),
        Unit::KiB => format!("{:.1} KiB", v / 1024.0),
        Unit::Count => format!("{v:.0}"),
    }
}

#[derive(Default)]
struct Runs {
    brokers: Vec<String>,
    reports: BTreeMap<String, Vec<Value>>,
    failed: BTreeMap<String, usize>,
}

impl Runs {
    fn median(&self, broker: &str, path: &[&str]) -> Option<f64> {
        let mut v: Vec<f64> = self
            .reports
            .get(broker)
            .map(|rs| rs.iter().filter_map(|r| lookup(r, path)).collect())
            .unwrap_or_default();
        median(&mut v)
    }

    /// Most of `broker`'s runs were limited by the generator.
    fn generator_limited(&self, broker: &str) -> bool {
        let Some(rs) = self.reports.get(broker) else { return false };
        let limited = rs.iter().filter(|r| r["limited_by_generator"].as_bool() == Some(true));
        2 * limited.count() > rs.len()
    }

    fn count(&self, broker: &str) -> usize {
        self.reports.get(broker).map_or(0, Vec::len)
    }
}

/// Builds the tables from the run lines.
pub fn table(input: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut scenarios: BTreeMap<String, Runs> = BTreeMap::new();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(3, '\t');
        let (Some(label), Some(broker), Some(json)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !scenarios.contains_key(label) {
            order.push(label.to_string());
        }
        let runs = scenarios.entry(label.to_string()).or_default();
        if !runs.brokers.iter().any(|b| b == broker) {
            runs.brokers.push(broker.to_string());
        }
        match serde_json::from_str::<Value>(json) {
            Ok(report) if report.is_object() => {
                runs.reports.entry(broker.to_string()).or_default().push(report)
            }
            _ => *runs.failed.entry(broker.to_string()).or_insert(0) += 1,
        }
    }

    let mut out = String::new();
    let mut current: Option<&[String]> = None;
    let mut marked = false;
    for label in &order {
        let runs = &scenarios[label];
        let brokers = runs.brokers.as_slice();
        if current != Some(brokers) {
            if current.is_some() {
                out.push('\n');
            }
            header(&mut out, brokers);
            current = Some(brokers);
        }
        marked |= scenario_rows(&mut out, label, runs);
    }
    out.push_str(
        "\n↑: higher is better, so a ratio above 1 favours the table's first broker (middleman, or \
         `--shards 2` in the shards table); ↓: lower \
         is better, so a ratio below 1 favours it.\n",
    );
    if marked {
        out.push_str(
            "†: limited by the generator in most runs (its CPU was saturated, or it was busy while \
             the broker had room): the generator's limit, not the broker's maximum.\n",
        );
    }
    out
}

fn header(out: &mut String, brokers: &[String]) {
    let (first, others) = brokers.split_first().map_or(("", &[][..]), |(f, o)| (f.as_str(), o));
    let ratios: String = others.iter().map(|o| format!(" {first} / {o} |")).collect();
    let _ = writeln!(
        out,
        "| scenario | metric |{}{ratios} generator CPU ({}) |",
        brokers.iter().map(|b| format!(" {b} |")).collect::<String>(),
        brokers.join(" / ")
    );
    let columns = brokers.len() + others.len() + 1;
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(columns));
}

/// Writes one scenario's rows; returns whether a cell was marked generator-limited.
fn scenario_rows(out: &mut String, label: &str, runs: &Runs) -> bool {
    let brokers = &runs.brokers;
    let any = runs.reports.values().flatten().next();
    let kind = any.and_then(|r| r["scenario"].as_str()).unwrap_or("");
    let open_loop = any.is_some_and(|r| r["offered_per_s"].is_number());
    let failures: String =
        runs.failed.iter().map(|(broker, n)| format!(" ({n} {broker} run(s) failed)")).collect();
    let counts: Vec<String> = brokers.iter().map(|b| runs.count(b).to_string()).collect();
    let mut marked = false;
    let mut first = true;
    for metric in metrics_for(kind, open_loop) {
        let values: Vec<Option<f64>> =
            brokers.iter().map(|b| runs.median(b, metric.path)).collect();
        let limited: Vec<bool> =
            brokers.iter().map(|b| metric.rate && runs.generator_limited(b)).collect();
        marked |= limited.iter().any(|&l| l);
        let mut cells = String::new();
        for (v, &l) in values.iter().zip(&limited) {
            let _ = write!(cells, " {}{} |", format(*v, metric.unit), if l { " †" } else { "" });
        }
        for (i, other) in values.iter().enumerate().skip(1) {
            let ratio = match (values[0], other, metric.higher_is_better) {
                (Some(a), Some(b), Some(higher)) if *b != 0.0 => format!(
                    "{:.2}{}{}",
                    a / b,
                    if higher { " ↑" } else { " ↓" },
                    if limited[0] || limited[i] { " †" } else { "" }
                ),
                _ => "–".to_string(),
            };
            let _ = write!(cells, " {ratio} |");
        }
        let (name, cpu_cell) = if first {
            let cpu: Vec<String> = brokers
                .iter()
                .map(|b| {
                    runs.median(b, &["generator", "cpu_percent"])
                        .map_or("–".to_string(), |c| format!("{c:.0} %"))
                })
                .collect();
            (format!("{label} (median of {}){failures}", counts.join(" / ")), cpu.join(" / "))
        } else {
            (String::new(), String::new())
        };
        first = false;
        let _ = writeln!(out, "| {name} | {} |{cells} {cpu_cell} |", metric.label);
    }
    if first {
        let dashes = " – |".repeat(2 * brokers.len());
        let _ = writeln!(out, "| {label}{failures} | no results |{dashes}");
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0]), Some(3.0));
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn fan(rate: f64, p99: f64, ns: f64, limited: bool) -> String {
        format!(
            r#"{{"scenario":"fanout","offered_per_s":null,"delivered_per_s":{rate},"latency":{{"p99_us":{p99}}},"lost":0,"generator":{{"cpu_percent":40.0}},"server":{{"cpu_percent":90.0}},"cost":{{"server_cpu_ns_per_delivery":{ns},"deliveries_per_server_cpu_s":{}}},"limited_by_generator":{limited}}}"#,
            1e9 / ns
        )
    }

    #[test]
    fn table_of_medians_and_ratios() {
        let input = [
            format!("fan-out 1→1\tmiddleman\t{}", fan(2e6, 100.0, 200.0, false)),
            format!("fan-out 1→1\tmiddleman\t{}", fan(3e6, 300.0, 250.0, false)),
            format!("fan-out 1→1\tmiddleman\t{}", fan(4e6, 200.0, 300.0, false)),
            format!("fan-out 1→1\tNATS 2.9.10\t{}", fan(1e6, 400.0, 500.0, false)),
            "fan-out 1→1\tNATS 2.9.10\tfailed".to_string(),
            format!("fan-out 1→1\tNATS 2.15.1\t{}", fan(1.5e6, 400.0, 1000.0, false)),
            "req/res\tmiddleman\tfailed".to_string(),
            "req/res\tNATS 2.9.10\tfailed".to_string(),
            "req/res\tNATS 2.15.1\tfailed".to_string(),
        ]
        .join("\n");
        let table = table(&input);
        assert!(table.contains("| scenario | metric | middleman | NATS 2.9.10 | NATS 2.15.1 | middleman / NATS 2.9.10 | middleman / NATS 2.15.1 | generator CPU (middleman / NATS 2.9.10 / NATS 2.15.1) |"), "{table}");
        assert!(table.contains("| fan-out 1→1 (median of 3 / 1 / 1) (1 NATS 2.9.10 run(s) failed) | delivered msg/s | 3.00M | 1.00M | 1.50M | 3.00 ↑ | 2.00 ↑ | 40 % / 40 % / 40 % |"), "{table}");
        assert!(
            table.contains(
                "| broker CPU per delivery | 250 ns | 500 ns | 1000 ns | 0.50 ↓ | 0.25 ↓ |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| latency p99 (saturated) | 200 µs | 400 µs | 400 µs | 0.50 ↓ | 0.50 ↓ |"
            ),
            "{table}"
        );
        assert!(table.contains("| lost | 0 | 0 | 0 | – | – |"), "{table}");
        assert!(table.contains("| req/res (1 NATS 2.15.1 run(s) failed) (1 NATS 2.9.10 run(s) failed) (1 middleman run(s) failed) | no results |"), "{table}");
        assert!(!table.contains('†'), "{table}");
    }

    #[test]
    fn generator_limited_rates_are_marked_and_broker_sets_split_tables() {
        let input = [
            format!("1→100\tmiddleman\t{}", fan(9e6, 100.0, 100.0, true)),
            format!("1→100\tmiddleman\t{}", fan(9e6, 100.0, 100.0, true)),
            format!("1→100\tmiddleman\t{}", fan(9e6, 100.0, 100.0, false)),
            format!("1→100\tNATS\t{}", fan(5e6, 100.0, 200.0, false)),
            format!("shards\tmiddleman --shards 2\t{}", fan(1e6, 100.0, 300.0, false)),
            format!("shards\tmiddleman\t{}", fan(1e6, 100.0, 200.0, false)),
        ]
        .join("\n");
        let table = table(&input);
        assert!(table.contains("| delivered msg/s | 9.00M † | 5.00M | 1.80 ↑ † |"), "{table}");
        // The cost is the broker's own: not marked.
        assert!(
            table.contains("| broker CPU per delivery | 100 ns | 200 ns | 0.50 ↓ |"),
            "{table}"
        );
        assert!(table.contains("†: limited by the generator"), "{table}");
        assert!(table.contains("| scenario | metric | middleman --shards 2 | middleman | middleman --shards 2 / middleman |"), "{table}");
        assert!(
            table.contains("| broker CPU per delivery | 300 ns | 200 ns | 1.50 ↓ |"),
            "{table}"
        );
    }
}
