//! A connection as routing sees it: identity, role, `Uid`, subscriptions, the bounded
//! outbound queue and where it is in its life.
//!
//! What it is not: the socket. The runtime (`runtime::reader`, `runtime::writer`) owns the
//! socket, the peer's address and the keep-alive clock; it reads this state and drains the
//! queue. A connection lives its whole life on the shard that accepted it; everything here is
//! `Rc`/`Cell`/`RefCell`, never shared across threads.
//!
//! Invariants:
//! - once [`Connection::close`] has run, nothing more is queued; the close frame (if the
//!   reason has one) is the last frame the writer sends;
//! - the queue holds at most `--max-pending-bytes` plus the data frames queued past it since
//!   the runtime last judged the connection ([`Connection::overflow`]); the runtime judges
//!   every connection that went over before it handles the next message or mail.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;

use super::outbound::{Frame, FrameBytes, OutQueue};
use super::TopicName;
use crate::auth::Role;
use crate::close::CloseReason;
use crate::ids::{ConnectionId, CID_LEN};
use crate::protocol::ws;

/// Where a connection is in its life. One value, read by the reader, the writer, the
/// keep-alive and the shard alike; it only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Waiting for the HTTP upgrade request.
    Upgrading,
    /// Upgraded; waiting for the key (the first message).
    Authenticating,
    /// Authenticated: messages are routed.
    Open,
    /// Closing for this reason: the close frame (if any) is queued last; input is discarded.
    Closing(CloseReason),
    /// The writer has sent everything it ever will (or the socket failed).
    Closed(CloseReason),
}

/// What [`Connection::deliver`] did with a data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued within the budget.
    Queued,
    /// Queued past the budget: the runtime judges the connection after this message or mail.
    Overflowed,
    /// The connection is closing; the frame was ignored.
    Closing,
}

/// One connection (authenticated or authenticating).
pub struct Connection {
    pub id: ConnectionId,
    pub cid: [u8; CID_LEN],
    pub role: Cell<Option<Role>>,
    lifecycle: Cell<Lifecycle>,
    uid: RefCell<Box<[u8]>>,
    out: RefCell<OutQueue>,
    /// Data frames queued past the budget and not yet judged by the runtime.
    overflow: Cell<u32>,
    /// Recorded in the shard's list of connections for the runtime to judge.
    awaiting_verdict: Cell<bool>,
    /// The largest REQ refused for the budget since the runtime last judged this connection.
    refused: Cell<usize>,
    /// The writer parks here when the queue is empty.
    writer: Cell<Option<Waker>>,
    /// The reader parks here while it waits for the socket, acknowledgements or the backlog.
    reader: Cell<Option<Waker>>,
    /// The reader waits for the backlog to fall to this many bytes: the writer wakes it then.
    reader_resumes_at: Cell<Option<usize>>,
    /// Acknowledgements this connection waits for before its next message is handled: a SUB,
    /// EPUB, ESUB or EREQ is in effect on every shard before anything after it happens.
    pub awaiting_acks: Cell<u32>,
    /// Requests this connection made that are not answered yet.
    pub pending_requests: Cell<u32>,
    /// Topics this connection subscribes to, for the per-connection limit and cleanup.
    /// A set: a connection may hold thousands, and SUB and UNS look them up.
    pub topics: RefCell<ahash::AHashSet<TopicName>>,
    /// Topics this connection answers REQs for (EREQ).
    pub responder_for: RefCell<Vec<TopicName>>,
    /// Bytes written to the socket.
    pub bytes_out: Cell<u64>,
    /// Frames skipped under `--slow-consumer drop`.
    pub dropped: Cell<u64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("role", &self.role.get())
            .field("lifecycle", &self.lifecycle.get())
            .field("pending_bytes", &self.pending_bytes())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(id: ConnectionId) -> Rc<Self> {
        Rc::new(Self {
            id,
            cid: id.encode(),
            role: Cell::new(None),
            lifecycle: Cell::new(Lifecycle::Upgrading),
            uid: RefCell::new(Box::default()),
            out: RefCell::new(OutQueue::default()),
            overflow: Cell::new(0),
            refused: Cell::new(0),
            awaiting_verdict: Cell::new(false),
            writer: Cell::new(None),
            reader: Cell::new(None),
            reader_resumes_at: Cell::new(None),
            awaiting_acks: Cell::new(0),
            pending_requests: Cell::new(0),
            topics: RefCell::new(ahash::AHashSet::new()),
            responder_for: RefCell::new(Vec::new()),
            bytes_out: Cell::new(0),
            dropped: Cell::new(0),
        })
    }

    pub fn is_service(&self) -> bool {
        self.role.get() == Some(Role::Service)
    }

    /// Calls `f` with the current `Uid` value (empty until a service sets one).
    pub fn with_uid<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.uid.borrow())
    }

    pub fn set_uid(&self, uid: &[u8]) {
        *self.uid.borrow_mut() = uid.into();
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.get()
    }

    /// Moves forward to `next` (`Upgrading` → `Authenticating` → `Open`); use
    /// [`Connection::close`] to close.
    pub fn advance_to(&self, next: Lifecycle) {
        debug_assert!(matches!(
            (self.lifecycle.get(), next),
            (Lifecycle::Upgrading, Lifecycle::Authenticating)
                | (Lifecycle::Authenticating, Lifecycle::Open)
        ));
        self.lifecycle.set(next);
    }

    /// Closing or closed: nothing more is queued.
    pub fn is_closing(&self) -> bool {
        matches!(self.lifecycle.get(), Lifecycle::Closing(_) | Lifecycle::Closed(_))
    }

    /// The writer is done: it has sent everything it ever will.
    pub fn is_closed(&self) -> bool {
        matches!(self.lifecycle.get(), Lifecycle::Closed(_))
    }

    /// Unsent bytes in the outbound queue.
    pub fn pending_bytes(&self) -> usize {
        self.out.borrow().bytes()
    }

    /// Whether a frame of `len` bytes fits the budget now.
    pub(crate) fn fits(&self, len: usize, bytes_max: usize) -> bool {
        self.out.borrow().fits(len, bytes_max)
    }

    /// Queues a data frame. Past the budget it is queued all the same and counted as
    /// overflow: a subscriber is judged by what its socket refuses, not by how much one batch
    /// of input queued at once, so the runtime writes what the socket takes and only then
    /// applies the slow-consumer policy.
    pub fn deliver(&self, frame: &Frame, bytes_max: usize) -> Delivery {
        if self.is_closing() {
            return Delivery::Closing;
        }
        let fits = {
            let mut out = self.out.borrow_mut();
            let fits = out.fits(frame.as_slice().len(), bytes_max);
            out.push_unbounded(frame.clone());
            fits
        };
        self.wake_writer();
        if fits {
            Delivery::Queued
        } else {
            self.overflow.set(self.overflow.get() + 1);
            Delivery::Overflowed
        }
    }

    /// Data frames queued past the budget since the runtime last judged this connection.
    pub(crate) fn overflow(&self) -> u32 {
        self.overflow.get()
    }

    /// Marks this connection as awaiting the runtime's verdict; false if it already was.
    pub(crate) fn mark_for_verdict(&self) -> bool {
        !self.awaiting_verdict.replace(true)
    }

    /// Records a REQ of `len` bytes refused because it did not fit the budget.
    pub(crate) fn refuse(&self, len: usize) {
        self.refused.set(self.refused.get().max(len));
    }

    /// Whether the queue is still over `bytes_max`, judged as if each overflowing frame (or
    /// refused REQ) were offered now: the bytes before it plus its own pass the budget, and
    /// something else is queued (an empty queue takes any frame).
    pub(crate) fn still_over(&self, bytes_max: usize) -> bool {
        let out = self.out.borrow();
        let newest = self.overflow.get() as usize;
        out.bytes() + self.refused.get() > bytes_max && out.len() > newest
    }

    /// Clears the overflow once judged; `drop` removes the overflowing frames (the newest
    /// ones) first. Returns how many frames were dropped.
    pub(crate) fn settle_overflow(&self, drop: bool) -> usize {
        let overflow = self.overflow.replace(0) as usize;
        self.refused.set(0);
        self.awaiting_verdict.set(false);
        if !drop {
            return 0;
        }
        let dropped = self.out.borrow_mut().drop_newest(overflow);
        self.dropped.set(self.dropped.get() + dropped as u64);
        dropped
    }

    /// Queues a frame the broker owes this connection whatever its budget (replies, errors,
    /// pongs): they are bounded by what the peer itself sends.
    pub fn reply(&self, frame: Frame) {
        if self.is_closing() {
            return;
        }
        self.out.borrow_mut().push_unbounded(frame);
        self.wake_writer();
    }

    /// Queues a text frame holding `payload`.
    pub fn reply_text(&self, payload: &[u8]) {
        let mut bytes = Vec::with_capacity(payload.len() + ws::HEADER_BYTES_MAX);
        ws::encode_frame(ws::Opcode::Text, payload, &mut bytes);
        self.reply(FrameBytes::local(bytes, 0));
    }

    /// Starts closing for `reason`: queues its close frame (if it has one, and the connection
    /// is a WebSocket yet) after what is already queued, and stops queueing anything else.
    /// Idempotent: the first close wins. A slow consumer's unsent backlog goes first: it is
    /// lost either way (at-most-once), and the close frame then goes out as soon as the
    /// socket takes it.
    ///
    /// The runtime closes through `ShardContext::close`, which also logs and counts.
    pub fn close(&self, reason: CloseReason) {
        if self.is_closing() {
            return;
        }
        if reason == CloseReason::SlowConsumer {
            self.out.borrow_mut().discard_unstarted();
        }
        let upgraded = self.lifecycle.get() != Lifecycle::Upgrading;
        if let Some((code, text)) = reason.frame().filter(|_| upgraded) {
            let mut bytes = Vec::with_capacity(2 + 2 + text.len());
            ws::encode_close(code, text, &mut bytes);
            self.out.borrow_mut().push_unbounded(FrameBytes::local(bytes, 0));
        }
        self.lifecycle.set(Lifecycle::Closing(reason));
        self.wake_writer();
        self.wake_reader();
    }

    /// The writer is done: everything up to the close frame is out, or the socket failed
    /// (then what was not started is dropped).
    pub(crate) fn writer_done(&self, failed: bool) {
        let reason = match self.lifecycle.get() {
            Lifecycle::Closing(r) | Lifecycle::Closed(r) => r,
            _ => CloseReason::SocketFailed,
        };
        if failed {
            self.out.borrow_mut().discard_unstarted();
        }
        self.lifecycle.set(Lifecycle::Closed(reason));
        self.wake_reader();
    }

    pub(crate) fn wake_writer(&self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    /// Parks the writer until something is queued.
    pub(crate) fn park_writer(&self, waker: &Waker) {
        self.writer.set(Some(waker.clone()));
    }

    pub(crate) fn wake_reader(&self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }

    /// Parks the reader; `resume_at`: also wake it once the backlog is down to that many bytes.
    pub(crate) fn park_reader(&self, waker: &Waker, resume_at: Option<usize>) {
        self.reader.set(Some(waker.clone()));
        self.reader_resumes_at.set(resume_at);
    }

    /// The outbound queue, for the writer.
    pub(crate) fn queue(&self) -> std::cell::RefMut<'_, OutQueue> {
        self.out.borrow_mut()
    }

    /// Called by the writer after it sent `n` bytes: a reader that paused on this
    /// connection's backlog may go on.
    pub(crate) fn wrote(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
        if let Some(at) = self.reader_resumes_at.get() {
            if self.pending_bytes() <= at {
                self.reader_resumes_at.set(None);
                self.wake_reader();
            }
        }
    }

    /// Empties the outbound queue as if it had been written, returning how many frames it
    /// held. For running a shard without sockets (tests, benchmarks); does not allocate.
    #[cfg(any(test, feature = "testing"))]
    pub fn drain_queued(&self) -> usize {
        let mut out = self.out.borrow_mut();
        let mut frames = 0;
        while let Some(len) = out.head().map(<[u8]>::len) {
            out.advance(len);
            frames += 1;
        }
        frames
    }

    /// Copies out the queued frames and empties the queue. For tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn take_queued(&self) -> Vec<Vec<u8>> {
        let mut out = self.out.borrow_mut();
        let mut frames = Vec::new();
        while let Some(head) = out.head() {
            let len = head.len();
            frames.push(head.to_vec());
            out.advance(len);
        }
        frames
    }
}
