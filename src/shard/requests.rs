//! Requests, top to bottom: a REQ from its requester to the topic's owner, which picks a
//! responder, to the responder's shard, and the RES (or failure, or timeout) back; with the
//! bookkeeping in the three places a request lives.
//!
//! - The requester's shard keeps a [`Pending`] entry (and the deadline): it turns a response,
//!   a failure or a timeout into exactly one answer for the requester.
//! - The topic's owner keeps the responder [`Pools`]: who answers the topic, how many
//!   requests each has in flight, and which responder each request went to.
//! - The responder's shard keeps an [`Assigned`] entry: only that connection may answer, once.
//!
//! Invariant: a responder's in-flight count at the owner equals the number of its requests
//! that have not yet sent `Done` (answered, forgotten after a timeout, or lost with it).

use std::rc::Rc;
use std::time::Instant;

use ahash::AHashMap;

use super::connection::Connection;
use super::mailbox::{Mail, Request};
use super::outbound::{Frame, FrameBytes};
use super::{Shard, TopicName};
use crate::ids::{ConnectionId, RequestId, ShardId};
use crate::protocol::message::Message;
use crate::protocol::reply::ErrorCode;

/// At the requester's shard.
#[derive(Debug)]
pub struct Pending {
    /// The requester, on this shard.
    pub conn: u64,
    pub topic: Box<[u8]>,
    pub req_id: Option<Box<[u8]>>,
    /// The topic's owner, told when the request is forgotten.
    pub owner: ShardId,
}

/// At the responder's shard.
#[derive(Debug)]
pub struct Assigned {
    pub requester: ConnectionId,
    /// The responder, on this shard.
    pub responder: u64,
    pub owner: ShardId,
    pub req_id: Option<Box<[u8]>>,
    /// The requester left: a RES is dropped silently.
    pub abandoned: bool,
}

#[derive(Debug)]
struct Member {
    id: ConnectionId,
    in_flight: u32,
}

#[derive(Debug, Default)]
struct Pool {
    members: Vec<Member>,
    /// Where the round-robin scan for ties starts.
    next: usize,
}

/// At the owner: responders per topic, and where each request in flight went.
#[derive(Debug, Default)]
pub struct Pools {
    by_topic: AHashMap<TopicName, Pool>,
    routes: AHashMap<RequestId, (TopicName, ConnectionId)>,
}

impl Pools {
    /// Adds a responder (idempotent).
    pub fn register(&mut self, topic: TopicName, responder: ConnectionId) {
        let pool = self.by_topic.entry(topic).or_default();
        if !pool.members.iter().any(|m| m.id == responder) {
            pool.members.push(Member { id: responder, in_flight: 0 });
        }
    }

    pub fn unregister(&mut self, topic: &[u8], responder: ConnectionId) {
        let Some(pool) = self.by_topic.get_mut(topic) else {
            return;
        };
        pool.members.retain(|m| m.id != responder);
        if pool.members.is_empty() {
            self.by_topic.remove(topic);
        } else if pool.next >= pool.members.len() {
            pool.next = 0;
        }
    }

    /// Picks the responder with the fewest requests in flight, ties broken round-robin, and
    /// records the request against it.
    pub fn pick(&mut self, topic: &[u8], rid: RequestId) -> Option<ConnectionId> {
        let name = self.by_topic.get_key_value(topic)?.0.clone();
        let pool = self.by_topic.get_mut(topic)?;
        let n = pool.members.len();
        let mut best = pool.next % n;
        for k in 1..n {
            let i = (pool.next + k) % n;
            if pool.members[i].in_flight < pool.members[best].in_flight {
                best = i;
            }
        }
        pool.next = (best + 1) % n;
        let member = &mut pool.members[best];
        member.in_flight += 1;
        self.routes.insert(rid, (name, member.id));
        Some(member.id)
    }

    /// The request is over: one fewer in flight for its responder.
    pub fn done(&mut self, rid: RequestId) {
        let Some((topic, responder)) = self.routes.remove(&rid) else {
            return;
        };
        if let Some(m) = self
            .by_topic
            .get_mut(&topic)
            .and_then(|p| p.members.iter_mut().find(|m| m.id == responder))
        {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
    }

    /// Which responder a request in flight went to.
    pub fn route_of(&self, rid: RequestId) -> Option<ConnectionId> {
        self.routes.get(&rid).map(|(_, r)| *r)
    }
}

impl Shard {
    pub(super) fn request(&mut self, conn: &Rc<Connection>, msg: &Message<'_>, binary: bool) {
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
            frame: frame.into_shared(),
            req_id: req_id.map(Into::into),
        });
        self.route_request(owner, request);
    }

    pub(super) fn route_request(&mut self, owner: ShardId, request: Box<Request>) {
        self.send(owner, Mail::Request(request));
    }

    /// At the owner: fewest in flight, round-robin among equals.
    pub(super) fn pick_responder(&mut self, request: Box<Request>) {
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
    ///
    /// A responder is judged at once, by its queue as the runtime last left it: a REQ that
    /// does not fit the budget is not queued, and the requester hears `responder-lost` now
    /// instead of waiting for its timeout. The responder is then a slow consumer like any
    /// other: under `drop` the REQ counts as dropped; under `disconnect` the runtime writes
    /// what the socket takes and closes it if the REQ still would not fit.
    pub(super) fn assign(&mut self, request: Request, responder: ConnectionId, owner: ShardId) {
        let rid = request.rid;
        let Request { requester, frame, req_id, .. } = request;
        let conn = self.connections.get(&responder.local).filter(|c| !c.is_closing()).cloned();
        let max = self.config.pending_bytes_max;
        let fits = conn.as_ref().map(|c| c.fits(frame.wire_len(), max));
        let conn = match (conn, fits) {
            (Some(conn), Some(true)) => conn,
            (conn, _) => {
                if let Some(conn) = conn {
                    self.refuse(&conn, frame.wire_len());
                }
                self.send(owner, Mail::Done { rid });
                self.send(requester.shard, Mail::Failed { rid, code: ErrorCode::ResponderLost });
                return;
            }
        };
        conn.deliver(&FrameBytes::shared(&frame), max);
        self.stats.deliveries += 1;
        let responder = responder.local;
        let entry = Assigned { requester, responder, owner, req_id, abandoned: false };
        self.assigned.insert(rid, entry);
    }

    pub(super) fn respond(&mut self, conn: &Rc<Connection>, msg: &Message<'_>, binary: bool) {
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
            self.complete(rid, frame.into_local());
        } else {
            self.send(to, Mail::Response { rid, frame: frame.into_shared() });
        }
    }

    /// At the requester's shard: the answer arrived.
    pub(super) fn complete(&mut self, rid: RequestId, frame: Frame) {
        let Some(pending) = self.pending.remove(&rid) else {
            return; // timed out, or the requester left: dropped silently.
        };
        if let Some(conn) = self.connections.get(&pending.conn) {
            conn.pending_requests.set(conn.pending_requests.get() - 1);
            conn.reply(frame);
        }
    }

    /// At the requester's shard: the request failed.
    pub(super) fn fail(&mut self, rid: RequestId, code: ErrorCode) {
        let Some(pending) = self.pending.remove(&rid) else {
            return;
        };
        if let Some(conn) = self.connections.get(&pending.conn).cloned() {
            conn.pending_requests.set(conn.pending_requests.get() - 1);
            self.error(&conn, code, b"REQ", &pending.topic, pending.req_id.as_deref());
        }
    }

    /// At the owner, then at the responder's shard.
    pub(super) fn forget(&mut self, rid: RequestId, timed_out: bool) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;

    pub(super) fn conn(n: u64) -> ConnectionId {
        ConnectionId { epoch: 1, shard: ShardId(0), local: n }
    }

    #[test]
    pub(super) fn ties_rotate_and_the_least_loaded_wins() {
        let mut pools = Pools::default();
        let t: TopicName = (&b"T"[..]).into();
        pools.register(t.clone(), conn(1));
        pools.register(t.clone(), conn(2));
        pools.register(t.clone(), conn(2));
        let picks: Vec<u64> =
            (0..6).map(|i| pools.pick(b"T", RequestId(i)).unwrap().local).collect();
        assert_eq!(picks, [1, 2, 1, 2, 1, 2]);
        // conn 1 finishes two, so it has the fewest in flight and wins twice in a row.
        pools.done(RequestId(0));
        pools.done(RequestId(2));
        assert_eq!(pools.pick(b"T", RequestId(10)).unwrap().local, 1);
        assert_eq!(pools.pick(b"T", RequestId(11)).unwrap().local, 1);
        assert_eq!(pools.route_of(RequestId(11)), Some(conn(1)));
        pools.unregister(b"T", conn(1));
        assert_eq!(pools.pick(b"T", RequestId(12)).unwrap().local, 2);
        pools.unregister(b"T", conn(2));
        assert_eq!(pools.pick(b"T", RequestId(13)), None);
    }
}
