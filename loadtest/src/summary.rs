//! `summarize`: turns the JSON reports of repeated runs into a Markdown table of medians with
//! middleman/NATS ratios (used by `compare.sh`, so the script needs no JSON tool).
//!
//! Input: one run per line, `<scenario label> TAB <broker> TAB <json report or "failed">`.
//! Scenarios keep the order of their first line; brokers are `middleman` and `nats`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// One figure taken from a report, and whether a larger value is better.
struct Metric {
    label: &'static str,
    path: &'static [&'static str],
    unit: Unit,
    higher_is_better: bool,
}

#[derive(Clone, Copy)]
enum Unit {
    Rate,
    Micros,
    KiB,
    Count,
}

fn metrics_for(scenario: &str, open_loop: bool) -> Vec<Metric> {
    match scenario {
        "fanout" if open_loop => vec![
            m("delivered msg/s", &["delivered_per_s"], Unit::Rate, true),
            m("latency p50", &["latency", "p50_us"], Unit::Micros, false),
            m("latency p99", &["latency", "p99_us"], Unit::Micros, false),
            m("latency p99.9", &["latency", "p999_us"], Unit::Micros, false),
            m("lost", &["lost"], Unit::Count, false),
        ],
        "fanout" => vec![
            m("delivered msg/s", &["delivered_per_s"], Unit::Rate, true),
            m("latency p99 (saturated)", &["latency", "p99_us"], Unit::Micros, false),
            m("lost", &["lost"], Unit::Count, false),
        ],
        "reqres" => vec![
            m("requests/s", &["requests_per_s"], Unit::Rate, true),
            m("round trip p50", &["rtt", "p50_us"], Unit::Micros, false),
            m("round trip p99", &["rtt", "p99_us"], Unit::Micros, false),
        ],
        "connections" => vec![
            m("server memory per connection", &["server_bytes_per_connection"], Unit::KiB, false),
            m("connects/s", &["connects_per_s"], Unit::Rate, true),
            m("connected", &["connected"], Unit::Count, true),
        ],
        _ => Vec::new(),
    }
}

fn m(label: &'static str, path: &'static [&'static str], unit: Unit, higher: bool) -> Metric {
    Metric { label, path, unit, higher_is_better: higher }
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
        Unit::Micros => format!("{v:.0} µs"),
        Unit::KiB => format!("{:.1} KiB", v / 1024.0),
        Unit::Count => format!("{v:.0}"),
    }
}

#[derive(Default)]
struct Runs {
    reports: BTreeMap<String, Vec<Value>>,
    failed: BTreeMap<String, usize>,
}

/// Builds the table from the run lines.
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
        match serde_json::from_str::<Value>(json) {
            Ok(report) if report.is_object() => {
                runs.reports.entry(broker.to_string()).or_default().push(report)
            }
            _ => *runs.failed.entry(broker.to_string()).or_insert(0) += 1,
        }
    }

    let mut out = String::new();
    out.push_str(
        "| scenario | metric | middleman | NATS | middleman / NATS | generator CPU (mm / NATS) |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|\n");
    for label in &order {
        let runs = &scenarios[label];
        let any = runs.reports.values().flatten().next();
        let kind = any.and_then(|r| r["scenario"].as_str()).unwrap_or("");
        let open_loop = any.is_some_and(|r| r["offered_per_s"].is_number());
        let cpu = |broker: &str| {
            let mut v: Vec<f64> = runs
                .reports
                .get(broker)
                .map(|rs| {
                    rs.iter().filter_map(|r| lookup(r, &["generator", "cpu_percent"])).collect()
                })
                .unwrap_or_default();
            median(&mut v).map_or("–".to_string(), |c| format!("{c:.0} %"))
        };
        let failures: String = runs
            .failed
            .iter()
            .map(|(broker, n)| format!(" ({n} {broker} run(s) failed)"))
            .collect();
        let count = |broker: &str| runs.reports.get(broker).map_or(0, Vec::len);
        let mut first = true;
        for metric in metrics_for(kind, open_loop) {
            let value = |broker: &str| {
                let mut v: Vec<f64> = runs
                    .reports
                    .get(broker)
                    .map(|rs| rs.iter().filter_map(|r| lookup(r, metric.path)).collect())
                    .unwrap_or_default();
                median(&mut v)
            };
            let (mm, nats) = (value("middleman"), value("nats"));
            let ratio = match (mm, nats) {
                (Some(a), Some(b)) if b != 0.0 && metric.label != "lost" => {
                    format!("{:.2}{}", a / b, if metric.higher_is_better { " ↑" } else { " ↓" })
                }
                _ => "–".to_string(),
            };
            let (name, cpu_cell) = if first {
                (
                    format!(
                        "{label} (median of {} / {}){failures}",
                        count("middleman"),
                        count("nats")
                    ),
                    format!("{} / {}", cpu("middleman"), cpu("nats")),
                )
            } else {
                (String::new(), String::new())
            };
            first = false;
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {ratio} | {cpu_cell} |",
                metric.label,
                format(mm, metric.unit),
                format(nats, metric.unit),
            );
        }
        if first {
            let _ = writeln!(out, "| {label}{failures} | no results | – | – | – | – |");
        }
    }
    out.push_str(
        "\n↑: higher is better, so a ratio above 1 favours middleman; ↓: lower is better, so a \
         ratio below 1 favours middleman.\n",
    );
    out
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

    #[test]
    fn table_of_medians_and_ratios() {
        let fan = |rate: f64, p99: f64| {
            format!(
                r#"{{"scenario":"fanout","offered_per_s":null,"delivered_per_s":{rate},"latency":{{"p99_us":{p99}}},"lost":0,"generator":{{"cpu_percent":40.0}}}}"#
            )
        };
        let input = [
            format!("fan-out 1→1\tmiddleman\t{}", fan(2e6, 100.0)),
            format!("fan-out 1→1\tmiddleman\t{}", fan(3e6, 300.0)),
            format!("fan-out 1→1\tmiddleman\t{}", fan(4e6, 200.0)),
            format!("fan-out 1→1\tnats\t{}", fan(1e6, 400.0)),
            "fan-out 1→1\tnats\tfailed".to_string(),
            "req/res\tmiddleman\tfailed".to_string(),
        ]
        .join("\n");
        let table = table(&input);
        assert!(table.contains("| fan-out 1→1 (median of 3 / 1) (1 nats run(s) failed) | delivered msg/s | 3.00M | 1.00M | 3.00 ↑ | 40 % / 40 % |"), "{table}");
        assert!(
            table.contains("| latency p99 (saturated) | 200 µs | 400 µs | 0.50 ↓ |"),
            "{table}"
        );
        assert!(table.contains("| lost | 0 | 0 | – |"), "{table}");
        assert!(table.contains("| req/res (1 middleman run(s) failed) | no results |"), "{table}");
    }
}
