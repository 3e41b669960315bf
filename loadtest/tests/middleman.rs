//! Runs short fan-out, request/response and idle-connection loads against a real middleman
//! (2 shards, so cross-shard delivery is exercised) and checks that the broker loses and
//! reorders nothing and that the generator's accounting adds up. The broker comes from
//! `MIDDLEMAN_BIN`, or is built with `cargo build --release -p middleman`.

mod common;

use common::*;

#[test]
fn fanout_reqres_and_connections_against_middleman() {
    let broker = start_middleman();
    let url = broker.url.as_str();
    let short = ["--duration", "1s", "--warmup", "300ms", "--drain", "10s"];

    // Open loop, more publishers than topics, two generator threads.
    let mut args = vec!["--url", url, "--threads", "2", "fanout", "--publishers", "4"];
    args.extend(["--subscribers", "20", "--topics", "2", "--rate", "20k"]);
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_fanout(&report);
    assert!(report["send_lag"]["count"].as_u64().unwrap_or(0) > 0, "{report}");

    // Closed loop, more topics than publishers, large bodies.
    let mut args = vec!["--url", url, "fanout", "--publishers", "2", "--subscribers", "6"];
    args.extend(["--topics", "3", "--payload", "4KiB", "--rate", "max", "--window", "200"]);
    args.extend(short);
    assert_clean_fanout(&loadtest(&args));

    let mut args = vec!["--url", url, "reqres", "--requesters", "4", "--outstanding", "8"];
    args.extend(["--responders", "2", "--payload", "64"]);
    args.extend(short);
    assert_clean_reqres(&loadtest(&args));

    let pid = broker.pid().to_string();
    let args = ["--url", url, "--server-pid", &pid, "connections", "--count", "300"];
    let report = loadtest(&[&args[..], &["--duration", "300ms"]].concat());
    assert_eq!(u(&report, "connected"), 300, "{report}");
    assert_eq!(u(&report, "dropped_while_held"), 0, "{report}");
    assert!(report["server_bytes_per_connection"].is_number(), "{report}");
}

/// Broker CPU time in the window (`server.cpu_s`), and the report's cost of `units` of work
/// (`per_unit` in `scale` units of a second): present, positive, and adding up.
fn assert_cost_adds_up(report: &serde_json::Value, units: u64, per_unit: &str, scale: f64) {
    let cpu_s = report["server"]["cpu_s"].as_f64().unwrap_or(0.0);
    assert!(cpu_s > 0.0, "the broker did some work: {report}");
    let cost = &report["cost"];
    assert_eq!(cost["server_cpu_s"].as_f64(), Some(cpu_s), "{report}");
    let per = cost[per_unit].as_f64().unwrap_or(0.0);
    assert!(per > 0.0, "{per_unit}: {report}");
    let total = per * units as f64 / scale;
    assert!((total - cpu_s).abs() <= 1e-6 * cpu_s, "{per_unit} × {units} = {total} s: {report}");
    // The share of a core over the window is the same CPU time.
    let percent = report["server"]["cpu_percent"].as_f64().unwrap_or(0.0);
    let measured = report["measured_s"].as_f64().unwrap_or(0.0);
    assert!((percent / 100.0 * measured - cpu_s).abs() < 0.05 * cpu_s, "{report}");
    assert!(report["limited_by_generator"].is_boolean(), "{report}");
}

#[test]
fn cost_per_delivery_and_per_request_add_up_to_the_brokers_cpu() {
    let broker = start_middleman();
    let (url, pid) = (broker.url.as_str(), broker.pid().to_string());
    let short = ["--duration", "2s", "--warmup", "300ms", "--drain", "10s"];

    let mut args = vec!["--url", url, "--server-pid", &pid, "fanout", "--publishers", "1"];
    args.extend(["--subscribers", "20", "--rate", "10k"]);
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_fanout(&report);
    let delivered = u(&report, "delivered");
    assert_eq!(report["cost"]["deliveries"].as_u64(), Some(delivered), "{report}");
    assert_cost_adds_up(&report, delivered, "server_cpu_ns_per_delivery", 1e9);
    let per_s = report["cost"]["deliveries_per_server_cpu_s"].as_f64().unwrap_or(0.0);
    let cpu_s = report["server"]["cpu_s"].as_f64().unwrap_or(0.0);
    assert!((per_s * cpu_s - delivered as f64).abs() < 1e-6 * delivered as f64, "{report}");

    let mut args = vec!["--url", url, "--server-pid", &pid, "reqres", "--requesters", "2"];
    args.extend(["--outstanding", "4", "--responders", "1"]);
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_reqres(&report);
    let completed = u(&report, "completed");
    assert_eq!(report["cost"]["requests"].as_u64(), Some(completed), "{report}");
    assert_cost_adds_up(&report, completed, "server_cpu_us_per_request", 1e6);

    // Without --server-pid there is no broker CPU, so no cost.
    let args = ["--url", url, "reqres", "--duration", "500ms", "--warmup", "100ms"];
    let report = loadtest(&args);
    assert!(report["cost"].is_null() && report["server"].is_null(), "{report}");
}
