//! Runs short fan-out and request/response loads over wss:// against a real middleman with a
//! self-signed certificate (generated here with rcgen) and checks that nothing is lost or
//! reordered, that the report says TLS was used, and that a certificate that does not match
//! is refused. The broker comes from `MIDDLEMAN_BIN`, or is built with
//! `cargo build --release -p middleman`.

mod common;

use common::*;

#[test]
fn fanout_and_reqres_over_wss() {
    let (broker, plain_url, ca) = start_middleman_tls();
    let url = broker.url.as_str();
    let ca = ca.to_str().expect("utf-8 temp path");
    let short = ["--duration", "1s", "--warmup", "300ms", "--drain", "10s"];

    // Open loop, a few publishers and subscribers on two generator threads.
    let mut args = vec!["--url", url, "--tls-ca", ca, "--threads", "2", "fanout"];
    args.extend(["--publishers", "3", "--subscribers", "12", "--topics", "2", "--rate", "6k"]);
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_fanout(&report);
    assert_eq!(report["tls"], true, "{report}");
    let session = report["tls_session"].as_str().unwrap_or_default();
    assert!(session.starts_with("TLSv1_3 TLS13_"), "{report}");

    // 1 KiB bodies: the broker's 64 KiB write batches split frames across TLS records.
    let mut args = vec!["--url", url, "--tls-ca", ca, "fanout", "--publishers", "2"];
    args.extend(["--subscribers", "4", "--payload", "1KiB", "--rate", "1k"]);
    args.extend(short);
    assert_clean_fanout(&loadtest(&args));

    let mut args = vec!["--url", url, "--tls-ca", ca, "reqres", "--requesters", "4"];
    args.extend(["--outstanding", "4", "--responders", "2", "--payload", "64"]);
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_reqres(&report);
    assert_eq!(report["tls"], true, "{report}");

    // The same broker's plain listener, for contrast: the report says no TLS.
    let mut args = vec!["--url", plain_url.as_str(), "reqres"];
    args.extend(short);
    let report = loadtest(&args);
    assert_clean_reqres(&report);
    assert_eq!(report["tls"], false, "{report}");
    assert!(report["tls_session"].is_null(), "{report}");

    // The certificate is for 127.0.0.1, not for this name: every handshake must fail.
    let quick = ["--duration", "300ms", "--warmup", "0s", "--drain", "1s"];
    let mut args = vec!["--url", url, "--tls-ca", ca, "--tls-server-name", "other.example"];
    args.extend(["reqres"]);
    args.extend(quick);
    let stderr = loadtest_fails(&args);
    assert!(stderr.contains("certificate") || stderr.contains("TLS"), "{stderr}");

    // wss:// without a CA to trust is refused before connecting.
    let stderr = loadtest_fails(&["--url", url, "reqres"]);
    assert!(stderr.contains("--tls-ca"), "{stderr}");
}

/// Frames larger than a TLS record, as fast as the broker takes them. One read can complete
/// several records, whose plaintext together passes rustls's 16 KiB receive limit; the broker
/// must take the plaintext out between `read_tls` calls and keep the ciphertext rustls did not
/// take (it once dropped the publisher here with "received plaintext buffer full").
#[test]
fn large_frames_over_wss_at_max_rate() {
    let (broker, _plain_url, ca) = start_middleman_tls();
    let ca = ca.to_str().expect("utf-8 temp path");
    let mut args = vec!["--url", broker.url.as_str(), "--tls-ca", ca, "--threads", "2"];
    args.extend(["fanout", "--publishers", "2", "--subscribers", "4", "--payload", "20KiB"]);
    args.extend(["--rate", "max", "--window", "50"]);
    args.extend(["--duration", "1s", "--warmup", "300ms", "--drain", "10s"]);
    assert_clean_fanout(&loadtest(&args));
}
