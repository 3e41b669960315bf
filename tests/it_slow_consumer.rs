//! Checks slow consumers (§7): a stuck subscriber never slows others; closed or dropped alone.
//! How: real binary, `--max-pending-bytes 65536`; the stuck one has a tiny receive buffer.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const COUNT: u64 = 5000;
const BODY_BYTES: usize = 1024;
/// How many messages the publisher may be ahead of the fast subscriber: about 33 KiB, half of
/// `--max-pending-bytes`, so the fast one stays within its budget however late its reader
/// thread is scheduled (on a busy machine it once fell behind and was rightly dropped).
const WINDOW: u64 = 32;

fn body(seq: u64) -> String {
    let head = format!("{seq:08} ");
    format!("{head}{}", "x".repeat(BODY_BYTES - head.len()))
}

/// Checks one delivered message and returns its sequence number.
fn check(m: &Received, publisher: &str) -> u64 {
    let p = m.parse();
    assert_eq!(p.first_line, "PUB Flood");
    assert_eq!(p.header("Cid"), Some(publisher));
    let seq: u64 = p.header("Seq").expect("Seq").parse().unwrap();
    assert_eq!(
        show(&p.body),
        show(format!("{}\r\n", body(seq)).as_bytes()),
        "body of message {seq}"
    );
    seq
}

/// A service subscribed to `Flood` over a socket whose receive buffer is a few KiB, so that
/// once it stops reading the server's queue for it grows at once.
fn slow_subscriber(server: &Server, shard: u16) -> Client {
    for _ in 0..32 {
        let stream = tcp_with_small_receive_buffer(server.port, 4096);
        let mut c = Client::upgrade_stream(stream, server.port, "/").unwrap();
        c.service = true;
        c.login(SERVICE_KEY).unwrap();
        if c.shard() == shard {
            c.send_text(&msg("SUB", "Flood", &[], ""));
            c.sync();
            return c;
        }
    }
    panic!("no slow subscriber landed on shard {shard}");
}

struct Flood {
    publisher: Client,
    fast: Client,
    slow: Client,
}

/// Sets up publisher, fast and slow subscribers, publishes `COUNT` messages of 1 KiB while the
/// fast one reads on its own thread (at most `WINDOW` behind), and checks the fast one got
/// every message in order. The slow one never reads, so its queue passes the budget once the
/// kernel's buffers for it are full (5 MB of flood is more than they take).
fn flood(server: &Server, slow_shard: u16) -> Flood {
    let mut fast = server.service_on(1 - slow_shard);
    fast.send_text(&msg("SUB", "Flood", &[], ""));
    fast.sync();
    let slow = slow_subscriber(server, slow_shard);
    server.settle();
    let mut publisher = server.service_on(slow_shard);
    let publisher_cid = publisher.cid.clone();

    let start = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let reader = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        for expected in 0..COUNT {
            let left = deadline.saturating_duration_since(Instant::now());
            match fast.next_event(left) {
                Event::Message(m) => {
                    let seq = check(&m, &publisher_cid);
                    assert_eq!(seq, expected, "fast subscriber: out of order or lost");
                    counter.store(seq + 1, Ordering::Release);
                }
                other => panic!("fast subscriber after {expected} messages: {other:?}"),
            }
        }
        fast
    });
    for seq in 0..COUNT {
        if received.load(Ordering::Acquire) + WINDOW <= seq {
            publisher.flush();
            while received.load(Ordering::Acquire) + WINDOW <= seq && !reader.is_finished() {
                // Pacing: the publisher keeps at most WINDOW messages ahead of the reader.
                thread::sleep(Duration::from_micros(100));
            }
        }
        publisher.queue_text(&msg("PUB", "Flood", &[("Seq", &seq.to_string())], &body(seq)));
        if seq % 16 == 15 {
            publisher.flush();
        }
    }
    publisher.flush();
    let fast = reader.join().expect("the fast subscriber got every message in order");
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "the fast subscriber needed {elapsed:?} for {COUNT} messages"
    );
    Flood { publisher, fast, slow }
}

#[test]
fn slow_subscriber_is_disconnected_and_never_slows_the_others() {
    for slow_shard in [0, 1] {
        let mut server = Server::start(&["--max-pending-bytes", "65536"]);
        let Flood { mut publisher, mut fast, mut slow } = flood(&server, slow_shard);

        // Now read what reached the slow one: an in-order prefix-with-gaps, then the close.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = 0u64;
        let mut last: Option<u64> = None;
        let end = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match slow.next_event(left) {
                Event::Message(m) => {
                    let seq = check(&m, &publisher.cid);
                    assert!(last < Some(seq), "slow subscriber: {seq} after {last:?}");
                    last = Some(seq);
                    got += 1;
                }
                Event::Close(close) => break format!("close {close:?}"),
                Event::Gone(why) => break format!("gone: {why}"),
                Event::Timeout => panic!(
                    "slow subscriber (shard {slow_shard}) still connected after {got} messages"
                ),
            }
        };
        assert!(
            end == "close Some((1008, \"slow consumer\"))" || end.starts_with("gone"),
            "slow subscriber ended with {end}, expected close 1008 `slow consumer` or EOF"
        );
        assert!(got < COUNT, "the slow subscriber was never cut off");

        // Everyone else carries on.
        publisher.sync();
        publisher.send_text(&msg("PUB", "Flood", &[], "after"));
        fast.expect_text(&relayed("PUB", "Flood", &[], &publisher.cid, "", "after"));
        server.assert_serving();
    }
}

#[test]
fn slow_subscriber_with_drop_policy_stays_connected_and_loses_messages_alone() {
    for slow_shard in [0, 1] {
        let mut server =
            Server::start(&["--max-pending-bytes", "65536", "--slow-consumer", "drop"]);
        let Flood { mut publisher, mut fast, mut slow } = flood(&server, slow_shard);

        // Drain the slow one: what it got is in order with gaps, intact, and it stays open.
        let mut got = 0u64;
        let mut last: Option<u64> = None;
        loop {
            match slow.next_event(Duration::from_secs(1)) {
                Event::Message(m) => {
                    let seq = check(&m, &publisher.cid);
                    assert!(last < Some(seq), "slow subscriber: {seq} after {last:?}");
                    last = Some(seq);
                    got += 1;
                }
                Event::Timeout => break,
                other => panic!("slow subscriber with the drop policy: {other:?} after {got}"),
            }
        }
        assert!(
            got > 0 && got < COUNT,
            "expected some but not all messages at the slow subscriber, got {got}"
        );

        // Once it has caught up it gets new messages again, and can still talk.
        publisher.send_text(&msg("PUB", "Flood", &[], "marker"));
        let expected = relayed("PUB", "Flood", &[], &publisher.cid, "", "marker");
        slow.expect_text(&expected);
        fast.expect_text(&expected);
        slow.sync();
        publisher.sync();
        server.assert_serving();
    }
}

#[test]
fn a_reader_that_stops_does_not_stall_its_own_shard() {
    // The slow subscriber and an unrelated pair share a shard; the pair's round trips stay
    // quick while the flood is queued for the stuck reader.
    let mut server = Server::start(&["--max-pending-bytes", "1MiB", "--slow-consumer", "drop"]);
    let mut slow = slow_subscriber(&server, 0);
    server.settle();
    let mut publisher = server.service_on(0);
    let mut a = server.service_on(0);
    for seq in 0..2000u64 {
        publisher.queue_text(&msg("PUB", "Flood", &[("Seq", &seq.to_string())], &body(seq)));
    }
    publisher.flush();
    for _ in 0..50 {
        let start = Instant::now();
        a.sync();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a round trip on the slow subscriber's shard took {:?}",
            start.elapsed()
        );
    }
    publisher.sync();
    // The stuck reader is still connected (drop policy) and its queue drains when it reads.
    let mut last: Option<u64> = None;
    loop {
        match slow.next_event(Duration::from_secs(1)) {
            Event::Message(m) => {
                let seq = check(&m, &publisher.cid);
                assert!(last < Some(seq));
                last = Some(seq);
            }
            Event::Timeout => break,
            other => panic!("slow subscriber: {other:?}"),
        }
    }
    server.assert_serving();
}
