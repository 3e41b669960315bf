//! Checks that a parked shard is always woken by work from another thread: cross-shard REQ/RES
//! and PUB→SUB, and the admin thread's scrape, each repeated hundreds of times at a low rate.
//! How: real binary, two shards; a pause before every message lets the shards park, then each
//! hop must arrive, within a generous bound, and almost never as late as an idle tick.
//!
//! Why the second condition: a shard that misses a foreign wake-up (the lost wake-up the
//! vendored glommio's fence pair in `Reactor::wait` / `SleepNotifier::notify` guards against)
//! does not stall for ever, because its idle tick (`IDLE_TICK`, 100 ms in `src/server.rs`)
//! wakes it; the message then arrives 0–100 ms late. So a round slower than half a tick is
//! what a lost wake-up looks like half of the time, and the test fails when such rounds are
//! more than a small share, which scheduling noise on a loaded machine does not reach. A
//! missed wake-up that is rare (one in millions) is beyond what a test of this length can see.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Rounds per scenario.
const ROUNDS: usize = 400;
/// The pause before each round: long enough for both shards to park (a shard parks as soon
/// as it has nothing to run), short enough to keep the test quick.
const PAUSE: Duration = Duration::from_millis(3);
/// No hop may take longer than this: far beyond any scheduling delay, it means a stall.
const STALL: Duration = Duration::from_secs(2);
/// Half the broker's idle tick: a wake-up left to the tick arrives this late half the time.
const LATE: Duration = Duration::from_millis(50);
/// How many rounds in a hundred may be late from scheduling noise alone.
const LATE_PERCENT_MAX: usize = 10;

/// Fails when more than `LATE_PERCENT_MAX` % of `rounds` took longer than `LATE`; prints the
/// distribution either way, so a failure shows whether it looks like lost wake-ups (a spread
/// up to 100 ms) or like a loaded machine (a few outliers).
fn check_rounds(what: &str, rounds: &mut [Duration]) {
    rounds.sort();
    let n = rounds.len();
    let late = rounds.iter().filter(|d| **d > LATE).count();
    let at = |q: usize| rounds[(n * q / 100).min(n - 1)];
    eprintln!(
        "{what}: {n} rounds, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}, {late} slower than {LATE:?}",
        at(50),
        at(90),
        at(99),
        rounds[n - 1]
    );
    assert!(
        late * 100 <= n * LATE_PERCENT_MAX,
        "{what}: {late} of {n} rounds took longer than {LATE:?} (p50 {:?}, max {:?}): a shard \
         was left to its idle tick instead of being woken",
        at(50),
        rounds[n - 1]
    );
}

#[test]
fn cross_shard_requests_at_a_low_rate_always_wake_the_other_shard() {
    let server = Server::start(&[]);
    // The requester on shard 0 and the responder on shard 1: the REQ goes 0 → 1 and the RES
    // 1 → 0, so every round wakes each shard once from the other's thread.
    let mut requester = server.client_on(0);
    let mut responder = server.service_on(1);
    responder.send_text(&msg("EREQ", "Wake", &[], ""));
    responder.sync();
    tell(&mut responder, &mut requester);
    server.settle();

    let mut rounds = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        thread::sleep(PAUSE);
        let body = format!("req {i}");
        let start = Instant::now();
        requester.send_text(&msg("REQ", "Wake", &[], &body));
        let req = responder.recv_within(STALL).parse();
        assert_eq!(req.first_line, "REQ Wake", "round {i}");
        let rid = req.header("Rid").expect("a REQ carries a Rid").to_owned();
        responder.send_text(&msg("RES", "Wake", &[("Rid", &rid)], &body));
        let res = requester.recv_within(STALL).parse();
        assert_eq!(res.first_line, "RES Wake", "round {i}");
        assert_eq!(show(&res.body), show(format!("{body}\r\n").as_bytes()), "round {i}");
        rounds.push(start.elapsed());
    }
    check_rounds("REQ 0 → 1, RES 1 → 0", &mut rounds);
}

#[test]
fn cross_shard_publishes_at_a_low_rate_always_wake_the_subscribers_shard() {
    let server = Server::start(&[]);
    // Subscribers on both shards and the publisher (a service: clients need an EPUB grant) on
    // shard 0: whichever shard owns the
    // topic, every message crosses to the other shard at least once.
    let mut far = server.subscriber_on(1, "WakePub");
    let mut near = server.subscriber_on(0, "WakePub");
    let mut publisher = server.service_on(0);

    let mut rounds = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        thread::sleep(PAUSE);
        let body = format!("pub {i}");
        let start = Instant::now();
        publisher.send_text(&msg("PUB", "WakePub", &[], &body));
        for sub in [&mut far, &mut near] {
            let m = sub.recv_within(STALL).parse();
            assert_eq!(m.first_line, "PUB WakePub", "round {i}");
            assert_eq!(show(&m.body), show(format!("{body}\r\n").as_bytes()), "round {i}");
        }
        rounds.push(start.elapsed());
    }
    check_rounds("PUB on shard 0 to subscribers on shards 0 and 1", &mut rounds);
}

/// `GET /metrics` on the admin port; the status line and the body. The admin thread is a plain
/// thread, not a shard: each scrape mails both shards and waits for both answers.
fn get_metrics(admin: u16) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).expect("connect to the admin port");
    s.set_read_timeout(Some(STALL * 2)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read the whole /metrics response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

#[test]
fn scrapes_from_the_admin_thread_always_wake_both_parked_shards() {
    let admin = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // A 200 means both shards answered within the admin's own 2 s (it answers 503 otherwise);
    // the gauge shows the answer is a real scrape.
    let _server = Server::start(&["--admin-listen", &format!("127.0.0.1:{admin}")]);

    let mut rounds = Vec::with_capacity(ROUNDS / 2);
    for i in 0..ROUNDS / 2 {
        thread::sleep(PAUSE);
        let start = Instant::now();
        let (status, body) = get_metrics(admin);
        rounds.push(start.elapsed());
        assert_eq!(status, "HTTP/1.1 200 OK", "scrape {i}: {body}");
        assert!(
            body.contains("middleman_connections{role=\"client\"} "),
            "scrape {i} has no connection gauge:\n{body}"
        );
    }
    check_rounds("GET /metrics (admin thread → both shards → admin thread)", &mut rounds);
}
