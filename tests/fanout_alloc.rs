//! Proves the fan-out path allocates per message, never per subscriber, and exactly as often
//! as documented: publisher → owner → subscribers, through the real mailboxes, the writer
//! wake-ups and the write to a socket.
//!
//! A counting global allocator (counting only the current thread, so the parallel test
//! runner's other threads do not disturb it) wraps the system allocator. Each case warms up
//! first, so queues and tables have reached their working size, then counts every allocation
//! of rounds of: parking each subscriber's writer on a counting waker, publishing, moving the
//! mail through `flush_mail` and the inboxes, and writing every queue into a socket pair
//! through the runtime's own write path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Instant;

use middleman::ids::ShardId;
use middleman::protocol::message;
use middleman::shard::connection::Connection;
use middleman::shard::mailbox::{mailboxes, Inbox, Letter, Mailboxes};
use middleman::shard::topics::Placement;
use middleman::shard::Shard;
use middleman::testing::{connect, park_writer, shard_config, write_now, LIMITS};

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

/// Messages per round.
const BURST: u64 = 10;
const WARM_UP_ROUNDS: u64 = 5;
const ROUNDS: u64 = 50;

/// Counts its wake-ups; cloning and waking it does not allocate.
struct CountingWaker(AtomicU64);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn send(shard: &mut Shard, conn: &Rc<Connection>, text: &[u8]) {
    let (msg, _) = message::next(text, LIMITS).unwrap().unwrap();
    shard.handle_message(conn, &msg, false);
}

/// The shards of one test, their inboxes, and the socket every subscriber writes into.
struct Cluster {
    shards: Vec<Shard>,
    mail: Mailboxes,
    inboxes: Vec<Inbox>,
    socket: UnixStream,
    peer: UnixStream,
    sink: Vec<u8>,
}

impl Cluster {
    fn new(shards: usize) -> Self {
        let (mail, inboxes) = mailboxes(shards, 1024);
        let (socket, peer) = UnixStream::pair().unwrap();
        socket.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        Self {
            shards: (0..shards)
                .map(|i| Shard::new(shard_config(i as u16, shards, 1 << 30), Instant::now()))
                .collect(),
            mail,
            inboxes,
            socket,
            peer,
            sink: vec![0; 1 << 16],
        }
    }

    /// Moves mail as the runtime does (`flush_mail`, then each inbox drained) until none is
    /// left.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for shard in &mut self.shards {
                shard.flush_mail(&self.mail);
            }
            for (shard, inbox) in self.shards.iter_mut().zip(&self.inboxes) {
                while let Some(letter) = inbox.try_recv() {
                    let Letter::Mail(mail) = letter else { panic!("no control is sent") };
                    shard.handle_mail(mail);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Writes every subscriber's queue into the socket through the runtime's write path,
    /// reading the other end whenever the socket is full.
    fn write(&mut self, subscribers: &[Rc<Connection>]) {
        for conn in subscribers {
            assert!(conn.pending_bytes() > 0, "every subscriber got the burst");
            // Each pass writes what the socket takes, then empties the socket; a queue the
            // write path leaves untouched fails here rather than spinning.
            for _ in 0..1000 {
                write_now(conn, self.socket.as_raw_fd());
                while let Ok(n) = self.peer.read(&mut self.sink) {
                    if n == 0 {
                        break;
                    }
                }
                if conn.pending_bytes() == 0 {
                    break;
                }
            }
            assert_eq!(conn.pending_bytes(), 0, "the write path wrote the queue");
        }
    }
}

/// Allocations over the counted rounds, and writer wake-ups per subscriber per round.
struct Count {
    allocated: u64,
    wakes_per_round: u64,
}

/// The allocations `per_message` allocations each would make over the counted rounds.
const fn messages_times(per_message: u64) -> u64 {
    per_message * ROUNDS * BURST
}

/// Runs `round` warmed up, then counts it over [`ROUNDS`].
fn count(
    cluster: &mut Cluster,
    subscribers: &[Rc<Connection>],
    mut publish: impl FnMut(&mut Cluster),
) -> Count {
    let waker = Arc::new(CountingWaker(AtomicU64::new(0)));
    let as_waker = Waker::from(waker.clone());
    let mut round = |cluster: &mut Cluster| {
        for c in subscribers {
            park_writer(c, &as_waker);
        }
        publish(cluster);
        cluster.settle();
        cluster.write(subscribers);
    };
    for _ in 0..WARM_UP_ROUNDS {
        round(cluster);
    }
    let wakes = waker.0.load(Ordering::Relaxed);
    let before = allocations();
    for _ in 0..ROUNDS {
        round(cluster);
    }
    let allocated = allocations() - before;
    let woken = waker.0.load(Ordering::Relaxed) - wakes;
    Count { allocated, wakes_per_round: woken / (ROUNDS * subscribers.len() as u64) }
}

const PUBLISH: &[u8] =
    b"PUB T\r\nSeq: 1\r\n\r\nsome payload of a typical size, more or less\r\n.\r\n";

/// One shard: the publisher and `n` subscribers on it.
fn local_fan_out(n: u64) -> Count {
    let mut cluster = Cluster::new(1);
    let publisher = connect(&mut cluster.shards[0], 0);
    let subs: Vec<_> = (1..=n).map(|i| connect(&mut cluster.shards[0], i)).collect();
    for c in &subs {
        send(&mut cluster.shards[0], c, b"SUB T\r\n\r\n.\r\n");
    }
    count(&mut cluster, &subs, |cluster| {
        for _ in 0..BURST {
            send(&mut cluster.shards[0], &publisher, PUBLISH);
        }
    })
}

/// Three shards: the publisher on shard 0, the topic owned by shard 1 with `n` subscribers
/// of its own, and `n` more subscribers on shard 2.
fn cross_shard_fan_out(n: u64) -> Count {
    let placement = Placement::new(3);
    let topic = (0..100)
        .map(|i| format!("T{i}"))
        .find(|t| placement.owner(t.as_bytes()) == ShardId(1))
        .unwrap();
    let sub = format!("SUB {topic}\r\n\r\n.\r\n");
    let publish = format!("PUB {topic}\r\nSeq: 1\r\n\r\nsome payload of a typical size\r\n.\r\n");
    let mut cluster = Cluster::new(3);
    let publisher = connect(&mut cluster.shards[0], 0);
    let mut subs = Vec::new();
    for i in 1..=n {
        for shard in [1, 2] {
            let conn = connect(&mut cluster.shards[shard], i);
            send(&mut cluster.shards[shard], &conn, sub.as_bytes());
            subs.push(conn);
        }
    }
    cluster.settle();
    count(&mut cluster, &subs, |cluster| {
        for _ in 0..BURST {
            send(&mut cluster.shards[0], &publisher, publish.as_bytes());
        }
    })
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocations() > before);
    drop(v);
}

/// A local publish allocates the frame's bytes and its `Rc` handle: two, whatever the count
/// of subscribers.
#[test]
fn local_fan_out_allocates_twice_per_message_whatever_the_subscribers() {
    let one = local_fan_out(1);
    let many = local_fan_out(1000);
    assert_eq!(one.allocated, messages_times(2), "1 subscriber");
    assert_eq!(many.allocated, messages_times(2), "1000 subscribers");
    assert_eq!((one.wakes_per_round, many.wakes_per_round), (1, 1), "each writer woken once");
}

/// Across shards: the publisher's shard allocates the bytes and the `Arc` that shares them;
/// the owner and the other subscribing shard each allocate one `Rc` handle. Four in all.
#[test]
fn cross_shard_fan_out_allocates_four_times_per_message_whatever_the_subscribers() {
    let one = cross_shard_fan_out(1);
    let many = cross_shard_fan_out(500);
    assert_eq!(one.allocated, messages_times(4), "1 subscriber on each shard");
    assert_eq!(many.allocated, messages_times(4), "500 subscribers on each shard");
    assert_eq!((one.wakes_per_round, many.wakes_per_round), (1, 1), "each writer woken once");
}
