//! Keep-alive: the broker pings a quiet connection every `--ping-interval` and closes one that
//! shows no sign of life for two intervals with 1008 `ping timeout`; a peer that answers stays.
//!
//! Real broker with a 300 ms interval; peers read the ping frames themselves: a raw WebSocket
//! peer that never answers (or stops answering), and a tungstenite client that answers.

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
    // The first ping, answered: tungstenite queues the pong as it reads the ping and sends it
    // on the next read.
    assert_eq!(client.expect_ping(RECV_TIMEOUT), b"");
    // A silent peer is closed one interval after its ping; one that answered is only pinged
    // again, an interval after its pong. So a close would come before this second ping
    // (`expect_ping` fails on a close), and so would anything else.
    assert_eq!(client.expect_ping(RECV_TIMEOUT), b"");
    assert_eq!(client.expect_ping(RECV_TIMEOUT), b"");
    client.sync();
}

#[test]
fn a_peer_that_stops_answering_is_closed() {
    let server = Server::start(&["--ping-interval", "300ms"]);
    let mut raw = RawWs::connect(server.port);
    raw.login(SERVICE_KEY);
    // Answered once: stays open and is pinged again.
    let ping = raw.read_frame();
    assert_eq!(ping.opcode, 0x9, "expected a ping first, got {ping:?}");
    raw.send_frame(true, 0xA, &ping.payload);
    let ping = raw.read_frame();
    assert_eq!(ping.opcode, 0x9, "expected a second ping after the pong, got {ping:?}");
    // Not answered: closed with 1008 `ping timeout`, and nothing in between.
    let close = raw.read_frame();
    assert_eq!(close.opcode, 0x8, "expected the close after the unanswered ping, got {close:?}");
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1008);
    assert_eq!(&close.payload[2..], b"ping timeout");
}
