//! Publish and subscribe, top to bottom: SUB and UNS (and the owner hearing of them), then a
//! PUB's path: encode once at the publisher's shard, fan out at the topic's owner, deliver to
//! each shard's own subscribers.
//!
//! Invariant: a message is encoded once, at the publisher's shard; every other hop shares
//! those bytes, and delivering to a subscriber pushes a handle (no allocation per subscriber).

use std::rc::Rc;

use super::connection::{Connection, Delivery};
use super::mailbox::{Mail, SharedFrame};
use super::outbound::{Frame, FrameBytes};
use super::topics::each_shard;
use super::{overflowed, Shard, TopicName};
use crate::cluster::InterestKind;
use crate::protocol::message::Message;

impl Shard {
    pub(super) fn handle_sub(&mut self, conn: &Rc<Connection>, topic: &[u8]) {
        if conn.topics.borrow().contains(topic) {
            return; // SUB is idempotent
        }
        if conn.topics.borrow().len() >= self.config.subscriptions_max {
            return self.limit(conn, "subscriptions", b"SUB", topic, None);
        }
        self.subscribe(conn, topic);
    }

    /// Subscribes `conn`, which is not subscribed to `topic` yet.
    pub(super) fn subscribe(&mut self, conn: &Rc<Connection>, topic: &[u8]) {
        let (name, first) = self.subscriptions.add(topic, conn);
        if first {
            self.tell_owner_interest(name.clone(), true, Some(conn));
        }
        conn.topics.borrow_mut().insert(name);
    }

    pub(super) fn unsubscribe(&mut self, conn: &Rc<Connection>, topic: &[u8]) {
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
    pub(super) fn tell_owner_interest(
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
        } else if self.cluster.is_some() && self.interest.shards(&topic) == 0 {
            // This shard owns the topic and no other shard subscribes: its own first
            // subscriber (or its last leaving) changes the node's interest.
            let ack = waiter.map(|c| {
                c.awaiting_acks.set(c.awaiting_acks.get() + 1);
                c.id
            });
            self.node_interest(InterestKind::Publish, &topic, subscribed, ack);
        }
    }

    pub(super) fn publish(&mut self, conn: &Rc<Connection>, msg: &Message<'_>, binary: bool) {
        let owner = self.placement.owner(msg.target);
        // Only the owner knows the interested shards; with one shard there are none. In a
        // cluster the owner also hands every PUB to the bridge, so it takes the shared path.
        let remote = owner != self.id()
            || self.cluster.is_some()
            || (self.config.shards > 1 && self.interest.shards(msg.target) != 0);
        if !remote && self.subscriptions.get(msg.target).is_empty() {
            return; // nobody anywhere subscribes
        }
        let frame = self.encode(conn, binary, msg, None, None);
        if !remote {
            // Nobody on another shard: skip the shared allocation.
            return self.deliver_local(msg.target, &frame.into_local());
        }
        let shared = frame.into_shared();
        if owner == self.id() {
            let copy = self.cluster.is_some().then(|| shared.clone());
            self.fan_out(shared);
            if let Some(frame) = copy {
                self.publish_cluster(&frame);
            }
        } else {
            self.send(owner, Mail::Publish(shared));
        }
    }

    /// At the owner: forward to every interested shard, then deliver here.
    pub(super) fn fan_out(&mut self, frame: SharedFrame) {
        let me = self.id();
        for shard in each_shard(self.interest.shards(frame.topic())) {
            if shard != me {
                self.send(shard, Mail::Deliver(frame.clone()));
            }
        }
        self.deliver_shared(frame);
    }

    pub(super) fn deliver_shared(&mut self, frame: SharedFrame) {
        if self.subscriptions.get(frame.topic()).is_empty() {
            return;
        }
        self.deliver_local(frame.topic(), &FrameBytes::shared(&frame));
    }

    /// The hot loop: one encoded frame, a handle pushed to each local subscriber. It only
    /// queues; a subscriber that went over its budget is recorded for the runtime to judge.
    pub(super) fn deliver_local(&mut self, topic: &[u8], frame: &Frame) {
        let max = self.config.pending_bytes_max;
        for conn in self.subscriptions.get(topic) {
            match conn.deliver(frame, max) {
                Delivery::Queued => self.stats.deliveries += 1,
                Delivery::Overflowed => overflowed(&mut self.overflowed, conn),
                Delivery::Closing => {}
            }
        }
    }
}
