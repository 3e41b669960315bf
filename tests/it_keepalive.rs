//! Keep-alive: the broker pings a quiet connection every `--ping-interval` and closes one that
//! shows no sign of life for two intervals with 1008 `ping timeout`; a peer that answers stays.
//!
//! Real broker with a 300 ms interval; a raw WebSocket peer that never answers, and a normal
//! client (tungstenite answers pings) that stays connected.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_silent_peer_is_pinged_then_closed() {
    let server = Server::start(&["--ping-interval", "300ms"]);
    let mut raw = RawWs::connect(server.port);
    raw.login(SERVICE_KEY);
    let start = Instant::now();
    let ping = raw.read_frame();
    assert_eq!(ping.opcode, 0x9, "expected a ping first, got {ping:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the ping came after {:?}",
        start.elapsed()
    );
    let close = raw.read_frame();
    assert_eq!(close.opcode, 0x8, "expected the close after the ping, got {close:?}");
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1008);
    assert_eq!(&close.payload[2..], b"ping timeout");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(550), "closed after only {waited:?}");
    assert!(waited < Duration::from_millis(2500), "closed only after {waited:?}");
}

#[test]
fn a_peer_that_answers_pings_stays_connected() {
    let server = Server::start(&["--ping-interval", "300ms"]);
    let mut client = server.service_on(0);
    // Reading answers the pings (tungstenite replies with pongs on its own).
    client.expect_silence(Duration::from_millis(1500));
    client.sync();
}
