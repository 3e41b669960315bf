//! One shard: the routing state a single core owns, and everything it does with it.
//!
//! A `Shard` is sans-IO. Connections hand it parsed messages ([`Shard::handle_message`]),
//! other shards hand it mail ([`Shard::handle_mail`]), the clock is passed in
//! ([`Shard::set_now`], [`Shard::expire_requests`]). What it produces is frames queued on its
//! own connections and mail queued for other shards ([`Shard::flush_mail`]); the runtime in
//! `server.rs` moves the mail and the bytes. That is what lets the model test drive several
//! shards in one thread.
//!
//! What a shard owns:
//! - its connections, and for each topic the list of its own subscribers;
//! - for the topics it owns (see [`topics::Placement`]): the shards with subscribers, the
//!   responder pool with requests in flight, and which responder each request went to;
//! - for requests its connections made: the pending entry and its deadline;
//! - for requests delivered to its connections: who asked, so the RES can find its way back;
//! - a replica of every grant.
//!
//! Architecture invariant: no shard reads another's state. Everything crosses as [`Mail`],
//! and mail between two shards is handled in the order it was sent, which is what keeps one
//! publisher's messages in order at every subscriber.

pub mod mailbox;
pub mod requests;
pub mod topics;

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::connection::outbound::{Frame, FrameBytes};
use crate::connection::{Connection, Delivery};
use crate::grants::{Grant, Grants};
use crate::ids::{ConnectionId, RequestId, ShardId};
use crate::limits::SlowConsumer;
use crate::protocol::message::{self, Command, Message, Sender};
use crate::protocol::reply::{self, ErrorCode};
use crate::protocol::ws::{self, Opcode};
use mailbox::{Mail, Mailboxes, Request, SharedFrame, TopicName};
use requests::{Assigned, Pending, Pools};
use topics::{each_shard, Interest, LocalSubscriptions, Placement};

/// The settings a shard routes by (from the command line).
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub id: ShardId,
    pub shards: usize,
    pub pending_bytes_max: usize,
    pub slow_consumer: SlowConsumer,
    /// `None`: requests never time out.
    pub request_timeout: Option<Duration>,
    pub limits: message::Limits,
    pub subscriptions_max: usize,
    pub pending_requests_max: u32,
}

/// Counters, plain integers owned by the shard; summed across shards only when scraped.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Logins, by role: `[service, client]`.
    pub connections_total: [u64; 2],
    /// Messages handled, by command in [`Command::ALL`] order, then unknown commands.
    pub messages_in: [u64; Command::ALL.len() + 1],
    pub deliveries: u64,
    pub dropped: u64,
    pub slow_consumer_closes: u64,
    /// Errors sent, by code in [`ErrorCode::ALL`] order.
    pub errors: [u64; ErrorCode::ALL.len()],
    pub request_timeouts: u64,
    /// Mails that found a destination inbox full and waited in the backlog.
    pub mail_backlogged: u64,
    /// Bytes written by connections that have left (live ones are summed when scraped).
    pub bytes_out_closed: u64,
}

/// What a shard reports when scraped: its counters and its current sizes.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub shard: u16,
    pub stats: Stats,
    /// Connections now, by role: `[service, client]`.
    pub connections: [u64; 2],
    pub topics: u64,
    pub requests_in_flight: u64,
    pub bytes_out: u64,
    // Filled in by the runtime:
    pub bytes_in: u64,
    pub inbox_depth: u64,
    pub auth_failures: u64,
    pub protocol_errors: u64,
}

/// One core's share of the broker.
pub struct Shard {
    config: ShardConfig,
    placement: Placement,
    now: Instant,
    connections: AHashMap<u64, Rc<Connection>>,
    subscriptions: LocalSubscriptions,
    interest: Interest,
    grants: Grants,
    pools: Pools,
    /// Requests this shard's connections made, by rid.
    pending: AHashMap<RequestId, Pending>,
    /// Deadlines in the order they were set; with one timeout for all they are sorted.
    deadlines: VecDeque<(Instant, RequestId)>,
    /// Requests delivered to this shard's connections, by rid.
    assigned: AHashMap<RequestId, Assigned>,
    next_request: u64,
    /// Mail not yet handed to its destination's inbox, per destination.
    outgoing: Vec<VecDeque<Mail>>,
    /// Scratch for WebSocket headers, so encoding does not allocate.
    header: Vec<u8>,
    /// Scratch for error texts.
    text: Vec<u8>,
    pub stats: Stats,
    pub shutdown_requested: bool,
    drain: Drain,
}

/// Rounds of the drain barrier: a message can take two hops after it leaves its shard
/// (REQ: requester, owner, responder; PUB: publisher, owner, subscriber), plus one for the
/// bookkeeping it causes.
const DRAIN_ROUNDS: usize = 3;

/// Progress of the drain barrier.
#[derive(Debug, Default)]
struct Drain {
    /// Rounds of markers this shard has sent to every other shard.
    sent: usize,
    /// Markers received, per round.
    received: [usize; DRAIN_ROUNDS],
    /// Every round is complete: no mail caused by input from before the shutdown is still
    /// on its way here.
    done: bool,
}

impl Shard {
    pub fn new(config: ShardConfig, now: Instant) -> Self {
        let placement = Placement::new(config.shards);
        let outgoing = (0..config.shards).map(|_| VecDeque::new()).collect();
        Self {
            config,
            placement,
            now,
            connections: AHashMap::new(),
            subscriptions: LocalSubscriptions::default(),
            interest: Interest::default(),
            grants: Grants::default(),
            pools: Pools::default(),
            pending: AHashMap::new(),
            deadlines: VecDeque::new(),
            assigned: AHashMap::new(),
            next_request: 1,
            outgoing,
            header: Vec::with_capacity(ws::HEADER_BYTES_MAX),
            text: Vec::new(),
            stats: Stats::default(),
            shutdown_requested: false,
            drain: Drain::default(),
        }
    }

    pub fn id(&self) -> ShardId {
        self.config.id
    }

    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Counters and sizes for the metrics endpoint.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            shard: self.id().0,
            stats: self.stats.clone(),
            topics: self.subscriptions.topics() as u64,
            requests_in_flight: self.pending.len() as u64,
            bytes_out: self.stats.bytes_out_closed,
            ..Snapshot::default()
        };
        for conn in self.connections.values() {
            snapshot.connections[usize::from(!conn.is_service())] += 1;
            snapshot.bytes_out += conn.bytes_out.get();
        }
        snapshot
    }

    // ---------------------------------------------------------------------------------------
    // Connections arriving and leaving.

    /// Registers an authenticated connection and subscribes it to `MSG:<cid>`.
    pub fn register(&mut self, conn: &Rc<Connection>) {
        debug_assert_eq!(conn.id.shard, self.id());
        self.stats.connections_total[usize::from(!conn.is_service())] += 1;
        self.connections.insert(conn.id.local, conn.clone());
        let mut topic = Vec::with_capacity(4 + conn.cid.len());
        topic.extend_from_slice(b"MSG:");
        topic.extend_from_slice(&conn.cid);
        self.subscribe(conn, &topic);
    }

    /// Forgets a connection: its subscriptions, its responder registrations, the requests
    /// delivered to it (their requesters get `responder-lost`) and the requests it made.
    pub fn disconnect(&mut self, conn: &Rc<Connection>) {
        if self.connections.remove(&conn.id.local).is_none() {
            return;
        }
        self.stats.bytes_out_closed += conn.bytes_out.get();
        let topics = std::mem::take(&mut *conn.topics.borrow_mut());
        for topic in topics {
            if let (_, Some(emptied)) = self.subscriptions.remove(&topic, conn) {
                self.tell_owner_interest(emptied, false, None);
            }
        }
        let registrations = std::mem::take(&mut *conn.responder_for.borrow_mut());
        // Only responders are assigned requests, and only requesters have pending ones: the
        // tables are scanned for connections that have some.
        let local = conn.id.local;
        let lost: Vec<_> = if registrations.is_empty() {
            Vec::new()
        } else {
            self.assigned.extract_if(|_, a| a.responder == local).collect()
        };
        for (rid, a) in lost {
            self.send(a.owner, Mail::Done { rid });
            if !a.abandoned {
                self.send(a.requester.shard, Mail::Failed { rid, code: ErrorCode::ResponderLost });
            }
        }
        for topic in registrations {
            let owner = self.placement.owner(&topic);
            self.send(owner, Mail::Unregister { topic, responder: conn.id });
        }
        let mine: Vec<_> = if conn.pending_requests.get() == 0 {
            Vec::new()
        } else {
            self.pending.extract_if(|_, p| p.conn == local).collect()
        };
        for (rid, p) in mine {
            self.send(p.owner, Mail::Forget { rid, timed_out: false });
        }
    }

    // ---------------------------------------------------------------------------------------
    // Messages from this shard's connections.

    /// Carries out one message from `conn` (already authenticated).
    pub fn handle_message(&mut self, conn: &Rc<Connection>, msg: &Message<'_>, binary: bool) {
        let index = msg.command.map_or(Command::ALL.len(), |c| c as usize);
        self.stats.messages_in[index] += 1;
        let Some(command) = msg.command else {
            return self.error(conn, ErrorCode::UnknownCommand, msg.word, msg.target, None);
        };
        if let Some(grant) = Grant::needed_for(command) {
            if !conn.is_service() && !self.grants.allows(grant, msg.target) {
                let req_id = if command == Command::Req { msg.header("ReqID") } else { None };
                return self.error(conn, ErrorCode::NotTrusted, msg.word, msg.target, req_id);
            }
        }
        match command {
            Command::Sub => self.handle_sub(conn, msg.target),
            Command::Uns => self.unsubscribe(conn, msg.target),
            Command::Pub => self.publish(conn, msg, binary),
            Command::Req => self.request(conn, msg, binary),
            Command::Res => self.respond(conn, msg, binary),
            Command::Epub | Command::Esub | Command::Ereq => self.grant(conn, command, msg.target),
            Command::Int => self.interpose(conn, msg),
        }
    }

    /// Answers a message that could not be parsed.
    pub fn malformed(&mut self, conn: &Rc<Connection>, what: &str) {
        self.error(conn, ErrorCode::Malformed, what.as_bytes(), b"", None);
    }

    fn handle_sub(&mut self, conn: &Rc<Connection>, topic: &[u8]) {
        if conn.topics.borrow().contains(topic) {
            return; // SUB is idempotent
        }
        if conn.topics.borrow().len() >= self.config.subscriptions_max {
            return self.limit(conn, "subscriptions", b"SUB", topic, None);
        }
        self.subscribe(conn, topic);
    }

    /// Subscribes `conn`, which is not subscribed to `topic` yet.
    fn subscribe(&mut self, conn: &Rc<Connection>, topic: &[u8]) {
        let (name, first) = self.subscriptions.add(topic, conn);
        if first {
            self.tell_owner_interest(name.clone(), true, Some(conn));
        }
        conn.topics.borrow_mut().insert(name);
    }

    fn unsubscribe(&mut self, conn: &Rc<Connection>, topic: &[u8]) {
        let (removed, emptied) = self.subscriptions.remove(topic, conn);
        if !removed {
            return;
        }
        conn.topics.borrow_mut().remove(topic);
        if let Some(name) = emptied {
            self.tell_owner_interest(name, false, None);
        }
    }

    /// Tells the topic's owner this shard's interest changed. `waiter`, if any, handles
    /// nothing more until the owner has acknowledged.
    fn tell_owner_interest(
        &mut self,
        topic: TopicName,
        subscribed: bool,
        waiter: Option<&Connection>,
    ) {
        let owner = self.placement.owner(&topic);
        if owner != self.id() {
            let shard = self.id();
            let ack = waiter.map(|c| {
                c.awaiting_acks.set(c.awaiting_acks.get() + 1);
                c.id
            });
            self.send(owner, Mail::Interest { topic, shard, subscribed, ack });
        }
    }

    /// Answers a mail that asked for an acknowledgement.
    fn ack(&mut self, to: Option<ConnectionId>) {
        if let Some(to) = to {
            self.send(to.shard, Mail::Ack { to });
        }
    }

    fn publish(&mut self, conn: &Rc<Connection>, msg: &Message<'_>, binary: bool) {
        let owner = self.placement.owner(msg.target);
        // Only the owner knows the interested shards; with one shard there are none.
        let remote =
            owner != self.id() || (self.config.shards > 1 && self.interest.shards(msg.target) != 0);
        if !remote && self.subscriptions.get(msg.target).is_empty() {
            return; // nobody anywhere subscribes
        }
        let frame = self.encode(conn, binary, msg, None, None);
        if !remote {
            // Nobody on another shard: skip the shared allocation.
            let (bytes, start, _) = frame;
            let frame = Rc::new(FrameBytes::Local { bytes, start });
            return self.deliver_local(msg.target, &frame);
        }
        let shared = share(frame);
        if owner == self.id() {
            self.fan_out(shared);
        } else {
            self.send(owner, Mail::Publish(shared));
        }
    }

    /// At the owner: forward to every interested shard, then deliver here.
    fn fan_out(&mut self, frame: SharedFrame) {
        let me = self.id();
        for shard in each_shard(self.interest.shards(frame.topic())) {
            if shard != me {
                self.send(shard, Mail::Deliver(frame.clone()));
            }
        }
        self.deliver_shared(frame);
    }

    fn deliver_shared(&mut self, frame: SharedFrame) {
        if self.subscriptions.get(frame.topic()).is_empty() {
            return;
        }
        let local =
            Rc::new(FrameBytes::Shared { start: frame.start as usize, bytes: frame.bytes.clone() });
        self.deliver_local(frame.topic(), &local);
    }

    /// The hot loop: one encoded frame, a handle pushed to each local subscriber.
    fn deliver_local(&mut self, topic: &[u8], frame: &Frame) {
        let max = self.config.pending_bytes_max;
        let policy = self.config.slow_consumer;
        for conn in self.subscriptions.get(topic) {
            match conn.deliver(frame, max, policy) {
                Delivery::Queued => self.stats.deliveries += 1,
                Delivery::Dropped => self.stats.dropped += 1,
                Delivery::ClosedSlow => {
                    self.stats.slow_consumer_closes += 1;
                    tracing::warn!(
                        cid = %conn.id,
                        peer = %conn.peer_text(),
                        pending_bytes_max = max,
                        "slow consumer: closed"
                    );
                }
                Delivery::Closing => {}
            }
        }
    }

    fn request(&mut self, conn: &Rc<Connection>, msg: &Message<'_>, binary: bool) {
        let req_id = msg.header("ReqID");
        // The ReqID is copied into the RES, which may go out in a text frame.
        if req_id.is_some_and(|v| std::str::from_utf8(v).is_err()) {
            return self.malformed(conn, "ReqID must be UTF-8");
        }
        if conn.pending_requests.get() >= self.config.pending_requests_max {
            return self.limit(conn, "pending requests", b"REQ", msg.target, req_id);
        }
        let rid = RequestId::new(self.next_request, self.id(), self.config.shards);
        self.next_request += 1;
        let frame = self.encode(conn, binary, msg, None, Some(rid));
        let owner = self.placement.owner(msg.target);
        self.pending.insert(
            rid,
            Pending {
                conn: conn.id.local,
                topic: msg.target.into(),
                req_id: req_id.map(Into::into),
                owner,
            },
        );
        conn.pending_requests.set(conn.pending_requests.get() + 1);
        if let Some(timeout) = self.config.request_timeout {
            self.deadlines.push_back((self.now + timeout, rid));
        }
        let request = Box::new(Request {
            rid,
            requester: conn.id,
            frame: share(frame),
            req_id: req_id.map(Into::into),
        });
        self.route_request(owner, request);
    }

    fn route_request(&mut self, owner: ShardId, request: Box<Request>) {
        self.send(owner, Mail::Request(request));
    }

    /// At the owner: fewest in flight, round-robin among equals.
    fn pick_responder(&mut self, request: Box<Request>) {
        let rid = request.rid;
        match self.pools.pick(request.frame.topic(), rid) {
            Some(responder) => {
                let owner = self.id();
                self.send(responder.shard, Mail::Assign { request, responder, owner });
            }
            None => {
                let to = request.requester.shard;
                self.send(to, Mail::Failed { rid, code: ErrorCode::NoResponder });
            }
        }
    }

    /// At the responder's shard: hand the REQ to its connection.
    fn assign(&mut self, request: Request, responder: ConnectionId, owner: ShardId) {
        let rid = request.rid;
        let Request { requester, frame, req_id, .. } = request;
        let lost = |shard: &mut Self| {
            shard.send(owner, Mail::Done { rid });
            shard.send(requester.shard, Mail::Failed { rid, code: ErrorCode::ResponderLost });
        };
        let Some(conn) = self.connections.get(&responder.local).cloned() else {
            return lost(self);
        };
        let frame = Rc::new(FrameBytes::Shared { start: frame.start as usize, bytes: frame.bytes });
        // A responder that cannot keep up is a slow consumer like any other. Whatever the
        // policy, the requester hears at once instead of waiting for its timeout.
        match conn.deliver(&frame, self.config.pending_bytes_max, self.config.slow_consumer) {
            Delivery::Queued => {
                self.stats.deliveries += 1;
                let responder = responder.local;
                let entry = Assigned { requester, responder, owner, req_id, abandoned: false };
                self.assigned.insert(rid, entry);
            }
            Delivery::Dropped => {
                self.stats.dropped += 1;
                lost(self);
            }
            Delivery::ClosedSlow => {
                self.stats.slow_consumer_closes += 1;
                tracing::warn!(cid = %conn.id, peer = %conn.peer_text(), "slow consumer: closed");
                lost(self);
            }
            Delivery::Closing => lost(self),
        }
    }

    fn respond(&mut self, conn: &Rc<Connection>, msg: &Message<'_>, binary: bool) {
        let Some(rid_text) = msg.header("Rid") else {
            return self.malformed(conn, "RES without a Rid header");
        };
        let known = RequestId::parse(rid_text)
            .filter(|rid| self.assigned.get(rid).is_some_and(|a| a.responder == conn.id.local));
        let Some(rid) = known else {
            return self.error(conn, ErrorCode::NoRequest, b"RES", msg.target, None);
        };
        let Some(assigned) = self.assigned.remove(&rid) else {
            return;
        };
        self.send(assigned.owner, Mail::Done { rid });
        if assigned.abandoned {
            return;
        }
        let frame = self.encode(conn, binary, msg, assigned.req_id.as_deref(), None);
        let to = assigned.requester.shard;
        if to == self.id() {
            let (bytes, start, _) = frame;
            self.complete(rid, Rc::new(FrameBytes::Local { bytes, start }));
        } else {
            self.send(to, Mail::Response { rid, frame: share(frame) });
        }
    }

    /// At the requester's shard: the answer arrived.
    fn complete(&mut self, rid: RequestId, frame: Frame) {
        let Some(pending) = self.pending.remove(&rid) else {
            return; // timed out, or the requester left: dropped silently.
        };
        if let Some(conn) = self.connections.get(&pending.conn) {
            conn.pending_requests.set(conn.pending_requests.get() - 1);
            conn.reply(frame);
        }
    }

    /// At the requester's shard: the request failed.
    fn fail(&mut self, rid: RequestId, code: ErrorCode) {
        let Some(pending) = self.pending.remove(&rid) else {
            return;
        };
        if let Some(conn) = self.connections.get(&pending.conn).cloned() {
            conn.pending_requests.set(conn.pending_requests.get() - 1);
            self.error(&conn, code, b"REQ", &pending.topic, pending.req_id.as_deref());
        }
    }

    fn grant(&mut self, conn: &Rc<Connection>, command: Command, topic: &[u8]) {
        if !conn.is_service() {
            return self.error(
                conn,
                ErrorCode::NotTrusted,
                command.as_str().as_bytes(),
                topic,
                None,
            );
        }
        let grant = Grant::given_by(command).expect("only EPUB, ESUB and EREQ get here");
        self.grants.insert(grant, topic);
        let name: TopicName = topic.into();
        let me = self.id();
        for s in 0..self.config.shards {
            let shard = ShardId(s as u16);
            if shard != me {
                conn.awaiting_acks.set(conn.awaiting_acks.get() + 1);
                self.send(shard, Mail::Grant { grant, topic: name.clone(), ack: Some(conn.id) });
            }
        }
        if command == Command::Ereq && !conn.responder_for.borrow().iter().any(|t| **t == *topic) {
            conn.responder_for.borrow_mut().push(name.clone());
            let owner = self.placement.owner(topic);
            let responder = conn.id;
            let ack = (owner != me).then(|| {
                conn.awaiting_acks.set(conn.awaiting_acks.get() + 1);
                conn.id
            });
            self.send(owner, Mail::Register { topic: name, responder, ack });
        }
    }

    /// `INT UID` with `forcid` and `setuid`.
    fn interpose(&mut self, conn: &Rc<Connection>, msg: &Message<'_>) {
        if !conn.is_service() {
            return self.error(conn, ErrorCode::NotTrusted, b"INT", msg.target, None);
        }
        if msg.target != b"UID" {
            return self.error(conn, ErrorCode::UnknownCommand, b"INT", msg.target, None);
        }
        let (Some(forcid), Some(uid)) = (msg.header("forcid"), msg.header("setuid")) else {
            return self.malformed(conn, "INT UID needs forcid and setuid headers");
        };
        // The Uid goes into every message of that connection, text frames included.
        if std::str::from_utf8(uid).is_err() {
            return self.malformed(conn, "setuid must be UTF-8");
        }
        let target = ConnectionId::parse(forcid).filter(|c| c.shard.index() < self.config.shards);
        let Some(target) = target else {
            return self.error(conn, ErrorCode::NoConnection, b"INT", b"UID", None);
        };
        if target.shard == self.id() {
            self.set_uid(target, uid, conn.id);
        } else {
            self.send(target.shard, Mail::SetUid { target, uid: uid.into(), from: conn.id });
        }
    }

    fn set_uid(&mut self, target: ConnectionId, uid: &[u8], from: ConnectionId) {
        match self.connections.get(&target.local).filter(|c| c.id == target) {
            Some(conn) => conn.set_uid(uid),
            None => {
                let mut payload = Vec::with_capacity(96);
                let mut text = Vec::with_capacity(32);
                reply::write_error_text(ErrorCode::NoConnection, b"INT", b"UID", &mut text);
                reply::write_error(ErrorCode::NoConnection, None, &text, &mut payload);
                self.stats.errors[ErrorCode::NoConnection as usize] += 1;
                if from.shard == self.id() {
                    if let Some(c) = self.connections.get(&from.local) {
                        c.reply_text(&payload);
                    }
                } else {
                    let (bytes, start) = self
                        .frame(Opcode::Text, payload.len(), |out| out.extend_from_slice(&payload));
                    let frame =
                        SharedFrame { bytes: Arc::new(bytes), start: start as u32, topic: 0..0 };
                    self.send(from.shard, Mail::Direct { to: from, frame });
                }
            }
        }
    }

    fn error(
        &mut self,
        conn: &Rc<Connection>,
        code: ErrorCode,
        command: &[u8],
        target: &[u8],
        req_id: Option<&[u8]>,
    ) {
        self.stats.errors[code as usize] += 1;
        // The text goes through a reused scratch buffer: a flood of bad messages costs one
        // allocation per error (the frame), which stays queued until the peer reads it.
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        reply::write_error_text(code, command, target, &mut text);
        let room = text.len() + req_id.map_or(0, <[u8]>::len) + 48;
        let (bytes, start) =
            self.frame(Opcode::Text, room, |out| reply::write_error(code, req_id, &text, out));
        self.text = text;
        conn.reply(Rc::new(FrameBytes::Local { bytes, start }));
    }

    fn limit(
        &mut self,
        conn: &Rc<Connection>,
        which: &str,
        command: &[u8],
        target: &[u8],
        req_id: Option<&[u8]>,
    ) {
        let mut what = Vec::with_capacity(which.len() + 1 + command.len());
        what.extend_from_slice(which.as_bytes());
        what.push(b' ');
        what.extend_from_slice(command);
        self.error(conn, ErrorCode::Limit, &what, target, req_id);
    }

    // ---------------------------------------------------------------------------------------
    // Mail from other shards.

    pub fn handle_mail(&mut self, mail: Mail) {
        match mail {
            Mail::Publish(frame) => self.fan_out(frame),
            Mail::Deliver(frame) => self.deliver_shared(frame),
            Mail::Interest { topic, shard, subscribed, ack } => {
                self.interest.set(topic, shard, subscribed);
                self.ack(ack);
            }
            Mail::Grant { grant, topic, ack } => {
                self.grants.insert(grant, &topic);
                self.ack(ack);
            }
            Mail::Register { topic, responder, ack } => {
                self.pools.register(topic, responder);
                self.ack(ack);
            }
            Mail::Ack { to } => {
                if let Some(conn) = self.connections.get(&to.local).filter(|c| c.id == to) {
                    conn.awaiting_acks.set(conn.awaiting_acks.get() - 1);
                    if conn.awaiting_acks.get() == 0 {
                        conn.wake_reader();
                    }
                }
            }
            Mail::Unregister { topic, responder } => self.pools.unregister(&topic, responder),
            Mail::Request(request) => self.pick_responder(request),
            Mail::Assign { request, responder, owner } => self.assign(*request, responder, owner),
            Mail::Failed { rid, code } => self.fail(rid, code),
            Mail::Response { rid, frame } => {
                let frame =
                    Rc::new(FrameBytes::Shared { start: frame.start as usize, bytes: frame.bytes });
                self.complete(rid, frame);
            }
            Mail::Done { rid } => self.pools.done(rid),
            Mail::Forget { rid, timed_out } => self.forget(rid, timed_out),
            Mail::SetUid { target, uid, from } => self.set_uid(target, &uid, from),
            Mail::Direct { to, frame } => {
                if let Some(conn) = self.connections.get(&to.local).filter(|c| c.id == to) {
                    conn.reply(Rc::new(FrameBytes::Shared {
                        start: frame.start as usize,
                        bytes: frame.bytes,
                    }));
                }
            }
            Mail::Shutdown => self.begin_drain(),
            // Keys are the runtime's (the shard never sees a key).
            Mail::Keys(_) => {}
            // The runtime answers scrapes itself (adding its I/O counters); a shard run
            // without one answers with what it has.
            Mail::Scrape { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Mail::Drain { round } => {
                self.drain.received[usize::from(round)] += 1;
                self.advance_drain();
            }
        }
    }

    /// Starts the shutdown barrier. From now on the runtime handles no more input from
    /// sockets; the shards exchange `Drain` markers in rounds. A shard sends round `r + 1`
    /// once it has sent round `r` and received round `r` from every other shard; since mail
    /// between two shards stays in order, after the last round every mail that input from
    /// before the shutdown caused, through every hop, has been handled. Only then are the
    /// connections closed, so nothing already accepted is lost between shards.
    pub fn begin_drain(&mut self) {
        if self.shutdown_requested {
            return;
        }
        self.shutdown_requested = true;
        self.advance_drain();
    }

    fn advance_drain(&mut self) {
        while self.shutdown_requested && !self.drain.done {
            if let Some(last) = self.drain.sent.checked_sub(1) {
                if self.drain.received[last] < self.config.shards - 1 {
                    return;
                }
                if self.drain.sent == DRAIN_ROUNDS {
                    self.drain.done = true;
                    return;
                }
            }
            let round = self.drain.sent as u8;
            let me = self.id();
            for s in 0..self.config.shards {
                let shard = ShardId(s as u16);
                if shard != me {
                    self.send(shard, Mail::Drain { round });
                }
            }
            self.drain.sent += 1;
        }
    }

    /// The drain barrier is complete (see [`Shard::begin_drain`]).
    pub fn drained(&self) -> bool {
        self.drain.done
    }

    /// At the owner, then at the responder's shard.
    fn forget(&mut self, rid: RequestId, timed_out: bool) {
        if let Some(a) = self.assigned.get_mut(&rid) {
            // At the responder's shard (which may also be the owner, handled below).
            if timed_out {
                self.assigned.remove(&rid);
            } else {
                a.abandoned = true;
            }
        }
        if let Some(responder) = self.pools.route_of(rid) {
            if timed_out {
                self.pools.done(rid);
            }
            if responder.shard != self.id() {
                self.send(responder.shard, Mail::Forget { rid, timed_out });
            }
        }
    }

    /// The earliest request deadline, if any request is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(d, _)| *d)
    }

    /// Fails every request whose deadline has passed with `timeout`.
    pub fn expire_requests(&mut self) {
        while let Some(&(deadline, rid)) = self.deadlines.front() {
            if deadline > self.now {
                break;
            }
            self.deadlines.pop_front();
            let Some(owner) = self.pending.get(&rid).map(|p| p.owner) else {
                continue; // answered already
            };
            self.stats.request_timeouts += 1;
            self.fail(rid, ErrorCode::Timeout);
            self.send(owner, Mail::Forget { rid, timed_out: true });
        }
    }

    // ---------------------------------------------------------------------------------------
    // Mail out.

    /// Sends mail to a shard; mail to this shard is handled at once.
    fn send(&mut self, to: ShardId, mail: Mail) {
        if to == self.id() {
            self.handle_mail(mail);
        } else {
            self.outgoing[to.index()].push_back(mail);
        }
    }

    /// Hands queued mail to the destination inboxes, waking each destination once. Mail an
    /// inbox has no room for stays queued, in order; returns whether any is left.
    pub fn flush_mail(&mut self, mailboxes: &Mailboxes) -> bool {
        let mut left = false;
        for (i, queue) in self.outgoing.iter_mut().enumerate() {
            if queue.is_empty() {
                continue;
            }
            let to = ShardId(i as u16);
            while let Some(mail) = queue.pop_front() {
                if let Err(mail) = mailboxes.try_send(to, mail) {
                    queue.push_front(mail);
                    self.stats.mail_backlogged += 1;
                    left = true;
                    break;
                }
            }
            mailboxes.wake(to);
        }
        left
    }

    /// Takes the queued mail for `to` (for tests that move mail themselves).
    pub fn take_mail(&mut self, to: ShardId) -> VecDeque<Mail> {
        std::mem::take(&mut self.outgoing[to.index()])
    }

    pub fn has_backlog(&self) -> bool {
        self.outgoing.iter().any(|q| !q.is_empty())
    }

    // ---------------------------------------------------------------------------------------
    // Encoding.

    /// Encodes one server frame: `write` appends the payload; returns the buffer and where
    /// the frame starts in it (header room is reserved up front and the unused part skipped).
    fn frame(
        &mut self,
        opcode: Opcode,
        payload_len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> (Vec<u8>, usize) {
        let room = ws::HEADER_BYTES_MAX;
        let mut bytes = Vec::with_capacity(room + payload_len);
        bytes.resize(room, 0);
        write(&mut bytes);
        let len = bytes.len() - room;
        self.header.clear();
        ws::encode_header(opcode, len, &mut self.header);
        let start = room - self.header.len();
        bytes[start..room].copy_from_slice(&self.header);
        (bytes, start)
    }

    /// Encodes the relayed form of `msg` from `conn` as one frame, sized exactly; also
    /// returns where its topic is.
    fn encode(
        &mut self,
        conn: &Connection,
        binary: bool,
        msg: &Message<'_>,
        req_id: Option<&[u8]>,
        rid: Option<RequestId>,
    ) -> (Vec<u8>, usize, std::ops::Range<u32>) {
        let opcode = if binary { Opcode::Binary } else { Opcode::Text };
        let rid = rid.map(|r| r.0);
        let (bytes, start) = conn.with_uid(|uid| {
            let sender = Sender { cid: &conn.cid, uid };
            let len = message::relay_len(msg, sender, req_id, rid);
            self.frame(opcode, len, |out| message::write_relay(msg, sender, req_id, rid, out))
        });
        let topic_start = ws::HEADER_BYTES_MAX + msg.word.len() + 1;
        let topic = topic_start as u32..(topic_start + msg.target.len()) as u32;
        debug_assert_eq!(&bytes[topic.start as usize..topic.end as usize], msg.target);
        (bytes, start, topic)
    }
}

fn share((bytes, start, topic): (Vec<u8>, usize, std::ops::Range<u32>)) -> SharedFrame {
    SharedFrame { bytes: Arc::new(bytes), start: start as u32, topic }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters index by `as usize`, so declaration order must be the `ALL` order.
    #[test]
    fn counter_indexes_follow_the_all_lists() {
        for (i, c) in Command::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
