//! Cross-shard mail: one bounded inbox per shard, fed by every other shard (and by non-shard
//! threads such as the signal handler), woken through an `AtomicWaker`.
//!
//! This is the only thing shards share. It is lock-free (crossbeam's bounded array queue) and
//! `Send`; a shard registers its waker before it parks and re-checks the queue after, so no
//! wake-up is lost. Senders never block: a full inbox is reported to the caller, which keeps
//! the mail in its own per-destination backlog and stops reading its sockets until the
//! backlog drains (two shards waiting on each other's full inbox would deadlock).

use std::future::poll_fn;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::grants::Grant;
use crate::ids::{ConnectionId, RequestId, ShardId};
use crate::protocol::reply::ErrorCode;

/// A topic name shared across shards.
pub type TopicName = Arc<[u8]>;

/// An encoded frame shared across shards, with the range of its topic inside it.
#[derive(Clone, Debug)]
pub struct SharedFrame {
    pub bytes: Arc<Vec<u8>>,
    /// Where the frame starts in `bytes` (room reserved for the WebSocket header).
    pub start: u32,
    /// Where the topic is in `bytes`.
    pub topic: Range<u32>,
}

impl SharedFrame {
    /// The frame's length on the wire.
    pub fn wire_len(&self) -> usize {
        self.bytes.len() - self.start as usize
    }

    pub fn topic(&self) -> &[u8] {
        &self.bytes[self.topic.start as usize..self.topic.end as usize]
    }
}

/// One piece of cross-shard mail. Which shard sends which mail where is drawn in
/// `docs/ARCHITECTURE.md`.
#[derive(Debug)]
pub enum Mail {
    /// To a topic's owner: fan this PUB out to every interested shard.
    Publish(SharedFrame),
    /// From a topic's owner: deliver to your local subscribers of the topic.
    Deliver(SharedFrame),
    /// To a topic's owner: `shard` now has (or no longer has) local subscribers.
    Interest { topic: TopicName, shard: ShardId, subscribed: bool, ack: Option<ConnectionId> },
    /// To every shard: a service granted something to clients.
    Grant { grant: Grant, topic: TopicName, ack: Option<ConnectionId> },
    /// To a topic's owner: `responder` answers REQs for the topic (EREQ).
    Register { topic: TopicName, responder: ConnectionId, ack: Option<ConnectionId> },
    /// Back to the shard of `to`: the Interest, Grant or Register it asked for is in effect.
    Ack { to: ConnectionId },
    /// To a topic's owner: `responder` is gone.
    Unregister { topic: TopicName, responder: ConnectionId },
    /// From the requester's shard to the topic's owner: pick a responder.
    Request(Box<Request>),
    /// From the owner to the responder's shard: deliver this REQ to `responder`.
    Assign { request: Box<Request>, responder: ConnectionId, owner: ShardId },
    /// To the requester's shard: the request failed.
    Failed { rid: RequestId, code: ErrorCode },
    /// From the responder's shard to the requester's: the RES, encoded for the requester.
    Response { rid: RequestId, frame: SharedFrame },
    /// From the responder's shard to the owner: one fewer in flight for this responder.
    Done { rid: RequestId },
    /// From the requester's shard to the owner, forwarded to the responder's shard: forget
    /// the request. `timed_out`: a later RES gets `no-request`; otherwise (the requester left)
    /// it is dropped silently.
    Forget { rid: RequestId, timed_out: bool },
    /// To the shard of `target`: set its `Uid`. On failure `no-connection` goes to `from`.
    SetUid { target: ConnectionId, uid: Box<[u8]>, from: ConnectionId },
    /// To the shard of `to`: queue this frame for it (an error or reply).
    Direct { to: ConnectionId, frame: SharedFrame },
    /// Between draining shards: every mail I sent you before this, in round `round` of the
    /// drain barrier, is in your inbox (see `Shard::begin_drain`).
    Drain { round: u8 },
}

/// Mail for the runtime of a shard, not its routing: from the signal and admin threads.
#[derive(Debug)]
pub enum Control {
    /// From the signal thread: drain and stop.
    Shutdown,
    /// From the signal thread (SIGHUP): the keys to accept from now on.
    Keys(crate::auth::Keys),
    /// From the admin thread: answer with a snapshot of the counters.
    Scrape { reply: Sender<super::Snapshot> },
}

/// What an inbox holds: routing mail for the shard, or control for its runtime. The two are
/// separate types so that neither side can receive (and silently drop) the other's.
#[derive(Debug)]
pub enum Letter {
    Mail(Mail),
    Control(Control),
}

/// A REQ on its way to a responder.
#[derive(Debug)]
pub struct Request {
    pub rid: RequestId,
    pub requester: ConnectionId,
    /// The REQ as the responder will get it, `Rid` included.
    pub frame: SharedFrame,
    /// The requester's `ReqID`, restored on the RES.
    pub req_id: Option<Box<[u8]>>,
}

/// The receiving end, owned by one shard.
pub struct Inbox {
    rx: Receiver<Letter>,
    waker: Arc<AtomicWaker>,
    room: Arc<[Room]>,
}

/// Senders to every shard's inbox. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Mailboxes {
    tx: Vec<Sender<Letter>>,
    wakers: Vec<Arc<AtomicWaker>>,
    room: Arc<[Room]>,
}

/// A shard whose backlog waits for room in another shard's inbox parks here; every shard
/// that empties part of its inbox wakes the shards that asked. One per shard.
#[derive(Default)]
struct Room {
    wanted: AtomicBool,
    made: AtomicBool,
    waker: AtomicWaker,
}

/// Creates `shards` inboxes of `capacity` mails each.
pub fn mailboxes(shards: usize, capacity: usize) -> (Mailboxes, Vec<Inbox>) {
    let mut tx = Vec::with_capacity(shards);
    let mut wakers = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    let room: Arc<[Room]> = (0..shards).map(|_| Room::default()).collect();
    for _ in 0..shards {
        let (s, r) = crossbeam_channel::bounded(capacity);
        let waker = Arc::new(AtomicWaker::new());
        tx.push(s);
        wakers.push(waker.clone());
        inboxes.push(Inbox { rx: r, waker, room: room.clone() });
    }
    (Mailboxes { tx, wakers, room }, inboxes)
}

impl Mailboxes {
    pub fn shards(&self) -> usize {
        self.tx.len()
    }

    /// Queues `mail` without waking the shard; call [`Mailboxes::wake`] after a batch.
    pub fn try_send(&self, to: ShardId, mail: Mail) -> Result<(), Mail> {
        match self.try_send_letter(to, Letter::Mail(mail)) {
            Ok(()) => Ok(()),
            Err(Letter::Mail(m)) => Err(m),
            // The channel hands back what it was given.
            Err(Letter::Control(_)) => unreachable!("a mail came back as control"),
        }
    }

    /// Queues `control` without blocking (and without waking the shard).
    pub fn try_send_control(&self, to: ShardId, control: Control) -> Result<(), Control> {
        match self.try_send_letter(to, Letter::Control(control)) {
            Ok(()) => Ok(()),
            Err(Letter::Control(c)) => Err(c),
            // The channel hands back what it was given.
            Err(Letter::Mail(_)) => unreachable!("control came back as a mail"),
        }
    }

    fn try_send_letter(&self, to: ShardId, letter: Letter) -> Result<(), Letter> {
        match self.tx[to.index()].try_send(letter) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(l) | TrySendError::Disconnected(l)) => Err(l),
        }
    }

    pub fn wake(&self, to: ShardId) {
        self.wakers[to.index()].wake();
    }

    /// Resolves once some shard has emptied part of its inbox since this shard asked: the
    /// moment to retry a backlog that found an inbox full. (Spurious wake-ups are possible:
    /// the room may be in another inbox; the caller retries and asks again.)
    pub async fn room(&self, me: ShardId) {
        let room = &self.room[me.index()];
        room.wanted.store(true, Ordering::SeqCst);
        poll_fn(|cx| {
            if room.made.swap(false, Ordering::SeqCst) {
                return Poll::Ready(());
            }
            room.waker.register(cx.waker());
            // Re-check after registering: a shard that made room in between saw no waker.
            if room.made.swap(false, Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Blocks until `control` is queued. Only for threads that are not shards.
    pub fn send_control(&self, to: ShardId, control: Control) {
        if self.tx[to.index()].send(Letter::Control(control)).is_ok() {
            self.wake(to);
        }
    }
}

impl Inbox {
    /// Resolves when at least one mail is waiting.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if !self.rx.is_empty() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Re-check after registering: a sender that queued in between saw no waker.
            if self.rx.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Tells the shards waiting for room that this inbox has some now.
    pub fn made_room(&self) {
        for room in self.room.iter() {
            if room.wanted.load(Ordering::Relaxed) && room.wanted.swap(false, Ordering::SeqCst) {
                room.made.store(true, Ordering::SeqCst);
                room.waker.wake();
            }
        }
    }

    pub fn try_recv(&self) -> Option<Letter> {
        self.rx.try_recv().ok()
    }

    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
