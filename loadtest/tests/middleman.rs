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
