//! The cluster: middleman nodes joined through NATS (issue 9).
//!
//! What it is: the pieces that do not depend on a shard's internals: the subject scheme
//! ([`subjects`]), the flags ([`config`]), the bridge thread that owns the NATS client
//! ([`bridge`]), and the bounded inboxes that carry its events to the shards ([`inbox`]).
//! What it is not: routing. The shards decide who gets what (`src/shard/cluster.rs` is their
//! side); they reach the bridge only through [`BridgePort`], whose calls only queue. Without
//! `--cluster-nats` none of this is constructed.
//!
//! Invariants:
//! - Shards never block on the bridge: every command is a `try_send` into a bounded queue;
//!   data (PUB, REQ, RES, direct) is dropped and counted when the queue is full or NATS is
//!   down, control (interest, grants) is refused back to the caller to keep in its backlog.
//! - The bridge never blocks on a shard: events go into a bounded per-shard inbox; when it is
//!   full they wait in a bounded per-shard backlog on the bridge, and past that bound they are
//!   dropped and counted.
//! - A node's own PUBs never come back to it (the PUB connection is `no_echo`).

// The request, response and direct flows are not wired into the shards yet (issue 9 phase 2,
// later commits); remove this once they are.
#![allow(dead_code)]

pub(crate) mod bridge;
pub mod config;
pub(crate) mod inbox;
pub(crate) mod subjects;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;

use crate::grants::Grant;
use crate::ids::ShardId;
pub(crate) use subjects::{ReplyKind, ReplyTo};

/// A topic name, shared.
pub(crate) type Topic = Arc<[u8]>;

/// Which kind of NATS interest a node holds for a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum InterestKind {
    /// Local subscribers: subscribe `<p>.pub.<tok>`.
    Publish,
    /// Local responders: join the queue group on `<p>.req.<tok>`.
    Request,
}

/// An opaque reply subject of another node, carried from a request to its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply(pub(crate) async_nats::Subject);

/// What the bridge tells a shard.
#[derive(Debug)]
pub(crate) enum Event {
    /// The interest or grant the shard asked for (with `token`) is in force cluster-wide
    /// (`in_force`), or could not be confirmed in time (NATS down or slow): it still takes
    /// effect when NATS is back, but nothing cluster-wide can be promised now.
    Confirmed { token: u64, in_force: bool },
    /// A PUB from another node, to a shard with local subscribers.
    Publish { topic: Topic, body: Bytes, binary: bool },
    /// A REQ from any node (this one included), to the shard that registered the responders.
    Request { topic: Topic, body: Bytes, binary: bool, reply: Reply },
    /// A response (or an error such as `responder-lost`) for what `id` waits on.
    Response { kind: ReplyKind, id: u64, body: Bytes, binary: bool, error: Option<Box<str>> },
    /// NATS answered "no responders": nobody anywhere listens on what `id` was sent to.
    NoResponders { kind: ReplyKind, id: u64 },
    /// Connection-addressed traffic (`MSG:<cid>`, `INT UID`) for a connection of this shard.
    Direct { body: Bytes, binary: bool, reply: Option<Reply> },
    /// A grant made anywhere in the cluster (this node included), to every shard.
    Grant { grant: Grant, topic: Topic },
}

/// The shard an [`Event`] goes to is given alongside it; this is the bridge's view of the
/// shards' inboxes.
pub(crate) trait ShardPort: Send + Sync + 'static {
    fn shards(&self) -> usize;
    /// Queues without blocking; gives the event back when the inbox is full.
    fn try_send(&self, shard: ShardId, event: Event) -> Result<(), Event>;
    /// Wakes the shard after a batch.
    fn wake(&self, shard: ShardId);
}

/// The shards' view of the bridge: every call only queues (a `try_send`), never waits. The
/// runtime gives each shard a [`bridge::BridgeHandle`]; the shard's unit tests give it a fake.
pub(crate) trait BridgePort {
    /// Queues a control command; gives it back when the control queue is full, for the shard
    /// to keep in its backlog and send again, in order.
    fn control(&self, command: bridge::Control) -> Result<(), bridge::Control>;
    /// A PUB to the other nodes. `false`: dropped (and counted by the bridge).
    fn publish(&self, topic: Topic, body: Bytes, binary: bool) -> bool;
    /// A REQ to exactly one node with responders.
    fn request(&self, topic: Topic, reply: ReplyTo, body: Bytes, binary: bool) -> bool;
    /// A response (or, with `error`, a failure) to a request from another node.
    fn respond(&self, reply: Reply, body: Bytes, binary: bool, error: Option<&str>) -> bool;
    /// Connection-addressed traffic to `shard` of the node with `epoch`.
    fn direct(
        &self,
        epoch: u32,
        shard: ShardId,
        reply: Option<ReplyTo>,
        body: Bytes,
        binary: bool,
    ) -> bool;
    /// Whether both NATS connections are up now (one atomic load).
    fn connected(&self) -> bool;
}

impl BridgePort for bridge::BridgeHandle {
    fn control(&self, command: bridge::Control) -> Result<(), bridge::Control> {
        bridge::BridgeHandle::control(self, command).map_err(|bridge::Refused(c)| c)
    }

    fn publish(&self, topic: Topic, body: Bytes, binary: bool) -> bool {
        bridge::BridgeHandle::publish(self, topic, body, binary)
    }

    fn request(&self, topic: Topic, reply: ReplyTo, body: Bytes, binary: bool) -> bool {
        bridge::BridgeHandle::request(self, topic, reply, body, binary)
    }

    fn respond(&self, reply: Reply, body: Bytes, binary: bool, error: Option<&str>) -> bool {
        bridge::BridgeHandle::respond(self, reply, body, binary, error)
    }

    fn direct(
        &self,
        epoch: u32,
        shard: ShardId,
        reply: Option<ReplyTo>,
        body: Bytes,
        binary: bool,
    ) -> bool {
        bridge::BridgeHandle::direct(self, epoch, shard, reply, body, binary)
    }

    fn connected(&self) -> bool {
        bridge::BridgeHandle::connected(self)
    }
}
