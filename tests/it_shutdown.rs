//! Checks shutdown (§7): queued messages flushed, close 1001, new peers refused, exit 0 in time.
//! How: real binary, two shards, `--drain-timeout 2s`; SIGTERM/SIGINT sent with kill(2).

mod common;

use std::time::{Duration, Instant};

use common::*;

const DRAIN: Duration = Duration::from_secs(2);
/// Slack on top of the drain timeout for process exit and scheduling.
const SLACK: Duration = Duration::from_millis(1500);

/// Subscribers on both shards, both roles, subscribed to `Bye`; the publisher is on `shard`.
fn setup(server: &Server, shard: u16) -> (Client, [Client; 4]) {
    let mut publisher = server.service_on(shard);
    let mut subs =
        [server.service_on(0), server.service_on(1), server.client_on(0), server.client_on(1)];
    publisher.send_text(&msg("ESUB", "Bye", &[], ""));
    for s in subs.iter_mut() {
        tell(&mut publisher, s);
        s.send_text(&msg("SUB", "Bye", &[], ""));
        s.sync();
    }
    server.settle();
    (publisher, subs)
}

/// Publishes `count` messages and waits until the publisher's shard has handled them all.
fn publish(publisher: &mut Client, count: usize) {
    for i in 0..count {
        publisher.queue_text(&msg("PUB", "Bye", &[], &format!("queued {i}")));
    }
    publisher.flush();
    publisher.sync();
}

/// Every subscriber gets the `count` messages, then close 1001 `going away`.
fn expect_messages_then_going_away(publisher: &mut Client, subs: &mut [Client], count: usize) {
    for s in subs.iter_mut() {
        for i in 0..count {
            s.expect_text(&relayed("PUB", "Bye", &[], &publisher.cid, "", &format!("queued {i}")));
        }
        assert_eq!(s.expect_close(), (1001, "going away".to_owned()));
    }
    assert_eq!(publisher.expect_close(), (1001, "going away".to_owned()));
}

fn expect_clean_exit(server: &mut Server, start: Instant) {
    let status = server
        .wait_exit(DRAIN + SLACK)
        .unwrap_or_else(|| panic!("still running {:?} after the signal", start.elapsed()));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        std::net::TcpStream::connect(server.addr()).is_err(),
        "the port still accepts connections after exit"
    );
}

fn shutdown_with(signal: libc::c_int) {
    let mut server = Server::start(&["--drain-timeout", "2s"]);
    let (mut publisher, mut subs) = setup(&server, 0);
    publish(&mut publisher, 20);
    // Every delivery has reached its subscriber's queue: what is left is to flush them.
    server.settle();

    let start = Instant::now();
    server.signal(signal);
    expect_messages_then_going_away(&mut publisher, &mut subs, 20);

    // Shutdown has begun everywhere: a new connection is refused, not left hanging.
    let attempt = Instant::now();
    let late = server.try_connect(SERVICE_KEY);
    assert!(late.is_err(), "a connection made during shutdown was accepted");
    assert!(
        attempt.elapsed() < Duration::from_secs(1),
        "a connection attempt during shutdown hung for {:?} ({:?}) instead of being refused",
        attempt.elapsed(),
        late.err()
    );
    expect_clean_exit(&mut server, start);
}

#[test]
fn sigterm_delivers_queued_messages_closes_with_1001_and_exits_0() {
    shutdown_with(libc::SIGTERM);
}

#[test]
fn sigint_does_the_same() {
    shutdown_with(libc::SIGINT);
}

#[test]
fn sigterm_delivers_messages_still_on_their_way_between_shards() {
    // The publisher's own later message came back, so the broker has accepted every PUB; some
    // deliveries may still be crossing to the other shard when the signal lands. "Flushes what
    // is queued" covers them too. Publishers on both shards, a few rounds, to catch the race.
    for round in 0..4u16 {
        let mut server = Server::start(&["--drain-timeout", "2s"]);
        let (mut publisher, mut subs) = setup(&server, round % 2);
        publish(&mut publisher, 50);
        let start = Instant::now();
        server.terminate();
        expect_messages_then_going_away(&mut publisher, &mut subs, 50);
        expect_clean_exit(&mut server, start);
    }
}

#[test]
fn sigterm_with_no_connections_exits_promptly() {
    let mut server = Server::start(&["--drain-timeout", "2s"]);
    let start = Instant::now();
    server.terminate();
    let status =
        server.wait_exit(DRAIN + SLACK).expect("an idle server exits within the drain timeout");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}: SIGTERM right after `listening on` must drain, not kill"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "an idle server took {:?} to exit",
        start.elapsed()
    );
}

#[test]
fn sigterm_exits_within_the_drain_timeout_even_if_a_peer_never_reads() {
    let mut server = Server::start(&["--drain-timeout", "2s", "--max-pending-bytes", "64MiB"]);
    // A subscriber that stops reading, with megabytes queued for it that can never be flushed.
    let stream = tcp_with_small_receive_buffer(server.port, 4096);
    let mut stuck = Client::upgrade_stream(stream, server.port, "/").unwrap();
    stuck.service = true;
    stuck.login(SERVICE_KEY).unwrap();
    stuck.send_text(&msg("SUB", "Big", &[], ""));
    stuck.sync();
    server.settle();
    let mut publisher = server.service();
    let body = "y".repeat(64 * 1024);
    for _ in 0..64 {
        publisher.queue_text(&msg("PUB", "Big", &[], &body));
    }
    publisher.flush();
    publisher.sync();
    // And a connection that never finished logging in.
    let _half = Client::upgrade(server.port, "/").unwrap();

    let start = Instant::now();
    server.terminate();
    assert_eq!(publisher.expect_close_within(DRAIN + SLACK), (1001, "going away".to_owned()));
    let status = server.wait_exit(DRAIN + SLACK).unwrap_or_else(|| {
        panic!("still running {:?} after SIGTERM with a peer that never reads", start.elapsed())
    });
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    drop(stuck);
}
