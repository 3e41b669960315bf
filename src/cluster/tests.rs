//! Checks the bridge against a real nats-server: interest, fan-out, no echo, the queue
//! group, no-responders, directs, grants with history, restarts, node names.
//! How: each test starts its own nats-server (tests/common/nats.rs) and two or three bridges,
//! drives them through `BridgeHandle` and reads what they hand the shards' inboxes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::bridge::{Bridge, BridgeConfig, BridgeHandle, StartError};
use super::inbox::{cluster_inboxes, ClusterInbox};
use super::{Event, ReplyKind, ReplyTo, Topic};
use crate::grants::Grant;
use crate::ids::ShardId;

// The harness is shared with the integration tests, where its items are `pub`.
#[allow(unreachable_pub)]
#[path = "../../tests/common/nats.rs"]
mod nats;

use nats::NatsServer;

const WAIT: Duration = Duration::from_secs(10);

fn config(server: &NatsServer, name: &str) -> BridgeConfig {
    BridgeConfig {
        servers: vec![server.url()],
        creds: None,
        node_name: name.to_owned(),
        prefix: "mm".to_owned(),
        preferred_epoch: 1_000,
        data_capacity: 4096,
        control_capacity: 1024,
        backlog_capacity: 4096,
        confirm_timeout: Duration::from_secs(2),
        start_timeout: Duration::from_secs(5),
        node_ttl: Duration::from_secs(3),
        rtt_interval: Duration::from_millis(200),
        publish_stall: Duration::from_millis(100),
    }
}

struct Node {
    bridge: Option<Bridge>,
    handle: BridgeHandle,
    inboxes: Vec<ClusterInbox>,
    epoch: u32,
    grants: Vec<(Grant, Topic)>,
}

impl Node {
    fn start(server: &NatsServer, name: &str) -> Self {
        Self::try_start(config(server, name)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(config: BridgeConfig) -> Result<Self, StartError> {
        Self::with_inbox(config, 1024)
    }

    fn with_inbox(config: BridgeConfig, capacity: usize) -> Result<Self, StartError> {
        let (port, inboxes) = cluster_inboxes(2, capacity);
        let started = Bridge::start(config, Arc::new(port))?;
        let handle = started.bridge.handle();
        Ok(Self {
            bridge: Some(started.bridge),
            handle,
            inboxes,
            epoch: started.epoch,
            grants: started.grants,
        })
    }

    /// The first event on `shard` that `pick` accepts (others are skipped); panics after
    /// [`WAIT`].
    fn expect<T>(&self, shard: u16, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.inboxes[usize::from(shard)].recv_timeout(left) else {
                panic!("no {what} on shard {shard} within {WAIT:?}");
            };
            if let Some(found) = pick(event) {
                return found;
            }
        }
    }

    fn confirmed(&self, shard: u16, token: u64) -> bool {
        self.expect(shard, "confirmation", |e| match e {
            Event::Confirmed { token: t, in_force } if t == token => Some(in_force),
            _ => None,
        })
    }

    /// The next PUB delivered to `shard`, whatever else comes first.
    fn next_publish(&self, shard: u16) -> (Topic, Bytes, bool) {
        self.expect(shard, "publish", |e| match e {
            Event::Publish { topic, body, binary } => Some((topic, body, binary)),
            _ => None,
        })
    }
}

fn topic(name: &[u8]) -> Topic {
    name.into()
}

/// Polls `ok` until it holds; panics after [`WAIT`].
fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn confirmed_interest_receives_another_nodes_publications_byte_exact_and_in_order() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    let b = Node::start(&server, "b");
    let t = topic(b"a.b *> \x00\xff");
    a.handle.subscribe_topic(ShardId(1), t.clone(), Some(7)).unwrap();
    assert!(a.confirmed(1, 7), "the subscription was not confirmed in force");

    let binary_body = Bytes::from_static(b"\x00\xffbinary\r\n\x80");
    assert!(b.handle.publish(t.clone(), binary_body.clone(), true));
    for i in 0..200u32 {
        assert!(b.handle.publish(t.clone(), Bytes::from(format!("text {i}")), false));
    }
    assert_eq!(a.next_publish(1), (t.clone(), binary_body, true));
    for i in 0..200u32 {
        let (got_topic, body, binary) = a.next_publish(1);
        assert_eq!(
            (got_topic.as_ref(), body.as_ref(), binary),
            (t.as_ref(), format!("text {i}").as_bytes(), false)
        );
    }
    let stats = b.handle.stats();
    assert_eq!(stats.messages_out, 201);
    assert!(stats.connected);
    assert!(a.handle.stats().messages_in >= 201);
}

#[test]
fn a_node_never_receives_its_own_publications() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    let b = Node::start(&server, "b");
    let t = topic(b"echo");
    a.handle.subscribe_topic(ShardId(0), t.clone(), Some(1)).unwrap();
    b.handle.subscribe_topic(ShardId(0), t.clone(), Some(1)).unwrap();
    assert!(a.confirmed(0, 1) && b.confirmed(0, 1));

    assert!(a.handle.publish(t.clone(), Bytes::from_static(b"from a"), false));
    // B got it, so NATS processed it; B's reply is processed after it. Delivery to A follows
    // that order, so if A's own message came back it would come before B's.
    assert_eq!(b.next_publish(0).1.as_ref(), b"from a");
    assert!(b.handle.publish(t.clone(), Bytes::from_static(b"from b"), false));
    assert_eq!(a.next_publish(0).1.as_ref(), b"from b");
}

#[test]
fn interest_is_counted_over_shards_and_dropped_with_the_last() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    let b = Node::start(&server, "b");
    let (t, marker) = (topic(b"counted"), topic(b"marker"));
    a.handle.subscribe_topic(ShardId(0), t.clone(), Some(1)).unwrap();
    a.handle.subscribe_topic(ShardId(1), t.clone(), Some(2)).unwrap();
    a.handle.subscribe_topic(ShardId(1), marker.clone(), Some(3)).unwrap();
    assert!(a.confirmed(0, 1) && a.confirmed(1, 2) && a.confirmed(1, 3));

    a.handle.unsubscribe_topic(ShardId(0), t.clone()).unwrap();
    // Shard 1 still wants it: a new confirmation proves the unsubscribe was handled first.
    a.handle.subscribe_topic(ShardId(1), marker.clone(), Some(4)).unwrap();
    assert!(a.confirmed(1, 4));
    b.handle.publish(t.clone(), Bytes::from_static(b"one"), false);
    assert_eq!(a.next_publish(1).1.as_ref(), b"one");

    a.handle.unsubscribe_topic(ShardId(1), t.clone()).unwrap();
    a.handle.subscribe_topic(ShardId(1), topic(b"barrier"), Some(5)).unwrap();
    assert!(a.confirmed(1, 5));
    b.handle.publish(t.clone(), Bytes::from_static(b"two"), false);
    b.handle.publish(marker.clone(), Bytes::from_static(b"after"), false);
    // With the NATS subscription gone, the marker published after is the next thing A gets.
    let (got, body, _) = a.next_publish(1);
    assert_eq!((got.as_ref(), body.as_ref()), (marker.as_ref(), &b"after"[..]));
    // Shard 0 let go first: it never saw `one` or `two`.
    while let Some(event) = a.inboxes[0].try_recv() {
        assert!(!matches!(event, Event::Publish { .. }), "{event:?}");
    }
}

#[test]
fn the_queue_group_gives_each_request_to_exactly_one_node() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    let b = Node::start(&server, "b");
    let c = Node::start(&server, "c");
    let t = topic(b"svc.topic");
    a.handle.register_responders(ShardId(1), t.clone(), Some(1)).unwrap();
    b.handle.register_responders(ShardId(0), t.clone(), Some(1)).unwrap();
    assert!(a.confirmed(1, 1) && b.confirmed(0, 1));

    const N: u64 = 300;
    for id in 0..N {
        let reply = ReplyTo { shard: ShardId(1), kind: ReplyKind::Request, id };
        assert!(c.handle.request(t.clone(), reply, Bytes::from(id.to_string()), false));
    }
    let mut served = [0u64; 2];
    let mut answered = vec![0u32; N as usize];
    let deadline = Instant::now() + WAIT;
    while answered.iter().sum::<u32>() < N as u32 {
        assert!(Instant::now() < deadline, "answers: {}", answered.iter().sum::<u32>());
        for (i, (node, shard)) in [(&a, 1usize), (&b, 0)].into_iter().enumerate() {
            while let Some(event) = node.inboxes[shard].try_recv() {
                if let Event::Request { topic: got, body, binary: false, reply } = event {
                    assert_eq!(got, t);
                    served[i] += 1;
                    assert!(node.handle.respond(reply, body, false, None));
                }
            }
        }
        if let Some(event) = c.inboxes[1].recv_timeout(Duration::from_millis(5)) {
            match event {
                Event::Response {
                    kind: ReplyKind::Request,
                    id,
                    body,
                    binary: false,
                    error: None,
                } => {
                    assert_eq!(body.as_ref(), id.to_string().as_bytes());
                    answered[id as usize] += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(answered.iter().all(|&n| n == 1), "a request was answered twice");
    assert_eq!(served[0] + served[1], N, "{served:?}");
    assert!(served[0] > 0 && served[1] > 0, "one node got everything: {served:?}");
    // Nothing else arrives: every request was answered exactly once above, and a duplicate
    // would have been counted.
}

#[test]
fn no_responders_anywhere_is_its_own_event() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    let reply = ReplyTo { shard: ShardId(1), kind: ReplyKind::Request, id: 42 };
    assert!(a.handle.request(topic(b"nobody"), reply, Bytes::from_static(b"?"), false));
    let got = a.expect(1, "no responders", |e| match e {
        Event::NoResponders { kind, id } => Some((kind, id)),
        _ => None,
    });
    assert_eq!(got, (ReplyKind::Request, 42));

    // A direct to a node that does not exist fails the same way (a bounded wait for
    // `no-connection`).
    let reply = ReplyTo { shard: ShardId(0), kind: ReplyKind::Direct, id: 9 };
    assert!(a.handle.direct(
        a.epoch + 77,
        ShardId(0),
        Some(reply),
        Bytes::from_static(b"x"),
        false
    ));
    let got = a.expect(0, "no responders", |e| match e {
        Event::NoResponders { kind, id } => Some((kind, id)),
        _ => None,
    });
    assert_eq!(got, (ReplyKind::Direct, 9));
}

#[test]
fn directs_reach_the_named_shard_and_failures_come_back() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    let b = Node::start(&server, "b");
    assert_ne!(a.epoch, b.epoch, "two live nodes share an epoch");
    let to_a = ReplyTo { shard: ShardId(0), kind: ReplyKind::Direct, id: 5 };
    assert!(a.handle.direct(
        b.epoch,
        ShardId(1),
        Some(to_a),
        Bytes::from_static(b"MSG body"),
        true
    ));
    let (body, binary, reply) = b.expect(1, "direct", |e| match e {
        Event::Direct { body, binary, reply } => Some((body, binary, reply)),
        _ => None,
    });
    assert_eq!((body.as_ref(), binary), (&b"MSG body"[..], true));
    assert!(b.handle.respond(
        reply.expect("a reply subject"),
        Bytes::new(),
        false,
        Some("no-connection")
    ));
    let got = a.expect(0, "failure", |e| match e {
        Event::Response { kind, id, error, .. } => Some((kind, id, error)),
        _ => None,
    });
    assert_eq!(got, (ReplyKind::Direct, 5, Some("no-connection".into())));
}

#[test]
fn grants_are_confirmed_watched_and_loaded_with_history_by_later_nodes() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    assert!(a.grants.is_empty());
    a.handle.put_grant(ShardId(0), Grant::Publish, topic(b"g.1"), Some(11)).unwrap();
    a.handle.put_grant(ShardId(1), Grant::Request, topic(b""), Some(12)).unwrap();
    assert!(a.confirmed(0, 11) && a.confirmed(1, 12));

    let b = Node::start(&server, "b");
    let mut grants = b.grants.clone();
    grants.sort_by_key(|(g, _)| *g as u8);
    assert_eq!(grants, [(Grant::Publish, topic(b"g.1")), (Grant::Request, topic(b""))]);

    a.handle.put_grant(ShardId(0), Grant::Subscribe, topic(b"g 2"), Some(13)).unwrap();
    assert!(a.confirmed(0, 13));
    for shard in 0..2 {
        let got = b.expect(shard, "grant", |e| match e {
            Event::Grant { grant, topic } => Some((grant, topic)),
            _ => None,
        });
        assert_eq!(got, (Grant::Subscribe, topic(b"g 2")));
    }
}

#[test]
fn after_a_nats_restart_the_bridge_reconnects_and_its_subscriptions_work_again() {
    let mut server = NatsServer::start();
    let a = Node::start(&server, "a");
    let b = Node::start(&server, "b");
    let t = topic(b"survives");
    a.handle.subscribe_topic(ShardId(0), t.clone(), Some(1)).unwrap();
    a.handle.register_responders(ShardId(1), t.clone(), Some(2)).unwrap();
    assert!(a.confirmed(0, 1) && a.confirmed(1, 2));
    a.handle.put_grant(ShardId(0), Grant::Publish, topic(b"kept"), Some(3)).unwrap();
    assert!(a.confirmed(0, 3));

    server.stop();
    eventually("A sees NATS down", || !a.handle.connected());
    eventually("B sees NATS down", || !b.handle.connected());
    let before = b.handle.stats().dropped_disconnected;
    assert!(b.handle.publish(t.clone(), Bytes::from_static(b"lost"), false));
    eventually("the publish while down is dropped and counted", || {
        b.handle.stats().dropped_disconnected > before
    });
    // Interest asked for while NATS is down is not in force yet, and says so at once.
    a.handle.subscribe_topic(ShardId(0), topic(b"later"), Some(4)).unwrap();
    assert!(!a.confirmed(0, 4));

    server.restart();
    eventually("A reconnects", || a.handle.connected());
    eventually("B reconnects", || b.handle.connected());
    assert!(a.handle.stats().reconnects >= 1);

    // async-nats re-subscribes by itself; poll until the re-subscription is in force.
    let deadline = Instant::now() + WAIT;
    let mut n = 0u32;
    loop {
        n += 1;
        b.handle.publish(t.clone(), Bytes::from(format!("again {n}")), false);
        if let Some(Event::Publish { body, .. }) =
            a.inboxes[0].recv_timeout(Duration::from_millis(50))
        {
            assert!(body.starts_with(b"again"), "{body:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no delivery after the restart");
    }
    let reply = ReplyTo { shard: ShardId(0), kind: ReplyKind::Request, id: 1 };
    assert!(b.handle.request(t.clone(), reply, Bytes::from_static(b"req"), false));
    a.expect(1, "request after restart", |e| matches!(e, Event::Request { .. }).then_some(()));

    // The grants were on disk: a node started now still sees them.
    let c = Node::start(&server, "c");
    assert_eq!(c.grants, [(Grant::Publish, topic(b"kept"))]);
    drop(server);
}

#[test]
fn a_second_node_with_a_live_name_is_refused_and_a_clean_exit_frees_the_name() {
    let server = NatsServer::start();
    let mut first = Node::start(&server, "twin");
    let err = Node::try_start(config(&server, "twin")).err().expect("the second twin started");
    let text = err.to_string();
    assert!(matches!(err, StartError::DuplicateName { .. }), "{text}");
    assert!(text.contains("`twin` is already taken") && text.contains("--node-name"), "{text}");

    first.bridge.take().expect("running").shutdown();
    Node::start(&server, "twin");
}

#[test]
fn a_crashed_node_blocks_its_name_only_until_the_registration_expires() {
    let server = NatsServer::start();
    let mut crashed = Node::start(&server, "phoenix");
    crashed.bridge.take().expect("running").crash();
    assert!(matches!(
        Node::try_start(config(&server, "phoenix")),
        Err(StartError::DuplicateName { .. })
    ));
    // node_ttl is 3 s in these tests; the stream's max_age removes the claim after it.
    let start = Instant::now();
    let restarted = loop {
        match Node::try_start(config(&server, "phoenix")) {
            Ok(node) => break node,
            Err(StartError::DuplicateName { .. }) if start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(restarted.handle.connected());
}

#[test]
fn round_trip_time_is_measured() {
    let server = NatsServer::start();
    let a = Node::start(&server, "a");
    eventually("an RTT sample", || a.handle.stats().rtt_micros > 0);
}

#[test]
fn start_fails_clearly_without_nats() {
    let mut server = NatsServer::start();
    let mut config = config(&server, "alone");
    server.stop();
    config.start_timeout = Duration::from_millis(300);
    let err = Node::try_start(config).err().expect("started without NATS");
    assert!(matches!(err, StartError::Connect(_)), "{err}");
    assert!(err.to_string().contains("cannot reach NATS"), "{err}");
}

#[test]
fn a_full_shard_inbox_never_stalls_the_bridge_it_backs_up_in_order_then_drops_and_counts() {
    let server = NatsServer::start();
    let mut small = config(&server, "a");
    small.backlog_capacity = 10;
    let a = Node::with_inbox(small, 1).unwrap_or_else(|e| panic!("{e}"));
    let b = Node::start(&server, "b");
    let t = topic(b"flood");
    a.handle.subscribe_topic(ShardId(1), t.clone(), Some(1)).unwrap();
    assert!(a.confirmed(1, 1));

    const N: u64 = 500;
    for i in 0..N {
        assert!(b.handle.publish(t.clone(), Bytes::from(i.to_string()), false));
    }
    // Nobody reads shard 1 until A's bridge has taken in all of them: one fits in the inbox,
    // ten wait in the backlog, the rest are dropped and counted.
    eventually("A's bridge received everything", || a.handle.stats().messages_in >= N);
    eventually("the overflow is counted", || a.handle.stats().dropped_inbound == N - 11);
    for i in 0..11u64 {
        assert_eq!(a.next_publish(1).1.as_ref(), i.to_string().as_bytes());
    }
    // The bridge kept serving meanwhile: other shards and requests were never stuck.
    let reply = ReplyTo { shard: ShardId(0), kind: ReplyKind::Request, id: 3 };
    assert!(a.handle.request(topic(b"none"), reply, Bytes::new(), false));
    a.expect(0, "no responders", |e| matches!(e, Event::NoResponders { id: 3, .. }).then_some(()));
}

#[test]
fn the_harness_fails_with_the_install_command_when_nats_server_is_missing() {
    let panic = std::panic::catch_unwind(|| NatsServer::start_program("nats-server-not-installed"))
        .err()
        .expect("the harness started a server that does not exist");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("apt-get install -y nats-server"), "{message}");
}

#[test]
fn a_live_node_keeps_its_name_past_the_ttl_by_heartbeat() {
    let server = NatsServer::start();
    let config = config(&server, "keeper");
    let ttl = config.node_ttl;
    let _keeper = Node::start(&server, "keeper");
    // Without the heartbeat the claim would expire after `ttl`; keep asking for twice that.
    let start = Instant::now();
    while start.elapsed() < ttl * 2 {
        match Node::try_start(config.clone()) {
            Err(StartError::DuplicateName { .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("the name was free {:?} after the live node took it", start.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
