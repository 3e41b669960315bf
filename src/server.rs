//! The runtime: shards on glommio executors, their listeners, their loops, and shutdown.
//!
//! This module and `runtime/` are the only ones that know about glommio; a later switch to a
//! fork of it touches them alone.
//!
//! Start-up: pick the CPUs (the affinity mask, not sysfs), probe io_uring so a broken setup is
//! a clear message rather than a panic, resolve port 0 once so every shard binds the same
//! port, start one executor per shard, and print `listening on ws://ADDR` once all of them
//! accept. Each shard runs four kinds of task: one accept loop per listener, one task per
//! connection reader and writer, the mail loop draining its inbox, and a ticker for request
//! deadlines and backlogged mail.
//!
//! Shutdown (SIGTERM/SIGINT): a plain thread sends `Control::Shutdown` to every shard. Each
//! shard stops accepting, waits for the drain barrier, queues a 1001 close frame behind
//! whatever each connection has queued, and waits (on an event, not a timer) for its
//! connections to finish, at most `--drain-timeout`.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpListener;
use glommio::{CpuSet, LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement, PoolPlacement};

use ahash::AHashMap;

use crate::auth::Keys;
use crate::close::CloseReason;
use crate::cluster::bridge::{Bridge, BridgeConfig, BridgeHandle};
use crate::cluster::inbox::ClusterInbox;
use crate::cluster::{self, Topic};
use crate::config::Config;
use crate::grants::Grant;
use crate::ids::{ConnectionId, ShardId};
use crate::limits::{
    ACCEPT_BACKOFF, CIPHER_READ_BYTES, CLOSE_GRACE_MAX, CLUSTER_INBOX_CAPACITY, IDLE_TICK,
    INBOX_CAPACITY, IO_MEMORY, LISTEN_BACKLOG, SCRATCH_BYTES, SHARDS_MAX, SHARD_START_TIMEOUT,
    TICK,
};
use crate::protocol::handshake;
use crate::protocol::message::Limits;
use crate::protocol::ws;
use crate::runtime::context::{ConnectionSettings, IoCounters, Link, ShardContext};
use crate::runtime::event::Event;
use crate::runtime::reader::serve;
use crate::shard::connection::{Connection, Lifecycle};
use crate::shard::mailbox::{mailboxes, Control, Inbox, Mailboxes};
use crate::shard::outbound::{Frame, FrameBytes};
use crate::shard::{Shard, ShardConfig};

/// Runs the broker until a signal has drained it.
pub fn run(config: Config) -> Result<(), String> {
    config.validate()?;
    let (keys, dev_keys) = config.keys()?;
    if dev_keys {
        tracing::warn!(
            "no keys configured: using the development keys of the original (loopback only)"
        );
    }
    let cpus = allowed_cpus()?;
    let shards = config.tuning.shards.unwrap_or(cpus.len()).clamp(1, SHARDS_MAX);
    probe_io_uring()?;
    let listeners = &config.listeners;
    let tls = match (&listeners.tls_cert, &listeners.tls_key) {
        (Some(cert), Some(key)) if !listeners.tls_listen.is_empty() => {
            Some(crate::runtime::tls::server_config(cert, key)?)
        }
        _ => None,
    };
    let addresses: Vec<SocketAddr> =
        listeners.listen.iter().chain(&listeners.tls_listen).copied().collect();
    let (resolved, port_holders) = resolve_ports(&addresses)?;
    let listen: Vec<Endpoint> = resolved
        .into_iter()
        .enumerate()
        .map(|(i, addr)| Endpoint {
            addr,
            tls: (i >= listeners.listen.len()).then(|| tls.clone()).flatten(),
        })
        .collect();

    let (mail, inboxes) = mailboxes(shards, INBOX_CAPACITY);
    // Before any shard runs: a signal that arrives during start-up is queued as mail and
    // handled as soon as the shards start, never the default action (death).
    spawn_signal_thread(mail.clone(), config.clone())?;
    let inboxes: Arc<Mutex<Vec<Option<Inbox>>>> =
        Arc::new(Mutex::new(inboxes.into_iter().map(Some).collect()));
    let next_shard = Arc::new(AtomicUsize::new(0));
    let mut epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
    // The cluster first: a node joins (name, epoch, every earlier grant) before any shard
    // runs or any listener binds, and a node that cannot join does not start at all.
    let mut bridge = None;
    let mut cluster_inboxes: Vec<Option<(ClusterInbox, BridgeHandle)>> =
        (0..shards).map(|_| None).collect();
    let mut grants: Arc<[(Grant, Topic)]> = Arc::from(Vec::new());
    if config.cluster.enabled() {
        let (port, shard_inboxes) = cluster::inbox::cluster_inboxes(shards, CLUSTER_INBOX_CAPACITY);
        let bridge_config = BridgeConfig::from_flags(&config.cluster, epoch);
        let started = Bridge::start(bridge_config, Arc::new(port)).map_err(|e| e.to_string())?;
        epoch = started.epoch;
        grants = started.grants.into();
        let handle = started.bridge.handle();
        for (slot, inbox) in cluster_inboxes.iter_mut().zip(shard_inboxes) {
            *slot = Some((inbox, handle.clone()));
        }
        bridge = Some(started.bridge);
    }
    let cluster_inboxes = Arc::new(Mutex::new(cluster_inboxes));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();

    let placement = if shards <= cpus.len() {
        PoolPlacement::MaxSpread(shards, Some(cpu_set(&cpus)?))
    } else {
        tracing::warn!("{shards} shards on {} CPUs: shards will share CPUs", cpus.len());
        PoolPlacement::Fenced(shards, cpu_set(&cpus)?)
    };
    let start = {
        let config = config.clone();
        let mail = mail.clone();
        let listen = listen.clone();
        move || {
            let index = next_shard.fetch_add(1, Ordering::SeqCst);
            let inbox = inboxes.lock().ok().and_then(|mut v| v[index].take());
            let cluster = cluster_inboxes.lock().ok().and_then(|mut v| v[index].take());
            let grants = grants.clone();
            let ready = ready_tx.clone();
            let id = ShardId(index as u16);
            let setup =
                ShardSetup { id, shards, epoch, config, keys, mail, listen, cluster, grants };
            async move {
                match inbox {
                    Some(inbox) => run_shard(setup, inbox, ready).await,
                    None => {
                        let _ = ready.send(Err("shard started twice".into()));
                    }
                }
            }
        }
    };
    let mut builder = LocalExecutorPoolBuilder::new(placement).io_memory(IO_MEMORY);
    if !config.tuning.spin_before_park.is_zero() {
        builder = builder.spin_before_park(config.tuning.spin_before_park);
    }
    let pool = builder
        .on_all_shards(start)
        .map_err(|e| format!("cannot start {shards} shard executors: {e}"))?;

    for _ in 0..shards {
        match ready_rx.recv_timeout(SHARD_START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown_all(&mail);
                pool.join_all();
                return Err(e);
            }
            Err(_) => {
                let secs = SHARD_START_TIMEOUT.as_secs();
                return Err(format!("a shard did not start within {secs} s"));
            }
        }
    }
    drop(port_holders);
    let admin = match config.admin.admin_listen {
        Some(addr) => Some(crate::admin::spawn(addr, mail.clone())?),
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for endpoint in &listen {
        let scheme = if endpoint.tls.is_some() { "wss" } else { "ws" };
        let _ = writeln!(out, "listening on {scheme}://{}", endpoint.addr);
    }
    if let Some(addr) = admin {
        let _ = writeln!(out, "admin on http://{addr}");
    }
    let _ = out.flush();
    drop(out);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards,
        cpus = ?cpus,
        listen = ?listen.iter().map(|e| e.addr).collect::<Vec<_>>(),
        admin = ?admin,
        "middleman started"
    );

    let mut failed = None;
    for result in pool.join_all() {
        if let Err(e) = result {
            failed = Some(format!("a shard failed: {e}"));
        }
    }
    // After the drain: the node gives its name back and closes its NATS connections.
    if let Some(bridge) = bridge {
        bridge.shutdown();
        tracing::info!("left cluster");
    }
    tracing::info!("shut down");
    failed.map_or(Ok(()), Err)
}

/// What a shard's thread starts from.
struct ShardSetup {
    id: ShardId,
    shards: usize,
    epoch: u32,
    config: Config,
    keys: Keys,
    mail: Mailboxes,
    listen: Vec<Endpoint>,
    /// This shard's cluster inbox and the bridge; `None` when the broker runs alone.
    cluster: Option<(ClusterInbox, BridgeHandle)>,
    /// Every grant made in the cluster before this node joined.
    grants: Arc<[(Grant, Topic)]>,
}

/// A listen address, and the TLS configuration if it is a `--tls-listen` one.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// The life of one shard.
async fn run_shard(setup: ShardSetup, inbox: Inbox, ready: mpsc::Sender<Result<(), String>>) {
    let ShardSetup { id, shards, epoch, config, keys, mail, listen, cluster, grants } = setup;
    let tls_used = listen.iter().any(|e| e.tls.is_some());
    // Every configurable limit is named here, so one added to `Limits` does not compile until
    // it is handed to whatever enforces it.
    let crate::limits::Limits {
        message_bytes_max,
        pending_bytes_max,
        slow_consumer,
        topic_bytes_max,
        headers_max,
        connections_max,
        subscriptions_max,
        pending_requests_max,
    } = config.limits;
    let limits = Limits { topic_bytes_max, headers_max };
    let timeouts = &config.timeouts;
    let shard_config = ShardConfig {
        id,
        shards,
        pending_bytes_max,
        slow_consumer,
        request_timeout: (!timeouts.request_timeout.is_zero()).then_some(timeouts.request_timeout),
        limits,
        subscriptions_max,
        pending_requests_max,
    };
    let mut shard = Shard::new(shard_config, Instant::now());
    let cluster_inbox = cluster.map(|(inbox, bridge)| {
        shard.join_cluster(Box::new(bridge), &grants);
        inbox
    });
    let ctx = Rc::new(ShardContext {
        shard: RefCell::new(shard),
        mailboxes: mail,
        inbox,
        inbox_capacity: INBOX_CAPACITY,
        cluster: cluster_inbox,
        keys: RefCell::new(keys),
        settings: ConnectionSettings {
            message_bytes_max,
            auth_timeout: timeouts.auth_timeout,
            close_grace: timeouts.drain_timeout.min(CLOSE_GRACE_MAX),
            limits,
            pending_bytes_max,
            allowed_origins: config.listeners.allowed_origins.clone(),
        },
        scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
        cipher: RefCell::new(if tls_used { vec![0; CIPHER_READ_BYTES] } else { Vec::new() }),
        links: RefCell::new(AHashMap::new()),
        mail_handled: Event::default(),
        uncongested: Event::default(),
        left: Event::default(),
        io: IoCounters::default(),
    });
    let mut listeners = Vec::with_capacity(listen.len());
    let mut listener_fds = Vec::with_capacity(listen.len());
    for endpoint in &listen {
        match listen_socket(endpoint.addr) {
            Ok(socket) => {
                listener_fds.push(socket.as_raw_fd());
                // SAFETY: the descriptor is a freshly created listening TCP socket whose
                // ownership moves into the glommio listener here and nowhere else.
                let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
                listeners.push((listener, endpoint.tls.clone()));
            }
            Err(e) => {
                let addr = endpoint.addr;
                let _ = ready.send(Err(format!("cannot listen on {addr}: {e}")));
                return;
            }
        }
    }
    let runtime = Rc::new(Runtime {
        live_max: connections_max.div_ceil(shards),
        next_local: Cell::new(1),
        epoch,
    });
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|(l, tls)| glommio::spawn_local(accept_loop(ctx.clone(), runtime.clone(), l, tls)))
        .collect();
    let mail_loop = glommio::spawn_local(mail_loop(ctx.clone()));
    let cluster_loop =
        ctx.cluster.is_some().then(|| glommio::spawn_local(cluster_loop(ctx.clone())));
    let ticker = glommio::spawn_local(tick_loop(ctx.clone()));
    let keepalive = (!timeouts.ping_interval.is_zero())
        .then(|| glommio::spawn_local(keepalive_loop(ctx.clone(), timeouts.ping_interval)));
    let _ = ready.send(Ok(()));

    let shutting_down = || ctx.shard.borrow().shutdown_requested;
    ctx.mail_handled.until(shutting_down).await;
    let deadline = Instant::now() + timeouts.drain_timeout;
    // Stop accepting. Shutting the sockets down also ends glommio's accept in flight, which
    // would otherwise keep the socket listening (and new connections hanging) until exit.
    for fd in &listener_fds {
        // SAFETY: `fd` belongs to a listener in `accepting`, which is still alive here.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
    drop(accepting);
    // Wait until mail from before the shutdown has landed everywhere (bounded by the drain
    // timeout in case a shard is stuck), then close.
    let barrier = ctx.mail_handled.until(|| ctx.shard.borrow().drained());
    futures_lite::future::or(barrier, glommio::timer::sleep(timeouts.drain_timeout)).await;
    let live: Vec<_> = ctx.links.borrow().values().map(|l| l.conn.clone()).collect();
    for conn in live {
        // Authenticated or not: a connection that finished its upgrade gets a close frame; one
        // still sending its upgrade request is simply closed (see `Connection::close`).
        ctx.close(&conn, CloseReason::GoingAway);
    }
    let all_left = ctx.left.until(|| ctx.links.borrow().is_empty());
    let left = deadline.saturating_duration_since(Instant::now());
    futures_lite::future::or(all_left, glommio::timer::sleep(left)).await;
    if !ctx.links.borrow().is_empty() {
        tracing::warn!(
            "shard {}: {} connection(s) still open at the drain timeout",
            id.0,
            ctx.links.borrow().len()
        );
    }
    drop(keepalive);
    drop(ticker);
    drop(cluster_loop);
    drop(mail_loop);
}

/// A listening socket on `addr` shared by every shard (SO_REUSEPORT), with a backlog large
/// enough for connection bursts.
fn listen_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Shard-local accept state.
struct Runtime {
    live_max: usize,
    next_local: Cell<u64>,
    epoch: u32,
}

async fn accept_loop(
    ctx: Rc<ShardContext>,
    runtime: Rc<Runtime>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if ctx.links.borrow().len() >= runtime.live_max {
            glommio::spawn_local(async move {
                let mut stream = stream;
                let _ = stream.write_all(handshake::SERVICE_UNAVAILABLE).await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        let local = runtime.next_local.get();
        runtime.next_local.set(local + 1);
        let id = ConnectionId { epoch: runtime.epoch, shard: ctx.shard.borrow().id(), local };
        let link = Rc::new(Link {
            conn: Connection::new(id),
            peer: stream.peer_addr().ok(),
            fd: Cell::new(None),
            last_seen: Cell::new(Instant::now()),
            pinged: Cell::new(None),
        });
        ctx.links.borrow_mut().insert(local, link.clone());
        let (ctx, tls) = (ctx.clone(), tls.clone());
        glommio::spawn_local(async move {
            serve(ctx.clone(), stream, link, tls).await;
            ctx.links.borrow_mut().remove(&local);
            ctx.left.notify();
        })
        .detach();
    }
}

/// Drains the inbox in batches for as long as the shard runs.
async fn mail_loop(ctx: Rc<ShardContext>) {
    loop {
        ctx.inbox.ready().await;
        ctx.handle_inbox();
        glommio::yield_if_needed().await;
    }
}

/// Drains the cluster inbox in batches, beside the mail loop (only when in a cluster).
async fn cluster_loop(ctx: Rc<ShardContext>) {
    let Some(inbox) = &ctx.cluster else { return };
    loop {
        inbox.ready().await;
        ctx.handle_cluster_inbox(inbox);
        glommio::yield_if_needed().await;
    }
}

/// Request deadlines and mail that found an inbox full.
async fn tick_loop(ctx: Rc<ShardContext>) {
    loop {
        let wait = {
            let shard = ctx.shard.borrow();
            let now = Instant::now();
            let mut wait = IDLE_TICK;
            if let Some(deadline) = shard.next_deadline() {
                wait = wait.min(deadline.saturating_duration_since(now).max(TICK));
            }
            if shard.has_backlog() {
                wait = TICK;
            }
            wait
        };
        glommio::timer::sleep(wait).await;
        let mut shard = ctx.shard.borrow_mut();
        shard.set_now(Instant::now());
        shard.expire_requests();
        drop(shard);
        // Also the safety net for paused readers: a reader waiting for room whose task went
        // away leaves the others to this retry.
        ctx.flush_mail();
    }
}

/// Pings connections that have been quiet for an interval and closes those that stay quiet
/// for another.
/// One sweep per interval over the shard's connections, rather than a timer per connection;
/// every ping is the same shared frame.
async fn keepalive_loop(ctx: Rc<ShardContext>, interval: Duration) {
    let mut bytes = Vec::with_capacity(2);
    ws::encode_frame(ws::Opcode::Ping, b"", &mut bytes);
    let ping: Frame = FrameBytes::local(bytes, 0);
    loop {
        glommio::timer::sleep(interval).await;
        let now = Instant::now();
        let links: Vec<_> = ctx.links.borrow().values().cloned().collect();
        for link in links {
            let conn = &link.conn;
            if !matches!(conn.lifecycle(), Lifecycle::Authenticating | Lifecycle::Open) {
                continue; // the auth timeout bounds the upgrade
            }
            let heard = link.last_seen.get();
            match link.pinged.get() {
                // Pinged an interval ago and nothing since: two intervals of silence.
                Some(at) if heard < at && now.saturating_duration_since(at) >= interval => {
                    ctx.close(conn, CloseReason::PingTimeout);
                }
                // Pinged and waiting.
                Some(at) if heard < at => {}
                _ if now.saturating_duration_since(heard) >= interval => {
                    link.pinged.set(Some(now));
                    conn.reply(ping.clone());
                }
                _ => {}
            }
        }
    }
}

fn shutdown_all(mail: &Mailboxes) {
    for s in 0..mail.shards() {
        mail.send_control(ShardId(s as u16), Control::Shutdown);
    }
}

/// SIGTERM and SIGINT drain and stop the broker; SIGHUP re-reads the keys (from
/// `--keys-file`, the flags and the environment) and hands them to every shard, leaving
/// connected peers alone. A keys file that cannot be read keeps the old keys.
fn spawn_signal_thread(mail: Mailboxes, config: Config) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal != SIGHUP {
                    tracing::info!("signal {signal}: draining");
                    shutdown_all(&mail);
                    return;
                }
                match config.keys() {
                    Ok((keys, _)) => {
                        tracing::info!(keys = ?keys, "SIGHUP: keys reloaded");
                        for s in 0..mail.shards() {
                            mail.send_control(ShardId(s as u16), Control::Keys(keys.clone()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!("SIGHUP: keys not reloaded, keeping the old ones: {e}")
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// The CPUs this process may run on, from the affinity mask (`Cpus_allowed_list`), which
/// respects cgroup cpusets where sysfs does not.
fn allowed_cpus() -> Result<Vec<usize>, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or("no Cpus_allowed_list in /proc/self/status")?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.trim().parse().map_err(|_| format!("bad CPU list `{list}`"))?,
            b.trim().parse().map_err(|_| format!("bad CPU list `{list}`"))?,
        );
        cpus.extend(a..=b);
    }
    if cpus.is_empty() {
        return Err("the affinity mask allows no CPU".into());
    }
    Ok(cpus)
}

fn cpu_set(cpus: &[usize]) -> Result<CpuSet, String> {
    let set = CpuSet::online()
        .map_err(|e| format!("cannot read the CPU topology: {e}"))?
        .filter(|l| cpus.contains(&l.cpu));
    Ok(set)
}

/// Creates and drops one executor, so an io_uring that cannot be set up is reported with its
/// cause and fix instead of a panic inside a shard.
fn probe_io_uring() -> Result<(), String> {
    let made = std::panic::catch_unwind(|| {
        LocalExecutorBuilder::new(Placement::Unbound).io_memory(IO_MEMORY).make().map(drop)
    });
    let why = match made {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the io_uring set-up panicked".to_owned(),
    };
    if why.contains("MemLockLimit") {
        return Err(format!(
            "cannot set up io_uring: the locked-memory limit is too low ({why}). Raise it to at \
             least 1024 KiB: `ulimit -l 1024` in the shell, LimitMEMLOCK=16M in a systemd \
             unit, or memlock in /etc/security/limits.conf"
        ));
    }
    Err(format!(
        "cannot set up io_uring ({why}). middleman needs Linux 5.8+ with io_uring enabled: \
         check `sysctl kernel.io_uring_disabled` (must be 0), that a container's seccomp \
         profile allows io_uring_setup/io_uring_enter/io_uring_register (Docker: \
         --security-opt seccomp=<profile allowing them>), and that the memlock limit \
         (`ulimit -l`) is at least 1024 KiB"
    ))
}

/// Replaces port 0 with a free port, the same for every shard: the shards' listeners all
/// bind one address with SO_REUSEPORT, and the kernel spreads connections over them.
/// Returns the addresses and the sockets holding the chosen ports until the shards are bound.
fn resolve_ports(listen: &[SocketAddr]) -> Result<(Vec<SocketAddr>, Vec<socket2::Socket>), String> {
    let mut resolved = Vec::with_capacity(listen.len());
    let mut holders = Vec::new();
    for addr in listen {
        if addr.port() != 0 {
            resolved.push(*addr);
            continue;
        }
        let domain = socket2::Domain::for_address(*addr);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .and_then(|s| {
                s.set_reuse_port(true)?;
                s.bind(&(*addr).into())?;
                Ok(s)
            })
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        // The socket never listens, so no connection can be queued on it; it only holds
        // the port while the shards bind.
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .ok_or_else(|| format!("cannot find the port bound for {addr}"))?;
        resolved.push(SocketAddr::new(addr.ip(), port));
        holders.push(socket);
    }
    Ok((resolved, holders))
}
