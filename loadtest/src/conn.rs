//! One client connection: a non-blocking socket, the handshake state machine (TCP connect,
//! WebSocket upgrade, then the middleman key exchange or the NATS CONNECT/PING), and the
//! read and write paths.
//!
//! Reads go into the worker's shared 64 KiB scratch buffer; only an incomplete frame at the end
//! of a read is copied into the connection (`leftover`), so ten thousand idle connections cost
//! no read buffers. Everything parsed is handed to the scenario as a borrowed [`Event`]; what
//! the scenario sends is appended to the connection's [`Sender`] and written later in one
//! `write()` per connection per loop turn.
//!
//! With TLS (`wss://`) a rustls session sits between the socket and the rest: ciphertext is read
//! into the worker's second scratch buffer, decrypted, and the plaintext lands in the first one
//! exactly where a plain read would have put it; the Sender's bytes are handed to rustls and
//! its records written with one vectored `write()`. The WebSocket and protocol code is the same.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use rustls::ClientConnection;

use crate::cli::{Protocol, Target};
use crate::mm;
use crate::nats;
use crate::ws::{self, Opcode};

/// One read asks for this much.
pub const READ_BYTES: usize = 64 * 1024;
/// The largest server frame accepted; a longer one ends the connection.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Sent to oneself (via `MSG:<cid>`) to learn that everything sent before it has been handled.
const BARRIER_BODY: &[u8] = b"~barrier";
/// TLS: room kept free in the scratch buffer for each drain of decrypted bytes (rustls holds
/// about 16 KiB of plaintext, plus at most one record).
const PLAINTEXT_ROOM: usize = 64 * 1024;

/// In order: a later stage never goes back to an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Connecting,
    Upgrading,
    /// middleman: key sent, waiting for `MM OK`.
    AwaitingOk,
    /// middleman: waiting for the connection id.
    AwaitingCid,
    /// NATS: waiting for the server's INFO.
    AwaitingInfo,
    /// NATS: CONNECT and PING sent, waiting for PONG.
    AwaitingPong,
    Ready,
    Closed,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The server sent a close frame.
    ByServer {
        code: u16,
        reason: String,
    },
    /// End of stream without a close frame.
    Eof,
    Io(io::ErrorKind),
    /// The server's bytes broke the protocol.
    Protocol(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ByServer { code, reason } if reason.is_empty() => {
                write!(f, "closed by server ({code})")
            }
            CloseReason::ByServer { code, reason } => {
                write!(f, "closed by server ({code} {reason})")
            }
            CloseReason::Eof => f.write_str("connection closed without a close frame"),
            CloseReason::Io(kind) => write!(f, "i/o error: {kind}"),
            CloseReason::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

/// A message delivered by the broker, in either protocol.
#[derive(Clone, Copy, Debug)]
pub enum Incoming<'a> {
    Mm(mm::Message<'a>),
    Nats { subject: &'a [u8], reply: Option<&'a [u8]>, payload: &'a [u8] },
}

impl<'a> Incoming<'a> {
    pub fn body(&self) -> &'a [u8] {
        match self {
            Incoming::Mm(m) => m.body,
            Incoming::Nats { payload, .. } => payload,
        }
    }

    /// The broker's error code if this is a middleman error message (`PUB ERROR`). An error
    /// without a `Code` header (the original server) reports as `error`.
    pub fn error_code(&self) -> Option<&'a [u8]> {
        match self {
            Incoming::Mm(m) if m.command == b"PUB" && m.topic == b"ERROR" => {
                Some(m.header(b"Code").unwrap_or(b"error"))
            }
            _ => None,
        }
    }

    /// The requester's id for its request: middleman's `ReqID` header, or the last element of
    /// the NATS reply subject.
    pub fn request_id(&self) -> Option<u64> {
        let digits = match self {
            Incoming::Mm(m) => m.header(b"ReqID")?,
            Incoming::Nats { subject, .. } => {
                let dot = memchr::memrchr(b'.', subject)?;
                &subject[dot + 1..]
            }
        };
        nats::parse_usize(digits).map(|n| n as u64)
    }
}

/// What a connection reports to its scenario.
#[derive(Debug)]
pub enum Event<'a> {
    /// Authenticated (middleman) or CONNECTed (NATS): ready for the scenario's commands.
    Ready,
    /// Everything sent before the last [`Sender::barrier`] has been handled by the broker.
    Barrier,
    Message(Incoming<'a>),
    /// A delivered message that did not parse, or a NATS `-ERR`.
    ProtocolError(&'a [u8]),
}

/// The outgoing half of a connection: its write buffer and the encoders for both protocols.
pub struct Sender {
    protocol: Protocol,
    out: Vec<u8>,
    /// Bytes at the front of `out` already written.
    written: usize,
    rng: u64,
    /// middleman: the id the broker gave; NATS: an id of our own for the inbox subject.
    pub cid: String,
    /// Set while the connection is on the worker's list of connections to flush.
    pub(crate) queued: bool,
    /// Run time the TCP connect started, for the handshake latency.
    pub started_ns: u64,
    /// The last write hit EAGAIN: nothing more goes out until the socket is writable again.
    pub(crate) write_blocked: bool,
}

impl Sender {
    fn new(protocol: Protocol, seed: u64) -> Sender {
        Sender {
            protocol,
            out: Vec::new(),
            written: 0,
            rng: seed | 1,
            cid: String::new(),
            queued: false,
            started_ns: 0,
            write_blocked: false,
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Whether the socket refused the last write (its writable event has not come yet).
    pub fn blocked(&self) -> bool {
        self.write_blocked
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64*: masks only need to be unpredictable to proxies, not secure.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 32) as u32).to_le_bytes()
    }

    fn frame(&mut self, opcode: Opcode, len: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let mask = self.mask();
        ws::encode_frame(&mut self.out, opcode, mask, len, write);
    }

    fn mm(&mut self, command: &[u8], topic: &[u8], headers: &[(&[u8], &[u8])], body: &[u8]) {
        let len = mm::encoded_len(command, topic, headers, body);
        self.frame(Opcode::Text, len, |b| mm::write(b, command, topic, headers, body));
    }

    fn nats_raw(&mut self, bytes: &[u8]) {
        self.frame(Opcode::Binary, bytes.len(), |b| b.extend_from_slice(bytes));
    }

    pub fn text(&mut self, payload: &[u8]) {
        self.frame(Opcode::Text, payload.len(), |b| b.extend_from_slice(payload));
    }

    fn pong(&mut self, payload: &[u8]) {
        self.frame(Opcode::Pong, payload.len(), |b| b.extend_from_slice(payload));
    }

    /// A close frame with code 1000; the caller drops the socket afterwards.
    pub fn close(&mut self) {
        self.frame(Opcode::Close, 2, |b| b.extend_from_slice(&1000u16.to_be_bytes()));
    }

    pub fn subscribe(&mut self, topic: &str, sid: u32) {
        match self.protocol {
            Protocol::Middleman => self.mm(b"SUB", topic.as_bytes(), &[], b""),
            Protocol::Nats => self.nats_raw(&nats::sub(topic, None, sid)),
        }
    }

    /// Registers as one of the responders sharing `topic` (middleman `EREQ`, NATS queue group).
    pub fn register_responder(&mut self, topic: &str, sid: u32) {
        match self.protocol {
            Protocol::Middleman => self.mm(b"EREQ", topic.as_bytes(), &[], b""),
            Protocol::Nats => self.nats_raw(&nats::sub(topic, Some("lt"), sid)),
        }
    }

    /// NATS requesters receive responses on their own inbox; middleman needs nothing.
    pub fn prepare_requests(&mut self, sid: u32) {
        if self.protocol == Protocol::Nats {
            let inbox = format!("_INBOX.{}.*", self.cid);
            self.nats_raw(&nats::sub(&inbox, None, sid));
        }
    }

    pub fn publish(&mut self, topic: &[u8], body: &[u8]) {
        match self.protocol {
            Protocol::Middleman => self.mm(b"PUB", topic, &[], body),
            Protocol::Nats => {
                let len = nats::pub_len(topic, None, body);
                self.frame(Opcode::Binary, len, |b| nats::write_pub(b, topic, None, body));
            }
        }
    }

    pub fn request(&mut self, topic: &[u8], id: u64, body: &[u8]) {
        let mut digits = [0u8; 20];
        let id_text = decimal(id, &mut digits);
        match self.protocol {
            Protocol::Middleman => self.mm(b"REQ", topic, &[(b"ReqID", id_text)], body),
            Protocol::Nats => {
                let mut reply = [0u8; 96];
                let reply_len = {
                    let mut w = &mut reply[..];
                    // Invariant: the cid is 20 characters (ours), so this fits 96 bytes.
                    let _ = w.write_all(b"_INBOX.");
                    let _ = w.write_all(self.cid.as_bytes());
                    let _ = w.write_all(b".");
                    let _ = w.write_all(id_text);
                    96 - w.len()
                };
                let reply = &reply[..reply_len];
                let len = nats::pub_len(topic, Some(reply), body);
                self.frame(Opcode::Binary, len, |b| nats::write_pub(b, topic, Some(reply), body));
            }
        }
    }

    /// Answers `request` with `body`. Returns false if the request cannot be answered (no
    /// `Rid`, no reply subject).
    ///
    /// middleman: the `RES` carries the request's `Rid` and copies its `ReqID`. middleman
    /// restores `ReqID` itself, but the original Go server passes on only what the responder
    /// sent, so without the copy its requesters could not match their responses.
    pub fn respond(&mut self, request: &Incoming<'_>, body: &[u8]) -> bool {
        match request {
            Incoming::Mm(m) => {
                let Some(rid) = m.header(b"Rid") else {
                    return false;
                };
                match m.header(b"ReqID") {
                    Some(req_id) => {
                        self.mm(b"RES", m.topic, &[(b"Rid", rid), (b"ReqID", req_id)], body)
                    }
                    None => self.mm(b"RES", m.topic, &[(b"Rid", rid)], body),
                }
                true
            }
            Incoming::Nats { reply, .. } => {
                let Some(reply) = reply else {
                    return false;
                };
                let len = nats::pub_len(reply, None, body);
                self.frame(Opcode::Binary, len, |b| nats::write_pub(b, reply, None, body));
                true
            }
        }
    }

    /// Asks the broker to confirm that it has handled everything sent so far; answered by
    /// [`Event::Barrier`]. middleman: a message to our own `MSG:<cid>` topic; NATS: PING.
    pub fn barrier(&mut self) {
        match self.protocol {
            Protocol::Middleman => {
                let topic = format!("MSG:{}", self.cid);
                self.mm(b"PUB", topic.as_bytes(), &[], BARRIER_BODY);
            }
            Protocol::Nats => self.nats_raw(nats::PING),
        }
    }
}

/// Feeds `cipher` to `tls` and appends the plaintext to `scratch` from `filled` on (growing
/// it as needed). Returns where the plaintext ends, and whether the server's close_notify came.
fn decrypt(
    tls: &mut ClientConnection,
    mut cipher: &[u8],
    scratch: &mut Vec<u8>,
    mut filled: usize,
) -> Result<(usize, bool), CloseReason> {
    while !cipher.is_empty() {
        // Ok(0): rustls takes nothing after the server's close_notify (seen below).
        if tls.read_tls(&mut cipher).map_err(|e| CloseReason::Io(e.kind()))? == 0 {
            return Ok((filled, true));
        }
        tls.process_new_packets().map_err(|e| CloseReason::Protocol(format!("TLS: {e}")))?;
        loop {
            if scratch.len() < filled + PLAINTEXT_ROOM {
                scratch.resize(filled + PLAINTEXT_ROOM, 0);
            }
            match tls.reader().read(&mut scratch[filled..]) {
                Ok(0) => return Ok((filled, true)),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(CloseReason::Io(e.kind())),
            }
        }
    }
    Ok((filled, false))
}

/// One read() from the socket: `Some(n)` bytes, `None` when it has nothing now (retrying
/// interrupted calls), or why the connection ended (end of stream, an error).
fn read_some(sock: &mut TcpStream, into: &mut [u8]) -> Result<Option<usize>, CloseReason> {
    loop {
        match sock.read(into) {
            Ok(0) => return Err(CloseReason::Eof),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CloseReason::Io(e.kind())),
        }
    }
}

fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// One connection.
pub struct Conn {
    pub sock: TcpStream,
    pub stage: Stage,
    protocol: Protocol,
    key: Vec<u8>,
    ws_key: String,
    leftover: Vec<u8>,
    /// A fragmented data message being reassembled (rare: servers here do not fragment).
    fragments: Vec<u8>,
    fragmenting: bool,
    /// NATS operations split across frames.
    nats_pending: Vec<u8>,
    pub tx: Sender,
    pub close_reason: Option<CloseReason>,
    /// Counted among the worker's connections in handshake.
    pub in_handshake: bool,
    /// The TLS session of a `wss://` connection.
    tls: Option<Box<ClientConnection>>,
}

/// Opens a non-blocking TCP connection, optionally from a chosen local address.
pub fn connect(addr: SocketAddr, source: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = source {
        // Let connect() choose the port per destination instead of bind() per address, so
        // each source address has the whole ephemeral range for this one destination.
        let one: libc::c_int = 1;
        // SAFETY: valid socket, option value is a c_int as IP_BIND_ADDRESS_NO_PORT expects.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

impl Conn {
    pub fn new(sock: TcpStream, protocol: Protocol, key: &[u8], seed: u64, now: u64) -> Conn {
        let mut random = [0u8; 16];
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for b in &mut random {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *b = s as u8;
        }
        let mut tx = Sender::new(protocol, seed ^ 0xDEAD_BEEF);
        tx.started_ns = now;
        if protocol == Protocol::Nats {
            // Our own id for the inbox subject: 20 characters like a middleman cid.
            tx.cid = format!("lt{:018}", seed);
        }
        Conn {
            sock,
            stage: Stage::Connecting,
            protocol,
            key: key.to_vec(),
            ws_key: ws::key_from(random),
            leftover: Vec::new(),
            fragments: Vec::new(),
            fragmenting: false,
            nats_pending: Vec::new(),
            tx,
            close_reason: None,
            in_handshake: true,
            tls: None,
        }
    }

    /// Runs the connection over TLS with `session` (before anything is written).
    pub fn use_tls(&mut self, session: ClientConnection) {
        self.tls = Some(Box::new(session));
    }

    /// The negotiated TLS version and cipher suite, once the TLS handshake is done.
    pub fn tls_description(&self) -> Option<String> {
        self.tls.as_deref().and_then(crate::tls::describe)
    }

    /// Whether anything waits to be written: the Sender's bytes, or TLS records (handshake
    /// messages, alerts) that rustls has ready.
    pub fn wants_flush(&self) -> bool {
        self.tx.pending() > 0 || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Ends a ready connection politely: a close frame, and TLS's close_notify after it.
    pub fn goodbye(&mut self) {
        self.tx.close();
        self.flush();
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            self.flush();
        }
    }

    pub fn is_open(&self) -> bool {
        self.stage != Stage::Closed
    }

    fn fail(&mut self, reason: CloseReason) {
        if self.stage != Stage::Closed {
            self.stage = Stage::Closed;
            self.close_reason = Some(reason);
        }
    }

    /// On a writable event while connecting: checks the connect result and sends the upgrade.
    pub fn on_writable_connecting(&mut self, target: &Target) {
        if let Ok(Some(e)) | Err(e) = self.sock.take_error() {
            self.fail(CloseReason::Io(e.kind()));
            return;
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                let request = ws::upgrade_request(&target.host, &target.path, &self.ws_key);
                self.tx.out.extend_from_slice(&request);
                self.stage = Stage::Upgrading;
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => self.fail(CloseReason::Io(e.kind())),
        }
    }

    /// Writes as much pending output as the socket takes. Returns true when all is written.
    pub fn flush(&mut self) -> bool {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        while self.tx.written < self.tx.out.len() {
            match self.sock.write(&self.tx.out[self.tx.written..]) {
                Ok(0) => {
                    self.fail(CloseReason::Eof);
                    return true;
                }
                Ok(n) => self.tx.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx.write_blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(CloseReason::Io(e.kind()));
                    return true;
                }
            }
        }
        self.compact_out()
    }

    /// TLS: hands the Sender's bytes to rustls (as much as its buffer takes) and writes its
    /// records to the socket, until both are empty or the socket is full.
    fn flush_tls(&mut self) -> bool {
        let Some(tls) = self.tls.as_deref_mut() else {
            return true;
        };
        let outcome = 'writing: loop {
            while self.tx.written < self.tx.out.len() {
                match tls.writer().write(&self.tx.out[self.tx.written..]) {
                    Ok(0) => break, // rustls's buffer is full until records are written
                    Ok(n) => self.tx.written += n,
                    Err(e) => break 'writing Err(CloseReason::Io(e.kind())),
                }
            }
            if !tls.wants_write() {
                break Ok(());
            }
            match tls.write_tls(&mut self.sock) {
                Ok(0) => break Err(CloseReason::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx.write_blocked = true;
                    break Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(CloseReason::Io(e.kind())),
            }
        };
        let records_left = tls.wants_write();
        if let Err(reason) = outcome {
            self.fail(reason);
            return true;
        }
        self.compact_out() && !records_left
    }

    /// After a write: clears the Sender's buffer if all of it went, else keeps the unwritten
    /// tail. Returns true when all went.
    fn compact_out(&mut self) -> bool {
        if self.tx.written == self.tx.out.len() {
            self.tx.out.clear();
            self.tx.written = 0;
            true
        } else {
            // Keep the unwritten tail at the front once it is the smaller part.
            if self.tx.written > self.tx.out.len() / 2 {
                self.tx.out.drain(..self.tx.written);
                self.tx.written = 0;
            }
            false
        }
    }

    /// Reads until the socket is drained, handing every event to `handle`. `now` is read once
    /// per read() call: every message in those bytes was available at that instant. `cipher`
    /// is the worker's buffer for TLS ciphertext (unused, and left empty, without TLS).
    ///
    /// Plain and TLS connections share this loop; they differ only in where a read lands and
    /// how its bytes reach `scratch`. Plain bytes are read straight into `scratch` after the
    /// space the carried-over bytes need, so they are copied in front only when the read
    /// brought something. With TLS, ciphertext is read into `cipher` and decrypted into that
    /// same place.
    pub fn on_readable(
        &mut self,
        scratch: &mut Vec<u8>,
        cipher: &mut Vec<u8>,
        clock: &crate::sys::Clock,
        handle: &mut dyn FnMut(&mut Sender, Event<'_>, u64),
    ) {
        loop {
            if self.stage == Stage::Closed || self.stage == Stage::Connecting {
                return;
            }
            let carried = self.leftover.len();
            let into = if self.tls.is_some() {
                if cipher.len() < READ_BYTES {
                    cipher.resize(READ_BYTES, 0);
                }
                &mut cipher[..READ_BYTES]
            } else {
                if scratch.len() < carried + READ_BYTES {
                    scratch.resize(carried + READ_BYTES, 0);
                }
                &mut scratch[carried..carried + READ_BYTES]
            };
            let n = match read_some(&mut self.sock, into) {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(reason) => {
                    self.fail(reason);
                    return;
                }
            };
            let now = clock.now();
            let (filled, close_notify) = match self.tls.as_deref_mut() {
                None => (carried + n, false),
                Some(tls) => match decrypt(tls, &cipher[..n], scratch, carried) {
                    Ok(done) => done,
                    Err(reason) => {
                        self.fail(reason);
                        return;
                    }
                },
            };
            if filled > carried {
                self.consume(scratch, filled, now, handle);
            }
            if close_notify {
                // The server ended the TLS session (after its close frame, if it sent one).
                self.fail(CloseReason::Eof);
                return;
            }
            // A short read means the socket was empty; with edge-triggered epoll, data that
            // arrives later raises a new event, so no extra read() to see EAGAIN is needed.
            if n < READ_BYTES {
                return;
            }
        }
    }

    /// `scratch[carried..filled]` holds new bytes (`carried` being the length of `leftover`):
    /// puts the carried-over bytes in front, parses everything complete, and keeps the
    /// incomplete tail for the next read.
    fn consume(
        &mut self,
        scratch: &mut [u8],
        filled: usize,
        now: u64,
        handle: &mut dyn FnMut(&mut Sender, Event<'_>, u64),
    ) {
        let carried = self.leftover.len();
        scratch[..carried].copy_from_slice(&self.leftover);
        self.leftover.clear();
        let used = self.process(&mut scratch[..filled], now, handle);
        if self.stage != Stage::Closed {
            self.leftover.extend_from_slice(&scratch[used..filled]);
        }
    }

    /// Consumes whole frames (and the upgrade response) from `buf`; returns bytes used.
    fn process(
        &mut self,
        buf: &mut [u8],
        now: u64,
        handle: &mut dyn FnMut(&mut Sender, Event<'_>, u64),
    ) -> usize {
        let mut pos = 0;
        if self.stage == Stage::Upgrading {
            match ws::parse_upgrade_response(buf, &self.ws_key) {
                Ok(None) => return 0,
                Ok(Some(len)) => {
                    pos = len;
                    match self.protocol {
                        Protocol::Middleman => {
                            let key = std::mem::take(&mut self.key);
                            self.tx.text(&key);
                            self.stage = Stage::AwaitingOk;
                        }
                        Protocol::Nats => self.stage = Stage::AwaitingInfo,
                    }
                }
                Err(e) => {
                    self.fail(CloseReason::Protocol(e.to_string()));
                    return buf.len();
                }
            }
        }
        while self.stage != Stage::Closed {
            let frame = match ws::decode_frame(&mut buf[pos..], FRAME_BYTES_MAX) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.fail(CloseReason::Protocol(e.to_string()));
                    return buf.len();
                }
            };
            let payload = pos + frame.payload.start..pos + frame.payload.end;
            pos += frame.len;
            match frame.opcode {
                Opcode::Ping => self.tx.pong(&buf[payload]),
                Opcode::Pong => {}
                Opcode::Close => {
                    let (code, reason) = ws::close_code(&buf[payload]);
                    let reason = String::from_utf8_lossy(reason).into_owned();
                    self.fail(CloseReason::ByServer { code, reason });
                }
                Opcode::Text | Opcode::Binary if frame.fin && !self.fragmenting => {
                    self.on_payload(&buf[payload], now, handle);
                }
                Opcode::Text | Opcode::Binary if !self.fragmenting => {
                    self.fragmenting = true;
                    self.fragments.clear();
                    self.fragments.extend_from_slice(&buf[payload]);
                }
                Opcode::Continuation if self.fragmenting => {
                    self.fragments.extend_from_slice(&buf[payload]);
                    if frame.fin {
                        self.fragmenting = false;
                        let whole = std::mem::take(&mut self.fragments);
                        self.on_payload(&whole, now, handle);
                        self.fragments = whole;
                    }
                }
                _ => self.fail(CloseReason::Protocol("bad fragmentation".into())),
            }
        }
        pos
    }

    /// One complete WebSocket message.
    fn on_payload(
        &mut self,
        payload: &[u8],
        now: u64,
        handle: &mut dyn FnMut(&mut Sender, Event<'_>, u64),
    ) {
        match self.protocol {
            Protocol::Middleman => self.on_mm_payload(payload, now, handle),
            Protocol::Nats => {
                if self.nats_pending.is_empty() {
                    let used = self.on_nats_stream(payload, now, handle);
                    if self.stage != Stage::Closed {
                        self.nats_pending.extend_from_slice(&payload[used..]);
                    }
                } else {
                    let mut pending = std::mem::take(&mut self.nats_pending);
                    pending.extend_from_slice(payload);
                    let used = self.on_nats_stream(&pending, now, handle);
                    pending.drain(..used);
                    self.nats_pending = pending;
                }
            }
        }
    }

    fn on_mm_payload(
        &mut self,
        payload: &[u8],
        now: u64,
        handle: &mut dyn FnMut(&mut Sender, Event<'_>, u64),
    ) {
        match self.stage {
            Stage::AwaitingOk => {
                if payload == b"MM OK" {
                    self.stage = Stage::AwaitingCid;
                } else {
                    let text = String::from_utf8_lossy(payload).into_owned();
                    self.fail(CloseReason::Protocol(format!("expected MM OK, got {text:?}")));
                }
            }
            Stage::AwaitingCid => {
                self.tx.cid = String::from_utf8_lossy(payload).into_owned();
                self.stage = Stage::Ready;
                handle(&mut self.tx, Event::Ready, now);
            }
            Stage::Ready => {
                let mut rest = payload;
                while !rest.is_empty() {
                    match mm::parse(rest) {
                        Ok((message, used)) => {
                            rest = &rest[used..];
                            if message.body == BARRIER_BODY
                                && message.topic.strip_prefix(b"MSG:")
                                    == Some(self.tx.cid.as_bytes())
                            {
                                handle(&mut self.tx, Event::Barrier, now);
                            } else {
                                handle(&mut self.tx, Event::Message(Incoming::Mm(message)), now);
                            }
                        }
                        Err(_) => {
                            handle(&mut self.tx, Event::ProtocolError(rest), now);
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Handles the NATS operations in `stream`; returns the bytes consumed (an incomplete
    /// operation at the end stays for the next frame).
    fn on_nats_stream(
        &mut self,
        stream: &[u8],
        now: u64,
        handle: &mut dyn FnMut(&mut Sender, Event<'_>, u64),
    ) -> usize {
        let mut pos = 0;
        while self.stage != Stage::Closed {
            let (op, used) = match nats::parse(&stream[pos..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(e) => {
                    self.fail(CloseReason::Protocol(e.to_string()));
                    return stream.len();
                }
            };
            pos += used;
            match op {
                nats::Op::Info => {
                    if self.stage == Stage::AwaitingInfo {
                        self.nats_raw_pair();
                        self.stage = Stage::AwaitingPong;
                    }
                }
                nats::Op::Ping => self.tx.nats_raw(nats::PONG),
                nats::Op::Pong => {
                    if self.stage == Stage::AwaitingPong {
                        self.stage = Stage::Ready;
                        handle(&mut self.tx, Event::Ready, now);
                    } else {
                        handle(&mut self.tx, Event::Barrier, now);
                    }
                }
                nats::Op::Ok => {}
                nats::Op::Err(text) => handle(&mut self.tx, Event::ProtocolError(text), now),
                nats::Op::Msg { subject, reply, payload, .. } => {
                    if self.stage == Stage::Ready {
                        let incoming = Incoming::Nats { subject, reply, payload };
                        handle(&mut self.tx, Event::Message(incoming), now);
                    }
                }
            }
        }
        pos
    }

    fn nats_raw_pair(&mut self) {
        let mut hello = Vec::with_capacity(nats::CONNECT.len() + nats::PING.len());
        hello.extend_from_slice(nats::CONNECT);
        hello.extend_from_slice(nats::PING);
        self.tx.nats_raw(&hello);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_client_frames(mut bytes: Vec<u8>) -> Vec<(Opcode, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let frame = ws::decode_frame(&mut bytes[pos..], usize::MAX).unwrap().unwrap();
            out.push((frame.opcode, bytes[pos..][frame.payload.clone()].to_vec()));
            pos += frame.len;
        }
        out
    }

    #[test]
    fn middleman_commands_are_text_frames() {
        let mut tx = Sender::new(Protocol::Middleman, 7);
        tx.cid = "c".repeat(20);
        tx.subscribe("lt.t0", 1);
        tx.publish(b"lt.t0", b"body");
        tx.request(b"lt.req", 42, b"q");
        tx.register_responder("lt.req", 2);
        tx.barrier();
        let frames = decode_client_frames(tx.out.clone());
        let texts: Vec<String> = frames
            .iter()
            .map(|(op, p)| {
                assert_eq!(*op, Opcode::Text);
                String::from_utf8(p.clone()).unwrap()
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                "SUB lt.t0\r\n\r\n.\r\n".to_string(),
                "PUB lt.t0\r\n\r\nbody\r\n.\r\n".to_string(),
                "REQ lt.req\r\nReqID: 42\r\n\r\nq\r\n.\r\n".to_string(),
                "EREQ lt.req\r\n\r\n.\r\n".to_string(),
                format!("PUB MSG:{}\r\n\r\n~barrier\r\n.\r\n", "c".repeat(20)),
            ]
        );
    }

    #[test]
    fn middleman_response_copies_rid_and_req_id() {
        let raw = b"REQ lt.req\r\nReqID: 5\r\nCid: x\r\nUid: \r\nRid: 77\r\n\r\nhello\r\n.\r\n";
        let (message, _) = mm::parse(raw).unwrap();
        let request = Incoming::Mm(message);
        assert_eq!(request.request_id(), Some(5));
        let mut tx = Sender::new(Protocol::Middleman, 1);
        assert!(tx.respond(&request, request.body()));
        let frames = decode_client_frames(tx.out.clone());
        assert_eq!(frames[0].1, b"RES lt.req\r\nRid: 77\r\nReqID: 5\r\n\r\nhello\r\n.\r\n");

        // The original Go server writes `Reqid`; a request without one is answered without.
        let raw = b"REQ lt.req\nReqid: 6\nRid: 78\n\nhi\n\r\n.\r\n";
        let (message, _) = mm::parse(raw).unwrap();
        let request = Incoming::Mm(message);
        assert!(tx.respond(&request, b"a"));
        let raw = b"REQ lt.req\r\nRid: 79\r\n\r\nhi\r\n.\r\n";
        let (message, _) = mm::parse(raw).unwrap();
        assert!(tx.respond(&Incoming::Mm(message), b"b"));
        let frames = decode_client_frames(tx.out.clone());
        assert_eq!(frames[1].1, b"RES lt.req\r\nRid: 78\r\nReqID: 6\r\n\r\na\r\n.\r\n");
        assert_eq!(frames[2].1, b"RES lt.req\r\nRid: 79\r\n\r\nb\r\n.\r\n");
    }

    #[test]
    fn error_codes_are_recognised() {
        let raw =
            b"PUB ERROR\r\nCode: no-responder\r\nReqID: 3\r\n\r\nNo responder for REQ x\r\n.\r\n";
        let (message, _) = mm::parse(raw).unwrap();
        let incoming = Incoming::Mm(message);
        assert_eq!(incoming.error_code(), Some(&b"no-responder"[..]));
        assert_eq!(incoming.request_id(), Some(3));
        let (plain, _) = mm::parse(b"PUB t\r\n\r\nx\r\n.\r\n").unwrap();
        assert_eq!(Incoming::Mm(plain).error_code(), None);
    }

    #[test]
    fn nats_commands_are_binary_frames() {
        let mut tx = Sender::new(Protocol::Nats, 7);
        tx.cid = "lt000000000000000007".into();
        tx.subscribe("lt.t0", 1);
        tx.register_responder("lt.req", 2);
        tx.prepare_requests(3);
        tx.publish(b"lt.t0", b"body");
        tx.request(b"lt.req", 9, b"q");
        let frames = decode_client_frames(tx.out.clone());
        let texts: Vec<String> = frames
            .iter()
            .map(|(op, p)| {
                assert_eq!(*op, Opcode::Binary);
                String::from_utf8(p.clone()).unwrap()
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                "SUB lt.t0 1\r\n",
                "SUB lt.req lt 2\r\n",
                "SUB _INBOX.lt000000000000000007.* 3\r\n",
                "PUB lt.t0 4\r\nbody\r\n",
                "PUB lt.req _INBOX.lt000000000000000007.9 1\r\nq\r\n",
            ]
        );
        let response = Incoming::Nats {
            subject: b"_INBOX.lt000000000000000007.9",
            reply: None,
            payload: b"q",
        };
        assert_eq!(response.request_id(), Some(9));
    }
}
