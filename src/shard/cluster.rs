//! The shard's side of the cluster (issue 9): what a shard asks of the bridge, and what it
//! does with the bridge's events.
//!
//! What it is: sans-IO routing, like the rest of the shard. The shard reaches the bridge only
//! through [`BridgePort`], whose calls only queue (a `try_send`); events arrive through
//! [`Shard::handle_event`], which the runtime calls for each event in the shard's cluster
//! inbox. What it is not: NATS. Subjects, connections and reconnects are the bridge's.
//!
//! Invariants:
//! - A topic's owner shard is this node's only contact with NATS for that topic: it holds the
//!   node's interest (on while any shard of the node has subscribers), publishes the node's
//!   PUBs after its local fan-out, and receives the other nodes' PUBs.
//! - A connection whose SUB (or grant) made the node's interest change stays paused (one more
//!   `awaiting_acks`) until the bridge confirms; a confirmation that says `in_force: false`
//!   (NATS down or slow) releases it as well, counted in `cluster_unconfirmed`.
//! - A control command the bridge's queue refused waits here, in order, and the readers pause
//!   as for a full shard inbox ([`Shard::has_backlog`]); it is never dropped.
//! - Private topics (`MSG:<cid>`) never become NATS interest: they are one per connection, and
//!   connection-addressed traffic crosses nodes as a direct to the cid's node.
//! - Without a cluster (`self.cluster` is `None`) none of this runs: each flow checks once.

use std::collections::VecDeque;
use std::rc::Rc;

use ahash::AHashMap;
use bytes::Bytes;

use super::connection::Connection;
use super::mailbox::SharedFrame;
use super::{Shard, TopicName};
use crate::cluster::bridge::Control;
use crate::cluster::{BridgePort, Event, InterestKind, Topic};
use crate::grants::Grant;
use crate::ids::ConnectionId;
use crate::protocol::ws::{self, Opcode};

/// A shard's link to the bridge.
pub(crate) struct Cluster {
    port: Box<dyn BridgePort>,
    /// Control commands the bridge's queue had no room for, oldest first.
    backlog: VecDeque<Control>,
    next_token: u64,
    /// Connections released when the bridge confirms `token`.
    waiters: AHashMap<u64, Vec<ConnectionId>>,
}

/// Whether `topic` crosses nodes as a topic (private topics cross as directs).
fn clustered(topic: &[u8]) -> bool {
    !topic.starts_with(b"MSG:")
}

impl Shard {
    /// Links this shard to the bridge and seeds its grants replica with every grant made in
    /// the cluster so far (before the node accepts its first connection).
    pub(crate) fn join_cluster(&mut self, port: Box<dyn BridgePort>, grants: &[(Grant, Topic)]) {
        for (grant, topic) in grants {
            self.grants.insert(*grant, topic);
        }
        self.cluster = Some(Cluster {
            port,
            backlog: VecDeque::new(),
            next_token: 1,
            waiters: AHashMap::new(),
        });
    }

    /// Whether this shard is part of a cluster.
    pub fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Handles one event from the bridge.
    pub(crate) fn handle_event(&mut self, event: Event) {
        match event {
            Event::Confirmed { token, in_force } => {
                if !in_force {
                    self.stats.cluster_unconfirmed += 1;
                }
                let waiters = self.cluster.as_mut().and_then(|c| c.waiters.remove(&token));
                for to in waiters.into_iter().flatten() {
                    self.ack(Some(to));
                }
            }
            Event::Publish { topic, body, binary } => self.remote_publish(&topic, &body, binary),
            Event::Grant { grant, topic } => self.grants.insert(grant, &topic),
            // The other flows are wired in later commits; until then such events are dropped.
            Event::Request { .. }
            | Event::Response { .. }
            | Event::NoResponders { .. }
            | Event::Direct { .. } => {}
        }
    }

    /// At the topic's owner: the node's interest in `topic` turned `on` or off. With a
    /// `waiter`, that connection (already counted in its `awaiting_acks`) is released when the
    /// bridge confirms; without a cluster it is released at once.
    pub(super) fn node_interest(
        &mut self,
        kind: InterestKind,
        topic: &TopicName,
        on: bool,
        waiter: Option<ConnectionId>,
    ) {
        let shard = self.id();
        let Some(cluster) = self.cluster.as_mut().filter(|_| clustered(topic)) else {
            return self.ack(waiter);
        };
        let token = (on && waiter.is_some()).then(|| {
            let token = cluster.next_token;
            cluster.next_token += 1;
            cluster.waiters.insert(token, waiter.into_iter().collect());
            token
        });
        if token.is_none() {
            self.ack(waiter);
        }
        let topic = topic.clone();
        self.cluster_control(Control::Interest { kind, topic, shard, on, token });
    }

    /// A grant made on this shard: written to the cluster's KV; `conn` waits for the write.
    pub(super) fn put_grant(&mut self, conn: &Rc<Connection>, grant: Grant, topic: &TopicName) {
        let shard = self.id();
        let Some(cluster) = self.cluster.as_mut() else { return };
        let token = cluster.next_token;
        cluster.next_token += 1;
        cluster.waiters.insert(token, vec![conn.id]);
        conn.awaiting_acks.set(conn.awaiting_acks.get() + 1);
        let topic = topic.clone();
        self.cluster_control(Control::Grant { grant, topic, shard, token: Some(token) });
    }

    /// At the topic's owner, after the local fan-out: the PUB to the other nodes. The body is
    /// the relayed message as a subscriber receives it, so the other node only adds a
    /// WebSocket header.
    pub(super) fn publish_cluster(&mut self, frame: &SharedFrame) {
        let Some(cluster) = &self.cluster else { return };
        let topic = frame.topic();
        if !clustered(topic) {
            return;
        }
        let binary = frame.bytes[frame.start as usize] & 0x0f == Opcode::Binary.code();
        let body = Bytes::copy_from_slice(&frame.bytes[ws::HEADER_BYTES_MAX..]);
        // A `false` is counted by the bridge (full queue, NATS down, too large): the PUB
        // reached this node's subscribers only.
        cluster.port.publish(topic.into(), body, binary);
    }

    /// At the topic's owner: a PUB from another node, fanned out like one from a local shard.
    fn remote_publish(&mut self, topic: &[u8], body: &[u8], binary: bool) {
        // The body is `<word> <topic>\r\n...`: find the topic in it, as `encode` records it.
        let Some(space) = memchr::memchr(b' ', body) else { return };
        if !body[space + 1..].starts_with(topic) {
            return; // not a relayed message of this topic: another node's bug, not ours to spread
        }
        let opcode = if binary { Opcode::Binary } else { Opcode::Text };
        let mut encoded = self.frame(opcode, body.len(), |out| out.extend_from_slice(body));
        let start = (ws::HEADER_BYTES_MAX + space + 1) as u32;
        encoded.topic = start..start + topic.len() as u32;
        self.fan_out(encoded.into_shared());
    }

    /// Queues a control command, behind any the bridge refused earlier.
    fn cluster_control(&mut self, command: Control) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        if !cluster.backlog.is_empty() {
            cluster.backlog.push_back(command);
        } else if let Err(command) = cluster.port.control(command) {
            cluster.backlog.push_back(command);
        }
    }

    /// Sends the control commands the bridge refused, in order; returns whether any is left.
    pub(super) fn flush_cluster(&mut self) -> bool {
        let Some(cluster) = self.cluster.as_mut() else { return false };
        while let Some(command) = cluster.backlog.pop_front() {
            if let Err(command) = cluster.port.control(command) {
                cluster.backlog.push_front(command);
                return true;
            }
        }
        false
    }

    pub(super) fn cluster_backlogged(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.backlog.is_empty())
    }
}

#[cfg(test)]
mod tests {
    //! The shard's side of the cluster with a fake bridge that records what it was asked.
    use std::cell::RefCell;
    use std::sync::Arc;

    use super::*;
    use crate::cluster::{Reply, ReplyTo};
    use crate::ids::ShardId;
    use crate::protocol::message;
    use crate::testing::{connect, new_shard, shard_config, LIMITS};

    #[derive(Default)]
    struct Fake {
        controls: RefCell<Vec<Control>>,
        published: RefCell<Vec<(Topic, Bytes, bool)>>,
        /// Refuse this many control commands before taking them.
        refuse: std::cell::Cell<usize>,
    }

    /// The fake is shared between the test and the shard.
    #[derive(Clone, Default)]
    struct Port(Rc<Fake>);

    impl BridgePort for Port {
        fn control(&self, command: Control) -> Result<(), Control> {
            if self.0.refuse.get() > 0 {
                self.0.refuse.set(self.0.refuse.get() - 1);
                return Err(command);
            }
            self.0.controls.borrow_mut().push(command);
            Ok(())
        }
        fn publish(&self, topic: Topic, body: Bytes, binary: bool) -> bool {
            self.0.published.borrow_mut().push((topic, body, binary));
            true
        }
        fn request(&self, _: Topic, _: ReplyTo, _: Bytes, _: bool) -> bool {
            true
        }
        fn respond(&self, _: Reply, _: Bytes, _: bool, _: Option<&str>) -> bool {
            true
        }
        fn direct(&self, _: u32, _: ShardId, _: Option<ReplyTo>, _: Bytes, _: bool) -> bool {
            true
        }
        fn connected(&self) -> bool {
            true
        }
    }

    fn shard(port: &Port) -> Shard {
        let mut shard = new_shard(shard_config(0, 1, 1 << 20));
        shard.join_cluster(Box::new(port.clone()), &[(Grant::Subscribe, Arc::from(&b"G"[..]))]);
        shard
    }

    fn send(shard: &mut Shard, conn: &Rc<Connection>, text: &[u8], binary: bool) {
        let (msg, _) = message::next(text, LIMITS).expect("a message").expect("well formed");
        shard.handle_message(conn, &msg, binary);
    }

    #[test]
    fn first_subscriber_asks_the_bridge_and_waits_for_its_confirmation() {
        let port = Port::default();
        let mut shard = shard(&port);
        let a = connect(&mut shard, 1);
        let b = connect(&mut shard, 2);
        assert!(port.0.controls.borrow().is_empty(), "private topics never reach NATS");
        send(&mut shard, &a, b"SUB News\r\n\r\n.\r\n", false);
        let token = match port.0.controls.borrow().as_slice() {
            [Control::Interest { kind: InterestKind::Publish, topic, on: true, token, .. }] => {
                assert_eq!(&**topic, b"News");
                token.expect("the subscriber waits for a token")
            }
            other => panic!("expected one interest, got {other:?}"),
        };
        assert_eq!(a.awaiting_acks.get(), 1, "paused until NATS confirms");
        send(&mut shard, &b, b"SUB News\r\n\r\n.\r\n", false);
        assert_eq!(port.0.controls.borrow().len(), 1, "one NATS interest per node and topic");
        shard.handle_event(Event::Confirmed { token, in_force: true });
        assert_eq!(a.awaiting_acks.get(), 0);
        send(&mut shard, &a, b"UNS News\r\n\r\n.\r\n", false);
        assert_eq!(port.0.controls.borrow().len(), 1, "b still subscribes");
        send(&mut shard, &b, b"UNS News\r\n\r\n.\r\n", false);
        assert!(matches!(
            port.0.controls.borrow().last(),
            Some(Control::Interest { on: false, token: None, .. })
        ));
    }

    #[test]
    fn an_unconfirmed_subscription_releases_the_subscriber_and_is_counted() {
        let port = Port::default();
        let mut shard = shard(&port);
        let a = connect(&mut shard, 1);
        send(&mut shard, &a, b"SUB News\r\n\r\n.\r\n", false);
        shard.handle_event(Event::Confirmed { token: 1, in_force: false });
        assert_eq!(a.awaiting_acks.get(), 0);
        assert_eq!(shard.stats.cluster_unconfirmed, 1);
    }

    #[test]
    fn a_refused_control_waits_in_order_and_pauses_readers() {
        let port = Port::default();
        port.0.refuse.set(1);
        let mut shard = shard(&port);
        let a = connect(&mut shard, 1);
        send(&mut shard, &a, b"SUB One\r\n\r\n.\r\n", false);
        send(&mut shard, &a, b"SUB Two\r\n\r\n.\r\n", false);
        assert!(port.0.controls.borrow().is_empty(), "the second waits behind the first");
        assert!(shard.has_backlog());
        assert!(!shard.flush_cluster());
        let topics: Vec<_> = port
            .0
            .controls
            .borrow()
            .iter()
            .map(|c| match c {
                Control::Interest { topic, .. } => topic.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(topics, [b"One".to_vec(), b"Two".to_vec()]);
        assert!(!shard.has_backlog());
    }

    #[test]
    fn the_owner_publishes_what_subscribers_get_and_remote_pubs_fan_out() {
        let port = Port::default();
        let mut shard = shard(&port);
        let sub = connect(&mut shard, 1);
        let publisher = connect(&mut shard, 2);
        send(&mut shard, &sub, b"SUB News\r\n\r\n.\r\n", false);
        send(&mut shard, &publisher, b"PUB News\r\n\r\n\x00\xffbin\r\n.\r\n", true);
        let local = sub.take_queued();
        assert_eq!(local.len(), 1);
        let (topic, body, binary) = port.0.published.borrow_mut().pop().expect("published");
        assert_eq!((&*topic, binary), (&b"News"[..], true));
        assert_eq!(&local[0][2..], &body[..], "the body is the frame minus its header");
        // The same body arriving from another node reaches the local subscriber byte-exact.
        shard.handle_event(Event::Publish { topic, body: body.clone(), binary });
        assert_eq!(sub.take_queued(), local);
        assert!(port.0.published.borrow().is_empty(), "a remote PUB is not published again");
        // A PUB nobody here subscribes to still goes to the other nodes.
        send(&mut shard, &publisher, b"PUB Elsewhere\r\n\r\nx\r\n.\r\n", false);
        assert_eq!(&*port.0.published.borrow()[0].0, b"Elsewhere");
    }

    #[test]
    fn grants_are_seeded_written_and_watched() {
        let port = Port::default();
        let mut shard = shard(&port);
        assert!(shard.grants.allows(Grant::Subscribe, b"G"), "seeded at join");
        let svc = connect(&mut shard, 1);
        send(&mut shard, &svc, b"EPUB P\r\n\r\n.\r\n", false);
        assert_eq!(svc.awaiting_acks.get(), 1, "paused until the KV write is confirmed");
        let token = match port.0.controls.borrow().as_slice() {
            [Control::Grant { grant: Grant::Publish, topic, token, .. }] if &**topic == b"P" => {
                token.expect("a token")
            }
            other => panic!("{other:?}"),
        };
        shard.handle_event(Event::Confirmed { token, in_force: true });
        assert_eq!(svc.awaiting_acks.get(), 0);
        shard.handle_event(Event::Grant { grant: Grant::Request, topic: Arc::from(&b"R"[..]) });
        assert!(shard.grants.allows(Grant::Request, b"R"), "a grant from another node");
    }
}
