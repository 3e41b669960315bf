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
    /// From the signal thread: drain and stop.
    Shutdown,
    /// From the signal thread (SIGHUP): the keys to accept from now on.
    Keys(crate::auth::Keys),
    /// From the admin thread: answer with a snapshot of the counters.
    Scrape { reply: Sender<super::Snapshot> },
    /// Between draining shards: every mail I sent you before this, in round `round` of the
    /// drain barrier, is in your inbox (see `Shard::begin_drain`).
    Drain { round: u8 },
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
    rx: Receiver<Mail>,
    waker: Arc<AtomicWaker>,
}

/// Senders to every shard's inbox. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Mailboxes {
    tx: Vec<Sender<Mail>>,
    wakers: Vec<Arc<AtomicWaker>>,
}

/// Creates `shards` inboxes of `capacity` mails each.
pub fn mailboxes(shards: usize, capacity: usize) -> (Mailboxes, Vec<Inbox>) {
    let mut tx = Vec::with_capacity(shards);
    let mut wakers = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (s, r) = crossbeam_channel::bounded(capacity);
        let waker = Arc::new(AtomicWaker::new());
        tx.push(s);
        wakers.push(waker.clone());
        inboxes.push(Inbox { rx: r, waker });
    }
    (Mailboxes { tx, wakers }, inboxes)
}

impl Mailboxes {
    pub fn shards(&self) -> usize {
        self.tx.len()
    }

    /// Queues `mail` without waking the shard; call [`Mailboxes::wake`] after a batch.
    pub fn try_send(&self, to: ShardId, mail: Mail) -> Result<(), Mail> {
        match self.tx[to.index()].try_send(mail) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Err(m),
        }
    }

    pub fn wake(&self, to: ShardId) {
        self.wakers[to.index()].wake();
    }

    /// Blocks until `mail` is queued. Only for threads that are not shards.
    pub fn send_blocking(&self, to: ShardId, mail: Mail) {
        if self.tx[to.index()].send(mail).is_ok() {
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

    pub fn try_recv(&self) -> Option<Mail> {
        self.rx.try_recv().ok()
    }

    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
