//! The bridge: one OS thread per node, with its own tokio current-thread runtime, owning the
//! node's NATS connections. Shards talk to it through [`BridgeHandle`]; it answers through a
//! [`ShardPort`] (in the broker, [`super::inbox::ClusterInboxes`]).
//!
//! What it is: the translation between the shards' commands and NATS (subjects, queue group,
//! reply subjects, KV), interest reference counting, node registration, connection state and
//! counters. What it is not: routing logic. Which connection gets a PUB, which responder a
//! REQ, what a `Rid` means: all stay in the shards.
//!
//! Two NATS connections, because NATS's `no_echo` is per connection:
//! - *pubsub* (`no_echo`): PUB subjects only. A node never gets its own PUBs back, so it can
//!   deliver them locally at once and still receive everyone else's, with no filtering.
//! - *main* (echo on): requests, the queue group, replies, directs, KV. Echo must stay on
//!   here, or a node's own REQs would never reach its own responders (research §2.2).
//!
//! Invariants:
//! - Nothing here blocks a shard: shards `try_send` into two bounded queues. Data (PUB, REQ,
//!   RES, direct) is dropped and counted when its queue is full or NATS is down; control
//!   (interest, grants, shutdown) has its own queue, is never dropped by the bridge, and a
//!   full control queue is reported to the caller ([`Refused`]) to keep in its backlog.
//! - One NATS subscription per node per (kind, topic), however many shards hold interest; it
//!   is dropped (UNSUB) when the last shard lets go.
//! - "In force" means NATS has processed the SUB: the bridge confirms after a round trip on
//!   the same connection (a request to a subject nobody serves; the 503 comes back only after
//!   everything sent before it). `flush()` alone only drains the socket (research §4.4).
//! - The node's name and epoch are claimed with a KV `create` at start, refreshed by
//!   heartbeat, deleted at shutdown; a crashed node's claim expires after `node_ttl`.
//! - Grants are loaded with history before [`Bridge::start`] returns, then watched.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions, ServerAddr, StatusCode, Subscriber};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_lite::StreamExt;
use tokio::sync::Notify;

use super::config::{redact, ClusterFlags};
use super::subjects::{self, Subjects};
use super::{Event, InterestKind, Reply, ReplyTo, ShardPort, Topic};
use crate::grants::Grant;
use crate::ids::ShardId;

/// Header on a message whose body was a binary WebSocket frame; absent for text.
const BINARY_HEADER: &str = "Mm-Bin";
/// Header on a reply that is an error (`responder-lost`, `no-connection`, ...).
const ERROR_HEADER: &str = "Mm-Error";

/// The bridge's tuning. [`BridgeConfig::from_flags`] gives the defaults.
#[derive(Clone, Debug)]
pub(crate) struct BridgeConfig {
    pub(crate) servers: Vec<String>,
    pub(crate) creds: Option<PathBuf>,
    pub(crate) node_name: String,
    pub(crate) prefix: String,
    /// The epoch this node would like (its start time); the next free one is taken if a live
    /// node holds it.
    pub(crate) preferred_epoch: u32,
    /// Bound of the data queue from the shards (PUB, REQ, RES, direct).
    pub(crate) data_capacity: usize,
    /// Bound of the control queue from the shards (interest, grants).
    pub(crate) control_capacity: usize,
    /// Bound, per shard, of the events waiting for a full shard inbox.
    pub(crate) backlog_capacity: usize,
    /// How long a caller waits for "in force" before it is told `in_force: false`.
    pub(crate) confirm_timeout: Duration,
    /// How long [`Bridge::start`] tries to reach NATS.
    pub(crate) start_timeout: Duration,
    /// How long a node's registration outlives its last heartbeat.
    pub(crate) node_ttl: Duration,
    /// How often the NATS round-trip time is measured.
    pub(crate) rtt_interval: Duration,
    /// How long one publish may wait for the NATS client's own buffer before it is dropped.
    pub(crate) publish_stall: Duration,
}

impl BridgeConfig {
    pub(crate) fn from_flags(flags: &ClusterFlags, preferred_epoch: u32) -> Self {
        Self {
            servers: flags.nats.clone(),
            creds: flags.creds.clone(),
            node_name: flags.node_name(),
            prefix: flags.prefix.clone(),
            preferred_epoch,
            data_capacity: 16 * 1024,
            control_capacity: 4 * 1024,
            backlog_capacity: 64 * 1024,
            confirm_timeout: Duration::from_secs(2),
            start_timeout: Duration::from_secs(15),
            node_ttl: Duration::from_secs(15),
            rtt_interval: Duration::from_secs(5),
            publish_stall: Duration::from_millis(100),
        }
    }
}

/// Why the bridge did not start.
#[derive(Debug)]
pub(crate) enum StartError {
    Connect(String),
    DuplicateName { name: String, prefix: String, ttl: Duration },
    JetStream(String),
    Thread(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cluster: cannot reach NATS: {e}"),
            Self::DuplicateName { name, prefix, ttl } => write!(
                f,
                "cluster: node name `{name}` is already taken by a live node of cluster `{prefix}`; \
                 give this node another --node-name, or, if that node has stopped without shutting \
                 down, start again after {}s, when its registration expires",
                ttl.as_secs()
            ),
            Self::JetStream(e) => {
                write!(f, "cluster: NATS JetStream is needed (nats-server -js): {e}")
            }
            Self::Thread(e) => write!(f, "cluster: the bridge thread failed: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A control command the bridge could not queue (its control queue is full); keep it and
/// send it again later, in order.
#[derive(Debug)]
pub(crate) struct Refused(pub Control);

/// Control commands: never dropped by the bridge.
#[derive(Debug)]
pub(crate) enum Control {
    Interest {
        kind: InterestKind,
        topic: Topic,
        shard: ShardId,
        on: bool,
        token: Option<u64>,
    },
    Grant {
        grant: Grant,
        topic: Topic,
        shard: ShardId,
        token: Option<u64>,
    },
    Shutdown,
    /// Tests: stop as a crash would, without giving the node's name back.
    #[cfg(test)]
    Crash,
}

/// Data commands: dropped and counted when the queue is full or NATS is down.
#[derive(Debug)]
enum Data {
    Publish { topic: Topic, body: Bytes, binary: bool },
    Request { topic: Topic, reply: ReplyTo, body: Bytes, binary: bool },
    Respond { reply: Reply, body: Bytes, binary: bool, error: Option<Box<str>> },
    Direct { epoch: u32, shard: ShardId, reply: Option<ReplyTo>, body: Bytes, binary: bool },
}

/// Counters, shared with the admin endpoint.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    connected: AtomicBool,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    /// Commands refused because the bridge queue was full.
    dropped_full: AtomicU64,
    /// Data dropped because NATS was down (or the client stalled past `publish_stall`).
    dropped_disconnected: AtomicU64,
    /// Data NATS cannot carry: a subject or payload over NATS's limits.
    dropped_too_large: AtomicU64,
    /// Events for a shard whose inbox and backlog were both full.
    dropped_inbound: AtomicU64,
    reconnects: AtomicU64,
    rtt_micros: AtomicU64,
}

/// A snapshot of [`Stats`] plus the queue depth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatsSnapshot {
    /// `middleman_cluster_connected`.
    pub(crate) connected: bool,
    pub(crate) messages_out: u64,
    pub(crate) bytes_out: u64,
    pub(crate) messages_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) dropped_full: u64,
    pub(crate) dropped_disconnected: u64,
    pub(crate) dropped_too_large: u64,
    pub(crate) dropped_inbound: u64,
    pub(crate) reconnects: u64,
    /// The last measured NATS round trip, 0 before the first.
    pub(crate) rtt_micros: u64,
    /// Commands waiting in the bridge's queues.
    pub(crate) queue_depth: usize,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The shards' side of the bridge. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub(crate) struct BridgeHandle {
    control: Sender<Control>,
    data: Sender<Data>,
    notify: Arc<Notify>,
    stats: Arc<Stats>,
}

impl BridgeHandle {
    /// `shard` has local subscribers of `topic` now. With a `token`, an [`Event::Confirmed`]
    /// follows when the node's subscription is in force.
    pub(crate) fn subscribe_topic(
        &self,
        shard: ShardId,
        topic: Topic,
        token: Option<u64>,
    ) -> Result<(), Refused> {
        self.control(Control::Interest {
            kind: InterestKind::Publish,
            topic,
            shard,
            on: true,
            token,
        })
    }

    pub(crate) fn unsubscribe_topic(&self, shard: ShardId, topic: Topic) -> Result<(), Refused> {
        let kind = InterestKind::Publish;
        self.control(Control::Interest { kind, topic, shard, on: false, token: None })
    }

    /// `shard` (the topic's owner) has local responders for `topic`: join the queue group.
    pub(crate) fn register_responders(
        &self,
        shard: ShardId,
        topic: Topic,
        token: Option<u64>,
    ) -> Result<(), Refused> {
        self.control(Control::Interest {
            kind: InterestKind::Request,
            topic,
            shard,
            on: true,
            token,
        })
    }

    pub(crate) fn unregister_responders(
        &self,
        shard: ShardId,
        topic: Topic,
    ) -> Result<(), Refused> {
        let kind = InterestKind::Request;
        self.control(Control::Interest { kind, topic, shard, on: false, token: None })
    }

    /// Stores a grant in the cluster's KV; with a `token`, an [`Event::Confirmed`] follows
    /// when the write is acknowledged by JetStream.
    pub(crate) fn put_grant(
        &self,
        shard: ShardId,
        grant: Grant,
        topic: Topic,
        token: Option<u64>,
    ) -> Result<(), Refused> {
        self.control(Control::Grant { grant, topic, shard, token })
    }

    /// Sends a control command again after [`Refused`].
    pub(crate) fn control(&self, command: Control) -> Result<(), Refused> {
        match self.control.try_send(command) {
            Ok(()) => {
                self.notify.notify_one();
                Ok(())
            }
            Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => Err(Refused(c)),
        }
    }

    /// A PUB to the other nodes. `false`: dropped (and counted).
    pub(crate) fn publish(&self, topic: Topic, body: Bytes, binary: bool) -> bool {
        self.data(Data::Publish { topic, body, binary })
    }

    /// A REQ to exactly one node with responders; the answer comes back to `reply`.
    pub(crate) fn request(&self, topic: Topic, reply: ReplyTo, body: Bytes, binary: bool) -> bool {
        self.data(Data::Request { topic, reply, body, binary })
    }

    /// A response (or, with `error`, a failure such as `responder-lost`) to a request from
    /// another node.
    pub(crate) fn respond(
        &self,
        reply: Reply,
        body: Bytes,
        binary: bool,
        error: Option<&str>,
    ) -> bool {
        self.data(Data::Respond { reply, body, binary, error: error.map(Into::into) })
    }

    /// Connection-addressed traffic to `shard` of the node with `epoch`; with `reply`, a
    /// failure (or NATS's "no responders" if that node does not exist) comes back there.
    pub(crate) fn direct(
        &self,
        epoch: u32,
        shard: ShardId,
        reply: Option<ReplyTo>,
        body: Bytes,
        binary: bool,
    ) -> bool {
        self.data(Data::Direct { epoch, shard, reply, body, binary })
    }

    fn data(&self, data: Data) -> bool {
        match self.data.try_send(data) {
            Ok(()) => {
                self.notify.notify_one();
                true
            }
            Err(_) => {
                add(&self.stats.dropped_full, 1);
                false
            }
        }
    }

    pub(crate) fn connected(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connected: self.connected(),
            messages_out: get(&s.messages_out),
            bytes_out: get(&s.bytes_out),
            messages_in: get(&s.messages_in),
            bytes_in: get(&s.bytes_in),
            dropped_full: get(&s.dropped_full),
            dropped_disconnected: get(&s.dropped_disconnected),
            dropped_too_large: get(&s.dropped_too_large),
            dropped_inbound: get(&s.dropped_inbound),
            reconnects: get(&s.reconnects),
            rtt_micros: get(&s.rtt_micros),
            queue_depth: self.control.len() + self.data.len(),
        }
    }
}

/// What a started bridge knows before the node accepts connections.
pub(crate) struct Started {
    pub(crate) bridge: Bridge,
    /// The epoch this node's cids must carry (see `subjects`).
    pub(crate) epoch: u32,
    /// Every grant made in the cluster so far.
    pub(crate) grants: Vec<(Grant, Topic)>,
}

/// The running bridge; dropping it shuts it down.
pub(crate) struct Bridge {
    handle: BridgeHandle,
    thread: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Connects, claims the node's name and epoch, loads the grants, and subscribes the node's
    /// reply and direct subjects. Blocks until all that is done or has failed.
    pub(crate) fn start(
        config: BridgeConfig,
        port: Arc<dyn ShardPort>,
    ) -> Result<Started, StartError> {
        let (control_tx, control_rx) = crossbeam_channel::bounded(config.control_capacity);
        let (data_tx, data_rx) = crossbeam_channel::bounded(config.data_capacity);
        let notify = Arc::new(Notify::new());
        let stats = Arc::new(Stats::default());
        let handle = BridgeHandle { control: control_tx, data: data_tx, notify, stats };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let wait = config.start_timeout + Duration::from_secs(10);
        let queues = Queues { control: control_rx, data: data_rx, notify: handle.notify.clone() };
        let stats = handle.stats.clone();
        let thread = std::thread::Builder::new()
            .name("nats-bridge".into())
            .spawn(move || run(config, port, queues, stats, ready_tx))
            .map_err(|e| StartError::Thread(e.to_string()))?;
        let mut bridge = Bridge { handle, thread: Some(thread) };
        match ready_rx.recv_timeout(wait) {
            Ok(Ok((epoch, grants))) => Ok(Started { bridge, epoch, grants }),
            Ok(Err(e)) => {
                bridge.join();
                Err(e)
            }
            Err(_) => Err(StartError::Thread("it did not report within the start timeout".into())),
        }
    }

    pub(crate) fn handle(&self) -> BridgeHandle {
        self.handle.clone()
    }

    /// Gives the node's name back, closes the NATS connections and joins the thread.
    pub(crate) fn shutdown(mut self) {
        self.stop(Control::Shutdown);
    }

    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self.stop(Control::Crash);
    }

    fn stop(&mut self, how: Control) {
        if self.thread.is_some() {
            // The control queue may be full of work; this thread is not a shard, so waiting a
            // bounded time for room is fine.
            let _ = self.handle.control.send_timeout(how, Duration::from_secs(5));
            self.handle.notify.notify_one();
            self.join();
        }
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("cluster: the bridge thread panicked");
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop(Control::Shutdown);
    }
}

struct Queues {
    control: Receiver<Control>,
    data: Receiver<Data>,
    notify: Arc<Notify>,
}

type Ready = Sender<Result<(u32, Vec<(Grant, Topic)>), StartError>>;

/// The bridge thread.
fn run(
    config: BridgeConfig,
    port: Arc<dyn ShardPort>,
    queues: Queues,
    stats: Arc<Stats>,
    ready: Ready,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(StartError::Thread(e.to_string())));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let core = match Core::start(config, port, stats).await {
            Ok((core, grants)) => {
                let _ = ready.send(Ok((core.subjects.epoch(), grants)));
                core
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        core.serve(queues).await;
    });
    // Tasks still in the set hold NATS subscribers, whose drop spawns an UNSUB task: drop
    // them inside the runtime's context, or that spawn panics (seen at every shutdown).
    let _context = runtime.enter();
    drop(local);
}

/// One (kind, topic) the node holds a NATS subscription for.
struct Interest {
    /// Shards holding interest, with how many times each asked.
    shards: Vec<(ShardId, u32)>,
    /// The task forwarding the subscription's messages; aborting it drops the subscription.
    task: Option<tokio::task::JoinHandle<()>>,
    /// NATS has processed the SUB (reset on disconnect).
    confirmed: Rc<Cell<bool>>,
}

struct NodeClaim {
    key: String,
    value: Bytes,
    revision: Cell<u64>,
}

/// The bridge's state; lives on the bridge thread only.
struct Core {
    config: BridgeConfig,
    subjects: Subjects,
    main: Client,
    pubsub: Client,
    port: Arc<dyn ShardPort>,
    stats: Arc<Stats>,
    link_up: [Arc<AtomicBool>; 2],
    interests: RefCell<HashMap<(InterestKind, Topic), Interest>>,
    backlog: RefCell<Vec<VecDeque<Event>>>,
    draining: Cell<bool>,
    grants: kv::Store,
    pending_grants: RefCell<Vec<(Grant, Topic)>>,
    nodes: kv::Store,
    claims: [NodeClaim; 2],
    /// NATS's `max_payload`, read once (`server_info()` clones the whole INFO).
    max_payload: usize,
    /// Wakes the state watcher on a connection event.
    link_event: Arc<Notify>,
}

impl Core {
    async fn start(
        config: BridgeConfig,
        port: Arc<dyn ShardPort>,
        stats: Arc<Stats>,
    ) -> Result<(Rc<Self>, Vec<(Grant, Topic)>), StartError> {
        let link_event = Arc::new(Notify::new());
        let link_up = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
        let main = connect(&config, "main", false, link_up[0].clone(), link_event.clone()).await?;
        let pubsub =
            connect(&config, "pubsub", true, link_up[1].clone(), link_event.clone()).await?;
        let js = jetstream::new(main.clone());
        let unprefixed = Subjects::new(&config.prefix, 0);

        // The node registry: a claim per name and per epoch, expiring `node_ttl` after the
        // last heartbeat so that a crashed node does not hold its name forever.
        let nodes = open_bucket(&js, &unprefixed.nodes_bucket(), Some(config.node_ttl)).await?;
        let name_key = subjects::node_name_key(&config.node_name);
        let name_value = Bytes::from(config.node_name.clone().into_bytes());
        let name_rev = match nodes.create(&name_key, name_value.clone()).await {
            Ok(rev) => rev,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(StartError::DuplicateName {
                    name: config.node_name.clone(),
                    prefix: config.prefix.clone(),
                    ttl: config.node_ttl,
                });
            }
            Err(e) => return Err(StartError::JetStream(format!("registering the node name: {e}"))),
        };
        let mut epoch = config.preferred_epoch;
        let epoch_rev = loop {
            match nodes.create(subjects::node_epoch_key(epoch), name_value.clone()).await {
                Ok(rev) => break rev,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    epoch = epoch.wrapping_add(1);
                }
                Err(e) => {
                    let _ = nodes.delete(&name_key).await;
                    return Err(StartError::JetStream(format!("claiming an epoch: {e}")));
                }
            }
        };
        let subjects = Subjects::new(&config.prefix, epoch);
        let claims = [
            NodeClaim { key: name_key, value: name_value.clone(), revision: Cell::new(name_rev) },
            NodeClaim {
                key: subjects::node_epoch_key(epoch),
                value: name_value,
                revision: Cell::new(epoch_rev),
            },
        ];

        let grants = open_bucket(&js, &subjects.grants_bucket(), None).await?;
        let (initial, watch) = load_grants(&js, &subjects, &grants).await?;

        let replies = subscribe(&main, subjects.replies_wildcard()).await?;
        let directs = subscribe(&main, subjects.directs_wildcard()).await?;
        if barrier(&main, &subjects, config.confirm_timeout).await.is_none() {
            return Err(StartError::Connect("NATS did not answer a round trip".into()));
        }

        stats.connected.store(true, Ordering::Relaxed);
        let shards = port.shards();
        let max_payload = main.server_info().max_payload;
        let core = Rc::new(Self {
            config,
            subjects,
            main,
            pubsub,
            port,
            stats,
            link_up,
            interests: RefCell::new(HashMap::new()),
            backlog: RefCell::new((0..shards).map(|_| VecDeque::new()).collect()),
            draining: Cell::new(false),
            grants,
            pending_grants: RefCell::new(Vec::new()),
            nodes,
            claims,
            max_payload,
            link_event,
        });
        tracing::info!(
            "cluster: node `{}` joined cluster `{}` through NATS as epoch {epoch} ({} grants loaded)",
            core.config.node_name,
            core.config.prefix,
            initial.len()
        );
        tokio::task::spawn_local(core.clone().forward_replies(replies));
        tokio::task::spawn_local(core.clone().forward_directs(directs));
        tokio::task::spawn_local(core.clone().watch_grants(watch, initial_revision(&initial)));
        tokio::task::spawn_local(core.clone().watch_state());
        tokio::task::spawn_local(core.clone().heartbeat());
        tokio::task::spawn_local(core.clone().measure_rtt());
        let grants = initial.into_iter().map(|(g, t, _)| (g, t)).collect();
        Ok((core, grants))
    }

    /// The command loop: control first, then data in batches, yielding to the forwarding
    /// tasks between batches.
    async fn serve(self: Rc<Self>, queues: Queues) {
        loop {
            let mut done = 0;
            loop {
                match queues.control.try_recv() {
                    Ok(Control::Shutdown) => return self.leave().await,
                    #[cfg(test)]
                    Ok(Control::Crash) => return,
                    Ok(command) => {
                        self.clone().control(command).await;
                        done += 1;
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        return self.leave().await
                    }
                }
            }
            while done < 256 {
                let Ok(data) = queues.data.try_recv() else { break };
                self.data(data).await;
                done += 1;
            }
            if done == 0 {
                // `notify_one` keeps a permit when nobody waits, so a command queued between
                // the checks above and this wait still wakes us.
                queues.notify.notified().await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    fn connected(&self) -> bool {
        self.link_up.iter().all(|up| up.load(Ordering::Relaxed))
    }

    async fn control(self: Rc<Self>, command: Control) {
        match command {
            Control::Interest { kind, topic, shard, on: true, token } => {
                self.interest_on(kind, topic, shard, token).await
            }
            Control::Interest { kind, topic, shard, on: false, .. } => {
                self.interest_off(kind, topic, shard)
            }
            Control::Grant { grant, topic, shard, token } => {
                tokio::task::spawn_local(self.put_grant(grant, topic, shard, token));
            }
            Control::Shutdown => {}
            #[cfg(test)]
            Control::Crash => {}
        }
    }

    async fn interest_on(
        self: Rc<Self>,
        kind: InterestKind,
        topic: Topic,
        shard: ShardId,
        token: Option<u64>,
    ) {
        let key = (kind, topic.clone());
        let existing = self.interests.borrow_mut().get_mut(&key).map(|interest| {
            match interest.shards.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, n)) => *n += 1,
                None => interest.shards.push((shard, 1)),
            }
            (interest.confirmed.clone(), interest.task.is_some())
        });
        let (confirmed, subscribed) = match existing {
            Some(known) => known,
            None => {
                let confirmed = Rc::new(Cell::new(false));
                let task = self.clone().open_subscription(kind, topic.clone()).await;
                let subscribed = task.is_some();
                let interest =
                    Interest { shards: vec![(shard, 1)], task, confirmed: confirmed.clone() };
                self.interests.borrow_mut().insert(key, interest);
                (confirmed, subscribed)
            }
        };
        let Some(token) = token else { return };
        if !subscribed || !self.connected() {
            self.deliver(shard, Event::Confirmed { token, in_force: false });
        } else if confirmed.get() {
            self.deliver(shard, Event::Confirmed { token, in_force: true });
        } else {
            let core = self.clone();
            tokio::task::spawn_local(async move {
                let client = match kind {
                    InterestKind::Publish => &core.pubsub,
                    InterestKind::Request => &core.main,
                };
                let in_force =
                    barrier(client, &core.subjects, core.config.confirm_timeout).await.is_some();
                if in_force && core.connected() {
                    confirmed.set(true);
                }
                core.deliver(shard, Event::Confirmed { token, in_force });
            });
        }
    }

    fn interest_off(&self, kind: InterestKind, topic: Topic, shard: ShardId) {
        let key = (kind, topic);
        let mut interests = self.interests.borrow_mut();
        let Some(interest) = interests.get_mut(&key) else { return };
        if let Some(i) = interest.shards.iter().position(|(s, _)| *s == shard) {
            interest.shards[i].1 -= 1;
            if interest.shards[i].1 == 0 {
                interest.shards.swap_remove(i);
            }
        }
        if interest.shards.is_empty() {
            if let Some(task) = interests.remove(&key).and_then(|i| i.task) {
                // The task owns the subscriber; dropping it sends UNSUB.
                task.abort();
            }
        }
    }

    /// Subscribes and spawns the task that forwards the subscription's messages to the
    /// interested shards. `None` if NATS refused or the topic is too long for a subject.
    async fn open_subscription(
        self: Rc<Self>,
        kind: InterestKind,
        topic: Topic,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let subscriber = match kind {
            InterestKind::Publish => {
                let subject = self.subjects.publish(&topic);
                if subject.len() > subjects::MAX_SUBJECT_LEN {
                    add(&self.stats.dropped_too_large, 1);
                    return None;
                }
                self.pubsub.subscribe(subject).await
            }
            InterestKind::Request => {
                let subject = self.subjects.request(&topic);
                if subject.len() > subjects::MAX_SUBJECT_LEN {
                    add(&self.stats.dropped_too_large, 1);
                    return None;
                }
                self.main.queue_subscribe(subject, subjects::QUEUE_GROUP.to_owned()).await
            }
        };
        match subscriber {
            Ok(sub) => Some(tokio::task::spawn_local(self.forward_interest(kind, topic, sub))),
            Err(e) => {
                tracing::warn!("cluster: subscribing failed: {e}");
                None
            }
        }
    }

    async fn forward_interest(
        self: Rc<Self>,
        kind: InterestKind,
        topic: Topic,
        mut sub: Subscriber,
    ) {
        let key = (kind, topic.clone());
        while let Some(message) = sub.next().await {
            self.count_in(message.length);
            let binary = has_header(&message.headers, BINARY_HEADER);
            match kind {
                InterestKind::Publish => {
                    let shards: Vec<ShardId> = match self.interests.borrow().get(&key) {
                        Some(interest) => interest.shards.iter().map(|(s, _)| *s).collect(),
                        None => continue,
                    };
                    for shard in shards {
                        let event = Event::Publish {
                            topic: topic.clone(),
                            body: message.payload.clone(),
                            binary,
                        };
                        self.deliver(shard, event);
                    }
                }
                InterestKind::Request => {
                    let shard =
                        match self.interests.borrow().get(&key).and_then(|i| i.shards.first()) {
                            Some((shard, _)) => *shard,
                            None => continue,
                        };
                    // A request without a reply subject cannot be answered; NATS clients other
                    // than ours could send one.
                    let Some(reply) = message.reply else { continue };
                    let event = Event::Request {
                        topic: topic.clone(),
                        body: message.payload,
                        binary,
                        reply: Reply(reply),
                    };
                    self.deliver(shard, event);
                }
            }
        }
    }

    async fn forward_replies(self: Rc<Self>, mut sub: Subscriber) {
        while let Some(message) = sub.next().await {
            self.count_in(message.length);
            let Some(to) = self.subjects.parse_reply(&message.subject) else { continue };
            let event = if message.status == Some(StatusCode::NO_RESPONDERS) {
                Event::NoResponders { kind: to.kind, id: to.id }
            } else {
                let error = header(&message.headers, ERROR_HEADER).map(Into::into);
                let binary = has_header(&message.headers, BINARY_HEADER);
                Event::Response { kind: to.kind, id: to.id, body: message.payload, binary, error }
            };
            if to.shard.index() < self.port.shards() {
                self.deliver(to.shard, event);
            }
        }
    }

    async fn forward_directs(self: Rc<Self>, mut sub: Subscriber) {
        while let Some(message) = sub.next().await {
            self.count_in(message.length);
            let Some(shard) = self.subjects.parse_direct(&message.subject) else { continue };
            if shard.index() >= self.port.shards() {
                continue;
            }
            let binary = has_header(&message.headers, BINARY_HEADER);
            self.deliver(
                shard,
                Event::Direct { body: message.payload, binary, reply: message.reply.map(Reply) },
            );
        }
    }

    async fn data(&self, data: Data) {
        if !self.connected() {
            add(&self.stats.dropped_disconnected, 1);
            return;
        }
        let (client, subject, reply, body, binary, error) = match data {
            Data::Publish { topic, body, binary } => {
                (&self.pubsub, self.subjects.publish(&topic), None, body, binary, None)
            }
            Data::Request { topic, reply, body, binary } => (
                &self.main,
                self.subjects.request(&topic),
                Some(self.subjects.reply(reply)),
                body,
                binary,
                None,
            ),
            Data::Respond { reply, body, binary, error } => {
                (&self.main, reply.0.to_string(), None, body, binary, error)
            }
            Data::Direct { epoch, shard, reply, body, binary } => {
                let reply = reply.map(|to| self.subjects.reply(to));
                (&self.main, self.subjects.direct(epoch, shard), reply, body, binary, None)
            }
        };
        if subject.len() > subjects::MAX_SUBJECT_LEN || body.len() > self.max_payload {
            add(&self.stats.dropped_too_large, 1);
            return;
        }
        let mut headers = HeaderMap::new();
        if binary {
            headers.insert(BINARY_HEADER, "1");
        }
        if let Some(error) = &error {
            headers.insert(ERROR_HEADER, error.as_ref());
        }
        let len = subject.len() + body.len();
        let send = async {
            match (reply, headers.is_empty()) {
                (None, true) => client.publish(subject, body).await,
                (None, false) => client.publish_with_headers(subject, headers, body).await,
                (Some(reply), _) => {
                    client.publish_with_reply_and_headers(subject, reply, headers, body).await
                }
            }
        };
        match tokio::time::timeout(self.config.publish_stall, send).await {
            Ok(Ok(())) => {
                add(&self.stats.messages_out, 1);
                add(&self.stats.bytes_out, len as u64);
            }
            _ => add(&self.stats.dropped_disconnected, 1),
        }
    }

    fn count_in(&self, len: usize) {
        add(&self.stats.messages_in, 1);
        add(&self.stats.bytes_in, len as u64);
    }

    /// Hands `event` to `shard`, or keeps it in that shard's bounded backlog while the
    /// shard's inbox is full (order kept: once a backlog exists, everything queues behind it).
    fn deliver(self: &Rc<Self>, shard: ShardId, event: Event) {
        let mut backlog = self.backlog.borrow_mut();
        let queue = &mut backlog[shard.index()];
        if queue.is_empty() {
            match self.port.try_send(shard, event) {
                Ok(()) => {
                    self.port.wake(shard);
                    return;
                }
                Err(event) => queue.push_back(event),
            }
        } else if queue.len() < self.config.backlog_capacity {
            queue.push_back(event);
        } else {
            add(&self.stats.dropped_inbound, 1);
            return;
        }
        self.port.wake(shard);
        if !self.draining.replace(true) {
            tokio::task::spawn_local(self.clone().drain_backlog());
        }
    }

    async fn drain_backlog(self: Rc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut backlog = self.backlog.borrow_mut();
            let mut left = false;
            for (index, queue) in backlog.iter_mut().enumerate() {
                let shard = ShardId(index as u16);
                while let Some(event) = queue.pop_front() {
                    if let Err(event) = self.port.try_send(shard, event) {
                        queue.push_front(event);
                        break;
                    }
                }
                left |= !queue.is_empty();
                self.port.wake(shard);
            }
            if !left {
                self.draining.set(false);
                return;
            }
        }
    }

    async fn put_grant(
        self: Rc<Self>,
        grant: Grant,
        topic: Topic,
        shard: ShardId,
        token: Option<u64>,
    ) {
        let in_force = self.connected() && self.try_put_grant(grant, &topic).await;
        if !in_force {
            // Kept and written when NATS is back; the node applies it locally meanwhile.
            self.pending_grants.borrow_mut().push((grant, topic));
        }
        if let Some(token) = token {
            self.deliver(shard, Event::Confirmed { token, in_force });
        }
    }

    async fn try_put_grant(&self, grant: Grant, topic: &[u8]) -> bool {
        let key = subjects::grant_key(grant, topic);
        let put = self.grants.put(key, Bytes::from_static(b"1"));
        matches!(tokio::time::timeout(self.config.confirm_timeout, put).await, Ok(Ok(_)))
    }

    /// Live grant updates after the initial load, re-opened from the last revision seen if the
    /// watch ends (as it can across a NATS restart).
    async fn watch_grants(self: Rc<Self>, mut watch: Option<kv::Watch>, mut revision: u64) {
        loop {
            if let Some(mut w) = watch.take() {
                while let Some(entry) = w.next().await {
                    match entry {
                        Ok(entry) => {
                            revision = revision.max(entry.revision);
                            if entry.operation == kv::Operation::Put {
                                self.broadcast_grant(&entry.key);
                            }
                        }
                        Err(e) => {
                            tracing::debug!("cluster: the grants watch ended: {e}");
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if self.connected() {
                watch = self.grants.watch_from_revision(">", revision + 1).await.ok();
            }
        }
    }

    fn broadcast_grant(self: &Rc<Self>, key: &str) {
        let Some((grant, topic)) = subjects::parse_grant_key(key) else { return };
        let topic: Topic = topic.into();
        for index in 0..self.port.shards() {
            self.deliver(ShardId(index as u16), Event::Grant { grant, topic: topic.clone() });
        }
    }

    /// One log line per change of the node's connection state; on reconnect, writes the
    /// grants that could not be written while NATS was away.
    async fn watch_state(self: Rc<Self>) {
        let mut was = true;
        loop {
            self.link_event.notified().await;
            let now = self.connected();
            if now == was {
                continue;
            }
            was = now;
            self.stats.connected.store(now, Ordering::Relaxed);
            if now {
                add(&self.stats.reconnects, 1);
                tracing::info!("cluster: reconnected to NATS; cross-node traffic resumes");
                let pending = std::mem::take(&mut *self.pending_grants.borrow_mut());
                for (grant, topic) in pending {
                    tokio::task::spawn_local(self.clone().put_grant(
                        grant,
                        topic,
                        ShardId(0),
                        None,
                    ));
                }
            } else {
                tracing::warn!(
                    "cluster: disconnected from NATS; local traffic continues, cross-node traffic is \
                     dropped until NATS is back"
                );
                for interest in self.interests.borrow().values() {
                    interest.confirmed.set(false);
                }
            }
        }
    }

    /// Refreshes the node's claims; re-claims them if they expired while NATS was away, and
    /// says so once if another node took them meanwhile.
    async fn heartbeat(self: Rc<Self>) {
        let period = self.config.node_ttl / 3;
        let mut lost = false;
        loop {
            tokio::time::sleep(period).await;
            if !self.connected() {
                continue;
            }
            for claim in &self.claims {
                match self.nodes.update(&claim.key, claim.value.clone(), claim.revision.get()).await
                {
                    Ok(rev) => claim.revision.set(rev),
                    Err(_) => match self.nodes.create(&claim.key, claim.value.clone()).await {
                        Ok(rev) => claim.revision.set(rev),
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists && !lost => {
                            lost = true;
                            tracing::error!(
                                "cluster: another node took `{}` while this one could not reach NATS; \
                                 two nodes now share it",
                                claim.key
                            );
                        }
                        Err(_) => {}
                    },
                }
            }
        }
    }

    async fn measure_rtt(self: Rc<Self>) {
        loop {
            if self.connected() {
                if let Some(rtt) =
                    barrier(&self.main, &self.subjects, self.config.confirm_timeout).await
                {
                    self.stats.rtt_micros.store(rtt.as_micros() as u64, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(self.config.rtt_interval).await;
        }
    }

    /// Gives the node's claims back so that a restart under the same name is not refused.
    async fn leave(&self) {
        for claim in &self.claims {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.nodes.delete(&claim.key)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.main.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.pubsub.flush()).await;
        tracing::info!("cluster: node `{}` left the cluster", self.config.node_name);
    }
}

async fn connect(
    config: &BridgeConfig,
    label: &str,
    no_echo: bool,
    up: Arc<AtomicBool>,
    changed: Arc<Notify>,
) -> Result<Client, StartError> {
    let addrs = config
        .servers
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|e| StartError::Connect(format!("{}: {e}", redact(url))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shown = config.servers.iter().map(|url| redact(url)).collect::<Vec<_>>().join(", ");
    let deadline = Instant::now() + config.start_timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        let mut options = ConnectOptions::new()
            .name(format!("middleman {} {label}", config.node_name))
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                // 0, 100 ms, 200 ms ... up to 2 s: NATS restarts in milliseconds, so retry
                // quickly at first, but never hammer it.
                Duration::from_millis((attempts as u64 * 100).min(2000))
            });
        if no_echo {
            options = options.no_echo();
        }
        if let Some(creds) = &config.creds {
            options = options.credentials_file(creds).await.map_err(|e| {
                StartError::Connect(format!(
                    "reading the credentials file {}: {e}",
                    creds.display()
                ))
            })?;
        }
        let (up_cb, changed_cb) = (up.clone(), changed.clone());
        options = options.event_callback(move |event| {
            let (up, changed) = (up_cb.clone(), changed_cb.clone());
            async move {
                match event {
                    async_nats::Event::Connected => up.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        up.store(false, Ordering::Relaxed)
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(
                            "cluster: NATS subscription {sid} overflowed; messages were lost"
                        )
                    }
                    other => tracing::debug!("cluster: NATS: {other}"),
                }
                changed.notify_one();
            }
        });
        match options.connect(addrs.clone()).await {
            Ok(client) => {
                up.store(true, Ordering::Relaxed);
                return Ok(client);
            }
            Err(e) if Instant::now() + delay < deadline => {
                tracing::debug!("cluster: connecting to {shown}: {e}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(StartError::Connect(format!("{shown}: {e}"))),
        }
    }
}

/// Opens a KV bucket, creating its stream if it does not exist. The stream is made directly
/// rather than with `create_key_value`, which fails against nats-server 2.9 since async-nats
/// 0.41 (research §4.3); the fields mirror async-nats's own `kv_to_stream_config`, so the
/// bucket is an ordinary KV bucket on 2.9 and on current NATS alike.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Option<Duration>,
) -> Result<kv::Store, StartError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: max_age.unwrap_or_default(),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| {
        StartError::JetStream(format!("opening the stream of bucket {bucket}: {e}"))
    })?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| StartError::JetStream(format!("opening bucket {bucket}: {e}")))
}

/// Every grant so far (with each entry's revision), and the watch to continue from.
async fn load_grants(
    js: &jetstream::Context,
    subjects: &Subjects,
    store: &kv::Store,
) -> Result<(Vec<(Grant, Topic, u64)>, Option<kv::Watch>), StartError> {
    let failed = |e: &dyn fmt::Display| StartError::JetStream(format!("loading the grants: {e}"));
    let mut stream =
        js.get_stream(format!("KV_{}", subjects.grants_bucket())).await.map_err(|e| failed(&e))?;
    let messages = stream.info().await.map_err(|e| failed(&e))?.state.messages;
    let mut watch = store.watch_with_history(">").await.map_err(|e| failed(&e))?;
    let mut grants = Vec::new();
    if messages > 0 {
        // The history ends with `delta == 0`: everything up to now has been seen.
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| failed(&e))?;
            if entry.operation == kv::Operation::Put {
                if let Some((grant, topic)) = subjects::parse_grant_key(&entry.key) {
                    grants.push((grant, topic.into(), entry.revision));
                }
            }
            if entry.delta == 0 {
                break;
            }
        }
    }
    Ok((grants, Some(watch)))
}

fn initial_revision(grants: &[(Grant, Topic, u64)]) -> u64 {
    grants.iter().map(|(_, _, rev)| *rev).max().unwrap_or(0)
}

async fn subscribe(client: &Client, subject: String) -> Result<Subscriber, StartError> {
    client.subscribe(subject).await.map_err(|e| StartError::Connect(format!("subscribing: {e}")))
}

/// A server round trip on `client`: a request to a subject nobody serves; NATS answers "no
/// responders" only after it has processed everything the connection sent before. The time
/// it took, or `None` if NATS did not answer within `timeout`.
async fn barrier(client: &Client, subjects: &Subjects, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, client.request(subjects.barrier(), Bytes::new())).await {
        Ok(Ok(_)) => Some(start.elapsed()),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            Some(start.elapsed())
        }
        _ => None,
    }
}

fn header<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a str> {
    headers.as_ref()?.get(name).map(|v| v.as_str())
}

fn has_header(headers: &Option<HeaderMap>, name: &str) -> bool {
    header(headers, name).is_some()
}
