//! Checks hostile peers: each gets its error or close, the broker serves on, a bystander is fine.
//! How: real binary, two shards; raw frames and TCP attack while shard 0 streams to shard 1.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MASK: Option<[u8; 4]> = Some([0x0f, 0xa1, 0x5c, 0x3e]);

/// The bystander's topic.
const STEADY: &str = "Steady";
/// How often the bystander publishes.
const STEADY_INTERVAL: Duration = Duration::from_millis(5);
/// The longest a bystander message may take from publisher to subscriber during an attack.
/// Generous: the test binary runs attacks in parallel on a machine that may have two CPUs.
const DELAY_MAX: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The bystander
// ---------------------------------------------------------------------------------------------

/// A publisher on shard 0 streaming numbered, timestamped messages to a subscriber on shard 1
/// while an attack runs; `finish` checks that none was lost, reordered or held up.
struct Bystander {
    stop: Arc<AtomicBool>,
    /// Taken by `finish`, or by `drop` when the test failed before it.
    publisher: Option<JoinHandle<u64>>,
    subscriber: Option<JoinHandle<Result<(u64, Duration), String>>>,
}

impl Bystander {
    fn start(server: &Server) -> Bystander {
        let mut subscriber = server.service_on(1);
        subscriber.send_text(&msg("SUB", STEADY, &[], ""));
        // SUB is in effect on every shard once a later message is answered (PROTOCOL.md §4).
        subscriber.sync();
        let mut publisher = server.service_on(0);
        let publisher_cid = publisher.cid.clone();
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let publisher = thread::spawn(move || {
            let mut seq = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let sent = epoch.elapsed().as_micros().to_string();
                let headers = [("Seq", seq.to_string()), ("Sent", sent)];
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                publisher.send_text(&msg("PUB", STEADY, &headers, "tick"));
                seq += 1;
                // Pacing: a steady trickle, not a load.
                thread::sleep(STEADY_INTERVAL);
            }
            publisher.send_text(&msg("PUB", STEADY, &[("Seq", &seq.to_string())], "end"));
            seq
        });
        let subscriber = thread::spawn(move || watch(subscriber, &publisher_cid, epoch));
        Bystander { stop, publisher: Some(publisher), subscriber: Some(subscriber) }
    }

    /// Stops the stream and checks what the subscriber saw.
    fn finish(mut self) {
        // Pacing, not a proof: the stream runs a little past the attack's end, so a stall the
        // attack left behind shows in the last messages' delays.
        thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        let publisher = self.publisher.take().expect("finish runs once");
        let sent = publisher.join().expect("the bystander publisher could publish throughout");
        let (received, worst) = self
            .subscriber
            .take()
            .expect("finish runs once")
            .join()
            .expect("bystander subscriber thread")
            .unwrap_or_else(|e| panic!("bystander subscriber: {e}"));
        assert_eq!(received, sent, "bystander: published {sent}, received {received}");
        assert!(sent >= 10, "the bystander stream hardly ran: {sent} messages");
        assert!(
            worst < DELAY_MAX,
            "bystander: a message took {worst:?} from publisher to subscriber (limit {DELAY_MAX:?})"
        );
    }
}

impl Drop for Bystander {
    /// When the test failed first: stops the publisher while the server still runs (it is
    /// dropped after the bystander), so its thread does not add a second, misleading panic.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(publisher) = self.publisher.take() {
            let _ = publisher.join();
        }
    }
}

/// The bystander subscriber: every message in order, from the publisher, until `end`. Returns
/// how many `tick`s arrived and the longest delay.
fn watch(mut sub: Client, publisher: &str, epoch: Instant) -> Result<(u64, Duration), String> {
    let mut expected = 0u64;
    let mut worst = Duration::ZERO;
    loop {
        let m = match sub.next_event(Duration::from_secs(10)) {
            Event::Message(m) => m,
            other => return Err(format!("after {expected} messages: {other:?}")),
        };
        let p = m.parse();
        if p.first_line != format!("PUB {STEADY}") || p.header("Cid") != Some(publisher) {
            return Err(format!("unexpected message {m:?}"));
        }
        let seq: u64 = p
            .header("Seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no Seq in {m:?}"))?;
        if seq != expected {
            return Err(format!("expected message {expected}, got {seq}: lost or reordered"));
        }
        if p.body == b"end\r\n" {
            return Ok((seq, worst));
        }
        expected += 1;
        let sent: u64 =
            p.header("Sent").and_then(|s| s.parse().ok()).ok_or_else(|| format!("{m:?}"))?;
        let delay = epoch.elapsed().saturating_sub(Duration::from_micros(sent));
        worst = worst.max(delay);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A logged-in service on shard 0 (the bystander publisher's shard) that sends `bytes` raw.
fn raw_attacker(server: &Server, bytes: &[u8]) -> RawWs {
    let (mut raw, _cid) = RawWs::connect_on_shard(server.port, SERVICE_KEY, 0);
    raw.send_raw(bytes);
    raw
}

/// The next thing on `raw` must be a close frame with `code` and `reason`, then the end of the
/// connection.
fn expect_closed(raw: &mut RawWs, code: u16, reason: &str, what: &str) {
    let close = raw.expect_close_frame();
    assert_eq!(close, (code, reason.to_owned()), "{what}: wrong close frame");
    match raw.next_raw(RECV_TIMEOUT) {
        RawEvent::Closed(_) => {}
        other => {
            panic!("{what}: expected the end of the connection after the close, got {other:?}")
        }
    }
}

/// Sends `frames` on a fresh attacker and expects the close `code` with `reason`.
fn refused(server: &Server, frames: &[u8], code: u16, reason: &str, what: &str) {
    let mut raw = raw_attacker(server, frames);
    expect_closed(&mut raw, code, reason, what);
}

/// A service subscribed to `topic`, on `shard`.
fn subscriber(server: &Server, topic: &str, shard: u16) -> Client {
    let mut sub = server.service_on(shard);
    sub.send_text(&msg("SUB", topic, &[], ""));
    sub.sync();
    sub
}

/// Reads on `stream` until EOF or a reset; returns what arrived, or `None` if the server kept
/// the connection open for `timeout`.
fn read_to_end_within(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(out),
        }
    }
    None
}

fn upgrade_request(port: u16) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Logs in with a service key, retrying for a few seconds (a slot freed by a closed
/// connection comes back once the server has noticed the close).
fn login_eventually(server: &Server) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match server.try_connect(SERVICE_KEY) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("login refused for now: {e}");
                // Pacing between retries; the loop waits for the login itself.
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no login possible after the attack: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames a client must not send (PROTOCOL.md §1)
// ---------------------------------------------------------------------------------------------

#[test]
fn unmasked_client_frames_close_with_1002() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    for (first, payload) in [(FIN | TEXT, &b"hello"[..]), (FIN | BINARY, b""), (FIN | PING, b"p")] {
        let frame = client_frame(first, payload, None, None);
        refused(&server, &frame, 1002, "unmasked frame", &format!("unmasked {first:#x}"));
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn reserved_bits_close_with_1002() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    for rsv in [RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3] {
        for opcode in [TEXT, BINARY, PING] {
            // RSV1 is permessage-deflate's bit, which is never negotiated.
            let frame = client_frame(FIN | rsv | opcode, b"PUB x\r\n\r\n.\r\n", None, MASK);
            let what = format!("rsv {rsv:#x} on opcode {opcode:#x}");
            refused(&server, &frame, 1002, "reserved bits set", &what);
        }
    }
    for opcode in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        let frame = client_frame(FIN | opcode, b"x", None, MASK);
        refused(&server, &frame, 1002, "reserved opcode", &format!("opcode {opcode}"));
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn fragmented_control_frames_close_with_1002() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    for opcode in [PING, PONG, CLOSE] {
        let frame = client_frame(opcode, b"\x03\xe8", None, MASK);
        refused(&server, &frame, 1002, "fragmented control frame", &format!("{opcode:#x}"));
        // Also in the middle of a fragmented message, where control frames are allowed.
        let mut frames = client_frame(TEXT, b"PUB x\r\n", None, MASK);
        frames.extend(client_frame(opcode, b"", None, MASK));
        refused(&server, &frames, 1002, "fragmented control frame", "inside a message");
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn oversize_control_frames_close_with_1002_before_the_payload_arrives() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    for opcode in [PING, PONG, CLOSE] {
        for len in [126u64, 0xFFFF, 1 << 20] {
            // The header alone: the broker must refuse it without waiting for the payload.
            let header = client_frame(FIN | opcode, b"", Some(len), MASK);
            let start = Instant::now();
            let what = format!("{opcode:#x} announcing {len} bytes");
            refused(&server, &header, 1002, "control frame too big", &what);
            assert!(start.elapsed() < Duration::from_secs(2), "{what}: waited for the payload");
        }
        // And with the whole 126-byte payload sent.
        let frame = client_frame(FIN | opcode, &[b'x'; 126], None, MASK);
        refused(&server, &frame, 1002, "control frame too big", "126-byte control frame");
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn continuation_without_a_start_and_a_new_message_inside_one_close_with_1002() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    for fin in [0, FIN] {
        let frame = client_frame(fin | CONT, b"orphan", None, MASK);
        refused(&server, &frame, 1002, "unexpected continuation frame", "continuation first");
    }
    // A finished message, then a continuation.
    let mut frames = client_frame(FIN | TEXT, b"PUB x\r\n\r\n.\r\n", None, MASK);
    frames.extend(client_frame(FIN | CONT, b"late", None, MASK));
    let mut raw = raw_attacker(&server, &frames);
    // The first message is a PUB nobody subscribes to: no answer, then the close.
    expect_closed(&mut raw, 1002, "unexpected continuation frame", "continuation after a message");
    for opcode in [TEXT, BINARY] {
        let mut frames = client_frame(BINARY, b"PUB x\r\n", None, MASK);
        frames.extend(client_frame(FIN | opcode, b"\r\n.\r\n", None, MASK));
        refused(&server, &frames, 1002, "expected continuation frame", "new message inside one");
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn huge_64_bit_lengths_close_with_1009_without_the_server_allocating_them() {
    let limit: u64 = 64 << 20;
    let mut server = Server::start(&["--max-message-bytes", "64MiB"]);
    let bystander = Bystander::start(&server);
    let before = server.rss_bytes();
    for len in [limit + 1, 1 << 63, (1 << 63) - 1, u64::MAX - 1, u64::MAX] {
        for opcode in [TEXT, BINARY] {
            let header = client_frame(FIN | opcode, b"", Some(len), MASK);
            let what = format!("opcode {opcode} announcing {len} bytes");
            let start = Instant::now();
            refused(&server, &header, 1009, "message too big", &what);
            assert!(start.elapsed() < Duration::from_secs(2), "{what}: waited for the payload");
        }
        // A first fragment within the limit, then a continuation that announces the rest.
        let mut frames = client_frame(TEXT, b"PUB x\r\n", None, MASK);
        frames.extend(client_frame(FIN | CONT, b"", Some(len - 7), MASK));
        refused(&server, &frames, 1009, "message too big", &format!("continuation of {len}"));
    }
    // Exactly the limit announced, and only the start sent: legal, so the server waits, but
    // it must hold only what arrived.
    let (mut waiting, _) = RawWs::connect_on_shard(server.port, SERVICE_KEY, 0);
    waiting.send_raw(&client_frame(FIN | BINARY, &[b'x'; 1024], Some(limit), MASK));
    // Once the server's socket holds none of it, the broker has read the header and the
    // start; a sync on another connection of its shard then lets the reader finish the step.
    server.await_read_all(waiting.stream());
    server.service_on(0).sync();
    let after = server.rss_bytes();
    assert!(
        after < before + (16 << 20),
        "server memory grew from {before} to {after} bytes on announced lengths alone"
    );
    drop(waiting);
    server.assert_serving();
    bystander.finish();
}

#[test]
fn invalid_utf8_in_text_closes_with_1007() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let bad: [&[u8]; 6] = [
        b"\xff",
        b"PUB x\r\n\r\n\xc3\x28\r\n.\r\n", // a broken two-byte sequence
        b"PUB x\r\n\r\n\xc0\xaf\r\n.\r\n", // an overlong `/`
        b"PUB x\r\n\r\n\xed\xa0\x80\r\n.\r\n", // a UTF-16 surrogate
        b"PUB x\r\n\r\n\xf4\x90\x80\x80\r\n.\r\n", // above U+10FFFF
        b"PUB x\r\n\r\ncaf\xc3",           // cut short at the end
    ];
    for payload in bad {
        let frame = client_frame(FIN | TEXT, payload, None, MASK);
        refused(&server, &frame, 1007, "invalid utf-8", &show(payload));
    }
    // Split across fragments: the whole message is what must be UTF-8.
    let mut frames = client_frame(TEXT, b"PUB x\r\n\r\n\xe2\x82", None, MASK);
    frames.extend(client_frame(FIN | CONT, b"\r\n.\r\n", None, MASK));
    refused(&server, &frames, 1007, "invalid utf-8", "fragments");
    // A close reason must be UTF-8 too.
    let frame = client_frame(FIN | CLOSE, b"\x03\xe8\xff", None, MASK);
    refused(&server, &frame, 1002, "invalid close payload", "close reason");
    // A valid character split across two fragments is fine.
    let (mut raw, cid) = RawWs::connect_on_shard(server.port, SERVICE_KEY, 0);
    let topic = format!("MSG:{cid}");
    raw.send_frame(false, TEXT, &[format!("PUB {topic}\r\n\r\ncaf").as_bytes(), b"\xc3"].concat());
    raw.send_frame(true, CONT, b"\xa9\r\n.\r\n");
    let got = raw.read_frame();
    assert_eq!(got.opcode, TEXT);
    assert!(got.payload.ends_with("\r\n\r\ncaf\u{e9}\r\n.\r\n".as_bytes()), "{got:?}");
    server.assert_serving();
    bystander.finish();
}

#[test]
fn messages_exactly_at_max_message_bytes_pass_and_one_byte_over_closes_with_1009() {
    const LIMIT: usize = 4096;
    let mut server = Server::start(&["--max-message-bytes", "4096"]);
    let bystander = Bystander::start(&server);
    let mut sub = subscriber(&server, "Exact", 1);
    let payload = |len: usize| {
        let frame = "PUB Exact\r\n\r\n\r\n.\r\n".len();
        format!("PUB Exact\r\n\r\n{}\r\n.\r\n", "x".repeat(len - frame))
    };
    assert_eq!(payload(LIMIT).len(), LIMIT);

    // One frame, exactly at the limit: delivered.
    let mut publisher = server.service_on(0);
    publisher.send_text(&payload(LIMIT));
    let got = sub.recv().parse();
    assert_eq!(got.body.len(), LIMIT - "PUB Exact\r\n\r\n.\r\n".len());
    publisher.sync();
    // One byte over: 1009.
    publisher.send_text(&payload(LIMIT + 1));
    assert_eq!(publisher.expect_close(), (1009, "message too big".to_owned()));

    // Fragmented, exactly at the limit (with a ping between the fragments): delivered.
    let (mut raw, _) = RawWs::connect_on_shard(server.port, SERVICE_KEY, 0);
    let bytes = payload(LIMIT).into_bytes();
    raw.send_frame(false, TEXT, &bytes[..1000]);
    raw.send_frame(true, PING, b"mid");
    raw.send_frame(false, CONT, &bytes[1000..3000]);
    raw.send_frame(true, CONT, &bytes[3000..]);
    let pong = raw.read_frame();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"mid"[..]));
    assert_eq!(sub.recv().parse().body.len(), LIMIT - "PUB Exact\r\n\r\n.\r\n".len());
    // Fragmented, one over: the last fragment's header is refused.
    let bytes = payload(LIMIT + 1).into_bytes();
    raw.send_frame(false, TEXT, &bytes[..LIMIT]);
    raw.send_frame(true, CONT, &bytes[LIMIT..]);
    expect_closed(&mut raw, 1009, "message too big", "fragmented, one byte over");
    // Not relayed: a later PUB from the closed peer's shard is the first thing on the topic.
    expect_marker_next(&mut server.service_on(0), "Exact", &mut sub);
    server.assert_serving();
    bystander.finish();
}

// ---------------------------------------------------------------------------------------------
// Slow, half-open and flooding connections
// ---------------------------------------------------------------------------------------------

#[test]
fn slowloris_upgrade_is_cut_off_by_the_auth_timeout() {
    let mut server = Server::start(&["--auth-timeout", "1s"]);
    let bystander = Bystander::start(&server);
    let request = upgrade_request(server.port).into_bytes();
    let start = Instant::now();
    let mut peers: Vec<(TcpStream, Option<Duration>)> = (0..8)
        .map(|_| {
            let s = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            (s, None)
        })
        .collect();
    let mut sent = 0;
    while peers.iter().any(|(_, closed)| closed.is_none())
        && start.elapsed() < Duration::from_secs(6)
    {
        for (stream, closed) in peers.iter_mut().filter(|(_, closed)| closed.is_none()) {
            let mut chunk = [0u8; 512];
            let ended = match stream.read(&mut chunk) {
                Ok(0) => true,
                Ok(n) => panic!("a slowloris peer got an answer: {}", show(&chunk[..n])),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    stream.write_all(&request[sent..sent + 1]).is_err()
                }
                Err(_) => true,
            };
            if ended {
                *closed = Some(start.elapsed());
            }
        }
        sent += 1;
        assert!(sent < request.len(), "the whole request went out before any cut-off");
        // Pacing: the attack is one byte per peer every 200 ms.
        thread::sleep(Duration::from_millis(200));
    }
    for (_, closed) in &peers {
        let closed = closed.expect("a slowloris peer was still connected after 6 s");
        assert!(
            closed >= Duration::from_millis(800) && closed < Duration::from_secs(3),
            "slowloris peer cut off after {closed:?}; the auth timeout is 1s"
        );
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn half_open_peers_are_closed_by_the_auth_timeout() {
    let mut server = Server::start(&["--auth-timeout", "1s"]);
    let bystander = Bystander::start(&server);
    let start = Instant::now();

    // Upgraded, then never a key: 1008 `auth timeout`.
    let mut upgraded = Client::upgrade(server.port, "/").unwrap();
    // Never the end of the request head: closed without an answer.
    let mut unfinished = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).unwrap();
    unfinished
        .write_all(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        )
        .unwrap();
    // The whole upgrade, then the write side shut: answered or not, the server lets go.
    let mut shut = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).unwrap();
    shut.write_all(upgrade_request(server.port).as_bytes()).unwrap();
    shut.shutdown(Shutdown::Write).unwrap();

    assert_eq!(upgraded.expect_close_within(Duration::from_secs(3)), (1008, "auth timeout".into()));
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(800), "auth timeout after only {elapsed:?}");
    let answer = read_to_end_within(&mut unfinished, Duration::from_secs(3))
        .expect("an unfinished upgrade was still open 3 s after the auth timeout");
    assert!(answer.is_empty(), "unfinished upgrade got {}", show(&answer));
    let answer = read_to_end_within(&mut shut, Duration::from_secs(3))
        .expect("a peer that shut its side was still connected after 3 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 101"), "{answer:?}");
    server.assert_serving();
    bystander.finish();
}

#[test]
fn connection_flood_past_max_connections_gets_503() {
    const MAX: usize = 12;
    let server = Server::start(&["--max-connections", "12"]);
    let bystander = Bystander::start(&server);
    let request = upgrade_request(server.port);
    let mut flood = Vec::new();
    let (mut upgraded, mut unavailable) = (0, 0);
    for _ in 0..40 {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).expect("connect");
        s.write_all(request.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut head = Vec::new();
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if head.starts_with("HTTP/1.1 101") {
            upgraded += 1;
        } else if head.starts_with("HTTP/1.1 503 Service Unavailable\r\n") {
            unavailable += 1;
            assert!(
                read_to_end_within(&mut s, Duration::from_secs(2)).is_some(),
                "the connection stayed open after its 503"
            );
        } else {
            panic!("flood connection got {head:?}");
        }
        flood.push(s);
    }
    // The bystander holds one connection per shard; the limit is split between the shards.
    assert!(upgraded <= MAX - 2, "{upgraded} upgrades with a limit of {MAX} and 2 in use");
    assert!(unavailable >= 40 - (MAX - 2), "only {unavailable} of 40 got 503");
    drop(flood);
    let mut probe = login_eventually(&server);
    probe.sync();
    bystander.finish();
}

#[test]
fn subscriber_that_never_reads_is_cut_off_alone() {
    // More than the kernel's largest loopback send buffer (4 MiB) plus the budget, so the
    // queue must pass the budget however far the buffers grow.
    const COUNT: u64 = 6000;
    let mut server = Server::start(&["--max-pending-bytes", "65536"]);
    let bystander = Bystander::start(&server);
    // A service on a socket with a tiny receive buffer, subscribed to the flood and to the
    // bystander's topic, that never reads. (it_slow_consumer.rs checks that a subscriber of
    // the same topic that reads gets every message.)
    let stream = tcp_with_small_receive_buffer(server.port, 4096);
    let mut stuck = Client::upgrade_stream(stream, server.port, "/").unwrap();
    stuck.service = true;
    stuck.login(SERVICE_KEY).unwrap();
    stuck.send_text(&msg("SUB", "Flood", &[], ""));
    stuck.send_text(&msg("SUB", STEADY, &[], ""));
    stuck.sync();
    let mut flooder = server.service_on(0);
    let body = "f".repeat(1024);
    for seq in 0..COUNT {
        flooder.queue_text(&msg("PUB", "Flood", &[("Seq", &seq.to_string())], &body));
        if seq % 64 == 63 {
            flooder.flush();
        }
    }
    flooder.flush();
    let start = Instant::now();
    flooder.sync();
    assert!(start.elapsed() < Duration::from_secs(1), "the flooder was held up");
    // Now read: a prefix of the flood in order (and bystander messages), then the close.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stuck.next_event(left) {
            Event::Message(m) => {
                let p = m.parse();
                if p.first_line == "PUB Flood" {
                    let seq: u64 = p.header("Seq").unwrap().parse().unwrap();
                    assert!(last < Some(seq), "{seq} after {last:?}");
                    last = Some(seq);
                }
            }
            Event::Close(close) => break format!("close {close:?}"),
            Event::Gone(why) => break format!("gone: {why}"),
            Event::Timeout => {
                panic!("the stuck subscriber was never cut off (flood up to {last:?})")
            }
        }
    };
    assert!(
        end == "close Some((1008, \"slow consumer\"))" || end.starts_with("gone"),
        "the stuck subscriber ended with {end}"
    );
    assert!(last < Some(COUNT - 1), "the stuck subscriber got the whole flood");
    server.assert_serving();
    bystander.finish();
}

#[test]
fn replies_to_a_peer_that_never_reads_stay_bounded() {
    // Errors and pongs are queued whatever the connection's budget. A peer that sends
    // commands which each earn an error, or pings, and never reads must not make the server
    // queue without bound: it should stop reading from that peer, or cut it off.
    const SENT_MAX: usize = 32 << 20;
    // 1 MiB WebSocket messages of unknown commands: each 14-byte message earns a ~70-byte error.
    let unknown = "FROB T\r\n\r\n.\r\n".repeat((1 << 20) / 14);
    let unknown = client_frame(FIN | TEXT, unknown.as_bytes(), None, MASK);
    let pings: Vec<u8> =
        (0..8000).flat_map(|_| client_frame(FIN | PING, &[b'p'; 125], None, MASK)).collect();
    let mut failures = Vec::new();
    for (what, chunk) in [("unknown commands", unknown), ("pings", pings)] {
        // A fresh server each time, so memory freed by the last attacker is not reused.
        let mut server = Server::start(&["--max-pending-bytes", "1MiB"]);
        let bystander = Bystander::start(&server);
        let before = server.rss_bytes();
        let stream = tcp_with_small_receive_buffer(server.port, 4096);
        let mut peer = Client::upgrade_stream(stream, server.port, "/").unwrap();
        peer.login(SERVICE_KEY).unwrap();
        let mut raw = peer.stream().try_clone().unwrap();
        raw.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut sent = 0;
        'send: while sent < SENT_MAX {
            let mut at = 0;
            while at < chunk.len() {
                match raw.write(&chunk[at..]) {
                    Ok(n) => at += n,
                    Err(_) => break 'send, // stalled (the server stopped reading) or cut off
                }
            }
            sent += chunk.len();
        }
        // Not a proof of absence, and no event marks it: the broker keeps working through
        // what it has read for a while after the writes stall, and the memory sample is taken
        // once it has had time to (the bound, not the wait, is the check).
        thread::sleep(Duration::from_millis(500));
        let after = server.rss_bytes();
        eprintln!("{what}: sent {sent} bytes; server memory {before} -> {after}");
        if after > before + (16 << 20) {
            failures.push(format!(
                "{what}: after {sent} bytes from a peer that never reads, server memory grew \
                 from {before} to {after} bytes"
            ));
        }
        drop(peer);
        server.assert_serving();
        bystander.finish();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Everything a service receives before its own sync message comes back (see
/// `Client::sync`), as text.
fn until_sync(c: &mut Client, timeout: Duration) -> Vec<String> {
    let body = format!("sync {}", unique());
    c.send_text(&msg("PUB", &format!("MSG:{}", c.cid), &[], &body));
    let mut before = Vec::new();
    loop {
        let m = c.recv_within(timeout);
        assert!(!m.binary, "expected text, got {m:?}");
        let text = String::from_utf8(m.data).expect("text frames are UTF-8");
        if parse(text.as_bytes()).body == format!("{body}\r\n").as_bytes() {
            return before;
        }
        before.push(text);
    }
}

#[test]
fn subscription_flood_past_the_limit_gets_limit_errors() {
    let mut server = Server::start(&["--max-subscriptions-per-connection", "50"]);
    let bystander = Bystander::start(&server);
    let mut attacker = server.service_on(0);
    let subs: String = (0..80).map(|i| msg("SUB", &format!("T{i}"), &[], "")).collect();
    attacker.send_text(&subs);
    let errors = until_sync(&mut attacker, RECV_TIMEOUT);
    // Whether the connection's private topic counts as one of its subscriptions is not
    // written down; the broker counts it.
    let first_refused = 80 - errors.len();
    assert!(
        first_refused == 49 || first_refused == 50,
        "{} SUBs refused out of 80 with a limit of 50",
        errors.len()
    );
    for (i, text) in errors.iter().enumerate() {
        let topic = format!("T{}", first_refused + i);
        let expected = error("limit", None, &format!("Limit reached: subscriptions SUB {topic}"));
        assert_eq!(show(text.as_bytes()), show(expected.as_bytes()));
    }
    // At the limit, a SUB of a topic it has is no error (idempotent) and takes nothing.
    attacker.send_text(&msg("SUB", "T0", &[], ""));
    attacker.sync();
    // UNS makes room for exactly one more.
    attacker.send_text(&msg("UNS", "T0", &[], ""));
    attacker.send_text(&msg("SUB", "T79", &[], ""));
    attacker.send_text(&msg("SUB", "T78", &[], ""));
    attacker.expect_error("limit", "Limit reached: subscriptions SUB T78");
    attacker.sync();
    let mut publisher = server.service_on(1);
    let mut witness = server.subscriber_on(attacker.shard(), "T78");
    witness.send_text(&msg("SUB", "T0", &[], ""));
    witness.sync();
    server.settle();
    publisher.send_text(&msg("PUB", "T79", &[], "made it"));
    publisher.send_text(&msg("PUB", "T78", &[], "refused"));
    publisher.send_text(&msg("PUB", "T0", &[], "unsubscribed"));
    attacker.expect_text(&relayed("PUB", "T79", &[], &publisher.cid, "", "made it"));
    // The witness on the attacker's shard has the other two, so the attacker would have them
    // queued ahead of its sync.
    witness.expect_text(&relayed("PUB", "T78", &[], &publisher.cid, "", "refused"));
    witness.expect_text(&relayed("PUB", "T0", &[], &publisher.cid, "", "unsubscribed"));
    attacker.sync();
    server.assert_serving();
    bystander.finish();
}

#[test]
fn subscription_flood_at_the_default_limit_does_not_stall_the_shard() {
    // A refused SUB is checked against the connection's subscriptions. With the default limit
    // of 10 000, topics of a realistic length that share a prefix (`site/building/...`), and
    // WebSocket messages full of refused SUBs, that must not hold up the shard.
    let mut server = Server::start(&[]);
    let prefix = format!("site/{}/", "b".repeat(90));
    let topic = |i: usize| format!("{prefix}{i:06}");
    let mut attacker = server.service_on(0);
    let start = Instant::now();
    for batch in 0..10 {
        let subs: String =
            (0..1000).map(|i| msg("SUB", &topic(batch * 1000 + i), &[], "")).collect();
        attacker.send_text(&subs);
    }
    let at_the_limit = until_sync(&mut attacker, Duration::from_secs(60)).len();
    eprintln!("10 000 SUBs took {:?}", start.elapsed());
    assert!(at_the_limit <= 1, "{at_the_limit} of the first 10 000 SUBs refused");

    let bystander = Bystander::start(&server);
    // The cost of a WebSocket message full of refused SUBs, against one full of unknown
    // commands with the same topics (the same parsing, an error of the same size each): the
    // fastest of three tries of each, so a moment of load elsewhere does not decide.
    let per_message = (1 << 20) / msg("SUB", &topic(0), &[], "").len();
    let mut next_topic = 100_000;
    let mut cost = |word: &str| {
        let mut fastest = Duration::MAX;
        for _ in 0..3 {
            let flood: String = (next_topic..next_topic + per_message)
                .map(|i| msg(word, &topic(i), &[], ""))
                .collect();
            next_topic += per_message;
            let start = Instant::now();
            attacker.send_text(&flood);
            let answers = until_sync(&mut attacker, Duration::from_secs(60));
            fastest = fastest.min(start.elapsed());
            assert_eq!(answers.len(), per_message, "{word}: one error each");
        }
        fastest
    };
    let unknown = cost("XYZ");
    let refused = cost("SUB");
    eprintln!(
        "{per_message} unknown commands: {unknown:?}; {per_message} refused SUBs: {refused:?}"
    );
    assert!(
        refused < unknown * 4 + Duration::from_millis(50),
        "a message of {per_message} refused SUBs took {refused:?} against {unknown:?} for as \
         many unknown commands: each refused SUB costs time in proportion to the \
         subscriptions the connection has"
    );
    server.assert_serving();
    bystander.finish();
}

#[test]
fn pending_requests_past_the_limit_get_limit_errors() {
    let mut server = Server::start(&["--max-pending-requests", "5"]);
    let bystander = Bystander::start(&server);
    let mut responder = server.service_on(1);
    responder.send_text(&msg("EREQ", "Work", &[], ""));
    responder.sync();
    let mut requester = server.client_on(0);
    let reqs: String =
        (0..8).map(|i| msg("REQ", "Work", &[("ReqID", &format!("q{i}"))], "job")).collect();
    requester.send_text(&reqs);
    for i in 5..8 {
        requester.expect_error_with_req_id(
            "limit",
            &format!("q{i}"),
            "Limit reached: pending requests REQ Work",
        );
    }
    let mut rids = Vec::new();
    for i in 0..5 {
        let p = responder.recv().parse();
        assert_eq!(p.header("ReqID"), Some(format!("q{i}").as_str()));
        rids.push(p.header("Rid").expect("Rid").to_owned());
    }
    // q5 to q7 were not delivered: q8, sent later on the same path, is the next REQ the
    // responder gets (below).
    // One answer makes room for one more request.
    responder.send_text(&msg("RES", "Work", &[("Rid", &rids[0])], "done"));
    let p = requester.recv().parse();
    assert_eq!((p.header("ReqID"), p.body.as_slice()), (Some("q0"), &b"done\r\n"[..]));
    requester.send_text(&msg("REQ", "Work", &[("ReqID", "q8")], "job"));
    requester.send_text(&msg("REQ", "Work", &[("ReqID", "q9")], "job"));
    requester.expect_error_with_req_id("limit", "q9", "Limit reached: pending requests REQ Work");
    assert_eq!(responder.recv().parse().header("ReqID"), Some("q8"));
    server.assert_serving();
    bystander.finish();
}

// ---------------------------------------------------------------------------------------------
// Impersonation
// ---------------------------------------------------------------------------------------------

#[test]
fn guessed_rids_get_no_request_and_the_requester_gets_the_real_answer() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let mut responder = server.service_on(1);
    responder.send_text(&msg("EREQ", "Svc", &[], ""));
    responder.sync();
    let mut other_responder = server.service_on(0);
    other_responder.send_text(&msg("EREQ", "Svc", &[], ""));
    other_responder.sync();
    // Keep the other responder busy so the real request goes to `responder`.
    let mut filler = server.service_on(0);
    filler.send_text(&msg("REQ", "Svc", &[("ReqID", "filler")], ""));
    let (busy, filler_req) = recv_any(&mut [&mut responder, &mut other_responder]);
    if busy == 0 {
        std::mem::swap(&mut responder, &mut other_responder);
    }
    let filler_rid = filler_req.parse().header("Rid").unwrap().to_owned();

    let mut requester = server.client_on(0);
    requester.send_text(&msg("REQ", "Svc", &[("ReqID", "real")], "question"));
    let req = responder.recv().parse();
    let rid: u64 = req.header("Rid").unwrap().parse().unwrap();

    // A client and a service that were not given the request try every nearby rid, and odd
    // spellings of the real one.
    let mut guesses: Vec<String> =
        (rid.saturating_sub(100)..rid + 100).map(|r| r.to_string()).collect();
    guesses.extend(
        ["0", "18446744073709551615", "-1", "abc", "", " ", "1e3"].iter().map(|s| s.to_string()),
    );
    guesses.extend([format!("00{rid}"), format!("+{rid}"), format!("{rid}.0"), format!("{rid} x")]);
    let mut client = server.client_on(0);
    let mut service = server.service_on(1);
    for guesser in [&mut client, &mut service] {
        let batch: String =
            guesses.iter().map(|g| msg("RES", "Svc", &[("Rid", g)], "forged")).collect();
        guesser.send_text(&batch);
        for _ in &guesses {
            guesser.expect_error("no-request", "No client for request ID  RES Svc");
        }
        // One error each and nothing else: the sync's reply comes next.
        guesser.sync();
    }
    // The other registered responder may not answer it either.
    other_responder.send_text(&msg("RES", "Svc", &[("Rid", &rid.to_string())], "forged"));
    other_responder.expect_error("no-request", "No client for request ID  RES Svc");
    // No forgery reached the requester: once every shard has answered every other, it would
    // be queued ahead of the real answer, which must come next.
    server.settle_replies();
    // The real answer arrives, once.
    responder.send_text(&msg("RES", "Svc", &[("Rid", &rid.to_string())], "answer"));
    let got = requester.recv().parse();
    assert_eq!(got.header("Cid"), Some(responder.cid.as_str()));
    assert_eq!((got.header("ReqID"), got.body.as_slice()), (Some("real"), &b"answer\r\n"[..]));
    assert_eq!(got.header("Rid"), None);
    // Once: a second copy would be queued ahead of the sync's reply.
    server.settle_replies();
    requester.sync();
    responder.send_text(&msg("RES", "Svc", &[("Rid", &rid.to_string())], "again"));
    responder.expect_error("no-request", "No client for request ID  RES Svc");
    other_responder.send_text(&msg("RES", "Svc", &[("Rid", &filler_rid)], "filled"));
    assert_eq!(filler.recv().parse().body, b"filled\r\n");
    server.assert_serving();
    bystander.finish();
}

/// `Cid`, `Uid` and `Rid` spelled every way the broker must recognise (PROTOCOL.md §3: names
/// case-insensitive, blanks around the name ignored, blanks after the colon optional).
fn spoof_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for name in ["Cid", "Uid", "Rid"] {
        let spellings = [
            name.to_owned(),
            name.to_lowercase(),
            name.to_uppercase(),
            format!("{}{}", &name[..2].to_lowercase(), &name[2..].to_uppercase()),
            format!(" {name}"),
            format!("{name} "),
            format!("\t{name}\t"),
            format!("  {}  ", name.to_lowercase()),
        ];
        for (i, spelled) in spellings.iter().enumerate() {
            let value = ["evil", "", "  0123456789abcdefghij  ", "1"][i % 4];
            let separator = [":", ": ", ":\t", " :  "][i % 4];
            lines.push(format!("{spelled}{separator}{value}"));
        }
    }
    lines
}

/// A received message's headers, with names trimmed of blanks and lower-cased.
fn names(p: &Parsed) -> Vec<String> {
    p.headers.iter().map(|(n, _)| n.trim_matches([' ', '\t']).to_lowercase()).collect()
}

#[test]
fn spoofed_cid_uid_rid_are_removed_in_every_spelling() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let spoofs = spoof_lines();
    let mut head = String::new();
    for (i, line) in spoofs.iter().enumerate() {
        head.push_str(&format!("Keep-{i}: {i}\r\n{line}\r\n"));
    }
    let kept: Vec<(String, String)> =
        (0..spoofs.len()).map(|i| (format!("Keep-{i}"), i.to_string())).collect();

    // PUB from a service and from a granted client, text and binary.
    let mut sub = subscriber(&server, "Spoof", 1);
    let mut service = server.service_on(0);
    service.send_text(&msg("EPUB", "Spoof", &[], ""));
    service.sync();
    let mut client = server.client_on(0);
    for sender in [&mut service, &mut client] {
        let wire = format!("PUB Spoof\r\n{head}\r\nbody\r\n.\r\n");
        sender.send_text(&wire);
        sender.send_binary(wire.as_bytes());
        for binary in [false, true] {
            let m = sub.recv();
            assert_eq!(m.binary, binary);
            let p = m.parse();
            assert_eq!(p.without(&["Cid", "Uid"]), kept, "sender headers kept, spoofs gone");
            assert_eq!(names(&p).iter().filter(|n| *n == "cid").count(), 1, "{m:?}");
            assert_eq!(names(&p).iter().filter(|n| *n == "uid").count(), 1, "{m:?}");
            assert!(!names(&p).contains(&"rid".to_owned()), "{m:?}");
            assert_eq!((p.header("Cid"), p.header("Uid")), (Some(sender.cid.as_str()), Some("")));
        }
    }

    // A REQ's spoofed Rid is replaced by the broker's; a RES's spoofed Cid/Uid are replaced by
    // the responder's, and its Rid is removed.
    let mut responder = server.service_on(1);
    responder.send_text(&msg("EREQ", "SpoofSvc", &[], ""));
    responder.sync();
    service.send_text(&format!("REQ SpoofSvc\r\n{head}\r\nq\r\n.\r\n"));
    let req = responder.recv().parse();
    assert_eq!(names(&req).iter().filter(|n| *n == "rid").count(), 1, "{req:?}");
    assert_eq!(req.header("Cid"), Some(service.cid.as_str()));
    let rid = req.header("Rid").unwrap().to_owned();
    assert!(rid.parse::<u64>().is_ok());
    responder.send_text(&format!("RES SpoofSvc\r\nRid: {rid}\r\n{head}\r\na\r\n.\r\n"));
    let res = service.recv().parse();
    assert_eq!(res.without(&["Cid", "Uid"]), kept);
    assert_eq!(res.header("Cid"), Some(responder.cid.as_str()));
    assert_eq!(names(&res).iter().filter(|n| *n == "cid").count(), 1);
    server.assert_serving();
    bystander.finish();
}

#[test]
fn spoofed_ids_cannot_reach_a_lax_receiver() {
    // Receivers are often lax (PROTOCOL notes: the original's bundled Python services strip
    // and lower-case header names; Python's `splitlines()` and many regexes also break lines
    // at a lone CR). The broker must not relay a line that such a receiver reads as a `Cid`,
    // `Uid` or `Rid` of the sender's making: it may refuse the message or drop the header.
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let mut sub = subscriber(&server, "Lax", 1);
    let mut publisher = server.service_on(0);
    let variants = [
        "X: a\rCid: evil",
        "X\rCid: evil",
        "X: a\rUid: admin",
        "X: a\rRid: 1",
        "Cid\x0b: evil",
        "\x0cCid: evil",
        "Cid\u{a0}: evil",
        "\u{2003}uid: admin",
    ];
    let mut failures = Vec::new();
    for (i, line) in variants.iter().enumerate() {
        publisher.send_text(&format!("PUB Lax\r\n{line}\r\n\r\nbody\r\n.\r\n"));
        publisher.send_text(&msg("PUB", "Lax", &[], &format!("marker {i}")));
        let marker = relayed("PUB", "Lax", &[], &publisher.cid, "", &format!("marker {i}"));
        let first = sub.recv();
        if first.data != marker.as_bytes() {
            let head_end = first.data.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&first.data[..head_end]).into_owned();
            // The broker's own lines are the last two; a lax receiver sees every CR or LF as a
            // line break and strips every kind of white space around a name.
            let lines: Vec<&str> = head.split(['\r', '\n']).filter(|l| !l.is_empty()).collect();
            let smuggled: Vec<&&str> = lines[1..lines.len() - 2]
                .iter()
                .filter(|line| {
                    let name = line.split(':').next().unwrap_or("");
                    let name: String =
                        name.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect();
                    ["cid", "uid", "rid"].contains(&name.to_lowercase().as_str())
                })
                .collect();
            if !smuggled.is_empty() {
                failures.push(format!("{line:?} was relayed as {head:?}"));
            }
            assert_eq!(sub.recv().data, marker.as_bytes());
        } else {
            publisher.expect_malformed();
        }
    }
    // No stray error for the publisher: the sync's reply comes next.
    publisher.sync();
    assert!(failures.is_empty(), "lines a lax receiver reads as ids:\n{}", failures.join("\n"));
    server.assert_serving();
    bystander.finish();
}

#[test]
fn a_reqid_from_a_binary_req_keeps_a_text_res_utf8() {
    // The ReqID of a binary REQ may hold any bytes; the broker writes it into the RES, which
    // goes out in a text frame when the responder answered in text. A text frame must still
    // be UTF-8, or the requester's WebSocket library closes the connection (1007).
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let mut responder = server.service_on(1);
    responder.send_text(&msg("EREQ", "Bin", &[], ""));
    responder.sync();
    let mut requester = server.service_on(0);
    requester.send_binary(b"REQ Bin\r\nReqID: \xff\xfe\r\n\r\nq\r\n.\r\n");
    // The broker refuses such a ReqID outright (docs/PROTOCOL.md §6).
    requester.expect_error("malformed", "Malformed message: ReqID must be UTF-8");
    // The refused REQ was not delivered: the next one, on the same path, is the first the
    // responder gets (its ReqID is checked below).
    // A UTF-8 ReqID in a binary REQ answered in text comes back as valid text.
    requester.send_binary("REQ Bin\r\nReqID: h\u{e9}\r\n\r\nq\r\n.\r\n".as_bytes());
    let req = responder.recv();
    assert!(
        req.data.windows(12).any(|w| w == "ReqID: h\u{e9}\r\n".as_bytes()),
        "the responder's first REQ is not the second one sent: {req:?}"
    );
    let at = req.data.windows(7).position(|w| w == b"\r\nRid: ").expect("Rid") + 7;
    let rid: String =
        req.data[at..].iter().take_while(|b| b.is_ascii_digit()).map(|&b| char::from(b)).collect();
    responder.send_text(&msg("RES", "Bin", &[("Rid", &rid)], "answer"));
    match requester.next_event(RECV_TIMEOUT) {
        Event::Message(m) => {
            assert!(!m.binary, "a text RES goes out as text");
            let text = std::str::from_utf8(&m.data).expect("valid UTF-8");
            assert!(text.contains("\r\nReqID: h\u{e9}\r\n"), "{text}");
        }
        other => panic!("requester of a binary REQ answered in text got {other:?}"),
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn a_uid_set_from_a_binary_int_keeps_text_messages_utf8() {
    // A uid set by a binary INT UID may hold any bytes; the broker writes it into every
    // message of that connection, text ones included. Every subscriber's WebSocket library
    // would close its connection (1007) on the first such message.
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let mut sub = subscriber(&server, "Who", 1);
    let mut client = server.client_on(0);
    let mut admin = server.service_on(0);
    admin.send_text(&msg("EPUB", "Who", &[], ""));
    admin.send_binary(
        &[
            format!("INT UID\r\nforcid: {}\r\nsetuid: ", client.cid).as_bytes(),
            b"\xff\r\n\r\n.\r\n",
        ]
        .concat(),
    );
    // The broker refuses a uid that is not UTF-8 (docs/PROTOCOL.md §6).
    admin.expect_error("malformed", "Malformed message: setuid must be UTF-8");
    admin.sync();
    client.send_text(&msg("PUB", "Who", &[], "hello"));
    match sub.next_event(RECV_TIMEOUT) {
        Event::Message(m) => assert!(m.binary || std::str::from_utf8(&m.data).is_ok()),
        other => panic!("subscriber of a text PUB from a connection with a binary uid: {other:?}"),
    }
    server.assert_serving();
    bystander.finish();
}

// ---------------------------------------------------------------------------------------------
// Garbage and bulk
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_instead_of_http_gets_400_431_or_a_close() {
    let mut server = Server::start(&["--auth-timeout", "1s"]);
    let bystander = Bystander::start(&server);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        })
        .collect();
    let long_header = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 10_000], b"\r\n\r\n"].concat();
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("tls client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
        ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("ssh banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        ("random bytes", random),
        ("nul bytes", vec![0; 1000]),
        ("blank lines", b"\r\n\r\n\r\n".to_vec()),
        ("websocket frame first", client_frame(FIN | TEXT, b"xyzzy", None, MASK)),
        ("10 KB header", long_header),
        ("request line only", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    for (what, input) in inputs {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).unwrap();
        let _ = s.write_all(&input);
        let answer = read_to_end_within(&mut s, Duration::from_secs(4))
            .unwrap_or_else(|| panic!("{what}: the connection was still open after 4 s"));
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 400 ")
                || answer.starts_with("HTTP/1.1 431 "),
            "{what}: got {answer:?}"
        );
    }
    server.assert_serving();
    bystander.finish();
}

#[test]
fn many_malformed_messages_get_one_error_per_websocket_message() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let mut attacker = server.service_on(0);
    let own = format!("MSG:{}", attacker.cid);

    // A thousand malformed messages in one WebSocket message: one error, the rest skipped.
    attacker.send_text(&"PING\r\n\r\n.\r\n".repeat(1000));
    assert_eq!(attacker.expect_malformed(), "Malformed message: no space in the first line");
    attacker.sync();

    // Good ones before a malformed one are handled; what follows it is skipped.
    let mut batch: String =
        (0..100).map(|i| msg("PUB", &own, &[], &format!("before {i}"))).collect();
    batch.push_str("PUB\r\n\r\n.\r\n");
    batch.extend((0..100).map(|i| msg("PUB", &own, &[], &format!("after {i}"))));
    attacker.send_text(&batch);
    for i in 0..100 {
        assert_eq!(attacker.recv().parse().body, format!("before {i}\r\n").as_bytes());
    }
    assert_eq!(attacker.expect_malformed(), "Malformed message: no space in the first line");
    attacker.sync();

    // Two thousand malformed WebSocket messages in one burst: one error each, in order.
    let kinds = [
        ("", "empty message"),
        ("NOSPACE\r\n\r\n.\r\n", "no space in the first line"),
        ("PUB \r\n\r\n.\r\n", "empty target"),
        ("PUB x\r\nno colon\r\n\r\n.\r\n", "header line without a colon"),
        ("PUB x\r\n: v\r\n\r\n.\r\n", "empty header name"),
        ("PUB x\r\nA: b\r\n", "no blank line after the headers"),
        ("PUB x\r\n\r\nbody\r\n", "no terminating dot line"),
        ("PUB a\0b\r\n\r\n.\r\n", "target contains a control byte"),
    ];
    for i in 0..2000 {
        attacker.queue_text(kinds[i % kinds.len()].0);
    }
    attacker.flush();
    for i in 0..2000 {
        let text = attacker.expect_malformed();
        assert_eq!(text, format!("Malformed message: {}", kinds[i % kinds.len()].1), "error {i}");
    }
    attacker.sync();
    server.assert_serving();
    bystander.finish();
}

#[test]
fn a_huge_number_of_headers_is_refused_at_once() {
    let mut server = Server::start(&[]);
    let bystander = Bystander::start(&server);
    let mut sub = subscriber(&server, "Hdr", 1);
    let mut attacker = server.service_on(0);
    let with_headers = |n: usize| {
        let headers: String = (0..n).map(|i| format!("h{i}:v\r\n")).collect();
        format!("PUB Hdr\r\n{headers}\r\nbody\r\n.\r\n")
    };
    attacker.send_text(&with_headers(64));
    assert_eq!(sub.recv().parse().headers.len(), 64 + 2);
    attacker.send_text(&with_headers(65));
    assert_eq!(attacker.expect_malformed(), "Malformed message: too many headers");
    // About 1 MiB of headers.
    let many: String = "a:b\r\n".repeat(200_000);
    let start = Instant::now();
    attacker.send_text(&format!("PUB Hdr\r\n{many}\r\nbody\r\n.\r\n"));
    assert_eq!(attacker.expect_malformed(), "Malformed message: too many headers");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    // Neither refused PUB was relayed: the attacker's next PUB on the topic comes next.
    expect_marker_next(&mut attacker, "Hdr", &mut sub);
    server.assert_serving();
    bystander.finish();
}

#[test]
fn a_1_mib_topic_line_is_refused_at_once() {
    let mut server = Server::start(&["--max-message-bytes", "2MiB"]);
    let bystander = Bystander::start(&server);
    let mut attacker = server.client_on(0);
    let topic = "t".repeat(1 << 20);
    let cases = [
        (format!("PUB {topic}\r\n\r\n.\r\n"), "target too long"),
        (format!("SUB {topic}\r\n\r\n.\r\n"), "target too long"),
        (format!("PUB {topic}"), "target too long"),
        (topic.clone(), "no space in the first line"),
        (format!("{topic} x\r\n\r\n.\r\n"), ""),
    ];
    for (wire, what) in cases {
        let start = Instant::now();
        attacker.send_text(&wire);
        if what.is_empty() {
            // A 1 MiB command word: unknown, and echoed in the error (it is not the target).
            let text = attacker.recv_text();
            assert!(text.contains("Code: unknown-command"), "{}", &text[..200.min(text.len())]);
        } else {
            assert_eq!(attacker.expect_malformed(), format!("Malformed message: {what}"));
        }
        assert!(start.elapsed() < Duration::from_secs(2), "{what}: took {:?}", start.elapsed());
    }
    attacker.sync();
    server.assert_serving();
    bystander.finish();
}
