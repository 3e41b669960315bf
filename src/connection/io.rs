//! A connection's socket I/O on its shard: one reader task and one writer task.
//!
//! The reader takes the upgrade request, the key, then WebSocket frames, and hands complete
//! messages to the shard. It reads into the shard's 64 KiB scratch buffer; only when a frame
//! is unfinished does the connection get a buffer of its own (the rest of the frame is read
//! straight behind it), and it gives the buffer back when the peer pauses, so an idle
//! connection holds no read buffer at all.
//!
//! The writer drains the connection's outbound queue with `sendmsg` on the raw socket (small
//! frames gathered into one buffer, large ones sent in place; glommio has no vectored write).
//! Only when the socket is full does it go through glommio, writing part of the head frame,
//! which is also how it waits for writability. TLS connections read and write through
//! [`super::tls`] instead.
//!
//! Closing: whoever decides to close queues a close frame ([`Connection::close`]). The writer
//! sends everything up to it, then shuts down its side; the reader discards input until the
//! peer closes too or the close grace ends. Then the shard forgets the connection.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::tls::{self, Tls};
use super::Connection;
use crate::auth::{Keys, Role};
use crate::protocol::handshake::{self, Upgrade};
use crate::protocol::message::{self, Limits};
use crate::protocol::reply;
use crate::protocol::ws::{CloseCode, Decoder, WsEvent};
use crate::shard::mailbox::{Inbox, Mail, Mailboxes};
use crate::shard::Shard;

/// The shard's read buffer: one large read takes many messages, which the shard then
/// delivers before any subscriber is flushed (the batching that makes fan-out cheap).
pub const SCRATCH_BYTES: usize = 64 << 10;

/// Mails handled per turn of the mail loop before it lets connections run.
pub const MAIL_BATCH: usize = 512;

/// How long the upgrade request may be.
pub const REQUEST_BYTES_MAX: usize = 8 << 10;

/// Settings every connection on a shard shares.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    pub message_bytes_max: usize,
    pub auth_timeout: Duration,
    /// How long a closing connection waits for the peer's close before the socket is shut.
    pub close_grace: Duration,
    pub limits: Limits,
    /// `--max-pending-bytes`: past it, a connection's own input is not read (see
    /// `Reader::after_input`).
    pub pending_bytes_max: usize,
    /// `--allowed-origin`; empty: any origin.
    pub allowed_origins: Vec<String>,
}

/// What a shard's connections share: the routing state, the mail, the scratch buffer.
pub struct ShardContext {
    pub shard: RefCell<Shard>,
    pub mailboxes: Mailboxes,
    pub inbox: Inbox,
    pub inbox_capacity: usize,
    /// The keys to accept; replaced on SIGHUP when a keys file is used.
    pub keys: RefCell<Keys>,
    pub settings: ConnectionSettings,
    pub scratch: RefCell<Vec<u8>>,
    /// Ciphertext of TLS connections, one record at a time, before decryption.
    pub cipher: RefCell<Vec<u8>>,
    /// The shard's main task, waiting for `Shutdown`.
    pub shutdown_waker: Cell<Option<Waker>>,
    pub io: IoCounters,
}

/// Counters of the socket side, per shard (plain integers, read only when scraped).
#[derive(Debug, Default)]
pub struct IoCounters {
    pub bytes_in: Cell<u64>,
    /// Bad keys and auth timeouts.
    pub auth_failures: Cell<u64>,
    /// Connections closed for breaking RFC 6455 (1002, 1007, 1009).
    pub protocol_errors: Cell<u64>,
}

fn bump(counter: &Cell<u64>, by: u64) {
    counter.set(counter.get() + by);
}

impl ShardContext {
    /// True when readers should pause: mail is waiting for room in another shard's inbox,
    /// or this shard's own inbox is filling up (reading more would only add to it).
    fn congested(&self) -> bool {
        self.shard.borrow().has_backlog() || self.inbox.len() > self.inbox_capacity / 2
    }

    fn flush_mail(&self) {
        self.shard.borrow_mut().flush_mail(&self.mailboxes);
    }

    /// Handles up to [`MAIL_BATCH`] waiting mails and sends what they caused.
    pub fn handle_mail(&self) {
        let mut shard = self.shard.borrow_mut();
        shard.set_now(Instant::now());
        for _ in 0..MAIL_BATCH {
            match self.inbox.try_recv() {
                Some(Mail::Scrape { reply }) => {
                    let mut snapshot = shard.snapshot();
                    snapshot.bytes_in = self.io.bytes_in.get();
                    snapshot.auth_failures = self.io.auth_failures.get();
                    snapshot.protocol_errors = self.io.protocol_errors.get();
                    snapshot.inbox_depth = self.inbox.len() as u64;
                    let _ = reply.send(snapshot);
                }
                Some(Mail::Keys(keys)) => *self.keys.borrow_mut() = keys,
                Some(mail) => shard.handle_mail(mail),
                None => break,
            }
        }
        shard.flush_mail(&self.mailboxes);
        if shard.shutdown_requested {
            if let Some(w) = self.shutdown_waker.take() {
                w.wake();
            }
        }
    }
}

/// Where the reader is in the connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Upgrade,
    Key,
    Open,
    /// A close frame is queued: input is discarded.
    Closing,
}

/// Serves one accepted connection until it is gone.
/// Serves one accepted connection until it is gone; `tls` for a `--tls-listen` address.
pub async fn serve(
    ctx: Rc<ShardContext>,
    stream: TcpStream,
    conn: Rc<Connection>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    conn.peer.set(stream.peer_addr().ok());
    let _ = stream.set_nodelay(true);
    let tls = match tls.map(|config| Tls::new(&config)).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!(cid = %conn.id, "TLS session set-up failed: {e}");
            return;
        }
    };
    let stream = Rc::new(RefCell::new(stream));
    let writer = match &tls {
        Some(tls) => {
            glommio::spawn_local(tls::write_loop(conn.clone(), stream.clone(), tls.clone()))
        }
        None => {
            // Only plain sockets take the inline flush of a full queue: TLS bytes must go
            // through the session.
            let fd = stream.borrow().as_raw_fd();
            conn.fd.set(Some(fd));
            glommio::spawn_local(write_loop(conn.clone(), stream.clone(), fd))
        }
    };
    let mut reader = Reader {
        ctx: ctx.clone(),
        conn: conn.clone(),
        stream,
        phase: Phase::Upgrade,
        decoder: Decoder::new(ctx.settings.message_bytes_max),
        pending: Carry::default(),
        deferred: None,
        stalled: false,
        tls,
    };
    reader.run().await;
    conn.fd.set(None);
    ctx.shard.borrow_mut().disconnect(&conn);
    ctx.flush_mail();
    if !conn.writer_done() {
        // The peer is gone: there is no one left to write to.
        drop(writer);
    } else {
        writer.await;
    }
}

struct Reader {
    ctx: Rc<ShardContext>,
    conn: Rc<Connection>,
    stream: Rc<RefCell<TcpStream>>,
    phase: Phase,
    decoder: Decoder,
    /// An unfinished frame (or upgrade request) carried over to the next read, or frames
    /// not yet handled because the connection is paused.
    pending: Carry,
    /// The unhandled rest of a WebSocket message whose handling paused.
    deferred: Option<Deferred>,
    /// A pause stopped the handling of bytes already read (see [`Reader::run`]).
    stalled: bool,
    tls: Option<Rc<Tls>>,
}

/// What one read gave.
enum Read {
    Bytes(usize),
    Eof,
    /// The connection started closing while we waited.
    Closing,
    TimedOut,
}

impl Reader {
    async fn run(&mut self) {
        let deadline = Instant::now() + self.ctx.settings.auth_timeout;
        loop {
            // `stalled`: frames were left unhandled by a pause. The pause may already be over
            // (the acknowledgements came while this task yielded), but those frames must be
            // handled before reading: the peer may be waiting for their answer.
            if self.phase == Phase::Open && (self.paused() || self.stalled) {
                if self.paused() {
                    self.wait_until_resumable().await;
                }
                self.stalled = false;
                self.resume();
                self.after_input().await;
                continue;
            }
            let until = match self.phase {
                Phase::Upgrade | Phase::Key => Some(deadline),
                Phase::Open => None,
                Phase::Closing => Some(Instant::now() + self.ctx.settings.close_grace),
            };
            match self.read(until).await {
                Read::Bytes(n) => {
                    bump(&self.ctx.io.bytes_in, n as u64);
                    self.conn.last_seen.set(Instant::now());
                    self.on_bytes(n);
                }
                Read::Closing => self.phase = Phase::Closing,
                Read::TimedOut if self.phase == Phase::Key => {
                    tracing::info!(cid = %self.conn.id, peer = %self.conn.peer_text(), "auth timeout");
                    bump(&self.ctx.io.auth_failures, 1);
                    self.conn.close(CloseCode::POLICY_VIOLATION, "auth timeout");
                    self.phase = Phase::Closing;
                }
                Read::TimedOut | Read::Eof => return,
            }
            self.after_input().await;
        }
    }

    /// After handling input: send the mail it caused, and pause while the shard is congested.
    async fn after_input(&mut self) {
        if self.phase != Phase::Closing && self.conn.is_closing() {
            self.phase = Phase::Closing;
        }
        self.ctx.flush_mail();
        while self.phase == Phase::Open && self.ctx.congested() {
            glommio::timer::sleep(Duration::from_micros(250)).await;
            self.ctx.flush_mail();
        }
        // Let the writers this input woke flush before reading more: a publisher whose socket
        // always has data would otherwise hold the shard until glommio preempts it.
        futures_lite::future::yield_now().await;
    }

    /// True while the connection may not go on (see [`must_wait`]), or the rest of a
    /// WebSocket message is set aside.
    fn paused(&self) -> bool {
        self.deferred.is_some() || must_wait(&self.ctx, &self.conn)
    }

    /// Waits until the acknowledgements are in and the backlog is down to half the budget
    /// (or the connection is closing).
    async fn wait_until_resumable(&self) {
        let conn = &self.conn;
        let half = self.ctx.settings.pending_bytes_max / 2;
        conn.reader_waits_for_drain.set(true);
        poll_fn(|cx| {
            let acked = conn.awaiting_acks.get() == 0;
            let drained = conn.pending_bytes() <= half || conn.writer_done();
            if (acked && drained) || conn.is_closing() {
                Poll::Ready(())
            } else {
                conn.reader.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        conn.reader_waits_for_drain.set(false);
    }

    /// Continues after a pause: the rest of the WebSocket message, then frames already read.
    fn resume(&mut self) {
        if self.conn.is_closing() || must_wait(&self.ctx, &self.conn) {
            return;
        }
        if let Some(mut rest) = self.deferred.take() {
            // Resumed in place: the set-aside bytes are copied once, however often it pauses.
            if let Some(at) = dispatch(&self.ctx, &self.conn, &rest.bytes[rest.at..], rest.binary) {
                rest.at += at;
                self.deferred = Some(rest);
                return;
            }
        }
        if !self.pending.is_empty() && !self.paused() {
            self.consume_pending();
        }
    }

    /// Consumes from the carried-over bytes, keeping what is left.
    fn consume_pending(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        let used = self.consume(pending.filled());
        pending.consume_front(used);
        self.pending = pending;
    }

    /// Reads, until `until` at the latest: into the shard's scratch buffer, or, when an
    /// unfinished frame is carried over, straight behind it (so a stream of frames is never
    /// copied from one buffer to the other).
    async fn read(&mut self, until: Option<Instant>) -> Read {
        let conn = &self.conn;
        let stream = &self.stream;
        let scratch = &self.ctx.scratch;
        let pending = &mut self.pending;
        let tls = self.tls.as_deref();
        let cipher = &self.ctx.cipher;
        let watch_close = self.phase != Phase::Closing;
        let read = poll_fn(|cx| {
            if watch_close && conn.is_closing() {
                return Poll::Ready(Ok(None));
            }
            let mut scratch = scratch.borrow_mut();
            let buf = if pending.is_empty() { &mut scratch[..] } else { pending.spare() };
            let polled = match tls {
                Some(tls) => tls.poll_read(cx, stream, &mut cipher.borrow_mut(), buf, conn),
                None => Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf),
            };
            match polled {
                Poll::Ready(r) => Poll::Ready(r.map(Some)),
                Poll::Pending => {
                    conn.reader.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            }
        });
        let result = match until {
            None => read.await,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                let timer = async {
                    glommio::timer::sleep(left).await;
                    Err(io::Error::from(io::ErrorKind::TimedOut))
                };
                futures_lite::future::or(read, timer).await
            }
        };
        match result {
            Ok(None) => Read::Closing,
            Ok(Some(0)) => Read::Eof,
            Ok(Some(n)) => Read::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Read::TimedOut,
            Err(_) => Read::Eof,
        }
    }

    /// Handles `n` fresh bytes: in the scratch buffer, or behind the carried-over ones.
    fn on_bytes(&mut self, n: usize) {
        if self.phase == Phase::Closing {
            self.pending = Carry::default();
            return; // discarded: we are waiting for the peer to close
        }
        if self.phase == Phase::Open && !self.ctx.inbox.is_empty() {
            // Mail that arrived before these bytes is handled first: a grant or a
            // subscription made on another shard a moment ago is then in effect.
            self.ctx.handle_mail();
        }
        if self.pending.is_empty() {
            let ctx = self.ctx.clone();
            let mut scratch = ctx.scratch.borrow_mut();
            let fresh = &mut scratch[..n];
            let used = self.consume(fresh);
            if self.phase != Phase::Closing {
                self.pending.store(&fresh[used..]);
            }
        } else {
            self.pending.commit(n);
            self.consume_pending();
        }
        if self.phase == Phase::Closing || (self.pending.is_empty() && n < SCRATCH_BYTES) {
            // A short read drained the socket: the peer paused, so give the memory back.
            self.pending = Carry::default();
        }
    }

    /// Consumes what it can from `buf`; returns how many bytes.
    fn consume(&mut self, buf: &mut [u8]) -> usize {
        let mut used = 0;
        if self.phase == Phase::Upgrade {
            match handshake::parse(buf, REQUEST_BYTES_MAX) {
                Upgrade::Incomplete => return 0,
                Upgrade::Reject { response } => {
                    self.reject(response);
                    return buf.len();
                }
                Upgrade::Accept { origin: Some(origin), .. }
                    if !self.ctx.settings.allowed_origins.is_empty()
                        && !self.ctx.settings.allowed_origins.contains(&origin) =>
                {
                    tracing::info!(
                        cid = %self.conn.id,
                        peer = %self.conn.peer_text(),
                        origin,
                        "origin not allowed"
                    );
                    self.reject(handshake::FORBIDDEN);
                    return buf.len();
                }
                Upgrade::Accept { consumed, response, .. } => {
                    self.conn.reply(raw_frame(response));
                    self.conn.upgraded.set(true);
                    self.phase = Phase::Key;
                    used = consumed;
                }
            }
        }
        while self.phase == Phase::Key || self.phase == Phase::Open {
            let event = match self.decoder.decode(&mut buf[used..]) {
                Ok(None) => break,
                Ok(Some((n, event))) => {
                    used += n;
                    event
                }
                Err(e) => {
                    tracing::info!(
                        cid = %self.conn.id,
                        peer = %self.conn.peer_text(),
                        reason = e.reason(),
                        "protocol error"
                    );
                    bump(&self.ctx.io.protocol_errors, 1);
                    self.conn.close(e.close_code(), e.reason());
                    self.phase = Phase::Closing;
                    break;
                }
            };
            match event {
                None | Some(WsEvent::Pong(_)) => {}
                Some(WsEvent::Ping(payload)) => {
                    let mut bytes = Vec::with_capacity(payload.len() + 2);
                    crate::protocol::ws::encode_frame(
                        crate::protocol::ws::Opcode::Pong,
                        payload,
                        &mut bytes,
                    );
                    self.conn.reply(raw_frame(bytes));
                }
                Some(WsEvent::Close { code, .. }) => {
                    // Echo the peer's code (RFC 6455 §5.5.1); 1000 when it gave none.
                    let code = code.map_or(CloseCode::NORMAL, CloseCode);
                    self.conn.close(code, "");
                    self.phase = Phase::Closing;
                }
                Some(WsEvent::Message { binary, payload }) => {
                    if self.phase == Phase::Key {
                        authenticate(&self.ctx, &self.conn, payload);
                        self.phase =
                            if self.conn.is_closing() { Phase::Closing } else { Phase::Open };
                    } else {
                        if let Some(at) = dispatch(&self.ctx, &self.conn, payload, binary) {
                            let bytes = payload[at..].to_vec();
                            self.deferred = Some(Deferred { bytes, at: 0, binary });
                        }
                        if self.paused() {
                            self.stalled = true;
                            break;
                        }
                    }
                }
            }
        }
        used
    }

    fn reject(&mut self, response: &'static [u8]) {
        self.conn.reply(raw_frame(response.to_vec()));
        self.conn.close_silently();
        self.phase = Phase::Closing;
    }
}

/// The first message: the key.
fn authenticate(ctx: &ShardContext, conn: &Rc<Connection>, key: &[u8]) {
    if ctx.shard.borrow().shutdown_requested {
        return; // draining: no new logins; the connection is closed with 1001
    }
    let role = ctx.keys.borrow().role(key);
    match role {
        Some(role) => {
            conn.role.set(Some(role));
            conn.reply_text(reply::MM_OK);
            conn.reply_text(&conn.cid);
            ctx.shard.borrow_mut().register(conn);
            let role = if role == Role::Service { "service" } else { "client" };
            tracing::debug!(cid = %conn.id, peer = %conn.peer_text(), role, "authenticated");
        }
        None => {
            tracing::info!(cid = %conn.id, peer = %conn.peer_text(), "bad key");
            bump(&ctx.io.auth_failures, 1);
            conn.close(CloseCode::POLICY_VIOLATION, "bad key");
        }
    }
}

/// Whether the broker must stop handling this connection's input for now:
/// - an earlier SUB, EPUB, ESUB or EREQ is not yet in effect on every shard: nothing after it
///   is handled until it is, so whatever the broker does next (even a reply on another path)
///   happens after it;
/// - its own backlog is over `--max-pending-bytes`: replies (errors, pongs, responses) are
///   never dropped, so they are bounded here instead; a peer that does not read what it asked
///   for is not read either (and the keep-alive closes it if it stays silent).
fn must_wait(ctx: &ShardContext, conn: &Connection) -> bool {
    conn.awaiting_acks.get() > 0 || conn.pending_bytes() > ctx.settings.pending_bytes_max
}

/// Handles the protocol messages of one WebSocket message, in order. Returns where it
/// stopped if the connection must wait ([`must_wait`]); the caller resumes from there.
fn dispatch(
    ctx: &ShardContext,
    conn: &Rc<Connection>,
    payload: &[u8],
    binary: bool,
) -> Option<usize> {
    let mut shard = ctx.shard.borrow_mut();
    if payload.is_empty() {
        shard.malformed(conn, message::Malformed::Empty.text());
        return None;
    }
    let mut rest = payload;
    while let Some(parsed) = message::next(rest, ctx.settings.limits) {
        match parsed {
            Ok((msg, after)) => {
                shard.handle_message(conn, &msg, binary);
                rest = after;
                if !rest.is_empty() && must_wait(ctx, conn) {
                    return Some(payload.len() - rest.len());
                }
            }
            Err(e) => {
                tracing::debug!(cid = %conn.id, peer = %conn.peer_text(), what = e.text(), "malformed message");
                shard.malformed(conn, e.text());
                return None;
            }
        }
    }
    None
}

/// The rest of a WebSocket message set aside when its handling paused.
struct Deferred {
    bytes: Vec<u8>,
    /// Where handling resumes.
    at: usize,
    binary: bool,
}

/// Bytes carried over between reads: `buf[..len]` is unconsumed input. `buf` is always
/// initialised to its full length, so reads go straight into `buf[len..]`.
#[derive(Default)]
struct Carry {
    buf: Vec<u8>,
    len: usize,
}

impl Carry {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The unconsumed bytes.
    fn filled(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// Room to read into behind the unconsumed bytes, grown (doubling) when it gets small;
    /// a frame larger than the room completes over several reads. The decoder refuses a
    /// frame over `--max-message-bytes` from its header, which bounds the growth.
    fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.len < SCRATCH_BYTES / 4 {
            let size = (2 * self.buf.len()).max(SCRATCH_BYTES);
            self.buf.resize(size, 0);
        }
        &mut self.buf[self.len..]
    }

    /// `n` bytes were read into [`Carry::spare`].
    fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Keeps `bytes` (an unfinished frame left in the scratch buffer).
    fn store(&mut self, bytes: &[u8]) {
        debug_assert!(self.is_empty());
        if bytes.is_empty() {
            return;
        }
        if self.buf.len() < bytes.len() {
            self.buf.resize(bytes.len().max(SCRATCH_BYTES), 0);
        }
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
    }

    /// Drops the first `used` bytes; the rest (at most one unfinished frame) moves to the
    /// front.
    fn consume_front(&mut self, used: usize) {
        self.buf.copy_within(used..self.len, 0);
        self.len -= used;
    }
}

fn raw_frame(bytes: Vec<u8>) -> super::outbound::Frame {
    Rc::new(super::outbound::FrameBytes::Local { bytes, start: 0 })
}

/// Drains the outbound queue until the connection is closed.
async fn write_loop(conn: Rc<Connection>, stream: Rc<RefCell<TcpStream>>, fd: RawFd) {
    loop {
        poll_fn(|cx| {
            if conn.out.borrow().is_empty() {
                conn.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        loop {
            let sent = conn.out.borrow_mut().send_to(fd);
            if let Ok(n) = sent {
                conn.wrote(n);
            }
            match sent {
                Ok(_) if conn.out.borrow().is_empty() => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket is full: let glommio wait for room, and take part of the
                    // head frame while at it.
                    let written = poll_fn(|cx| {
                        let out = conn.out.borrow();
                        let head = out.head().unwrap_or_default();
                        Pin::new(&mut *stream.borrow_mut()).poll_write(cx, head)
                    })
                    .await;
                    match written {
                        Ok(n) => {
                            conn.out.borrow_mut().advance(n);
                            conn.wrote(n);
                        }
                        Err(_) => return conn.writer_failed(),
                    }
                }
                Err(_) => return conn.writer_failed(),
            }
        }
        if conn.is_closing() {
            // Everything up to and including the close frame is out: send FIN, so the peer
            // sees the end after the close frame.
            let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
            conn.writer_finished();
            return;
        }
    }
}
