//! Checks that `--url A,B`, `--pub-url` and `--sub-url` spread connections over two real
//! middleman processes as documented, by counting each broker's connections in its `/stats`.

mod common;

use common::*;

/// Service and client connections a broker has accepted since it started.
fn accepted(broker: &Broker) -> (u64, u64) {
    let stats = admin_json(broker, "/stats");
    let total = &stats["total"]["connections_total"];
    let n = |role: &str| total[role].as_u64().unwrap_or_else(|| panic!("{role}: {stats}"));
    (n("service"), n("client"))
}

#[test]
fn url_lists_spread_connections_over_brokers() {
    let admin = ["--admin-listen", "127.0.0.1:0"];
    let ((a, _), (b, _)) = (start_middleman_with(&admin), start_middleman_with(&admin));
    let both = format!("{},{}", a.url, b.url);
    let short = ["--duration", "1s", "--warmup", "300ms", "--drain", "10s"];

    // Requesters on A only, responders on A and B: A gets 3 requesters and responder 0, B
    // responder 1. Every request is answered by A's responder (the brokers are not joined).
    let mut args = vec!["--pub-url", &a.url, "--sub-url", &both, "reqres", "--requesters", "3"];
    args.extend(["--responders", "2", "--outstanding", "2"]);
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_reqres(&report);
    assert_eq!((accepted(&a), accepted(&b)), ((4, 0), (1, 0)), "{report}");

    // One list for both sides, repeated instead of comma-separated: publisher p and subscriber
    // s go to URL p % 2 and s % 2 (topic = index % 2 keeps each topic on one broker).
    let mut args = vec!["--url", &a.url, "--url", &b.url, "fanout", "--publishers", "2"];
    args.extend(["--subscribers", "6", "--topics", "2", "--rate", "2k"]);
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_fanout(&report);
    assert_eq!(report["url"], serde_json::json!(both), "{report}");
    assert_eq!((accepted(&a), accepted(&b)), ((8, 0), (5, 0)), "{report}");

    // Idle connections (client key) take --url in turn.
    let report = loadtest(&["--url", &both, "--duration", "200ms", "connections", "--count", "9"]);
    assert_eq!(u(&report, "connected"), 9, "{report}");
    assert_eq!((accepted(&a), accepted(&b)), ((8, 5), (5, 4)), "{report}");
}
