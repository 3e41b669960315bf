//! Checks nothing by itself: the shared harness (server process, WebSocket peers, messages).
//! How: spawns the real binary on 127.0.0.1:0; every read has a deadline, so no test can hang.
#![allow(dead_code)]

pub mod cluster;
pub mod nats;

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Bytes, Message, WebSocket};

/// The service (trusted) key every `Server::start` accepts.
pub const SERVICE_KEY: &str = "test-service-key";
/// The client (untrusted) key every `Server::start` accepts.
pub const CLIENT_KEY: &str = "test-client-key";

/// How long `recv` waits before declaring the server silent.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the server gets to print `listening on`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Granularity of every blocking read, so deadlines are checked often.
const READ_SLICE: Duration = Duration::from_millis(50);
/// How long a single write may stall before the test gives up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A number unique within this test process, for barrier and hand-off bodies.
pub fn unique() -> u64 {
    SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// A running `middleman` process. Killed on drop; its stderr is printed if the test panicked.
pub struct Server {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<u8>>>,
    service_keys: Vec<String>,
    /// One service per shard, opened by the first `settle` (in cluster mode: one per shard
    /// of every node, node by node).
    relays: RefCell<Vec<Client>>,
    /// Every line the server wrote to stdout so far (`listening on`, `admin on` ...).
    stdout: Arc<Mutex<Vec<String>>>,
    /// `Some` when `MIDDLEMAN_TEST_NODES` made this a cluster (see `cluster::Peers`).
    cluster: Option<Box<cluster::Peers>>,
}

impl Server {
    /// Two shards, one service key (`SERVICE_KEY`), one client key (`CLIENT_KEY`), plus `extra`.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_keys(&[SERVICE_KEY], &[CLIENT_KEY], extra)
    }

    /// Two shards on 127.0.0.1:0 with exactly these keys, plus `extra` flags. With
    /// `MIDDLEMAN_TEST_NODES=N` (N ≥ 2) in the environment: N cluster nodes joined through a
    /// nats-server of their own, connections spread over them (see `cluster::Peers`).
    pub fn start_with_keys(service_keys: &[&str], client_keys: &[&str], extra: &[&str]) -> Server {
        match cluster::test_nodes() {
            Some(nodes) if !extra.contains(&"--cluster-nats") => {
                cluster::Peers::start(nodes, service_keys, client_keys, extra)
            }
            _ => Server::start_single(service_keys, client_keys, extra),
        }
    }

    /// One process, whatever the environment says (the cluster harness starts its nodes so).
    pub fn start_single(service_keys: &[&str], client_keys: &[&str], extra: &[&str]) -> Server {
        let mut args: Vec<&str> = vec!["--listen", "127.0.0.1:0", "--shards", "2"];
        for key in service_keys {
            args.extend(["--service-key", key]);
        }
        for key in client_keys {
            args.extend(["--client-key", key]);
        }
        args.extend(extra);

        let mut child = Command::new(env!("CARGO_BIN_EXE_middleman"))
            .args(&args)
            // Keys come only from the flags above, never from the caller's environment.
            .env_remove("MIDDLEMAN_SERVICE_KEYS")
            .env_remove("MIDDLEMAN_CLIENT_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the middleman binary");

        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });

        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let lines_sink = Arc::clone(&stdout_lines);
        thread::spawn(move || {
            // Keeps draining stdout after the first line so the server never blocks on it.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines_sink.lock().unwrap().push(line.clone());
                // Once nobody listens any more, keep reading anyway so the pipe never fills.
                let _ = lines_tx.send(line);
            }
        });

        let mut server = Server {
            child,
            port: 0,
            log,
            service_keys: service_keys.iter().map(|k| k.to_string()).collect(),
            relays: RefCell::new(Vec::new()),
            stdout: stdout_lines,
            cluster: None,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("listening on ws://127.0.0.1:") {
                        let digits: String =
                            rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        server.port = digits
                            .parse()
                            .unwrap_or_else(|_| panic!("bad listening line {line:?}"));
                        assert_ne!(server.port, 0, "server printed port 0: {line:?}");
                        return server;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "server printed no `listening on ws://127.0.0.1:PORT` line within {:?} \
                     (args {args:?})",
                    STARTUP_TIMEOUT
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.wait_exit(Duration::from_secs(2));
                    panic!("server closed stdout before listening (args {args:?}), exit {status:?}")
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The rest of the first stdout line that starts with `prefix` (for example `admin on
    /// http://`), waiting up to 5 s for it; `None` if it never came.
    pub fn stdout_line(&self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find_map(|line| line.trim().strip_prefix(prefix).map(str::to_owned));
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// The log once `done` holds for it, or as it stands after 5 s. The log is collected from
    /// the server's stderr by a reader thread, so a line written before a reply was sent may
    /// still be on its way when the reply arrives.
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; the child is not reaped until we wait on it,
        // so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Panics unless the process still runs and a fresh service can do a round trip.
    pub fn assert_serving(&mut self) {
        assert!(self.is_running(), "server process has exited");
        let mut probe = self.service();
        probe.sync();
    }

    fn is_service_key(&self, key: &str) -> bool {
        self.service_keys.iter().any(|k| k == key)
    }

    /// Upgrade on `/` and log in with `key`; panics on any failure.
    pub fn connect(&self, key: &str) -> Client {
        self.try_connect_path(key, "/").unwrap_or_else(|e| panic!("connect with key {key:?}: {e}"))
    }

    pub fn try_connect(&self, key: &str) -> Result<Client, String> {
        self.try_connect_path(key, "/")
    }

    pub fn try_connect_path(&self, key: &str, path: &str) -> Result<Client, String> {
        match &self.cluster {
            Some(peers) => peers.connect_spread(self, key, path, None),
            None => self.try_connect_here(key, path),
        }
    }

    /// A connection to this process, whatever the cluster mode.
    pub fn try_connect_here(&self, key: &str, path: &str) -> Result<Client, String> {
        let mut client = Client::upgrade(self.port, path)?;
        client.service = self.is_service_key(key);
        client.login(key)?;
        Ok(client)
    }

    pub fn service(&self) -> Client {
        self.connect(SERVICE_KEY)
    }

    pub fn client(&self) -> Client {
        self.connect(CLIENT_KEY)
    }

    /// A connection that lives on `shard`: opens up to 32 and keeps the first that does.
    pub fn connect_on_shard(&self, key: &str, shard: u16) -> Client {
        if let Some(peers) = &self.cluster {
            return peers
                .connect_spread(self, key, "/", Some(shard))
                .unwrap_or_else(|e| panic!("connect with key {key:?} for shard {shard}: {e}"));
        }
        self.connect_here_on_shard(key, shard)
    }

    /// A connection to this process that lives on `shard`, whatever the cluster mode.
    pub fn connect_here_on_shard(&self, key: &str, shard: u16) -> Client {
        let mut seen = HashSet::new();
        for _ in 0..32 {
            let client = self
                .try_connect_here(key, "/")
                .unwrap_or_else(|e| panic!("connect with key {key:?}: {e}"));
            if client.shard() == shard {
                return client;
            }
            seen.insert(client.shard());
        }
        panic!("no connection landed on shard {shard} in 32 tries (saw shards {seen:?})");
    }

    /// Waits until all cross-shard mail queued before now has been handled: a service on each
    /// shard sends to the private topic of a service on every other shard and waits for it to
    /// arrive. Mail between two shards is first in, first out, so whatever a shard had queued
    /// for another (a subscription's interest, a responder's registration) lands first.
    ///
    /// Use it after `sync` on the connection whose command must take effect everywhere (a
    /// `SUB` followed by a `PUB` from another connection). PROTOCOL.md gives no acknowledgement
    /// for `SUB`; `it_ordering.rs` checks separately whether a `SUB` followed by a round trip
    /// is enough on its own.
    pub fn settle(&self) {
        if let Some(peers) = &self.cluster {
            return peers.settle(self, &mut self.relays.borrow_mut());
        }
        let mut relays = self.relays.borrow_mut();
        if relays.is_empty() {
            relays.push(self.service_on(0));
            relays.push(self.service_on(1));
        }
        for from in 0..relays.len() {
            for to in 0..relays.len() {
                if from != to {
                    let (a, b) = if from < to {
                        let (left, right) = relays.split_at_mut(to);
                        (&mut left[from], &mut right[0])
                    } else {
                        let (left, right) = relays.split_at_mut(from);
                        (&mut right[0], &mut left[to])
                    };
                    tell(a, b);
                }
            }
        }
    }

    /// Returns once the broker's end of `peer` (a connection to this server) has nothing left
    /// in its receive queue, that is, the broker has read everything `peer` sent so far. Reads
    /// the queue from `/proc/net/tcp`; panics after 5 s or if the socket is not listed.
    pub fn await_read_all(&self, peer: &TcpStream) {
        let client_port = peer.local_addr().expect("peer address").port();
        // /proc/net/tcp writes 127.0.0.1:port as `0100007F:PPPP` (address in host order).
        let local = format!("0100007F:{:04X}", self.port);
        let remote = format!("0100007F:{client_port:04X}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
            let queue = table.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() > 4 && fields[1] == local && fields[2] == remote).then(|| {
                    let (_tx, rx) = fields[4].split_once(':').expect("tx_queue:rx_queue");
                    u64::from_str_radix(rx, 16).expect("hex rx_queue")
                })
            });
            match queue {
                Some(0) => return,
                Some(_) => {}
                None => panic!("the broker's end of {remote} is not in /proc/net/tcp"),
            }
            assert!(Instant::now() < deadline, "the broker did not read what {remote} sent");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `settle` twice: every chain of cross-shard mail of up to three hops that began before
    /// the call has been handled (`settle` alone orders 0 → 1 before 1 → 0, so it finishes a
    /// 0 → 1 → 0 chain but not a 1 → 0 → 1 one). Use it before `sync` on a connection to prove
    /// that no reply from another shard is on its way to it: a `no-responder` from a topic's
    /// owner, a delivery from a topic's owner, a reply to an `INT` from the target's shard.
    pub fn settle_replies(&self) {
        self.settle();
        self.settle();
    }

    /// A service on `shard` subscribed to `topic`, with the subscription in effect everywhere.
    /// As a witness: a shard hands each message to all its local subscribers in one step, so
    /// once the witness has a message, anyone else on its shard who (wrongly) got it has it
    /// queued too, and that connection's `sync` (whose reply is queued behind it) shows it.
    pub fn subscriber_on(&self, shard: u16, topic: &str) -> Client {
        let mut sub = self.service_on(shard);
        sub.send_text(&msg("SUB", topic, &[], ""));
        sub.sync();
        self.settle();
        sub
    }

    /// Returns once the broker has forgotten the connection `cid` (`Shard::disconnect` has
    /// run for it, with all its clean-up): `probe`, a service, sends `INT UID` for it until the
    /// answer is `no-connection`. Each try is exact: after `settle_replies` the INT's answer,
    /// if any, is queued ahead of a marker on the probe's private topic. Panics after 5 s.
    pub fn await_forgotten(&self, probe: &mut Client, cid: &str) {
        let private = format!("MSG:{}", probe.cid);
        let gone = error("no-connection", None, "No client for INT UID");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            probe.send_text(&msg("INT", "UID", &[("forcid", cid), ("setuid", "forgotten")], ""));
            self.settle_replies();
            let marker = Marker::publish(probe, &private);
            let m = probe.recv();
            if m.data == gone.as_bytes() {
                probe.expect_marker(&marker);
                return;
            }
            let p = m.parse();
            assert_eq!(
                (p.first_line, show(&p.body)),
                (format!("PUB {private}"), show(format!("{}\r\n", marker.body).as_bytes())),
                "{} expected `no-connection` or its marker",
                probe.who()
            );
            assert!(Instant::now() < deadline, "the broker never forgot connection {cid}");
        }
    }

    pub fn service_on(&self, shard: u16) -> Client {
        self.connect_on_shard(SERVICE_KEY, shard)
    }

    pub fn client_on(&self, shard: u16) -> Client {
        self.connect_on_shard(CLIENT_KEY, shard)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(peers) = &self.cluster {
            if !thread::panicking() {
                peers.assert_spread();
            }
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            // Give the stderr reader a moment to catch the last lines.
            thread::sleep(Duration::from_millis(50));
            let log = self.log();
            let start = log.len().saturating_sub(16_384);
            let start = (start..log.len()).find(|&i| log.is_char_boundary(i)).unwrap_or(log.len());
            let tail = &log[start..];
            eprintln!("---- middleman stderr (tail) ----\n{tail}\n---- end of stderr ----");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A WebSocket peer
// ---------------------------------------------------------------------------------------------

/// A data message as received: its frame type and payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    pub binary: bool,
    pub data: Vec<u8>,
}

impl Received {
    pub fn parse(&self) -> Parsed {
        parse(&self.data)
    }
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.binary { "binary" } else { "text" };
        write!(f, "{kind} {}", show(&self.data))
    }
}

/// What one read produced.
#[derive(Debug)]
pub enum Event {
    Message(Received),
    /// A close frame: `(code, reason)`, or `None` for an empty close frame.
    Close(Option<(u16, String)>),
    /// Nothing arrived before the deadline.
    Timeout,
    /// The connection ended without (another) close frame: EOF, reset, protocol error.
    Gone(String),
}

/// A tungstenite client over a blocking `TcpStream` with short read timeouts.
pub struct Client {
    ws: WebSocket<TcpStream>,
    /// Empty until `login` succeeds.
    pub cid: String,
    /// Whether it logged in with a service key (decides how `sync` works).
    pub service: bool,
    /// The node it is connected to (0 unless a cluster harness handed it out).
    pub node: usize,
}

impl Client {
    /// Opens a TCP connection and does the WebSocket upgrade on `path`. No key is sent.
    pub fn upgrade(port: u16, path: &str) -> Result<Client, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT)
            .map_err(|e| format!("tcp connect: {e}"))?;
        Client::upgrade_stream(stream, port, path)
    }

    /// The WebSocket upgrade over an already connected stream.
    pub fn upgrade_stream(stream: TcpStream, port: u16, path: &str) -> Result<Client, String> {
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(READ_SLICE)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        let url = format!("ws://127.0.0.1:{port}{path}");
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut attempt = tungstenite::client::client(url.as_str(), stream);
        loop {
            match attempt {
                Ok((ws, _response)) => {
                    return Ok(Client { ws, cid: String::new(), service: false, node: 0 })
                }
                Err(tungstenite::HandshakeError::Interrupted(mid)) => {
                    if Instant::now() >= deadline {
                        return Err("upgrade timed out".into());
                    }
                    attempt = mid.handshake();
                }
                Err(tungstenite::HandshakeError::Failure(e)) => {
                    return Err(format!("upgrade failed: {e}"))
                }
            }
        }
    }

    /// Sends `key` and expects `MM OK` then a cid, both text frames.
    pub fn login(&mut self, key: &str) -> Result<(), String> {
        self.try_send(Message::text(key))?;
        match self.next_event(RECV_TIMEOUT) {
            Event::Message(m) if !m.binary && m.data == b"MM OK" => {}
            other => return Err(format!("expected text `MM OK`, got {other:?}")),
        }
        match self.next_event(RECV_TIMEOUT) {
            Event::Message(m) if !m.binary => {
                self.cid = String::from_utf8(m.data).map_err(|e| e.to_string())?;
                if middleman::ids::ConnectionId::parse(self.cid.as_bytes()).is_none() {
                    return Err(format!("not a cid: {:?}", self.cid));
                }
                Ok(())
            }
            other => Err(format!("expected the cid in a text frame, got {other:?}")),
        }
    }

    /// The shard this connection lives on, from its cid.
    pub fn shard(&self) -> u16 {
        middleman::ids::ConnectionId::parse(self.cid.as_bytes())
            .expect("a logged-in client has a valid cid")
            .shard
            .0
    }

    /// The underlying socket (for shutdown, socket options ...).
    pub fn stream(&self) -> &TcpStream {
        self.ws.get_ref()
    }

    fn try_send(&mut self, message: Message) -> Result<(), String> {
        self.ws.write(message).map_err(|e| format!("write: {e}"))?;
        self.try_flush()
    }

    fn try_flush(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            match self.ws.flush() {
                Ok(()) => return Ok(()),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                        && Instant::now() < deadline => {}
                Err(e) => return Err(format!("flush: {e}")),
            }
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.try_send(Message::text(text))
            .unwrap_or_else(|e| panic!("send_text {}: {e}", show(text.as_bytes())));
    }

    pub fn send_binary(&mut self, data: &[u8]) {
        self.try_send(Message::binary(data.to_vec()))
            .unwrap_or_else(|e| panic!("send_binary {}: {e}", show(data)));
    }

    /// Sends one raw frame (tungstenite masks it); for fragments and invalid UTF-8.
    pub fn send_frame(&mut self, frame: Frame) {
        self.try_send(Message::Frame(frame)).unwrap_or_else(|e| panic!("send_frame: {e}"));
    }

    /// Buffers a text message without flushing; call `flush` after a batch.
    pub fn queue_text(&mut self, text: &str) {
        self.ws.write(Message::text(text)).unwrap_or_else(|e| panic!("queue_text: {e}"));
    }

    pub fn flush(&mut self) {
        self.try_flush().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends a close frame with `code`.
    pub fn close(&mut self, code: u16) {
        let frame = tungstenite::protocol::CloseFrame { code: code.into(), reason: "".into() };
        self.try_send(Message::Close(Some(frame))).unwrap_or_else(|e| panic!("close: {e}"));
    }

    /// The next event within `timeout`; pings and pongs are skipped (tungstenite answers pings).
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return Event::Message(Received {
                        binary: false,
                        data: text.as_bytes().to_vec(),
                    })
                }
                Ok(Message::Binary(data)) => {
                    return Event::Message(Received { binary: true, data: data.to_vec() })
                }
                Ok(Message::Close(frame)) => {
                    return Event::Close(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                    )
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Event::Gone(e.to_string()),
            }
            if Instant::now() >= deadline {
                return Event::Timeout;
            }
        }
    }

    /// Reads until the server's next ping and returns its payload; panics if a data message,
    /// a close or the end of the connection comes first, or nothing within `timeout`.
    /// tungstenite queues the pong as it reads the ping and sends it on the next read or
    /// write, so the ping is answered.
    pub fn expect_ping(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Ping(payload)) => return payload.to_vec(),
                Ok(Message::Pong(_) | Message::Frame(_)) => {}
                Ok(other) => panic!("{} expected a ping, got {other:?}", self.who()),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{} expected a ping, the connection ended: {e}", self.who()),
            }
            assert!(Instant::now() < deadline, "{} got no ping within {timeout:?}", self.who());
        }
    }

    /// The next data message, or a panic after `RECV_TIMEOUT`.
    pub fn recv(&mut self) -> Received {
        self.recv_within(RECV_TIMEOUT)
    }

    pub fn recv_within(&mut self, timeout: Duration) -> Received {
        match self.next_event(timeout) {
            Event::Message(m) => m,
            other => panic!("{} expected a message within {timeout:?}, got {other:?}", self.who()),
        }
    }

    /// The next message, which must be in a text frame.
    pub fn recv_text(&mut self) -> String {
        let m = self.recv();
        assert!(!m.binary, "{} expected a text frame, got {m:?}", self.who());
        String::from_utf8(m.data).expect("text frames are UTF-8")
    }

    /// The next message must be a text frame with exactly these bytes.
    pub fn expect_text(&mut self, expected: &str) {
        let m = self.recv();
        assert_eq!(
            show(&m.data),
            show(expected.as_bytes()),
            "{} got the wrong message",
            self.who()
        );
        assert!(!m.binary, "{} expected a text frame, got binary", self.who());
    }

    /// The next message must be a binary frame with exactly these bytes.
    pub fn expect_binary(&mut self, expected: &[u8]) {
        let m = self.recv();
        assert_eq!(show(&m.data), show(expected), "{} got the wrong message", self.who());
        assert!(m.binary, "{} expected a binary frame, got text", self.who());
    }

    /// The next message must be exactly `error(code, None, text)`.
    pub fn expect_error(&mut self, code: &str, text: &str) {
        self.expect_text(&error(code, None, text));
    }

    /// The next message must be exactly `error(code, Some(req_id), text)`.
    pub fn expect_error_with_req_id(&mut self, code: &str, req_id: &str, text: &str) {
        self.expect_text(&error(code, Some(req_id), text));
    }

    /// The next message must be a `malformed` error; returns its text (`Malformed message: ...`).
    pub fn expect_malformed(&mut self) -> String {
        let text = self.recv_text();
        let p = parse(text.as_bytes());
        assert_eq!(p.first_line, "PUB ERROR", "{} expected an error: {text:?}", self.who());
        assert_eq!(
            p.headers,
            vec![("Code".to_owned(), "malformed".to_owned())],
            "{} expected exactly `Code: malformed`: {text:?}",
            self.who()
        );
        let body = String::from_utf8(p.body).expect("utf-8 error text");
        assert!(
            body.starts_with("Malformed message: ") && body.ends_with("\r\n"),
            "{} malformed error text: {body:?}",
            self.who()
        );
        assert_eq!(body.matches('\n').count(), 1, "error text is one line: {body:?}");
        body.trim_end().to_owned()
    }

    /// The next event must be exactly `marker` (see `Marker`): nothing was queued for this
    /// connection ahead of it.
    pub fn expect_marker(&mut self, marker: &Marker) {
        let got = match self.next_event(RECV_TIMEOUT) {
            Event::Message(m) => m,
            other => {
                panic!("{} expected the marker {:?} next, got {other:?}", self.who(), marker.body)
            }
        };
        let p = got.parse();
        assert!(
            p.first_line == format!("PUB {}", marker.topic)
                && p.header("Cid") == Some(marker.cid.as_str())
                && p.body == format!("{}\r\n", marker.body).as_bytes(),
            "{} expected the marker {:?} on {} from {} next, got {got:?}",
            self.who(),
            marker.body,
            marker.topic,
            marker.cid
        );
    }

    /// The connection must end (EOF or reset) with no further message or close frame; panics
    /// if anything else comes or it is still open after `RECV_TIMEOUT`.
    pub fn expect_end(&mut self) {
        match self.next_event(RECV_TIMEOUT) {
            Event::Gone(_) => {}
            other => panic!("{} expected the connection to end, got {other:?}", self.who()),
        }
    }

    /// The next event must be a close frame with a code; returns `(code, reason)`.
    pub fn expect_close(&mut self) -> (u16, String) {
        self.expect_close_within(RECV_TIMEOUT)
    }

    pub fn expect_close_within(&mut self, timeout: Duration) -> (u16, String) {
        match self.next_event(timeout) {
            Event::Close(Some(close)) => close,
            other => {
                panic!("{} expected a close frame within {timeout:?}, got {other:?}", self.who())
            }
        }
    }

    /// A round trip through this connection's shard: afterwards everything this connection sent
    /// before has been handled. A service publishes to its own `MSG:<cid>`; a client sends an
    /// unknown command and waits for the `unknown-command` error.
    pub fn sync(&mut self) {
        let n = unique();
        if self.service {
            let topic = format!("MSG:{}", self.cid);
            let body = format!("sync {n}");
            self.send_text(&msg("PUB", &topic, &[], &body));
            let m = self.recv();
            let p = m.parse();
            assert_eq!(
                (p.first_line.as_str(), show(&p.body)),
                (format!("PUB {topic}").as_str(), show(format!("{body}\r\n").as_bytes())),
                "{} sync: expected its own `{body}` back",
                self.who()
            );
        } else {
            let target = format!("sync-{n}");
            self.send_text(&msg("BARRIER", &target, &[], ""));
            self.expect_error("unknown-command", &format!("Unknown command BARRIER {target}"));
        }
    }

    fn who(&self) -> String {
        let role = if self.service { "service" } else { "client" };
        if self.cid.is_empty() {
            format!("{role} (not logged in)")
        } else {
            format!("{role} {} (shard {})", self.cid, self.shard())
        }
    }
}

/// `from` (a service) publishes to `to`'s private topic and `to` receives it. Everything `from`
/// sent before is then in effect for whatever `to` sends next: the causal hand-off a real
/// application uses ("I granted you, go ahead").
pub fn tell(from: &mut Client, to: &mut Client) {
    let body = format!("go {}", unique());
    let topic = format!("MSG:{}", to.cid);
    from.send_text(&msg("PUB", &topic, &[], &body));
    let got = to.recv().parse();
    assert_eq!(
        (got.first_line, show(&got.body)),
        (format!("PUB {topic}"), show(format!("{body}\r\n").as_bytes())),
        "hand-off message from {}",
        from.cid
    );
}

/// A unique message published on a topic to prove that something else did not arrive: the
/// receiver's next event must be the marker (`Client::expect_marker`), so anything that was
/// (wrongly) on its way ahead of the marker shows up instead of it. No waiting is involved.
///
/// Why it is exact (PROTOCOL.md §7 and the two-shard harness):
/// - What `publisher` published on `topic` before the marker reaches every subscriber before
///   it (one publisher's messages on one topic keep their order).
/// - A shard handles each connection's input in order and mail between two shards is first in,
///   first out (see `Server::settle`). So anything *another* connection on the publisher's shard
///   had done before the test sent the marker (a PUB that should have been refused, a message
///   that should have been dropped with its sender's close) would also have passed the topic's
///   owner, and the receiver's shard, ahead of the marker. Publish the marker from a service on
///   the offender's shard (`Server::service_on(offender.shard())`), after the offender's reply
///   (its error, its close frame) has been seen.
pub struct Marker {
    pub topic: String,
    pub cid: String,
    pub body: String,
}

impl Marker {
    /// `publisher` (a service, or a client granted `EPUB topic`) publishes a fresh marker.
    pub fn publish(publisher: &mut Client, topic: &str) -> Marker {
        let body = format!("marker {}", unique());
        publisher.send_text(&msg("PUB", topic, &[], &body));
        Marker { topic: topic.to_owned(), cid: publisher.cid.clone(), body }
    }
}

/// `publisher` publishes a marker on `topic` and `receiver`'s next event must be that marker.
pub fn expect_marker_next(publisher: &mut Client, topic: &str, receiver: &mut Client) {
    let marker = Marker::publish(publisher, topic);
    receiver.expect_marker(&marker);
}

/// Waits for the first message on any of `clients`; returns its index and the message.
pub fn recv_any(clients: &mut [&mut Client]) -> (usize, Received) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    while Instant::now() < deadline {
        for (i, c) in clients.iter_mut().enumerate() {
            match c.next_event(Duration::from_millis(10)) {
                Event::Message(m) => return (i, m),
                Event::Timeout => {}
                other => panic!("{} expected a message, got {other:?}", c.who()),
            }
        }
    }
    panic!("none of {} connections got a message", clients.len());
}

// ---------------------------------------------------------------------------------------------
// Building and reading messages
// ---------------------------------------------------------------------------------------------

/// `CMD target\r\n` + `Name: value\r\n`... + `\r\n` + body (+ `\r\n` if non-empty) + `.\r\n`.
/// The body is written as given: the caller dot-stuffs it if it needs to.
pub fn msg(cmd: &str, target: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("{cmd} {target}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if !body.is_empty() {
        out.push_str(body);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

/// What the server delivers for `msg(cmd, target, headers, body)` sent by `cid` with `uid`.
pub fn relayed(
    cmd: &str,
    target: &str,
    headers: &[(&str, &str)],
    cid: &str,
    uid: &str,
    body: &str,
) -> String {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("Cid", cid));
    all.push(("Uid", uid));
    msg(cmd, target, &all, body)
}

/// The exact error message of PROTOCOL.md §6.
pub fn error(code: &str, req_id: Option<&str>, text: &str) -> String {
    let mut out = format!("PUB ERROR\r\nCode: {code}\r\n");
    if let Some(req_id) = req_id {
        out.push_str(&format!("ReqID: {req_id}\r\n"));
    }
    out.push_str(&format!("\r\n{text}\r\n.\r\n"));
    out
}

/// A message as the server wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub first_line: String,
    /// In order, names as spelled, values without the leading whitespace.
    pub headers: Vec<(String, String)>,
    /// The raw body: everything between the blank line and the final `.` line.
    pub body: Vec<u8>,
}

impl Parsed {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of the headers named `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The headers without those named in `names` (case-insensitive).
    pub fn without(&self, names: &[&str]) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| !names.iter().any(|x| n.eq_ignore_ascii_case(x)))
            .cloned()
            .collect()
    }
}

/// Parses one message the server wrote (CRLF framing, `.` CRLF at the end); panics if the
/// server's output does not have that shape.
pub fn parse(data: &[u8]) -> Parsed {
    let text = data;
    let end_of_head = find(text, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no blank line in server output {}", show(data)));
    let head = std::str::from_utf8(&text[..end_of_head])
        .unwrap_or_else(|_| panic!("head is not UTF-8: {}", show(data)));
    let mut lines = head.split("\r\n");
    let first_line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header without colon in {}", show(data)));
            (name.to_owned(), value.trim_start_matches([' ', '\t']).to_owned())
        })
        .collect();
    let rest = &text[end_of_head + 4..];
    assert!(rest.ends_with(b".\r\n"), "server output does not end with `.\\r\\n`: {}", show(data));
    let body = rest[..rest.len() - 3].to_vec();
    assert!(
        body.is_empty() || body.ends_with(b"\n"),
        "the final `.` is not on a line of its own: {}",
        show(data)
    );
    Parsed { first_line, headers, body }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes as an escaped string, for assertion messages.
pub fn show(data: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(data))
}

/// `(String, String)` header pairs from `&str` pairs, for comparing with `Parsed::headers`.
pub fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A data frame for `Client::send_frame`: `Data::Text`, `Data::Binary` or `Data::Continue`.
pub fn frame(kind: Data, fin: bool, payload: &[u8]) -> Frame {
    Frame::message(Bytes::from(payload.to_vec()), OpCode::Data(kind), fin)
}

/// A ping frame for `Client::send_frame`.
pub fn ping_frame(payload: &[u8]) -> Frame {
    Frame::ping(Bytes::from(payload.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------------------------

/// Sends `request` on a fresh TCP connection and returns what comes back until EOF (or 3 s).
pub fn raw_http(port: u16, request: &[u8]) -> String {
    let mut stream =
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("tcp connect for raw http");
    stream.set_read_timeout(Some(READ_SLICE)).unwrap();
    stream.write_all(request).expect("write raw http request");
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // A complete response with no body is enough; do not wait for EOF forever.
                if find(&out, b"\r\n\r\n").is_some() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP connection to 127.0.0.1:`port` whose receive buffer was set to `bytes` before
/// connecting, so that a peer that stops reading fills up after a few KiB.
pub fn tcp_with_small_receive_buffer(port: u16, bytes: i32) -> TcpStream {
    // SAFETY: plain socket(2)/setsockopt(2)/connect(2) on a descriptor we own; the descriptor
    // is handed to TcpStream exactly once, which then owns and closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let size: libc::c_int = bytes;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            panic!("connect: {e}");
        }
        TcpStream::from_raw_fd(fd)
    }
}

/// The mask `RawWs::send_frame` puts on every frame (any value will do; RFC 6455 wants one).
pub const RAW_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

/// A hand-rolled WebSocket client that shows frames exactly as the server sent them.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades on `/` with the RFC 6455 sample key.
    pub fn connect(port: u16) -> RawWs {
        let stream =
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("tcp connect for raw ws");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(READ_SLICE)).unwrap();
        let mut raw = RawWs { stream, buf: Vec::new() };
        let request = format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        raw.stream.write_all(request.as_bytes()).unwrap();
        let deadline = Instant::now() + RECV_TIMEOUT;
        let end = loop {
            if let Some(end) = find(&raw.buf, b"\r\n\r\n") {
                break end + 4;
            }
            assert!(Instant::now() < deadline, "no upgrade response");
            raw.fill();
        };
        let response = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        raw.buf.drain(..end);
        assert!(response.starts_with("HTTP/1.1 101"), "upgrade response: {response:?}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "missing or wrong Sec-WebSocket-Accept: {response:?}"
        );
        raw
    }

    /// Sends the key and returns the cid after checking `MM OK`.
    pub fn login(&mut self, key: &str) -> String {
        self.send_frame(true, 0x1, key.as_bytes());
        let ok = self.read_frame();
        assert_eq!((ok.opcode, ok.payload.as_slice()), (0x1, &b"MM OK"[..]));
        let cid = self.read_frame();
        assert_eq!(cid.opcode, 0x1);
        String::from_utf8(cid.payload).unwrap()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("raw ws: EOF"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("raw ws read: {e}"),
        }
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let frame = client_frame((u8::from(fin) << 7) | opcode, payload, None, Some(RAW_MASK));
        self.stream.write_all(&frame).expect("raw ws write");
    }

    /// Reads one frame, or panics after `RECV_TIMEOUT`.
    pub fn read_frame(&mut self) -> RawFrame {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            if let Some((frame, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                return frame;
            }
            assert!(Instant::now() < deadline, "raw ws: no complete frame");
            self.fill();
        }
    }
}

fn decode_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let mut payload = buf.get(at..at + len)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((
        RawFrame {
            fin: buf[0] & 0x80 != 0,
            rsv: (buf[0] >> 4) & 0x7,
            opcode: buf[0] & 0x0f,
            masked,
            payload,
        },
        at + len,
    ))
}

// ---------------------------------------------------------------------------------------------
// Adversarial peers (it_adversarial.rs)
// ---------------------------------------------------------------------------------------------

impl Server {
    /// The server process's resident memory in bytes, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS line in {status:?}"));
        kib * 1024
    }
}

/// What `RawWs::next_raw` saw.
#[derive(Debug)]
pub enum RawEvent {
    Frame(RawFrame),
    /// EOF or a reset, with what the socket said.
    Closed(String),
    Timeout,
}

impl RawWs {
    /// A raw connection logged in with `key` that lives on `shard`; also returns its cid.
    pub fn connect_on_shard(port: u16, key: &str, shard: u16) -> (RawWs, String) {
        for _ in 0..32 {
            let mut raw = RawWs::connect(port);
            let cid = raw.login(key);
            let id = middleman::ids::ConnectionId::parse(cid.as_bytes()).expect("a cid");
            if id.shard.0 == shard {
                return (raw, cid);
            }
        }
        panic!("no raw connection landed on shard {shard} in 32 tries");
    }

    /// The socket, for options and shutdown.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` as they are: frames built by hand, valid or not.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw ws write");
    }

    /// The next frame, the end of the connection, or nothing within `timeout`.
    pub fn next_raw(&mut self, timeout: Duration) -> RawEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                return RawEvent::Frame(frame);
            }
            if Instant::now() >= deadline {
                return RawEvent::Timeout;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return RawEvent::Closed("EOF".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return RawEvent::Closed(e.to_string()),
            }
        }
    }

    /// Skips data frames up to a close frame and returns its code and reason; panics if the
    /// connection ends without one or nothing comes within `RECV_TIMEOUT`.
    pub fn expect_close_frame(&mut self) -> (u16, String) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_raw(left) {
                RawEvent::Frame(f) if f.opcode == 0x8 => {
                    assert!(f.payload.len() >= 2, "close frame without a code: {f:?}");
                    let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                    let reason = String::from_utf8_lossy(&f.payload[2..]).into_owned();
                    return (code, reason);
                }
                RawEvent::Frame(_) => {}
                other => panic!("raw ws: expected a close frame, got {other:?}"),
            }
        }
    }
}

/// A client frame built by hand: `first` is the FIN, RSV and opcode byte; the length field
/// announces `len` (the payload's length when `None`), and the payload is masked with `mask`
/// (sent unmasked, with the mask bit clear, when `None`).
pub fn client_frame(first: u8, payload: &[u8], len: Option<u64>, mask: Option<[u8; 4]>) -> Vec<u8> {
    let len = len.unwrap_or(payload.len() as u64);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}
