//! Measures delivery: a PUB fanned out by one shard to 1 / 100 / 10 000 local subscribers, and
//! the cross-shard inbox hop beside a std channel, in one thread and across two, with criterion.

/// The broker's own allocator, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use middleman::ids::{RequestId, ShardId};
use middleman::protocol::message::{self, Limits, Message};
use middleman::shard::mailbox::{self, Mail};
use middleman::shard::{Shard, ShardConfig};
use middleman::testing::{connect, shard_config};

const SUBSCRIBER_COUNTS: [usize; 3] = [1, 100, 10_000];

const TOPIC: &str = "prices.fx.eurusd";

/// The parser limits at their command-line defaults.
const LIMITS: Limits = Limits { topic_bytes_max: 1024, headers_max: 64 };

/// Mails per iteration of the inbox benches: enough that the per-batch `wake` is amortised
/// as it is in `Shard::flush_mail`, few enough to stay far below the inbox capacity.
const BATCH: usize = 256;

/// Inbox capacity for the hop benches. Same-thread, a batch always fits; cross-thread, the
/// producer may run up to this far ahead of the consumer.
const INBOX_CAPACITY: usize = 4 * BATCH;

fn config(shards: usize) -> ShardConfig {
    // Each iteration drains every queue, so no subscriber ever comes near the budget.
    ShardConfig { limits: LIMITS, ..shard_config(0, shards, 8 * 1024 * 1024) }
}

fn parse(input: &[u8]) -> Message<'_> {
    let (message, rest) = message::next(input, LIMITS)
        .expect("the input holds a message")
        .expect("the bench's own message parses");
    assert!(rest.is_empty());
    message
}

/// A PUB with one header and a 128-byte body (its CRLF included).
fn pub_input() -> Vec<u8> {
    let mut input = format!("PUB {TOPIC}\r\nContent-Type: application/json\r\n\r\n").into_bytes();
    let mut body = br#"{"symbol":"EURUSD","bid":1.08342,"ask":1.08351,"pad":""#.to_vec();
    body.resize(128 - br#""}"#.len() - 2, b'x');
    body.extend_from_slice(b"\"}\r\n");
    assert_eq!(body.len(), 128);
    input.extend_from_slice(&body);
    input.extend_from_slice(b".\r\n");
    input
}

/// Shard-local fan-out: one PUB handled by a single shard (`shards: 1`, so no mail and no
/// shared allocation) with `n` subscribers of its topic.
///
/// Each iteration is `Shard::handle_message` (parse excluded: the PUB is parsed once; the head
/// rewrite and the one frame encoding are in) and then `Connection::drain_queued` on every
/// subscriber, standing in for the writers. The drain is measured too: without it the queues
/// would grow without bound, and its cost (a pop and a reference count decrement per
/// subscriber) is part of every delivery anyway. Throughput is in deliveries.
fn shard_local(c: &mut Criterion) {
    let pub_input = pub_input();
    let publish = parse(&pub_input);
    let sub_input = format!("SUB {TOPIC}\r\n\r\n.\r\n").into_bytes();
    let subscribe = parse(&sub_input);

    let mut group = c.benchmark_group("fanout_shard_local");
    for n in SUBSCRIBER_COUNTS {
        let mut shard = Shard::new(config(1), Instant::now());
        let publisher = connect(&mut shard, 0);
        let subscribers: Vec<_> = (1..=n as u64)
            .map(|local| {
                let conn = connect(&mut shard, local);
                shard.handle_message(&conn, &subscribe, false);
                conn
            })
            .collect();

        // One round outside the measurement, to check that every subscriber gets exactly one
        // frame and nothing else (no error reply hiding in the queues).
        shard.handle_message(&publisher, &publish, false);
        assert_eq!(shard.stats.deliveries, n as u64);
        assert!(subscribers.iter().all(|conn| conn.drain_queued() == 1));
        assert_eq!(publisher.drain_queued(), 0);

        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                shard.handle_message(&publisher, black_box(&publish), false);
                let drained: usize = subscribers.iter().map(|conn| conn.drain_queued()).sum();
                black_box(drained);
            });
        });
    }
    group.finish();
}

/// Cheap mail: no allocation to build or drop, so the benches measure the queue.
fn done(i: usize) -> Mail {
    Mail::Done { rid: RequestId(i as u64) }
}

/// Waits a little without giving up the core, then yields: the machine may have as few
/// cores as threads in the cross-thread benches.
fn backoff(spins: &mut u32) {
    if *spins < 64 {
        std::hint::spin_loop();
        *spins += 1;
    } else {
        thread::yield_now();
    }
}

/// The cross-shard hop in one thread: a batch of `BATCH` mails through `Mailboxes::try_send`
/// (one `wake` per batch, as `Shard::flush_mail` does) and back out with `Inbox::try_recv`;
/// the baseline twin is a `std::sync::mpsc::sync_channel` of the same capacity carrying the
/// same `Mail`s.
fn hop_same_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbox_hop_same_thread");
    group.throughput(Throughput::Elements(BATCH as u64));

    group.bench_function("mailbox", |b| {
        let (mailboxes, inboxes) = mailbox::mailboxes(2, INBOX_CAPACITY);
        let to = ShardId(1);
        let inbox = &inboxes[to.index()];
        b.iter(|| {
            for i in 0..BATCH {
                let sent = mailboxes.try_send(to, done(i));
                assert!(sent.is_ok(), "a batch fits in an empty inbox");
            }
            mailboxes.wake(to);
            for _ in 0..BATCH {
                black_box(inbox.try_recv().expect("every mail sent is queued"));
            }
        });
    });

    group.bench_function("std_sync_channel", |b| {
        let (tx, rx) = mpsc::sync_channel(INBOX_CAPACITY);
        b.iter(|| {
            for i in 0..BATCH {
                let sent = tx.try_send(done(i));
                assert!(sent.is_ok(), "a batch fits in an empty channel");
            }
            for _ in 0..BATCH {
                black_box(rx.try_recv().expect("every mail sent is queued"));
            }
        });
    });
    group.finish();
}

/// The cross-shard hop across threads: a producer thread keeps the queue as full as it can
/// (mail refused by a full queue is dropped and the producer backs off), the bench thread
/// receives `BATCH` mails per iteration. This is throughput, not latency: both sides run
/// concurrently, so the time is that of the slower side plus the cache-line traffic between
/// them. The mailbox producer wakes once per batch it manages to queue, like a shard flushing
/// its backlog.
fn hop_cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbox_hop_cross_thread");
    group.throughput(Throughput::Elements(BATCH as u64));

    let (mailboxes, inboxes) = mailbox::mailboxes(2, INBOX_CAPACITY);
    let to = ShardId(1);
    let inbox = &inboxes[to.index()];
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0;
            let mut spins = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut queued = 0;
                while queued < BATCH && mailboxes.try_send(to, done(i)).is_ok() {
                    queued += 1;
                    i += 1;
                }
                if queued > 0 {
                    mailboxes.wake(to);
                    spins = 0;
                } else {
                    backoff(&mut spins);
                }
            }
        });
        group.bench_function("mailbox", |b| {
            b.iter(|| {
                let mut spins = 0;
                let mut received = 0;
                while received < BATCH {
                    match inbox.try_recv() {
                        Some(mail) => {
                            black_box(mail);
                            received += 1;
                            spins = 0;
                        }
                        None => backoff(&mut spins),
                    }
                }
            });
        });
        stop.store(true, Ordering::Relaxed);
    });

    let (tx, rx) = mpsc::sync_channel(INBOX_CAPACITY);
    stop.store(false, Ordering::Relaxed);
    thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0;
            let mut spins = 0;
            while !stop.load(Ordering::Relaxed) {
                match tx.try_send(done(i)) {
                    Ok(()) => {
                        i += 1;
                        spins = 0;
                    }
                    Err(TrySendError::Full(_)) => backoff(&mut spins),
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        });
        group.bench_function("std_sync_channel", |b| {
            b.iter(|| {
                let mut spins = 0;
                let mut received = 0;
                while received < BATCH {
                    match rx.try_recv() {
                        Ok(mail) => {
                            black_box(mail);
                            received += 1;
                            spins = 0;
                        }
                        Err(_) => backoff(&mut spins),
                    }
                }
            });
        });
        stop.store(true, Ordering::Relaxed);
    });
    group.finish();
}

/// Short runs: the whole suite is meant to finish in well under a minute.
fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = shard_local, hop_same_thread, hop_cross_thread
}
criterion_main!(benches);
