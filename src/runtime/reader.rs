//! A connection's reader task: it serves the connection from accept to the end.
//!
//! The reader takes the upgrade request, the key, then WebSocket frames, and hands complete
//! messages to the shard. It reads into the shard's 64 KiB scratch buffer; only when a frame
//! is unfinished does the connection get a buffer of its own (the rest of the frame is read
//! straight behind it), and it gives the buffer back when the peer pauses, so an idle
//! connection holds no read buffer at all.
//!
//! Where the connection is in its life is [`Lifecycle`], on the connection itself; the reader
//! keeps no phase of its own. Closing: whoever decides to close calls
//! [`ShardContext::close`], which queues the close frame. The writer sends everything up to
//! it, then shuts down its side; the reader discards input until the peer closes too or the
//! close grace ends. Then the shard forgets the connection.
//!
//! Backpressure: the reader stops handling its connection's input while an earlier message
//! waits for acknowledgements, while the connection's own backlog is over budget, and while
//! the shard is congested (mail waiting for room in a full inbox); it waits on an event for
//! each, never on a timer.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::AsyncRead;
use glommio::net::TcpStream;

use super::context::{bump, Link, ShardContext};
use super::tls::{self, Tls};
use super::writer::write_loop;
use crate::auth::Role;
use crate::close::CloseReason;
use crate::limits::{SCRATCH_BYTES, UPGRADE_REQUEST_BYTES_MAX};
use crate::protocol::handshake::{self, Upgrade};
use crate::protocol::message;
use crate::protocol::reply;
use crate::protocol::ws::{self, Decoder, WsEvent};
use crate::shard::connection::{Connection, Lifecycle};
use crate::shard::outbound::FrameBytes;

/// Serves one accepted connection until it is gone; `tls` for a `--tls-listen` address.
/// The connection is in [`ShardContext::links`] from before this runs until after it returns.
pub(crate) async fn serve(
    ctx: Rc<ShardContext>,
    stream: TcpStream,
    link: Rc<Link>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let conn = link.conn.clone();
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
            // Only plain sockets take the runtime's inline flush of a queue over budget: TLS
            // bytes must go through the session.
            let fd = stream.borrow().as_raw_fd();
            link.fd.set(Some(fd));
            glommio::spawn_local(write_loop(conn.clone(), stream.clone(), fd))
        }
    };
    let mut reader = Reader {
        ctx: ctx.clone(),
        conn: conn.clone(),
        link: link.clone(),
        stream,
        decoder: Decoder::new(ctx.settings.message_bytes_max),
        pending: Carry::default(),
        deferred: None,
        stalled: false,
        tls,
    };
    reader.run().await;
    link.fd.set(None);
    ctx.shard.borrow_mut().disconnect(&conn);
    ctx.flush_mail();
    if !conn.is_closed() {
        // The peer is gone: there is no one left to write to.
        drop(writer);
    } else {
        writer.await;
    }
}

struct Reader {
    ctx: Rc<ShardContext>,
    conn: Rc<Connection>,
    link: Rc<Link>,
    stream: Rc<RefCell<TcpStream>>,
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
            let lifecycle = self.conn.lifecycle();
            // `stalled`: frames were left unhandled by a pause. The pause may already be over
            // (the acknowledgements came while this task yielded), but those frames must be
            // handled before reading: the peer may be waiting for their answer.
            if lifecycle == Lifecycle::Open && (self.paused() || self.stalled) {
                if self.paused() {
                    self.wait_until_resumable().await;
                }
                self.stalled = false;
                self.resume();
                self.after_input().await;
                continue;
            }
            let until = match lifecycle {
                Lifecycle::Upgrading | Lifecycle::Authenticating => Some(deadline),
                Lifecycle::Open => None,
                Lifecycle::Closing(_) | Lifecycle::Closed(_) => {
                    Some(Instant::now() + self.ctx.settings.close_grace)
                }
            };
            match self.read(until).await {
                Read::Bytes(n) => {
                    bump(&self.ctx.io.bytes_in, n as u64);
                    self.link.last_seen.set(Instant::now());
                    self.on_bytes(n);
                }
                Read::Closing => {}
                Read::TimedOut if self.conn.lifecycle() == Lifecycle::Authenticating => {
                    self.ctx.close(&self.conn, CloseReason::AuthTimeout);
                }
                Read::TimedOut | Read::Eof => return,
            }
            self.after_input().await;
        }
    }

    /// After handling input: send the mail it caused, and pause while the shard is congested
    /// (woken when the backlog or the inbox drains, not by a timer).
    async fn after_input(&mut self) {
        let ctx = &self.ctx;
        ctx.flush_mail();
        while self.conn.lifecycle() == Lifecycle::Open && ctx.congested() {
            if ctx.shard.borrow().has_backlog() {
                // Whichever paused reader asked last is woken when an inbox makes room; it
                // flushes, and `flush_mail` wakes the others once the congestion is over.
                let me = ctx.shard.borrow().id();
                let room = ctx.mailboxes.room(me);
                let drained = ctx.uncongested.until(|| !ctx.congested());
                futures_lite::future::or(room, drained).await;
            } else {
                ctx.uncongested.until(|| !ctx.congested()).await;
            }
            ctx.flush_mail();
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
        poll_fn(|cx| {
            let acked = conn.awaiting_acks.get() == 0;
            let drained = conn.pending_bytes() <= half;
            if (acked && drained) || conn.is_closing() {
                Poll::Ready(())
            } else {
                conn.park_reader(cx.waker(), (!drained).then_some(half));
                Poll::Pending
            }
        })
        .await;
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
        let watch_close = !conn.is_closing();
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
                    conn.park_reader(cx.waker(), None);
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
        if self.conn.is_closing() {
            self.pending = Carry::default();
            return; // discarded: we are waiting for the peer to close
        }
        if self.conn.lifecycle() == Lifecycle::Open && !self.ctx.inbox.is_empty() {
            // Mail that arrived before these bytes is handled first: a grant or a
            // subscription made on another shard a moment ago is then in effect.
            self.ctx.handle_inbox();
        }
        if self.pending.is_empty() {
            let ctx = self.ctx.clone();
            let mut scratch = ctx.scratch.borrow_mut();
            let fresh = &mut scratch[..n];
            let used = self.consume(fresh);
            if !self.conn.is_closing() {
                self.pending.store(&fresh[used..]);
            }
        } else {
            self.pending.commit(n);
            self.consume_pending();
        }
        if self.conn.is_closing() || (self.pending.is_empty() && n < SCRATCH_BYTES) {
            // A short read drained the socket: the peer paused, so give the memory back.
            self.pending = Carry::default();
        }
    }

    /// Consumes what it can from `buf`; returns how many bytes.
    fn consume(&mut self, buf: &mut [u8]) -> usize {
        let mut used = 0;
        if self.conn.lifecycle() == Lifecycle::Upgrading {
            match handshake::parse(buf, UPGRADE_REQUEST_BYTES_MAX) {
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
                        peer = %self.link.peer_text(),
                        origin,
                        "origin not allowed"
                    );
                    self.reject(handshake::FORBIDDEN);
                    return buf.len();
                }
                Upgrade::Accept { consumed, response, .. } => {
                    self.conn.reply(FrameBytes::local(response, 0));
                    self.conn.advance_to(Lifecycle::Authenticating);
                    used = consumed;
                }
            }
        }
        loop {
            let lifecycle = self.conn.lifecycle();
            if !matches!(lifecycle, Lifecycle::Authenticating | Lifecycle::Open) {
                break;
            }
            let event = match self.decoder.decode(&mut buf[used..]) {
                Ok(None) => break,
                Ok(Some((n, event))) => {
                    used += n;
                    event
                }
                Err(e) => {
                    self.ctx.close(&self.conn, CloseReason::Protocol(e));
                    break;
                }
            };
            match event {
                None | Some(WsEvent::Pong(_)) => {}
                Some(WsEvent::Ping(payload)) => {
                    let mut bytes = Vec::with_capacity(payload.len() + 2);
                    ws::encode_frame(ws::Opcode::Pong, payload, &mut bytes);
                    self.conn.reply(FrameBytes::local(bytes, 0));
                }
                Some(WsEvent::Close { code, .. }) => {
                    self.ctx.close(&self.conn, CloseReason::PeerClosed(code));
                }
                Some(WsEvent::Message { payload, .. })
                    if lifecycle == Lifecycle::Authenticating =>
                {
                    authenticate(&self.ctx, &self.link, payload);
                    if !self.conn.is_closing() {
                        self.conn.advance_to(Lifecycle::Open);
                    }
                }
                Some(WsEvent::Message { binary, payload }) => {
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
        used
    }

    fn reject(&mut self, response: &'static [u8]) {
        self.conn.reply(FrameBytes::local(response.to_vec(), 0));
        self.ctx.close(&self.conn, CloseReason::Rejected);
    }
}

/// The first message: the key.
fn authenticate(ctx: &ShardContext, link: &Link, key: &[u8]) {
    let conn = &link.conn;
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
            tracing::debug!(cid = %conn.id, peer = %link.peer_text(), role, "authenticated");
        }
        None => ctx.close(conn, CloseReason::BadKey),
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
                if shard.has_overflowed() {
                    ctx.settle(&mut shard);
                }
                rest = after;
                if !rest.is_empty() && must_wait(ctx, conn) {
                    return Some(payload.len() - rest.len());
                }
            }
            Err(e) => {
                tracing::debug!(cid = %conn.id, what = e.text(), "malformed message");
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
