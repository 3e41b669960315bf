//! Runs the same fan-out and request/response loads against nats-server's WebSocket listener
//! (`--protocol nats`) and checks for zero loss and every request answered. Skipped, with a
//! notice, when `nats-server` is not on PATH (Debian: `apt-get install nats-server`).

mod common;

use common::*;

#[test]
fn fanout_and_reqres_against_nats_server() {
    if !nats_server_available() {
        eprintln!("SKIPPED: nats-server is not on PATH (apt-get install nats-server)");
        return;
    }
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
