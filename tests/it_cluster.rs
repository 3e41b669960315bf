//! Checks issue 9's cluster rules: PUB, SUB, REQ/RES, grants, `MSG:<cid>`, `INT UID` across
//! nodes; a NATS restart mid-traffic, a SIGKILLed node, a late node, a duplicate node name.
//! How: a real nats-server with JetStream and two or three real `middleman` nodes (two shards
//! each) joined through it (tests/common/cluster.rs); every wait is on a reply, a log line or
//! a metric, with a generous bound, never a fixed sleep.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::cluster::{admin_port, start_node_expecting_refusal, Cluster};
use common::*;

/// How long a cross-node effect that the broker does not confirm may take (NATS back, a dead
/// node's requests failing): generous, as the machine is shared.
const EVENTUAL: Duration = Duration::from_secs(20);

/// A service on `node`'s `shard` subscribed to `topic`. After its round trip the SUB is in
/// force on every node (issue 9: before the issuing connection's next message is handled).
fn subscriber(cluster: &Cluster, node: usize, shard: u16, topic: &str) -> Client {
    let mut sub = cluster.node(node).service_on(shard);
    sub.send_text(&msg("SUB", topic, &[], ""));
    sub.sync();
    sub
}

/// A service on `node`'s `shard` registered for `topic`, in force everywhere after its round
/// trip.
fn responder(cluster: &Cluster, node: usize, shard: u16, topic: &str) -> Client {
    let mut svc = cluster.node(node).service_on(shard);
    svc.send_text(&msg("EREQ", topic, &[], ""));
    svc.sync();
    svc
}

/// The whole message `PUB <topic>` with header `N: <n>` and `body`, as bytes.
fn numbered(topic: &str, n: usize, body: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {topic}\r\nN: {n}\r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

/// What a subscriber receives for `numbered(topic, n, body)` sent by `cid`.
fn numbered_relayed(topic: &str, n: usize, cid: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {topic}\r\nN: {n}\r\nCid: {cid}\r\nUid: \r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

/// Body `n` of a stream: odd ones binary with bytes that are not UTF-8, even ones text.
fn stream_body(n: usize) -> (bool, Vec<u8>) {
    if n % 2 == 1 {
        let mut body = format!("binary {n} ").into_bytes();
        body.extend_from_slice(&[0x00, 0xff, 0xfe, 0x80, b'\t', 0x7f, b'a' + (n % 26) as u8]);
        (true, body)
    } else {
        (false, format!("text {n} ünïcødé * > . end").into_bytes())
    }
}

/// A REQ as the requester sends it.
fn req(topic: &str, req_id: &str, body: &str) -> String {
    msg("REQ", topic, &[("ReqID", req_id)], body)
}

/// The Rid of a REQ a responder received, after checking it is a `REQ topic`.
fn rid_of(m: &Received, topic: &str) -> String {
    let p = m.parse();
    assert_eq!(p.first_line, format!("REQ {topic}"), "expected a REQ: {m:?}");
    let rids = p.all("Rid");
    assert_eq!(rids.len(), 1, "exactly one Rid: {m:?}");
    rids[0].to_owned()
}

/// The next message at `requester` must be the RES for `req_id` from `responder` with `body`.
fn expect_res(requester: &mut Client, topic: &str, req_id: &str, responder: &str, body: &str) {
    let m = requester.recv();
    let p = m.parse();
    assert_eq!(p.first_line, format!("RES {topic}"), "expected a RES: {m:?}");
    assert!(p.all("Rid").is_empty(), "Rid not removed: {m:?}");
    assert_eq!(p.all("ReqID"), vec![req_id], "ReqID restored: {m:?}");
    assert_eq!(p.all("Cid"), vec![responder], "Cid of the RES: {m:?}");
    assert_eq!(show(&p.body), show(format!("{body}\r\n").as_bytes()), "RES body");
}

/// `GET path` on the admin endpoint: (status line, body).
fn admin_get(port: u16, path: &str) -> (String, String) {
    let response = raw_http(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The value of the unlabelled metric `name` on the admin endpoint, if shown.
fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = admin_get(port, "/metrics");
    body.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Waits (bounded by `EVENTUAL`) until `name` reads `value` on every admin port.
fn await_metric(ports: &[u16], name: &str, value: f64) {
    let deadline = Instant::now() + EVENTUAL;
    for &port in ports {
        loop {
            let now = metric(port, name);
            if now == Some(value) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} on admin port {port} is {now:?}, not {value}, after {EVENTUAL:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PUB / SUB
// ---------------------------------------------------------------------------------------------

#[test]
fn pub_from_either_node_reaches_every_subscriber_once_in_order_byte_exact() {
    let cluster = Cluster::start(2, &[]);
    let topic = "fan.out *>";
    let mut subs = [
        subscriber(&cluster, 0, 1, topic),
        subscriber(&cluster, 0, 0, topic),
        subscriber(&cluster, 1, 0, topic),
        subscriber(&cluster, 1, 1, topic),
    ];
    let mut pubs = [cluster.node(0).service_on(0), cluster.node(1).service_on(1)];
    // A publisher may also be a subscriber: it must get its own messages once, like anyone.
    pubs[1].send_text(&msg("SUB", topic, &[], ""));
    pubs[1].sync();

    const EACH: usize = 250;
    for n in 0..EACH {
        for p in pubs.iter_mut() {
            let (binary, body) = stream_body(n);
            let frame = numbered(topic, n, &body);
            if binary {
                p.send_binary(&frame);
            } else {
                p.send_text(std::str::from_utf8(&frame).unwrap());
            }
        }
    }
    let cids: Vec<String> = pubs.iter().map(|p| p.cid.clone()).collect();
    let mut receivers: Vec<&mut Client> = subs.iter_mut().collect();
    receivers.push(&mut pubs[1]);
    for r in receivers.iter_mut() {
        // Per publisher: 0, 1, 2 ... exactly once each, byte-exact, in the frame type sent.
        let mut next = [0usize; 2];
        for _ in 0..2 * EACH {
            let m = r.recv();
            let p = m.parse();
            let from = cids
                .iter()
                .position(|c| p.header("Cid") == Some(c))
                .unwrap_or_else(|| panic!("a message from nobody expected: {m:?}"));
            let n = next[from];
            assert!(n < EACH, "more than {EACH} messages from {}: {m:?}", cids[from]);
            let (binary, body) = stream_body(n);
            assert_eq!(
                show(&m.data),
                show(&numbered_relayed(topic, n, &cids[from], &body)),
                "message {n} from {} (node {from}) at a subscriber on node {}",
                cids[from],
                r.node
            );
            assert_eq!(m.binary, binary, "frame type of message {n}");
            next[from] += 1;
        }
    }
    // Nothing twice: a marker from each publisher comes next everywhere (one publisher's
    // messages on one topic keep their order, so a late duplicate would be ahead of it).
    for i in 0..2 {
        let marker = Marker::publish(&mut pubs[i], topic);
        for s in subs.iter_mut() {
            s.expect_marker(&marker);
        }
        pubs[1].expect_marker(&marker);
    }
}

#[test]
fn sub_on_one_node_is_in_force_cluster_wide_before_its_next_message() {
    let cluster = Cluster::start(2, &[]);
    let mut publishers = [cluster.node(0).service_on(0), cluster.node(0).service_on(1)];
    for round in 0..20 {
        // A fresh topic each time, so no earlier interest helps; no retry, no sleep: one PUB.
        let topic = format!("fresh-{round}");
        let mut sub = cluster.node(1).service_on((round % 2) as u16);
        sub.send_text(&msg("SUB", &topic, &[], ""));
        // The barrier: a round trip on B only (its own private topic).
        sub.sync();
        let p = &mut publishers[round % 2];
        p.send_text(&msg("PUB", &topic, &[], "once"));
        sub.expect_text(&relayed("PUB", &topic, &[], &p.cid, "", "once"));
    }
    // A client with an ESUB grant is no different.
    let mut svc = cluster.node(1).service_on(0);
    svc.send_text(&msg("ESUB", "granted-sub", &[], ""));
    let mut cli = cluster.node(1).client_on(1);
    tell(&mut svc, &mut cli);
    cli.send_text(&msg("SUB", "granted-sub", &[], ""));
    cli.sync();
    publishers[0].send_text(&msg("PUB", "granted-sub", &[], "for the client"));
    cli.expect_text(&relayed("PUB", "granted-sub", &[], &publishers[0].cid, "", "for the client"));
}

// ---------------------------------------------------------------------------------------------
// REQ / RES
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "not yet: REQ/RES across nodes is not wired (issue 9); run with --ignored to see it fail"]
fn req_is_answered_exactly_once_cluster_wide_by_services_on_both_nodes() {
    let cluster = Cluster::start(2, &[]);
    let topic = "work";
    let mut services = [
        responder(&cluster, 0, 0, topic),
        responder(&cluster, 0, 1, topic),
        responder(&cluster, 1, 0, topic),
        responder(&cluster, 1, 1, topic),
    ];
    let mut requesters = [cluster.node(0).service_on(1), cluster.node(1).service_on(0)];
    const EACH: usize = 150;
    for n in 0..EACH {
        for (i, r) in requesters.iter_mut().enumerate() {
            r.send_text(&req(topic, &format!("r{i}-{n}"), &format!("body {i} {n}")));
        }
    }
    // Every request reaches exactly one service; each answers with the body it got.
    let mut seen = HashSet::new();
    let mut by_node = [0usize; 2];
    // Per requester: how many of its requests a service on the other node answered.
    let mut crossed = [0usize; 2];
    for _ in 0..2 * EACH {
        let mut all: Vec<&mut Client> = services.iter_mut().collect();
        let (i, m) = recv_any(&mut all);
        let rid = rid_of(&m, topic);
        let p = m.parse();
        let req_id = p.header("ReqID").expect("the REQ keeps the requester's ReqID").to_owned();
        let key = (p.header("Cid").unwrap_or_default().to_owned(), req_id);
        assert!(seen.insert(key.clone()), "request {key:?} reached a service twice");
        // services[0..2] are on node 0, services[2..4] on node 1; requesters[k] on node k.
        by_node[i / 2] += 1;
        let from = requesters.iter().position(|r| Some(r.cid.as_str()) == p.header("Cid"));
        let from = from.unwrap_or_else(|| panic!("a REQ from nobody expected: {m:?}"));
        if from != i / 2 {
            crossed[from] += 1;
        }
        let body = String::from_utf8(p.body).unwrap();
        let svc = &mut services[i];
        svc.send_text(&msg("RES", topic, &[("Rid", &rid)], body.trim_end()));
    }
    assert!(by_node.iter().all(|&n| n > 0), "services of both nodes must be used: {by_node:?}");
    // NATS picks a node per request among the nodes with a service: local-only routing would
    // pass the line above, so each requester must have been served across nodes too.
    assert!(
        crossed.iter().all(|&n| n > 0),
        "every requester must be served by the other node's services too: {crossed:?}"
    );
    // Each requester gets each answer once, with its ReqID back (in any order: several
    // services answer).
    for (i, r) in requesters.iter_mut().enumerate() {
        let mut answered = HashSet::new();
        for _ in 0..EACH {
            let m = r.recv();
            let p = m.parse();
            assert_eq!(p.first_line, format!("RES {topic}"), "expected a RES: {m:?}");
            assert!(p.all("Rid").is_empty(), "Rid not removed: {m:?}");
            let req_id = p.header("ReqID").expect("ReqID restored").to_owned();
            let n: usize = req_id
                .strip_prefix(&format!("r{i}-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("requester {i} got someone else's answer: {m:?}"));
            assert_eq!(show(&p.body), show(format!("body {i} {n}\r\n").as_bytes()));
            assert!(answered.insert(n), "request {req_id} answered twice");
        }
        // No third answer queued: the round trip's reply comes next.
        r.sync();
    }
    for s in services.iter_mut() {
        s.sync();
    }
    println!("requests served per node: {by_node:?}");
}

#[test]
#[ignore = "not yet: REQ/RES across nodes is not wired (issue 9); run with --ignored to see it fail"]
fn res_from_another_connection_on_either_node_is_no_request() {
    let cluster = Cluster::start(2, &[]);
    let mut requester = cluster.node(0).service_on(0);
    let mut real = responder(&cluster, 1, 1, "T");
    let mut same_node = cluster.node(1).service_on(0);
    let mut other_node = cluster.node(0).service_on(1);
    requester.send_text(&req("T", "q1", "question"));
    let m = real.recv();
    let rid = rid_of(&m, "T");
    for forger in [&mut same_node, &mut other_node, &mut requester] {
        forger.send_text(&msg("RES", "T", &[("Rid", &rid)], "forged"));
        forger.expect_error("no-request", "No client for request ID  RES T");
    }
    real.send_text(&msg("RES", "T", &[("Rid", &rid)], "genuine"));
    // The genuine answer is the first thing the requester gets: no forgery went through.
    expect_res(&mut requester, "T", "q1", &real.cid, "genuine");
    // Answered once: a second RES with the same Rid is refused too.
    real.send_text(&msg("RES", "T", &[("Rid", &rid)], "again"));
    real.expect_error("no-request", "No client for request ID  RES T");
    requester.sync();
}

#[test]
fn req_with_no_service_anywhere_is_no_responder() {
    let cluster = Cluster::start(2, &[]);
    // A service for another topic exists: only this topic's services count.
    let _other = responder(&cluster, 1, 0, "Other");
    for node in 0..2 {
        for shard in 0..2 {
            let mut r = cluster.node(node).service_on(shard);
            r.send_text(&req("Nobody", "n1", ""));
            r.expect_error_with_req_id("no-responder", "n1", "No responder for REQ Nobody");
        }
    }
}

#[test]
#[ignore = "not yet: REQ/RES across nodes is not wired (issue 9); run with --ignored to see it fail"]
fn chosen_service_on_the_other_node_disconnecting_gives_responder_lost() {
    let cluster = Cluster::start(2, &[]);
    for (req_node, shard) in [(0, 0), (1, 1)] {
        let topic = format!("Lost{req_node}");
        let mut requester = cluster.node(req_node).service_on(shard);
        let svc = responder(&cluster, 1 - req_node, shard, &topic);
        let mut svc = svc;
        requester.send_text(&req(&topic, "l1", "wait for me"));
        let _ = rid_of(&svc.recv(), &topic);
        drop(svc);
        requester.expect_error_with_req_id(
            "responder-lost",
            "l1",
            &format!("Responder lost for REQ {topic}"),
        );
        requester.sync();
    }
}

#[test]
#[ignore = "not yet: REQ/RES across nodes is not wired (issue 9); run with --ignored to see it fail"]
fn unanswered_cross_node_request_times_out_and_a_late_res_is_no_request() {
    let cluster = Cluster::start(2, &["--request-timeout", "500ms"]);
    let mut requester = cluster.node(0).service_on(1);
    let mut svc = responder(&cluster, 1, 0, "Slow");
    let start = Instant::now();
    requester.send_text(&req("Slow", "t1", "wait"));
    let rid = rid_of(&svc.recv(), "Slow");
    requester.expect_error_with_req_id("timeout", "t1", "Request timed out REQ Slow");
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "timed out after {elapsed:?}, before 500ms");
    svc.send_text(&msg("RES", "Slow", &[("Rid", &rid)], "too late"));
    svc.expect_error("no-request", "No client for request ID  RES Slow");
    requester.sync();
}

// ---------------------------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------------------------

/// The granting service on node 0 makes EPUB/ESUB/EREQ for these topics; returns it.
fn grant_all(cluster: &Cluster, topics: [&str; 3]) -> Client {
    let mut svc = cluster.node(0).service_on(0);
    svc.send_text(&msg("EPUB", topics[0], &[], ""));
    svc.send_text(&msg("ESUB", topics[1], &[], ""));
    // EREQ also makes the service a responder for its topic.
    svc.send_text(&msg("EREQ", topics[2], &[], ""));
    svc
}

/// A client on `node` uses the three grants with its first messages: its PUB reaches `sub`
/// (node 0), its SUB takes a PUB from node 0's `svc`, its REQ is answered by `svc`.
fn use_grants(
    cluster: &Cluster,
    node: usize,
    svc: &mut Client,
    sub: &mut Client,
    topics: [&str; 3],
) {
    for shard in 0..2 {
        let mut cli = cluster.node(node).client_on(shard);
        cli.send_text(&msg("PUB", topics[0], &[], "granted pub"));
        cli.send_text(&msg("SUB", topics[1], &[], ""));
        cli.send_text(&req(topics[2], "g1", "granted req"));
        sub.expect_text(&relayed("PUB", topics[0], &[], &cli.cid, "", "granted pub"));
        let rid = rid_of(&svc.recv(), topics[2]);
        svc.send_text(&msg("RES", topics[2], &[("Rid", &rid)], "granted res"));
        expect_res(&mut cli, topics[2], "g1", &svc.cid, "granted res");
        // Its SUB was handled before its REQ, so it is in force everywhere by now.
        svc.send_text(&msg("PUB", topics[1], &[], "to the client"));
        cli.expect_text(&relayed("PUB", topics[1], &[], &svc.cid, "", "to the client"));
    }
}

#[test]
#[ignore = "not yet: EPUB/ESUB hold across nodes; the EREQ part needs REQ/RES across nodes (issue 9); run with --ignored"]
fn grants_on_one_node_are_honoured_on_the_other_from_the_next_message() {
    let cluster = Cluster::start(2, &[]);
    let topics = ["g.pub", "g sub", "g>req"];
    let mut sub = subscriber(&cluster, 0, 1, topics[0]);
    // Before the grants, a client on node 1 is refused (the control that makes the rest count).
    let mut early = cluster.node(1).client_on(0);
    early.send_text(&msg("PUB", topics[0], &[], "too early"));
    early.expect_error("not-trusted", &format!("Not trusted PUB {}", topics[0]));
    // The hand-off goes over a plain topic the client subscribed to (granted on its own node),
    // so this test needs only the PUB/SUB and grant flows, not `MSG:<cid>` across nodes.
    let mut local_granter = cluster.node(1).service_on(0);
    local_granter.send_text(&msg("ESUB", "handoff", &[], ""));
    let mut cli = cluster.node(1).client_on(1);
    tell(&mut local_granter, &mut cli);
    cli.send_text(&msg("SUB", "handoff", &[], ""));
    cli.sync();
    let mut svc = grant_all(&cluster, topics);
    // The service's next message is a hand-off to the client on node 1: when that client reads
    // it, the grants are in force there.
    svc.send_text(&msg("PUB", "handoff", &[], "go"));
    cli.expect_text(&relayed("PUB", "handoff", &[], &svc.cid, "", "go"));
    cli.send_text(&msg("PUB", topics[0], &[], "right after"));
    sub.expect_text(&relayed("PUB", topics[0], &[], &cli.cid, "", "right after"));
    cli.sync();
    use_grants(&cluster, 1, &mut svc, &mut sub, topics);
}

#[test]
#[ignore = "not yet: EPUB/ESUB hold on a late node; its EREQ part needs REQ/RES across nodes (issue 9); run with --ignored"]
fn a_node_started_after_the_grants_honours_them_at_once() {
    let mut cluster = Cluster::start(2, &[]);
    let topics = ["late.pub", "late sub", "late>req"];
    let mut sub = subscriber(&cluster, 0, 1, topics[0]);
    let mut svc = grant_all(&cluster, topics);
    svc.sync();
    let late = cluster.add_node();
    use_grants(&cluster, late, &mut svc, &mut sub, topics);
}

// ---------------------------------------------------------------------------------------------
// MSG:<cid> and INT UID
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "not yet: MSG:<cid> and INT UID across nodes are not wired (issue 9); run with --ignored"]
fn private_topic_and_int_uid_reach_a_connection_on_the_other_node() {
    let cluster = Cluster::start(2, &[]);
    let mut sub = subscriber(&cluster, 0, 0, "T");
    let mut admin = cluster.node(0).service_on(1);
    admin.send_text(&msg("EPUB", "T", &[], ""));
    for shard in 0..2 {
        let mut cli = cluster.node(1).client_on(shard);
        let private = format!("MSG:{}", cli.cid);
        admin.send_text(&msg("PUB", &private, &[("K", "v")], "just for you"));
        cli.expect_text(&relayed("PUB", &private, &[("K", "v")], &admin.cid, "", "just for you"));
        // The same in a binary frame.
        admin.send_binary(msg("PUB", &private, &[], "binary for you").as_bytes());
        cli.expect_binary(
            relayed("PUB", &private, &[], &admin.cid, "", "binary for you").as_bytes(),
        );

        admin.send_text(&msg("INT", "UID", &[("forcid", &cli.cid), ("setuid", "user7")], ""));
        tell(&mut admin, &mut cli);
        cli.send_text(&msg("PUB", "T", &[], "who am i"));
        sub.expect_text(&relayed("PUB", "T", &[], &cli.cid, "user7", "who am i"));
    }
    // The INTs got no reply: the admin's round trip comes next.
    admin.sync();
}

#[test]
fn int_uid_for_a_cid_known_nowhere_is_no_connection_within_a_bounded_wait() {
    let cluster = Cluster::start(2, &[]);
    let mut admin = cluster.node(0).service_on(0);
    // A connection on node 1 that has left.
    let gone = cluster.node(1).client_on(1);
    let cid = gone.cid.clone();
    drop(gone);
    let mut probe = cluster.node(1).service_on(0);
    cluster.node(1).await_forgotten(&mut probe, &cid);
    // A cid that never existed, with node 1's epoch and with an epoch no node has.
    let parsed = middleman::ids::ConnectionId::parse(cid.as_bytes()).expect("a cid");
    let never_node1 = middleman::ids::ConnectionId { local: parsed.local + 1_000_000, ..parsed };
    let never_anywhere =
        middleman::ids::ConnectionId { epoch: parsed.epoch.wrapping_add(7777), ..parsed };
    for target in [cid, never_node1.to_string(), never_anywhere.to_string()] {
        let start = Instant::now();
        admin.send_text(&msg("INT", "UID", &[("forcid", &target), ("setuid", "x")], ""));
        let m = admin.recv_within(Duration::from_secs(5));
        assert_eq!(
            show(&m.data),
            show(error("no-connection", None, "No client for INT UID").as_bytes()),
            "INT UID for {target}"
        );
        println!("no-connection for {target} after {:?}", start.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[test]
fn nats_restart_mid_traffic_keeps_local_delivery_and_cross_node_resumes_with_grants() {
    let mut cluster = Cluster::start(2, &["--admin-listen", "127.0.0.1:0"]);
    let admins = [admin_port(cluster.node(0)), admin_port(cluster.node(1))];
    await_metric(&admins, "middleman_cluster_connected", 1.0);
    for &port in &admins {
        let (status, body) = admin_get(port, "/healthz");
        assert!(status.contains("200") && !body.contains("degraded"), "{status} {body:?}");
    }
    // A local stream on node 0, a cross-node subscriber on node 1, and a grant.
    let mut local_pub = cluster.node(0).service_on(0);
    let mut local_sub = subscriber(&cluster, 0, 1, "local");
    let mut cross_sub = subscriber(&cluster, 1, 0, "cross");
    let mut granter = cluster.node(0).service_on(1);
    granter.send_text(&msg("EPUB", "granted", &[], ""));
    granter.sync();
    let mut n = 0usize;
    let mut local_step = |n: &mut usize, count: usize| {
        for _ in 0..count {
            let body = format!("local {n}");
            local_pub.send_text(&msg("PUB", "local", &[], &body));
            local_sub.expect_text(&relayed("PUB", "local", &[], &local_pub.cid, "", &body));
            *n += 1;
        }
    };
    local_step(&mut n, 50);

    let log_before = cluster.node(0).log().len();
    cluster.nats.stop();
    // While NATS is away: the metric and /healthz say so, local delivery goes on without a gap,
    // and new connections are accepted.
    await_metric(&admins, "middleman_cluster_connected", 0.0);
    for &port in &admins {
        let (status, body) = admin_get(port, "/healthz");
        assert!(body.contains("degraded"), "/healthz while NATS is down: {status} {body:?}");
    }
    local_step(&mut n, 100);
    let mut newcomer = cluster.node(0).service_on(1);
    newcomer.sync();
    // One log line for the change of state (its wording is the broker's).
    let log =
        cluster.node(0).log_when(|log| log[log_before..].to_ascii_lowercase().contains("nats"));
    assert!(
        log[log_before..].to_ascii_lowercase().contains("nats"),
        "no log line for the lost NATS:\n{}",
        &log[log_before..]
    );

    cluster.nats.restart();
    await_metric(&admins, "middleman_cluster_connected", 1.0);
    for &port in &admins {
        let (status, body) = admin_get(port, "/healthz");
        assert!(status.contains("200") && !body.contains("degraded"), "{status} {body:?}");
    }
    local_step(&mut n, 50);

    // Cross-node delivery resumes by itself (the subscription from before the outage is
    // re-established): probes until one arrives, then everything after it in order.
    let deadline = Instant::now() + EVENTUAL;
    let mut probe = 0usize;
    let first_seen = loop {
        local_pub.send_text(&msg("PUB", "cross", &[], &format!("probe {probe}")));
        probe += 1;
        if let Event::Message(m) = cross_sub.next_event(Duration::from_millis(100)) {
            break m;
        }
        assert!(Instant::now() < deadline, "cross-node delivery did not resume in {EVENTUAL:?}");
    };
    let first: usize = String::from_utf8_lossy(&first_seen.parse().body)
        .trim()
        .strip_prefix("probe ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected a probe, got {first_seen:?}"));
    for k in first + 1..probe {
        cross_sub.expect_text(&relayed(
            "PUB",
            "cross",
            &[],
            &local_pub.cid,
            "",
            &format!("probe {k}"),
        ));
    }
    for k in 0..50 {
        let body = format!("after {k}");
        local_pub.send_text(&msg("PUB", "cross", &[], &body));
        cross_sub.expect_text(&relayed("PUB", "cross", &[], &local_pub.cid, "", &body));
    }
    // The grant survived: a new client on node 1 publishes with it; its PUB reaches node 0.
    let mut granted_sub = subscriber(&cluster, 0, 0, "granted");
    let mut cli = cluster.node(1).client_on(1);
    cli.send_text(&msg("PUB", "granted", &[], "still granted"));
    granted_sub.expect_text(&relayed("PUB", "granted", &[], &cli.cid, "", "still granted"));
    cli.sync();
}

#[test]
#[ignore = "not yet: REQ/RES across nodes is not wired (issue 9); run with --ignored to see it fail"]
fn sigkill_one_node_the_other_serves_and_its_requesters_hear_back() {
    let cluster_extra = ["--request-timeout", "1s"];
    let mut cluster = Cluster::start(2, &cluster_extra);
    let mut requester = cluster.node(0).service_on(0);
    let mut svc = responder(&cluster, 1, 1, "Doomed");
    const N: usize = 5;
    for i in 0..N {
        requester.send_text(&req("Doomed", &format!("d{i}"), ""));
    }
    // All of them are on node 1 (its service has them) when it dies.
    for _ in 0..N {
        let _ = rid_of(&svc.recv(), "Doomed");
    }
    cluster.nodes[1].signal(libc::SIGKILL);
    assert!(cluster.nodes[1].wait_exit(Duration::from_secs(5)).is_some(), "node 1 still runs");
    let mut errors = HashMap::new();
    for _ in 0..N {
        let m = requester.recv_within(Duration::from_secs(10));
        let p = m.parse();
        assert_eq!(p.first_line, "PUB ERROR", "expected an error for a lost request: {m:?}");
        let code = p.header("Code").unwrap_or_default().to_owned();
        assert!(
            code == "responder-lost" || code == "timeout",
            "a request on the dead node must fail with responder-lost or timeout: {m:?}"
        );
        let req_id = p.header("ReqID").expect("the error carries the ReqID").to_owned();
        assert!(errors.insert(req_id.clone(), code).is_none(), "{req_id} failed twice");
    }
    // The survivor keeps serving: a round trip, local pub/sub, a new REQ fails cleanly.
    cluster.nodes[0].assert_serving();
    let mut sub = subscriber(&cluster, 0, 1, "alive");
    requester.send_text(&msg("PUB", "alive", &[], "still here"));
    sub.expect_text(&relayed("PUB", "alive", &[], &requester.cid, "", "still here"));
    requester.send_text(&req("Doomed", "after", ""));
    let m = requester.recv_within(Duration::from_secs(10));
    let p = m.parse();
    assert!(
        p.first_line == "PUB ERROR"
            && matches!(p.header("Code"), Some("no-responder" | "timeout"))
            && p.header("ReqID") == Some("after"),
        "a REQ for a topic served only by the dead node: {m:?}"
    );
    println!("errors for the requests on the dead node: {errors:?}");
}

#[test]
fn a_duplicate_node_name_is_refused_at_start_with_a_clear_message() {
    let mut cluster = Cluster::start(1, &[]);
    let refused = start_node_expecting_refusal(&cluster.nats.url(), &cluster.prefix, "n0");
    assert!(!refused.status.success(), "a second `n0` started: {}", refused.output);
    let lower = refused.output.to_ascii_lowercase();
    assert!(
        refused.output.contains("n0")
            && (lower.contains("taken") || lower.contains("already") || lower.contains("in use")),
        "the refusal must name the node and say it is taken:\n{}",
        refused.output
    );
    // The first node is unaffected, and another name joins.
    cluster.nodes[0].assert_serving();
    cluster.add_node();
}
