//! Request bookkeeping, in the three places a request lives.
//!
//! - The requester's shard keeps a [`Pending`] entry (and the deadline): it turns a response,
//!   a failure or a timeout into exactly one answer for the requester.
//! - The topic's owner keeps the responder [`Pools`]: who answers the topic, how many
//!   requests each has in flight, and which responder each request went to.
//! - The responder's shard keeps an [`Assigned`] entry: only that connection may answer, once.
//!
//! Invariant: a responder's in-flight count at the owner equals the number of its requests
//! that have not yet sent `Done` (answered, forgotten after a timeout, or lost with it).

use ahash::AHashMap;

use super::mailbox::TopicName;
use crate::ids::{ConnectionId, RequestId, ShardId};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;

    fn conn(n: u64) -> ConnectionId {
        ConnectionId { epoch: 1, shard: ShardId(0), local: n }
    }

    #[test]
    fn ties_rotate_and_the_least_loaded_wins() {
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
