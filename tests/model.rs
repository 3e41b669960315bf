//! Model test of the sharded routing: random SUB/UNS/PUB/REQ/RES/disconnects against several
//! sans-IO shards, with mail moved between them by the test, compared with a naive model.
//!
//! The naive model is one `HashMap<topic, set of connections>` with no shards at all. In the
//! synchronous test every operation's mail is delivered before the next operation, so the two
//! must agree exactly on who receives what, in which order. In the asynchronous test mail is
//! moved in random partial steps, so only the guarantees that survive any interleaving are
//! checked: no duplicates, nothing to non-subscribers, and one publisher's order per topic.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Instant;

use middleman::auth::Role;
use middleman::ids::{ConnectionId, ShardId};
use middleman::protocol::message;
use middleman::shard::connection::Connection;
use middleman::shard::{Shard, ShardConfig};
use middleman::testing::{shard_config, LIMITS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOPICS: &[&str] = &["a", "b", "c", "news", "x y"];

struct Cluster {
    shards: Vec<Shard>,
    conns: Vec<Option<Rc<Connection>>>,
    next_local: u64,
}

impl Cluster {
    fn new(shards: usize) -> Self {
        let now = Instant::now();
        let shards = (0..shards)
            .map(|i| {
                Shard::new(
                    ShardConfig {
                        subscriptions_max: 1000,
                        ..shard_config(i as u16, shards, usize::MAX)
                    },
                    now,
                )
            })
            .collect();
        Self { shards, conns: Vec::new(), next_local: 1 }
    }

    fn connect(&mut self, shard: usize) -> usize {
        let id = ConnectionId { epoch: 1, shard: ShardId(shard as u16), local: self.next_local };
        self.next_local += 1;
        let conn = Connection::new(id);
        conn.role.set(Some(Role::Service));
        self.shards[shard].register(&conn);
        self.conns.push(Some(conn));
        self.conns.len() - 1
    }

    fn send(&mut self, who: usize, text: &str) {
        let conn = self.conns[who].clone().expect("live connection");
        let shard = conn.id.shard.index();
        let mut rest = text.as_bytes();
        while let Some(parsed) = message::next(rest, LIMITS) {
            let (msg, after) = parsed.expect("test messages are well formed");
            self.shards[shard].handle_message(&conn, &msg, false);
            rest = after;
        }
    }

    fn disconnect(&mut self, who: usize) {
        if let Some(conn) = self.conns[who].take() {
            self.shards[conn.id.shard.index()].disconnect(&conn);
        }
    }

    /// Moves mail until none is left.
    fn settle(&mut self) {
        while self.step(&mut |_| true) {}
    }

    /// Moves the mail `pick` selects (per source and destination queue, whole queues, so
    /// the order between two shards is kept); returns whether any moved.
    fn step(&mut self, pick: &mut dyn FnMut(usize) -> bool) -> bool {
        let n = self.shards.len();
        let mut moved = false;
        for from in 0..n {
            for to in 0..n {
                if from == to || !pick(from * n + to) {
                    continue;
                }
                let mail = self.shards[from].take_mail(ShardId(to as u16));
                for m in mail {
                    moved = true;
                    self.shards[to].handle_mail(m);
                }
            }
        }
        moved
    }

    /// Every frame queued for `who`, as text payloads.
    fn received(&self, who: usize) -> Vec<String> {
        match &self.conns[who] {
            Some(c) => c.take_queued().iter().map(|f| payload(f)).collect(),
            None => Vec::new(),
        }
    }
}

/// The payload of one unmasked server text frame.
fn payload(frame: &[u8]) -> String {
    assert_eq!(frame[0], 0x81, "a final text frame");
    let (len, at) = match frame[1] {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => unreachable!("test messages are small"),
        n => (n as usize, 2),
    };
    assert_eq!(frame.len(), at + len);
    String::from_utf8(frame[at..].to_vec()).unwrap()
}

/// `(topic, body)` of a delivered PUB.
fn pub_of(text: &str) -> Option<(String, String)> {
    let head = text.strip_prefix("PUB ")?;
    let (topic, rest) = head.split_once("\r\n")?;
    let body = rest.split_once("\r\n\r\n")?.1.strip_suffix(".\r\n")?;
    Some((topic.to_owned(), body.trim_end().to_owned()))
}

#[test]
fn settled_routing_matches_a_single_map_model() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let shards = rng.random_range(1..=4);
        let mut cluster = Cluster::new(shards);
        let mut model: HashMap<&str, BTreeSet<usize>> = HashMap::new();
        let mut expected: HashMap<usize, Vec<String>> = HashMap::new();
        let mut early: HashMap<usize, Vec<String>> = HashMap::new();
        for _ in 0..12 {
            let s = rng.random_range(0..shards);
            cluster.connect(s);
        }
        let mut seq = 0;
        for _ in 0..600 {
            let who = rng.random_range(0..cluster.conns.len());
            if cluster.conns[who].is_none() {
                continue;
            }
            let topic = TOPICS[rng.random_range(0..TOPICS.len())];
            match rng.random_range(0..10) {
                0..=2 => {
                    cluster.send(who, &format!("SUB {topic}\r\n\r\n.\r\n"));
                    model.entry(topic).or_default().insert(who);
                }
                3 => {
                    cluster.send(who, &format!("UNS {topic}\r\n\r\n.\r\n"));
                    model.entry(topic).or_default().remove(&who);
                }
                4 => {
                    // What it received before leaving counts.
                    early.entry(who).or_default().extend(cluster.received(who));
                    cluster.disconnect(who);
                    for subs in model.values_mut() {
                        subs.remove(&who);
                    }
                    let s = rng.random_range(0..shards);
                    cluster.connect(s);
                }
                _ => {
                    seq += 1;
                    let body = format!("{who}-{seq}");
                    cluster.send(who, &format!("PUB {topic}\r\n\r\n{body}\r\n.\r\n"));
                    for &sub in model.get(topic).into_iter().flatten() {
                        expected.entry(sub).or_default().push(format!("{topic}|{body}"));
                    }
                }
            }
            cluster.settle();
        }
        for who in 0..cluster.conns.len() {
            let mut got = early.remove(&who).unwrap_or_default();
            got.extend(cluster.received(who));
            let got: Vec<String> =
                got.iter().filter_map(|t| pub_of(t)).map(|(t, b)| format!("{t}|{b}")).collect();
            let want = expected.remove(&who).unwrap_or_default();
            assert_eq!(got, want, "seed {seed}, connection {who}");
        }
    }
}

#[test]
fn unsettled_routing_keeps_each_publishers_order_without_duplicates() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let shards = rng.random_range(2..=4);
        let mut cluster = Cluster::new(shards);
        let conns: Vec<usize> = (0..10).map(|i| cluster.connect(i % shards)).collect();
        // Stable subscribers: subscribed before anything is published, never leave.
        let stable: Vec<(usize, &str)> =
            conns.iter().map(|&c| (c, TOPICS[c % TOPICS.len()])).collect();
        for &(c, t) in &stable {
            cluster.send(c, &format!("SUB {t}\r\n\r\n.\r\n"));
        }
        cluster.settle();
        let mut ever_subscribed: BTreeSet<(usize, &str)> = stable.iter().copied().collect();
        let mut published: HashMap<&str, Vec<String>> = HashMap::new();
        let mut seq = 0;
        for _ in 0..800 {
            let who = conns[rng.random_range(0..conns.len())];
            let topic = TOPICS[rng.random_range(0..TOPICS.len())];
            match rng.random_range(0..6) {
                0 => {
                    cluster.send(who, &format!("SUB {topic}\r\n\r\n.\r\n"));
                    ever_subscribed.insert((who, topic));
                }
                1 if !stable.contains(&(who, topic)) => {
                    cluster.send(who, &format!("UNS {topic}\r\n\r\n.\r\n"));
                }
                _ => {
                    seq += 1;
                    let body = format!("{who}-{seq}");
                    cluster.send(who, &format!("PUB {topic}\r\n\r\n{body}\r\n.\r\n"));
                    published.entry(topic).or_default().push(body);
                }
            }
            let p: f64 = rng.random();
            cluster.step(&mut |_| rng.random_bool(p));
        }
        cluster.settle();
        for &who in &conns {
            let mut last: HashMap<(String, String), u64> = HashMap::new();
            let mut seen = BTreeSet::new();
            let got: Vec<(String, String)> =
                cluster.received(who).iter().filter_map(|t| pub_of(t)).collect();
            for (topic, body) in &got {
                assert!(
                    ever_subscribed.iter().any(|&(c, t)| c == who && t == topic),
                    "seed {seed}: {who} got {topic} without subscribing"
                );
                assert!(
                    seen.insert((topic.clone(), body.clone())),
                    "seed {seed}: duplicate {body}"
                );
                let (publisher, n) = body.split_once('-').unwrap();
                let n: u64 = n.parse().unwrap();
                let prev = last.insert((topic.clone(), publisher.to_owned()), n);
                assert!(prev.is_none_or(|p| p < n), "seed {seed}: {who} got {body} after {prev:?}");
            }
            for &(c, t) in &stable {
                if c != who {
                    continue;
                }
                let want = published.get(t).map_or(0, Vec::len);
                let have = got.iter().filter(|(topic, _)| topic == t).count();
                assert_eq!(
                    have, want,
                    "seed {seed}: stable subscriber {who} of {t} missed messages"
                );
            }
        }
    }
}

#[test]
fn every_request_reaches_exactly_one_responder_and_comes_back() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(2000 + seed);
        let shards = rng.random_range(1..=4);
        let mut cluster = Cluster::new(shards);
        let responders: Vec<usize> = (0..3).map(|i| cluster.connect(i % shards)).collect();
        let requesters: Vec<usize> = (0..4).map(|i| cluster.connect((i + 1) % shards)).collect();
        for &r in &responders {
            cluster.send(r, "EREQ Echo\r\n\r\n.\r\n");
        }
        cluster.settle();
        let mut asked = 0;
        for round in 0..30 {
            for &q in &requesters {
                if rng.random_bool(0.7) {
                    asked += 1;
                    cluster.send(q, &format!("REQ Echo\r\nReqID: q{q}-{round}\r\n\r\nhi\r\n.\r\n"));
                }
            }
            cluster.step(&mut |_| rng.random_bool(0.5));
            cluster.settle();
            let mut answered = 0;
            for &r in &responders {
                for text in cluster.received(r) {
                    let rid = text
                        .split("\r\n")
                        .find_map(|l| l.strip_prefix("Rid: "))
                        .expect("a REQ carries Rid")
                        .to_owned();
                    cluster.send(r, &format!("RES Echo\r\nRid: {rid}\r\n\r\nok\r\n.\r\n"));
                    answered += 1;
                }
            }
            cluster.settle();
            let mut back = 0;
            for &q in &requesters {
                for text in cluster.received(q) {
                    assert!(text.starts_with("RES Echo\r\nReqID: q"), "seed {seed}: {text:?}");
                    assert!(!text.contains("\r\nRid:"), "Rid is removed from the RES");
                    back += 1;
                }
            }
            assert_eq!(answered, back, "seed {seed} round {round}");
        }
        assert!(asked > 0);
    }
}

#[test]
fn drain_barrier_completes_only_after_everything_in_flight_has_landed() {
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(3000 + seed);
        let shards = rng.random_range(1..=4);
        let mut cluster = Cluster::new(shards);
        let conns: Vec<usize> = (0..8).map(|i| cluster.connect(i % shards)).collect();
        for &c in &conns {
            cluster.send(c, "SUB news\r\n\r\n.\r\n");
        }
        cluster.settle();
        let mut got: HashMap<usize, usize> = HashMap::new();
        let mut published = 0;
        for _ in 0..rng.random_range(1..40) {
            let who = conns[rng.random_range(0..conns.len())];
            cluster.send(who, "PUB news\r\n\r\nx\r\n.\r\n");
            published += 1;
            cluster.step(&mut |_| rng.random_bool(0.3));
        }
        // The signal reaches the shards one by one, while mail is still moving.
        let mut order: Vec<usize> = (0..shards).collect();
        order.sort_by_key(|_| rng.random::<u32>());
        let mut drained_at: HashMap<usize, HashMap<usize, usize>> = HashMap::new();
        let mut pending_signals = order.into_iter();
        loop {
            if rng.random_bool(0.5) {
                if let Some(s) = pending_signals.next() {
                    cluster.shards[s].begin_drain();
                }
            }
            let moved = cluster.step(&mut |_| rng.random_bool(0.5));
            for &c in &conns {
                *got.entry(c).or_default() += cluster.received(c).len();
            }
            for s in 0..shards {
                if cluster.shards[s].drained() && !drained_at.contains_key(&s) {
                    drained_at.insert(s, got.clone());
                }
            }
            if !moved && pending_signals.len() == 0 && drained_at.len() == shards {
                break;
            }
            if !moved && pending_signals.len() == 0 {
                cluster.settle();
            }
        }
        for &c in &conns {
            assert_eq!(got[&c], published, "seed {seed}: connection {c} missed messages");
            let shard = cluster.conns[c].as_ref().unwrap().id.shard.index();
            assert_eq!(
                drained_at[&shard][&c], published,
                "seed {seed}: shard {shard} drained before connection {c} had everything"
            );
        }
    }
}
