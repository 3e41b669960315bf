//! One shard: the routing state a single core owns, and everything it does with it.
//!
//! A `Shard` is sans-IO. The runtime hands it parsed messages ([`Shard::handle_message`]) and
//! mail from other shards ([`Shard::handle_mail`]); the clock is passed in ([`Shard::set_now`],
//! [`Shard::expire_requests`]). What it produces is frames queued on its own connections,
//! mail queued for other shards ([`Shard::flush_mail`]), and the connections that went over
//! their budget ([`Shard::next_overflowed`]), which the runtime flushes and then judges
//! ([`Shard::judge`]). It never writes to a socket, reads a clock or names the runtime: that
//! is what lets the model test drive several shards in one thread.
//!
//! The flows, one file each: [`pubsub`] (SUB, UNS, PUB: encode, fan out, deliver),
//! [`requests`] (REQ, RES, timeouts), [`grants`] (EPUB/ESUB/EREQ, INT, error replies),
//! [`mail`] (what each mail does, and mail out), [`drain`] (the shutdown barrier), [`cluster`]
//! (the node's side of a cluster: what goes to the bridge, what its events do). This file
//! holds the state, connections arriving and leaving, the command dispatch and the
//! slow-consumer verdict.
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

mod cluster;
pub mod connection;
mod drain;
mod encode;
mod grants;
mod mail;
pub mod mailbox;
pub mod outbound;
mod pubsub;
pub mod requests;
pub mod topics;

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::close::CloseReason;
use crate::grants::{Grant, Grants};
use crate::ids::{RequestId, ShardId};
use crate::limits::SlowConsumer;
use crate::protocol::message::{self, Command, Message};
use crate::protocol::reply::ErrorCode;
use crate::protocol::ws;
use connection::Connection;
use drain::Drain;
use mailbox::Mail;
use requests::{Assigned, Pending, Pools};
use topics::{Interest, LocalSubscriptions, Placement};

pub use mailbox::TopicName;

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
    /// Errors sent, by code in [`ErrorCode::ALL`] order.
    pub errors: [u64; ErrorCode::ALL.len()],
    pub request_timeouts: u64,
    /// Mails that found a destination inbox full and waited in the backlog.
    pub mail_backlogged: u64,
    /// Bytes written by connections that have left (live ones are summed when scraped).
    pub bytes_out_closed: u64,
    /// Cluster confirmations that came back `in_force: false` (NATS down or slow): the SUB or
    /// grant held locally at once and cluster-wide only once NATS was back.
    pub cluster_unconfirmed: u64,
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
    pub slow_consumer_closes: u64,
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
    /// Connections that went over their budget, for the runtime to flush and judge.
    overflowed: Vec<Rc<Connection>>,
    pub stats: Stats,
    pub shutdown_requested: bool,
    drain: Drain,
    /// The link to the cluster bridge; `None` when the broker runs alone.
    cluster: Option<cluster::Cluster>,
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
            overflowed: Vec::new(),
            stats: Stats::default(),
            shutdown_requested: false,
            drain: Drain::default(),
            cluster: None,
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

    /// The next connection that went over its budget since the runtime last asked. The
    /// runtime writes what its socket takes right now, then calls [`Shard::judge`].
    pub fn next_overflowed(&mut self) -> Option<Rc<Connection>> {
        self.overflowed.pop()
    }

    pub fn has_overflowed(&self) -> bool {
        !self.overflowed.is_empty()
    }

    /// The slow-consumer policy, applied to a connection that went over its budget after the
    /// runtime wrote what its socket would take: still over under `disconnect` → close it
    /// (returned, for the runtime to carry out); under `drop` → the frames past the budget
    /// are dropped and counted. A connection back within its budget keeps everything.
    pub fn judge(&mut self, conn: &Connection) -> Option<CloseReason> {
        let overflow = u64::from(conn.overflow());
        if conn.is_closing() || !conn.still_over(self.config.pending_bytes_max) {
            conn.settle_overflow(false);
            self.stats.deliveries += overflow;
            return None;
        }
        match self.config.slow_consumer {
            SlowConsumer::Drop => {
                let dropped = conn.settle_overflow(true) as u64;
                self.stats.dropped += dropped;
                self.stats.deliveries += overflow - dropped;
                None
            }
            SlowConsumer::Disconnect => {
                conn.settle_overflow(false);
                Some(CloseReason::SlowConsumer)
            }
        }
    }

    /// A REQ of `len` bytes did not fit `conn`'s budget (see [`Shard::assign`]).
    pub(super) fn refuse(&mut self, conn: &Rc<Connection>, len: usize) {
        match self.config.slow_consumer {
            SlowConsumer::Drop => {
                self.stats.dropped += 1;
                conn.dropped.set(conn.dropped.get() + 1);
            }
            SlowConsumer::Disconnect => {
                conn.refuse(len);
                overflowed(&mut self.overflowed, conn);
            }
        }
    }
}

/// Records `conn` for the runtime's verdict, once per verdict.
fn overflowed(list: &mut Vec<Rc<Connection>>, conn: &Rc<Connection>) {
    if conn.mark_for_verdict() {
        list.push(conn.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters index by `as usize`, so declaration order must be the `ALL` order.
    #[test]
    pub(super) fn counter_indexes_follow_the_all_lists() {
        for (i, c) in Command::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
