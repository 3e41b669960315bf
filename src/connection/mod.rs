//! A connection's shard-local state, shared by its reader task, its writer task and the
//! shard's routing tables.
//!
//! A connection lives its whole life on the shard that accepted it; everything here is
//! `Rc`/`Cell`/`RefCell`, never shared across threads. The socket I/O is in [`io`]; this file
//! holds what routing needs: identity, role, `Uid`, the outbound queue and the close state.
//!
//! Invariant: once [`Connection::close`] has run, no data frame is queued any more; the close
//! frame is the last frame the writer sends.

pub mod io;
pub mod outbound;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;

use crate::auth::Role;
use crate::ids::{ConnectionId, CID_LEN};
use crate::protocol::ws::{self, CloseCode};
use crate::shard::mailbox::TopicName;
use outbound::{Frame, FrameBytes, OutQueue, Push};

/// 1006: never sent, only recorded when a connection ends without a close frame of ours.
const ABNORMAL: CloseCode = CloseCode(1006);

/// Re-exported where it was, for the tests and benches that name it from here.
pub use crate::limits::SlowConsumer;

/// The result of offering a data frame to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// Skipped under `--slow-consumer drop`.
    Dropped,
    /// This frame made the connection a slow consumer; it is now closing.
    ClosedSlow,
    /// The connection was already closing; the frame was ignored.
    Closing,
}

/// One authenticated (or authenticating) connection.
pub struct Connection {
    pub id: ConnectionId,
    pub cid: [u8; CID_LEN],
    pub role: Cell<Option<Role>>,
    /// When the peer last sent anything (any byte counts as a sign of life).
    pub last_seen: Cell<std::time::Instant>,
    /// When the broker last pinged it (keep-alive).
    pub pinged: Cell<Option<std::time::Instant>>,
    /// The peer's address, for log lines.
    pub peer: Cell<Option<std::net::SocketAddr>>,
    /// The socket, once the connection's I/O has started (none in tests without sockets).
    pub fd: Cell<Option<std::os::fd::RawFd>>,
    /// The WebSocket upgrade is done: close frames may be sent.
    pub upgraded: Cell<bool>,
    uid: RefCell<Box<[u8]>>,
    out: RefCell<OutQueue>,
    /// The writer parks here when the queue is empty.
    writer: Cell<Option<Waker>>,
    /// The reader parks here while it waits for the socket; woken when the writer is done.
    reader: Cell<Option<Waker>>,
    /// The reader waits for the writer to drain this connection's own backlog.
    reader_waits_for_drain: Cell<bool>,
    /// Set once a close frame has been queued: nothing else is queued after it.
    closing: Cell<Option<CloseCode>>,
    /// Set by the writer when it has sent everything it ever will (or the socket failed).
    writer_done: Cell<bool>,
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
            .field("pending_bytes", &self.pending_bytes())
            .field("closing", &self.closing.get())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(id: ConnectionId) -> Rc<Self> {
        Rc::new(Self {
            id,
            cid: id.encode(),
            role: Cell::new(None),
            last_seen: Cell::new(std::time::Instant::now()),
            pinged: Cell::new(None),
            peer: Cell::new(None),
            fd: Cell::new(None),
            upgraded: Cell::new(false),
            uid: RefCell::new(Box::default()),
            out: RefCell::new(OutQueue::default()),
            writer: Cell::new(None),
            reader: Cell::new(None),
            reader_waits_for_drain: Cell::new(false),
            closing: Cell::new(None),
            writer_done: Cell::new(false),
            awaiting_acks: Cell::new(0),
            pending_requests: Cell::new(0),
            topics: RefCell::new(ahash::AHashSet::new()),
            responder_for: RefCell::new(Vec::new()),
            bytes_out: Cell::new(0),
            dropped: Cell::new(0),
        })
    }

    /// The peer's address as text, for log lines.
    pub fn peer_text(&self) -> String {
        self.peer.get().map_or_else(|| "unknown peer".to_owned(), |p| p.to_string())
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

    pub fn is_closing(&self) -> bool {
        self.closing.get().is_some()
    }

    /// Unsent bytes in the outbound queue.
    pub fn pending_bytes(&self) -> usize {
        self.out.borrow().bytes()
    }

    /// Offers a data frame under the slow-consumer policy.
    pub fn deliver(&self, frame: &Frame, bytes_max: usize, policy: SlowConsumer) -> Delivery {
        if self.is_closing() {
            return Delivery::Closing;
        }
        let mut pushed = self.out.borrow_mut().push(frame, bytes_max);
        if pushed == Push::OverBudget && self.flush_now() {
            // The queue only looked full because the writer had not run yet since this
            // shard's last batch of input; what counts is what the socket will not take.
            pushed = self.out.borrow_mut().push(frame, bytes_max);
        }
        match (pushed, policy) {
            (Push::Queued, _) => {
                self.wake_writer();
                Delivery::Queued
            }
            (Push::OverBudget, SlowConsumer::Drop) => {
                self.dropped.set(self.dropped.get() + 1);
                Delivery::Dropped
            }
            (Push::OverBudget, SlowConsumer::Disconnect) => {
                // Its backlog is lost either way (at-most-once); dropping it now frees the
                // memory and lets the close frame go out as soon as the socket takes it.
                self.out.borrow_mut().discard_unstarted();
                self.close(CloseCode::POLICY_VIOLATION, "slow consumer");
                Delivery::ClosedSlow
            }
        }
    }

    /// Writes what the socket takes right now, without waiting; returns whether anything was
    /// written. Only called when a queue reaches its budget, so a subscriber is judged by
    /// what its socket refuses, not by how much one batch of input queued at once.
    fn flush_now(&self) -> bool {
        let Some(fd) = self.fd.get() else {
            return false;
        };
        if self.writer_done.get() {
            return false;
        }
        let mut out = self.out.borrow_mut();
        let mut wrote = false;
        while !out.is_empty() {
            match out.send_to(fd) {
                Ok(n) if n > 0 => {
                    wrote = true;
                    self.bytes_out.set(self.bytes_out.get() + n as u64);
                }
                // Errors (the peer is gone) are the writer's to notice and report.
                _ => break,
            }
        }
        wrote
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
        self.reply(Rc::new(FrameBytes::Local { bytes, start: 0 }));
    }

    /// Queues a close frame after what is already queued, and stops queueing anything else.
    /// Idempotent: the first close wins.
    pub fn close(&self, code: CloseCode, reason: &str) {
        if self.is_closing() {
            return;
        }
        let mut bytes = Vec::with_capacity(2 + 2 + reason.len());
        ws::encode_close(code, reason, &mut bytes);
        self.out.borrow_mut().push_unbounded(Rc::new(FrameBytes::Local { bytes, start: 0 }));
        self.closing.set(Some(code));
        self.wake_writer();
        self.wake_reader();
    }

    /// Stops queueing without a close frame: for an HTTP answer before the upgrade.
    pub fn close_silently(&self) {
        if self.is_closing() {
            return;
        }
        self.closing.set(Some(ABNORMAL));
        self.wake_writer();
        self.wake_reader();
    }

    /// The writer sent everything, the close frame last, and shut its side of the socket.
    fn writer_finished(&self) {
        self.writer_done.set(true);
        self.wake_reader();
    }

    /// The socket failed (reset, broken pipe): nothing more can be sent.
    fn writer_failed(&self) {
        if self.closing.get().is_none() {
            self.closing.set(Some(ABNORMAL));
        }
        self.out.borrow_mut().discard_unstarted();
        self.writer_done.set(true);
        self.wake_reader();
    }

    fn wake_writer(&self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    pub(crate) fn wake_reader(&self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }

    /// Empties the outbound queue as if it had been written, returning how many frames it
    /// held. For running a shard without sockets (tests, benchmarks); does not allocate.
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

    /// Called by the writer after it sent something: a reader that paused on this
    /// connection's backlog may go on.
    fn wrote(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
        if self.reader_waits_for_drain.get() {
            self.wake_reader();
        }
    }

    pub fn writer_done(&self) -> bool {
        self.writer_done.get()
    }
}
