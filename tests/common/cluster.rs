//! Checks nothing by itself: the cluster harness (a nats-server and several middleman nodes
//! joined through it), and the cluster mode of `Server` (`MIDDLEMAN_TEST_NODES=2`).
//!
//! What it is: process management and routing of test connections to nodes. Each node is a
//! plain `Server` (one process, two shards, 127.0.0.1:0) started with `--cluster-nats`, a
//! distinct `--node-name` and a per-harness `--cluster-prefix`; a node is ready when it has
//! logged `joined cluster` and printed its listening line. What it is not: a NATS client.
//!
//! Invariants of the cluster mode of `Server` (two nodes, two shards each): a connection the
//! harness hands out for shard `s` lives on node `s % 2` *and* on shard `s` there, so "peers on
//! different shards" in the single-node suites become "peers on different nodes", and a peer
//! `service_on(x.shard())` shares both node and shard with `x` (what `Marker` needs). Every
//! test that takes two or more connections must have used both nodes (checked on drop).

use std::cell::{Cell, RefCell};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::nats::NatsServer;
use super::{msg, tell, unique, Client, Server, CLIENT_KEY, SERVICE_KEY};

/// The shards of every node the harness starts (`--shards 2`, as `Server::start_single`).
pub const SHARDS: u16 = 2;
/// How long a node gets to join and listen (NATS connect, KV buckets, grants history).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// `MIDDLEMAN_TEST_NODES` as a node count above one, `None` for the single-node default.
/// Panics on a value the harness cannot honour, so a typo never silently runs single-node.
pub fn test_nodes() -> Option<usize> {
    let text = std::env::var("MIDDLEMAN_TEST_NODES").ok()?;
    match text.trim() {
        "" | "1" => None,
        "2" => Some(2),
        other => panic!("MIDDLEMAN_TEST_NODES={other:?}: the harness supports 1 or 2 nodes"),
    }
}

/// A cluster prefix unique to this process and call, so tests may share one NATS.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("t{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The flags that join a node to the cluster `prefix` on `nats_url` as `name`.
pub fn node_flags(nats_url: &str, prefix: &str, name: &str) -> Vec<String> {
    ["--cluster-nats", nats_url, "--node-name", name, "--cluster-prefix", prefix]
        .map(str::to_owned)
        .to_vec()
}

/// Starts one node with the default keys and waits until it has joined and listens.
pub fn start_node(nats_url: &str, prefix: &str, name: &str, extra: &[&str]) -> Server {
    start_node_with_keys(nats_url, prefix, name, &[SERVICE_KEY], &[CLIENT_KEY], extra)
}

pub fn start_node_with_keys(
    nats_url: &str,
    prefix: &str,
    name: &str,
    service_keys: &[&str],
    client_keys: &[&str],
    extra: &[&str],
) -> Server {
    let flags = node_flags(nats_url, prefix, name);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(extra);
    let server = Server::start_single(service_keys, client_keys, &args);
    // The node logs `joined cluster` before it prints its listening line; the log is read by
    // another thread, so it may still be on its way when the listening line has arrived.
    let log = server.log_when(|log| log.contains("joined cluster"));
    assert!(
        log.contains("joined cluster"),
        "node {name} listens but never logged `joined cluster`; its log:\n{log}"
    );
    server
}

/// What a node that refused to start printed, and how it ended.
pub struct Refused {
    pub status: std::process::ExitStatus,
    /// stdout and stderr together.
    pub output: String,
}

/// Runs a node that is expected to refuse to start; panics if it is still running after
/// `JOIN_TIMEOUT` (it is killed then) or if it printed a listening line.
pub fn start_node_expecting_refusal(nats_url: &str, prefix: &str, name: &str) -> Refused {
    let flags = node_flags(nats_url, prefix, name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_middleman"))
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--service-key", SERVICE_KEY])
        .args(["--client-key", CLIENT_KEY])
        .args(&flags)
        .env_remove("MIDDLEMAN_SERVICE_KEYS")
        .env_remove("MIDDLEMAN_CLIENT_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the middleman binary");
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "node {name} did not exit within {JOIN_TIMEOUT:?}; it printed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("collect output");
    let output =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!output.contains("listening on"), "node {name} listened before refusing:\n{output}");
    Refused { status, output }
}

/// A nats-server and the nodes joined through it, for `tests/it_cluster.rs`.
pub struct Cluster {
    /// Declared first so the nodes are stopped before their NATS.
    pub nodes: Vec<Server>,
    pub nats: NatsServer,
    pub prefix: String,
    extra: Vec<String>,
}

impl Cluster {
    /// A nats-server with JetStream and `nodes` nodes `n0`, `n1` ..., each with `extra` flags.
    pub fn start(nodes: usize, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            nats: NatsServer::start(),
            prefix: unique_prefix(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..nodes {
            cluster.add_node();
        }
        cluster
    }

    /// Starts one more node (`n<index>`) with the cluster's flags; returns its index.
    pub fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let node = start_node(&self.nats.url(), &self.prefix, &format!("n{index}"), &extra);
        self.nodes.push(node);
        index
    }

    pub fn node(&self, index: usize) -> &Server {
        &self.nodes[index]
    }
}

/// The admin port a node printed (`admin on http://127.0.0.1:PORT`); the node must have been
/// started with `--admin-listen 127.0.0.1:0`.
pub fn admin_port(node: &Server) -> u16 {
    let rest = node
        .stdout_line("admin on http://127.0.0.1:")
        .expect("the node printed no `admin on http://127.0.0.1:PORT` line");
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or_else(|_| panic!("bad admin line {rest:?}"))
}

// ---------------------------------------------------------------------------------------------
// The cluster mode of `Server`
// ---------------------------------------------------------------------------------------------

/// What a `Server` in cluster mode holds besides its own process (node 0).
pub struct Peers {
    /// Nodes 1.. (node 0 is the `Server` itself). Declared before `nats` so they stop first.
    others: Vec<Server>,
    nats: NatsServer,
    /// Which shard `connect` (no shard asked) hands out next: they alternate.
    next: Cell<u16>,
    /// Connections handed out to the test, per node (relays not counted).
    handed: RefCell<Vec<usize>>,
    /// `barriers[node][owner]`: a topic owned by shard `owner` on which node `node`'s relays
    /// publish and every other node's relays subscribe.
    barriers: Vec<Vec<String>>,
}

impl Peers {
    /// Starts a nats-server and `nodes` nodes with these keys and flags; returns node 0 with
    /// the others attached.
    pub fn start(
        nodes: usize,
        service_keys: &[&str],
        client_keys: &[&str],
        extra: &[&str],
    ) -> Server {
        assert!(
            !extra.contains(&"--shards"),
            "cluster mode keeps --shards 2 (the shard-to-node mapping relies on it)"
        );
        let nats = NatsServer::start();
        let prefix = unique_prefix();
        let mut started: Vec<Server> = (0..nodes)
            .map(|i| {
                start_node_with_keys(
                    &nats.url(),
                    &prefix,
                    &format!("n{i}"),
                    service_keys,
                    client_keys,
                    extra,
                )
            })
            .collect();
        let mut first = started.remove(0);
        let placement = middleman::shard::topics::Placement::new(usize::from(SHARDS));
        let barriers = (0..nodes)
            .map(|node| {
                (0..SHARDS)
                    .map(|owner| {
                        (0u32..)
                            .map(|i| format!("mm-test-barrier-{node}-{i}"))
                            .find(|t| placement.owner(t.as_bytes()).0 == owner)
                            .expect("some topic is owned by every shard")
                    })
                    .collect()
            })
            .collect();
        first.cluster = Some(Box::new(Peers {
            others: started,
            nats,
            next: Cell::new(0),
            handed: RefCell::new(vec![0; nodes]),
            barriers,
        }));
        first
    }

    fn nodes(&self) -> usize {
        self.others.len() + 1
    }

    fn node<'a>(&'a self, this: &'a Server, index: usize) -> &'a Server {
        if index == 0 {
            this
        } else {
            &self.others[index - 1]
        }
    }

    /// A connection for shard `shard` (the next in turn when `None`): on node `shard % nodes`,
    /// on that shard there.
    pub fn connect_spread(
        &self,
        this: &Server,
        key: &str,
        path: &str,
        shard: Option<u16>,
    ) -> Result<Client, String> {
        let shard = shard.unwrap_or_else(|| {
            let s = self.next.get();
            self.next.set((s + 1) % SHARDS);
            s
        });
        assert!(shard < SHARDS, "cluster mode: no shard {shard} (nodes have {SHARDS} shards)");
        let node = usize::from(shard) % self.nodes();
        for _ in 0..32 {
            let mut client = self.node(this, node).try_connect_here(key, path)?;
            if client.shard() == shard {
                client.node = node;
                self.handed.borrow_mut()[node] += 1;
                return Ok(client);
            }
        }
        Err(format!("no connection landed on shard {shard} of node {node} in 32 tries"))
    }

    /// Panics unless a test that took two or more connections used every node.
    pub fn assert_spread(&self) {
        let handed = self.handed.borrow();
        let total: usize = handed.iter().sum();
        assert!(
            total < 2 || handed.iter().all(|&n| n > 0),
            "cluster mode: the test took {total} connections but they landed on nodes as \
             {handed:?}: it did not exercise {} nodes",
            self.nodes()
        );
    }

    /// The cluster form of `Server::settle`: every relay is a service on one shard of one node,
    /// subscribed to the other nodes' barrier topics. In order:
    /// 1. on each node, the single-node settle (every shard tells every other: intra-node mail
    ///    queued before has been handled, so whatever a topic's owner was to hand to the bridge
    ///    is in the bridge's queue);
    /// 2. each node publishes on a barrier topic owned by each shard: it takes the path of that
    ///    owner's earlier PUBs (owner → bridge queue → the `no_echo` NATS connection → the
    ///    other node's bridge → that node's owner → each shard), so it arrives after them;
    /// 3. every relay tells every relay on another node through `MSG:<cid>`: the path of
    ///    directs, `INT` and their answers (the other NATS connection), first in, first out;
    /// 4. step 1 again, for the last intra-node hop of what steps 2 and 3 flushed.
    ///
    /// It rests on NATS keeping one connection's messages in order to one subscriber and on
    /// the bridge keeping their order into a shard's inbox (both documented in
    /// `docs/ARCHITECTURE.md`), which the single-node argument did not need.
    pub fn settle(&self, this: &Server, relays: &mut Vec<Client>) {
        let nodes = self.nodes();
        if relays.is_empty() {
            for node in 0..nodes {
                for shard in 0..SHARDS {
                    let mut relay = self.node(this, node).connect_here_on_shard(SERVICE_KEY, shard);
                    relay.node = node;
                    relays.push(relay);
                }
            }
            for relay in relays.iter_mut() {
                for (node, topics) in self.barriers.iter().enumerate() {
                    if node != relay.node {
                        for topic in topics {
                            relay.send_text(&msg("SUB", topic, &[], ""));
                        }
                    }
                }
                // A SUB is in force cluster-wide before the next message is handled.
                relay.sync();
            }
        }
        let per_node = usize::from(SHARDS);
        let intra = |relays: &mut Vec<Client>| {
            for node in 0..nodes {
                for from in 0..per_node {
                    for to in 0..per_node {
                        if from != to {
                            let (a, b) = pair(relays, node * per_node + from, node * per_node + to);
                            tell(a, b);
                        }
                    }
                }
            }
        };
        intra(relays);
        for node in 0..nodes {
            for topic in &self.barriers[node] {
                let body = format!("barrier {}", unique());
                relays[node * per_node].send_text(&msg("PUB", topic, &[], &body));
                for relay in relays.iter_mut().filter(|r| r.node != node) {
                    let got = relay.recv().parse();
                    assert_eq!(
                        (got.first_line, super::show(&got.body)),
                        (format!("PUB {topic}"), super::show(format!("{body}\r\n").as_bytes())),
                        "cluster settle: barrier from node {node} at a relay on node {}",
                        relay.node
                    );
                }
            }
        }
        for from in 0..relays.len() {
            for to in 0..relays.len() {
                if relays[from].node != relays[to].node {
                    let (a, b) = pair(relays, from, to);
                    tell(a, b);
                }
            }
        }
        intra(relays);
    }
}

/// Two distinct elements of `v`, mutably.
fn pair(v: &mut [Client], a: usize, b: usize) -> (&mut Client, &mut Client) {
    assert_ne!(a, b);
    if a < b {
        let (left, right) = v.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = v.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        // The nodes go before their NATS (field order), so none of them logs a lost NATS.
        self.others.clear();
        self.nats.stop();
    }
}
