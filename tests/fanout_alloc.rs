//! Proves the fan-out path does not allocate per subscriber: delivering one message to 1 000
//! subscribers allocates exactly as often as delivering it to one.
//!
//! A counting global allocator (counting only the current thread, so the parallel test
//! runner's other threads do not disturb it) wraps the system allocator. Each case warms up
//! first, so queues and tables have reached their working size, then counts the allocations
//! of publishing and draining (the writer's part without the socket).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use middleman::auth::Role;
use middleman::connection::{Connection, SlowConsumer};
use middleman::ids::{ConnectionId, ShardId};
use middleman::protocol::message::{self, Limits};
use middleman::shard::{Shard, ShardConfig};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` unchanged; the counter is a thread-local `Cell`
// that never allocates, and `try_with` tolerates thread teardown.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const LIMITS: Limits = Limits { topic_bytes_max: 256, headers_max: 32 };

fn shard(id: u16, shards: usize) -> Shard {
    Shard::new(
        ShardConfig {
            id: ShardId(id),
            shards,
            pending_bytes_max: 1 << 30,
            slow_consumer: SlowConsumer::Disconnect,
            request_timeout: None,
            limits: LIMITS,
            subscriptions_max: 100,
            pending_requests_max: 100,
        },
        Instant::now(),
    )
}

fn connect(shard: &mut Shard, local: u64) -> Rc<Connection> {
    let conn = Connection::new(ConnectionId { epoch: 1, shard: shard.id(), local });
    conn.role.set(Some(Role::Service));
    shard.register(&conn);
    conn
}

fn send(shard: &mut Shard, conn: &Rc<Connection>, text: &[u8]) {
    let (msg, _) = message::next(text, LIMITS).unwrap().unwrap();
    shard.handle_message(conn, &msg, false);
}

const PUBLISH: &[u8] =
    b"PUB T\r\nSeq: 1\r\n\r\nsome payload of a typical size, more or less\r\n.\r\n";

/// Allocations per published message on one shard with `subscribers` subscribers.
fn local_fan_out(subscribers: u64) -> u64 {
    let mut s = shard(0, 1);
    let publisher = connect(&mut s, 0);
    let subs: Vec<_> = (1..=subscribers).map(|i| connect(&mut s, i)).collect();
    for c in &subs {
        send(&mut s, c, b"SUB T\r\n\r\n.\r\n");
    }
    let round = |s: &mut Shard| {
        for _ in 0..10 {
            send(s, &publisher, PUBLISH);
        }
        for c in &subs {
            assert_eq!(c.drain_queued(), 10);
        }
    };
    for _ in 0..5 {
        round(&mut s);
    }
    let before = allocations();
    for _ in 0..100 {
        round(&mut s);
    }
    (allocations() - before) / 1000
}

/// Allocations per message arriving from the topic's owner on another shard.
fn remote_fan_out(subscribers: u64) -> u64 {
    // Find a topic owned by shard 0, and publish it from shard 0 to subscribers on shard 1.
    let placement = middleman::shard::topics::Placement::new(2);
    let topic = (0..100)
        .map(|i| format!("T{i}"))
        .find(|t| placement.owner(t.as_bytes()) == ShardId(0))
        .unwrap();
    let sub = format!("SUB {topic}\r\n\r\n.\r\n");
    let publish = format!("PUB {topic}\r\n\r\nsome payload\r\n.\r\n");
    let mut owner = shard(0, 2);
    let mut far = shard(1, 2);
    let publisher = connect(&mut owner, 0);
    let subs: Vec<_> = (1..=subscribers).map(|i| connect(&mut far, i)).collect();
    for c in &subs {
        send(&mut far, c, sub.as_bytes());
    }
    for m in far.take_mail(ShardId(0)) {
        owner.handle_mail(m);
    }
    let mut mail = Vec::with_capacity(16);
    let mut round = |owner: &mut Shard, far: &mut Shard, count: &mut u64| {
        for _ in 0..10 {
            send(owner, &publisher, publish.as_bytes());
        }
        mail.extend(owner.take_mail(ShardId(1)));
        let before = allocations();
        for m in mail.drain(..) {
            far.handle_mail(m);
        }
        for c in &subs {
            assert_eq!(c.drain_queued(), 10);
        }
        *count += allocations() - before;
    };
    let mut ignored = 0;
    for _ in 0..5 {
        round(&mut owner, &mut far, &mut ignored);
    }
    let mut counted = 0;
    for _ in 0..100 {
        round(&mut owner, &mut far, &mut counted);
    }
    counted / 1000
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocations() > before);
    drop(v);
}

#[test]
fn local_fan_out_allocates_per_message_not_per_subscriber() {
    let one = local_fan_out(1);
    let many = local_fan_out(1000);
    assert_eq!(one, many, "allocations per message: 1 subscriber {one}, 1000 subscribers {many}");
    assert!(one <= 4, "a publish should take a handful of allocations, took {one}");
}

#[test]
fn cross_shard_fan_out_allocates_per_message_not_per_subscriber() {
    let one = remote_fan_out(1);
    let many = remote_fan_out(1000);
    assert_eq!(one, many, "allocations per message: 1 subscriber {one}, 1000 subscribers {many}");
    assert!(one <= 2, "delivering a message from another shard took {one} allocations");
}
