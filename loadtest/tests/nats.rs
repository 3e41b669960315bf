//! Runs the same fan-out and request/response loads against nats-server's WebSocket listener
//! (`--protocol nats`) and checks for zero loss and every request answered; with two servers,
//! that `--url A,B` spreads the connections (counted by each server's /varz). Fails, naming
//! the install command, when `nats-server` is not on PATH (`apt-get install -y nats-server`).

mod common;

use common::*;

#[test]
fn fanout_and_reqres_against_nats_server() {
    require_nats_server();
    let broker = start_nats();
    let url = broker.url.as_str();
    let short = ["--duration", "1s", "--warmup", "300ms", "--drain", "10s"];

    let mut args = vec!["--protocol", "nats", "--url", url, "--threads", "2", "fanout"];
    args.extend(["--publishers", "4", "--subscribers", "20", "--topics", "2", "--rate", "20k"]);
    args.extend(short);
    assert_clean_fanout(&loadtest(&args));

    let mut args = vec!["--protocol", "nats", "--url", url, "fanout", "--publishers", "2"];
    args.extend(["--subscribers", "6", "--topics", "3", "--payload", "4KiB", "--rate", "max"]);
    args.extend(short);
    assert_clean_fanout(&loadtest(&args));

    let mut args = vec!["--protocol", "nats", "--url", url, "reqres", "--requesters", "4"];
    args.extend(["--outstanding", "8", "--responders", "2", "--payload", "64"]);
    args.extend(short);
    assert_clean_reqres(&loadtest(&args));

    let args = ["--protocol", "nats", "--url", url, "connections", "--count", "200"];
    let report = loadtest(&[&args[..], &["--duration", "300ms"]].concat());
    assert_eq!(u(&report, "connected"), 200, "{report}");
}

#[test]
fn a_url_list_spreads_connections_over_nats_servers() {
    require_nats_server();
    let (a, b) = (start_nats(), start_nats());
    let urls = format!("{},{}", a.url, b.url);
    // Publisher p and subscriber s go to URL p % 2 and s % 2; with topic = index % 2 every
    // topic's publisher and subscribers share a server (the two are not clustered).
    let mut args = vec!["--protocol", "nats", "--url", &urls, "fanout", "--publishers", "2"];
    args.extend(["--subscribers", "6", "--topics", "2", "--rate", "2k"]);
    args.extend(["--duration", "1s", "--warmup", "300ms", "--drain", "10s"]);
    let report = loadtest(&args);
    assert_clean_fanout(&report);
    assert_eq!(report["url"], serde_json::json!(urls), "{report}");
    for server in [&a, &b] {
        // 1 publisher and 3 subscribers each.
        let varz = admin_json(server, "/varz");
        assert_eq!(varz["total_connections"], 4, "{}: {varz}", server.url);
    }
}
