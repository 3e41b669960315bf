//! Checks REQ/RES (§5-6): Rid, ReqID, balancing, who may answer, every request error.
//! How: real binary, two shards; requesters and responders placed on chosen shards by cid.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

/// Receives a REQ at `responder` and checks it: first line, the sender's headers in order with
/// `Cid`/`Uid` after them, exactly one decimal `Rid`, the body. Returns the Rid.
fn expect_req(
    responder: &mut Client,
    target: &str,
    sent: &[(&str, &str)],
    requester: &str,
    body: &str,
) -> String {
    let m = responder.recv();
    assert!(!m.binary, "REQ came in a binary frame");
    let p = m.parse();
    assert_eq!(p.first_line, format!("REQ {target}"));
    let rids = p.all("Rid");
    assert_eq!(rids.len(), 1, "exactly one Rid: {:?}", p.headers);
    let rid = rids[0].to_owned();
    assert!(
        !rid.is_empty() && rid.bytes().all(|b| b.is_ascii_digit()),
        "Rid {rid:?} is not decimal"
    );
    let mut expected = owned(sent);
    expected.push(("Cid".into(), requester.into()));
    expected.push(("Uid".into(), String::new()));
    assert_eq!(p.without(&["Rid"]), expected, "REQ headers");
    let wire_body = if body.is_empty() { String::new() } else { format!("{body}\r\n") };
    assert_eq!(show(&p.body), show(wire_body.as_bytes()), "REQ body");
    rid
}

/// Receives a RES at `requester` and checks it: first line, no `Rid`, `Cid`/`Uid` of the
/// responder, exactly one `ReqID` with `req_id` (or none), the other headers in order, the body.
fn expect_res(
    requester: &mut Client,
    target: &str,
    req_id: Option<&str>,
    responder: &str,
    others: &[(&str, &str)],
    body: &str,
) {
    let m = requester.recv();
    assert!(!m.binary, "RES came in a binary frame");
    let p = m.parse();
    assert_eq!(p.first_line, format!("RES {target}"));
    assert!(p.all("Rid").is_empty(), "Rid not removed: {:?}", p.headers);
    assert_eq!(
        p.all("ReqID"),
        req_id.into_iter().collect::<Vec<_>>(),
        "ReqID on the RES: {:?}",
        p.headers
    );
    assert_eq!(p.all("Cid"), vec![responder], "Cid of the RES");
    assert_eq!(p.all("Uid"), vec![""], "Uid of the RES");
    assert_eq!(p.without(&["ReqID", "Cid", "Uid"]), owned(others));
    // Cid and Uid come after the sender's headers.
    let n = p.headers.len();
    assert_eq!(
        (p.headers[n - 2].0.as_str(), p.headers[n - 1].0.as_str()),
        ("Cid", "Uid"),
        "Cid and Uid must be the last headers: {:?}",
        p.headers
    );
    let wire_body = if body.is_empty() { String::new() } else { format!("{body}\r\n") };
    assert_eq!(show(&p.body), show(wire_body.as_bytes()), "RES body");
}

/// A responder for `topic` on `shard`, already registered with everyone who will ask: each of
/// `requesters` got a hand-off after the EREQ.
fn responder(server: &Server, shard: u16, topic: &str, requesters: &mut [&mut Client]) -> Client {
    let mut svc = server.service_on(shard);
    svc.send_text(&msg("EREQ", topic, &[], ""));
    svc.sync();
    for r in requesters.iter_mut() {
        tell(&mut svc, r);
    }
    server.settle();
    svc
}

/// Proves that nothing more is on its way to `requester` or `responder` (the only responder for
/// `topic`): once every shard has answered every other, a fresh REQ must be the next thing the
/// responder gets and its RES the next thing the requester gets. They take the paths earlier
/// REQs and RESs took, so a duplicate or a stray error would come first.
fn round_trip(server: &Server, requester: &mut Client, responder: &mut Client, topic: &str) {
    server.settle_replies();
    let body = format!("round trip {}", unique());
    requester.send_text(&msg("REQ", topic, &[], &body));
    let rid = expect_req(responder, topic, &[], &requester.cid, &body);
    responder.send_text(&msg("RES", topic, &[("Rid", &rid)], &body));
    let cid = responder.cid.clone();
    expect_res(requester, topic, None, &cid, &[], &body);
}

#[test]
fn req_reaches_the_responder_and_res_comes_back_across_shards() {
    let server = Server::start(&[]);
    for (req_shard, resp_shard) in [(0, 1), (1, 0), (0, 0), (1, 1)] {
        let topic = format!("Echo{req_shard}{resp_shard}");
        let mut cli = server.client_on(req_shard);
        let mut svc = responder(&server, resp_shard, &topic, &mut [&mut cli]);
        let sent = [("ReqID", "abc123"), ("X-Trace", "t1"), ("A", "1")];
        cli.send_text(&msg("REQ", &topic, &sent, "ping"));
        let rid = expect_req(&mut svc, &topic, &sent, &cli.cid, "ping");
        // The service does not copy ReqID: the server restores it.
        svc.send_text(&msg("RES", &topic, &[("Rid", &rid), ("X-Answer", "42")], "pong"));
        expect_res(&mut cli, &topic, Some("abc123"), &svc.cid, &[("X-Answer", "42")], "pong");
        // Delivered once each way, and nothing else.
        round_trip(&server, &mut cli, &mut svc, &topic);
    }
}

#[test]
fn reqid_is_restored_once_whether_or_not_the_service_copies_it() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let mut svc = responder(&server, 1, "T", &mut [&mut cli]);

    // Copied verbatim: still exactly one.
    cli.send_text(&msg("REQ", "T", &[("ReqID", "r1")], "a"));
    let rid = expect_req(&mut svc, "T", &[("ReqID", "r1")], &cli.cid, "a");
    svc.send_text(&msg("RES", "T", &[("Rid", &rid), ("ReqID", "r1")], "A"));
    expect_res(&mut cli, "T", Some("r1"), &svc.cid, &[], "A");

    // Copied with another value: the requester's value wins.
    cli.send_text(&msg("REQ", "T", &[("ReqID", "r2")], "b"));
    let rid = expect_req(&mut svc, "T", &[("ReqID", "r2")], &cli.cid, "b");
    svc.send_text(&msg("RES", "T", &[("ReqID", "wrong"), ("Rid", &rid)], "B"));
    expect_res(&mut cli, "T", Some("r2"), &svc.cid, &[], "B");

    // No ReqID on the REQ: none is invented.
    cli.send_text(&msg("REQ", "T", &[], "c"));
    let rid = expect_req(&mut svc, "T", &[], &cli.cid, "c");
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "C"));
    expect_res(&mut cli, "T", None, &svc.cid, &[], "C");
}

#[test]
fn rid_header_name_is_matched_in_any_case_on_res() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(1);
    let mut svc = responder(&server, 0, "T", &mut [&mut cli]);
    cli.send_text(&msg("REQ", "T", &[("ReqID", "q")], ""));
    let rid = expect_req(&mut svc, "T", &[("ReqID", "q")], &cli.cid, "");
    // A Python-style service writes lower-case names with no space.
    svc.send_text(&format!("RES T\nrid:{rid}\nroom:lobby\n\nOK\r\n.\r\n"));
    let p = cli.recv().parse();
    assert_eq!(p.first_line, "RES T");
    assert!(p.all("rid").is_empty(), "Rid not removed: {:?}", p.headers);
    assert_eq!(p.all("ReqID"), vec!["q"]);
    assert_eq!(p.header("room"), Some("lobby"));
    assert_eq!(show(&p.body), show(b"OK\r\n"));
}

#[test]
fn spoofed_rid_on_a_req_is_replaced_by_the_servers() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let mut svc = responder(&server, 1, "T", &mut [&mut cli]);
    cli.send_text(&msg("REQ", "T", &[("Rid", "1"), ("X", "y"), ("rid", "2"), ("cid", "me")], "q"));
    let rid = expect_req(&mut svc, "T", &[("X", "y")], &cli.cid, "q");
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "r"));
    expect_res(&mut cli, "T", None, &svc.cid, &[], "r");
}

#[test]
fn res_body_and_frame_type_are_relayed_exactly() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(1);
    let mut svc = responder(&server, 0, "T", &mut [&mut cli]);
    cli.send_binary(msg("REQ", "T", &[], "bin").as_bytes());
    let m = svc.recv();
    assert!(m.binary, "a binary REQ is delivered in a binary frame");
    let rid = m.parse().header("Rid").unwrap().to_owned();
    let body = "..dot\r\nlf\n\r\n";
    svc.send_binary(format!("RES T\r\nRid: {rid}\r\n\r\n{body}.\r\n").as_bytes());
    let m = cli.recv();
    assert!(m.binary, "a binary RES is delivered in a binary frame");
    assert_eq!(show(&m.parse().body), show(body.as_bytes()));
}

// ---------------------------------------------------------------------------------------------
// Balancing
// ---------------------------------------------------------------------------------------------

#[test]
fn unanswered_requests_split_evenly_between_two_responders() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let mut r0 = responder(&server, 0, "LB", &mut [&mut cli]);
    let mut r1 = responder(&server, 1, "LB", &mut [&mut cli]);
    for i in 0..6 {
        cli.send_text(&msg("REQ", "LB", &[("ReqID", &format!("q{i}"))], ""));
    }
    let mut seen = HashSet::new();
    let mut counts = [0usize; 2];
    for _ in 0..6 {
        let (i, m) = recv_any(&mut [&mut r0, &mut r1]);
        let p = m.parse();
        assert_eq!(p.first_line, "REQ LB");
        let q = p.header("ReqID").unwrap().to_owned();
        assert!(seen.insert(q.clone()), "{q} delivered twice");
        counts[i] += 1;
    }
    assert_eq!(counts, [3, 3], "fewest-in-flight with round-robin ties");
    // No seventh delivery and no error for the requester: once every shard has answered every
    // other, either would be queued ahead of the syncs' replies.
    server.settle_replies();
    r0.sync();
    r1.sync();
    cli.sync();
}

#[test]
fn a_busy_responder_loses_to_an_idle_one_even_when_round_robin_says_otherwise() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let mut rs = [
        responder(&server, 0, "LB", &mut [&mut cli]),
        responder(&server, 1, "LB", &mut [&mut cli]),
    ];
    // q0 goes to one of them (x); q1 must go to the other (y), which has nothing in flight.
    cli.send_text(&msg("REQ", "LB", &[("ReqID", "q0")], ""));
    let (x, m0) = {
        let [a, b] = &mut rs;
        recv_any(&mut [a, b])
    };
    let rid0 = m0.parse().header("Rid").unwrap().to_owned();
    let y = 1 - x;
    cli.send_text(&msg("REQ", "LB", &[("ReqID", "q1")], ""));
    let m1 = rs[y].recv().parse();
    assert_eq!(m1.header("ReqID"), Some("q1"), "q1 went to the idle responder");
    // Not to x as well: once every shard has answered every other, it would be queued ahead
    // of x's sync.
    server.settle_replies();
    rs[x].sync();
    // y answers q1: now x has one in flight and y none. Round-robin alone would pick x next.
    let rid1 = m1.header("Rid").unwrap().to_owned();
    rs[y].send_text(&msg("RES", "LB", &[("Rid", &rid1)], "a1"));
    let cid_y = rs[y].cid.clone();
    expect_res(&mut cli, "LB", Some("q1"), &cid_y, &[], "a1");
    cli.send_text(&msg("REQ", "LB", &[("ReqID", "q2")], ""));
    let m2 = rs[y].recv().parse();
    assert_eq!(
        m2.header("ReqID"),
        Some("q2"),
        "q2 must go to the responder with nothing in flight"
    );
    server.settle_replies();
    rs[x].sync();
    // x can still answer q0.
    rs[x].send_text(&msg("RES", "LB", &[("Rid", &rid0)], "a0"));
    let cid_x = rs[x].cid.clone();
    expect_res(&mut cli, "LB", Some("q0"), &cid_x, &[], "a0");
}

// ---------------------------------------------------------------------------------------------
// Who may answer
// ---------------------------------------------------------------------------------------------

#[test]
fn res_from_another_connection_is_no_request_and_the_real_responder_still_answers() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let mut real = responder(&server, 1, "T", &mut [&mut cli]);
    let mut other_service = server.service_on(0);
    cli.send_text(&msg("REQ", "T", &[("ReqID", "r")], "q"));
    let rid = expect_req(&mut real, "T", &[("ReqID", "r")], &cli.cid, "q");

    other_service.send_text(&msg("RES", "T", &[("Rid", &rid)], "forged"));
    other_service.expect_error("no-request", "No client for request ID  RES T");
    // Another target makes no difference.
    other_service.send_text(&msg("RES", "Other", &[("Rid", &rid)], "forged"));
    other_service.expect_error("no-request", "No client for request ID  RES Other");
    // Nor does the requester answering its own request.
    cli.send_text(&msg("RES", "T", &[("Rid", &rid)], "self"));
    cli.expect_error("no-request", "No client for request ID  RES T");
    // None of the forgeries reached the requester: once every shard has answered every
    // other, they would be queued ahead of the genuine answer, which must come next.
    server.settle_replies();

    real.send_text(&msg("RES", "T", &[("Rid", &rid)], "genuine"));
    expect_res(&mut cli, "T", Some("r"), &real.cid, &[], "genuine");
}

#[test]
fn another_registered_responder_may_not_answer_either() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let mut rs =
        [responder(&server, 0, "T", &mut [&mut cli]), responder(&server, 1, "T", &mut [&mut cli])];
    cli.send_text(&msg("REQ", "T", &[], "q"));
    let (x, m) = {
        let [a, b] = &mut rs;
        recv_any(&mut [a, b])
    };
    let rid = m.parse().header("Rid").unwrap().to_owned();
    let y = 1 - x;
    rs[y].send_text(&msg("RES", "T", &[("Rid", &rid)], "not mine"));
    rs[y].expect_error("no-request", "No client for request ID  RES T");
    // Not relayed: once every shard has answered every other, it would be queued ahead of
    // the real answer, which must come next.
    server.settle_replies();
    rs[x].send_text(&msg("RES", "T", &[("Rid", &rid)], "mine"));
    let cid_x = rs[x].cid.clone();
    expect_res(&mut cli, "T", None, &cid_x, &[], "mine");
}

#[test]
fn res_twice_the_second_gets_no_request() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(1);
    let mut svc = responder(&server, 0, "T", &mut [&mut cli]);
    cli.send_text(&msg("REQ", "T", &[], "q"));
    let rid = expect_req(&mut svc, "T", &[], &cli.cid, "q");
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "first"));
    expect_res(&mut cli, "T", None, &svc.cid, &[], "first");
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "second"));
    svc.expect_error("no-request", "No client for request ID  RES T");
    // The second was not relayed: it would be queued ahead of the sync's reply.
    server.settle_replies();
    cli.sync();
}

#[test]
fn res_without_rid_is_malformed() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(1);
    let mut svc = responder(&server, 0, "T", &mut [&mut cli]);
    cli.send_text(&msg("REQ", "T", &[], "q"));
    let rid = expect_req(&mut svc, "T", &[], &cli.cid, "q");
    svc.send_text(&msg("RES", "T", &[("X", "1")], "no rid"));
    svc.expect_malformed();
    // Nothing was relayed and the pending request is untouched: the next RES from the same
    // responder (the same path) is the next thing the requester gets.
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "ok"));
    expect_res(&mut cli, "T", None, &svc.cid, &[], "ok");
}

#[test]
fn res_with_a_non_numeric_rid_is_an_error() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    for bad in ["abc", "", "-1", "1.5", "99999999999999999999999"] {
        svc.send_text(&msg("RES", "T", &[("Rid", bad)], ""));
        let p = svc.recv().parse();
        assert_eq!(p.first_line, "PUB ERROR", "Rid {bad:?}");
        let code = p.header("Code").unwrap_or_default().to_owned();
        assert!(code == "malformed" || code == "no-request", "Rid {bad:?} got code {code:?}");
    }
    svc.sync();
}

#[test]
fn res_with_an_unknown_rid_is_no_request() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(1);
    for rid in ["0", "1", "2", "3", "999999999", "18446744073709551615"] {
        svc.send_text(&msg("RES", "T", &[("Rid", rid)], ""));
        svc.expect_error("no-request", "No client for request ID  RES T");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors instead of silence
// ---------------------------------------------------------------------------------------------

#[test]
fn req_with_no_responder_gets_no_responder() {
    let server = Server::start(&[]);
    for shard in [0, 1] {
        let mut svc = server.service_on(shard);
        svc.send_text(&msg("REQ", "Nobody", &[("ReqID", "r1")], "hi"));
        svc.expect_error_with_req_id("no-responder", "r1", "No responder for REQ Nobody");
        svc.send_text(&msg("REQ", "Nobody", &[], "hi"));
        svc.expect_error("no-responder", "No responder for REQ Nobody");
        // One error per REQ: a third REQ's error (the same path) comes next.
        svc.send_text(&msg("REQ", "Nobody", &[("ReqID", "r3")], "hi"));
        svc.expect_error_with_req_id("no-responder", "r3", "No responder for REQ Nobody");
    }
}

#[test]
fn req_after_every_responder_left_gets_no_responder() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let svc = responder(&server, 1, "T", &mut [&mut cli]);
    drop(svc);
    // The first REQ may race the server noticing the close; either error is fine, never silence.
    cli.send_text(&msg("REQ", "T", &[("ReqID", "a")], ""));
    let first = cli.recv_text();
    assert!(
        first == error("no-responder", Some("a"), "No responder for REQ T")
            || first == error("responder-lost", Some("a"), "Responder lost for REQ T"),
        "first REQ after the responder left: {first:?}"
    );
    // The grant outlives the service (the client is not refused) but nobody answers.
    cli.send_text(&msg("REQ", "T", &[("ReqID", "b")], ""));
    cli.expect_error_with_req_id("no-responder", "b", "No responder for REQ T");
    // A new responder is not handed an old request.
    let mut again = responder(&server, 0, "T", &mut [&mut cli]);
    // An old request would have been assigned when the registration reached T's owner, ahead
    // of this REQ on the same path: this one must be the first the new responder gets.
    cli.send_text(&msg("REQ", "T", &[("ReqID", "c")], "new"));
    expect_req(&mut again, "T", &[("ReqID", "c")], &cli.cid, "new");
}

#[test]
fn responder_disconnecting_before_answering_gives_responder_lost() {
    let server = Server::start(&[]);
    for (req_shard, resp_shard) in [(0, 1), (1, 0), (0, 0)] {
        let topic = format!("Lost{req_shard}{resp_shard}");
        let mut a = server.client_on(req_shard);
        let mut b = server.client_on(1 - req_shard);
        let mut svc = responder(&server, resp_shard, &topic, &mut [&mut a, &mut b]);
        a.send_text(&msg("REQ", &topic, &[("ReqID", "qa")], ""));
        b.send_text(&msg("REQ", &topic, &[], ""));
        let _ = svc.recv();
        let _ = svc.recv();
        drop(svc);
        a.expect_error_with_req_id(
            "responder-lost",
            "qa",
            &format!("Responder lost for REQ {topic}"),
        );
        b.expect_error("responder-lost", &format!("Responder lost for REQ {topic}"));
        // One error each: once every shard has answered every other, a second would be
        // queued ahead of the syncs' replies.
        server.settle_replies();
        a.sync();
        b.sync();
    }
}

#[test]
fn requests_move_to_the_remaining_responder_after_one_leaves() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(0);
    let r0 = responder(&server, 0, "T", &mut [&mut cli]);
    let mut r1 = responder(&server, 1, "T", &mut [&mut cli]);
    let r0_cid = r0.cid.clone();
    drop(r0);
    // Sent at once, the REQ races the broker noticing the close: it reaches r1, or it went to
    // r0 and the requester hears `responder-lost`. One of the two must happen.
    cli.send_text(&msg("REQ", "T", &[("ReqID", "q0")], ""));
    let (who, m) = recv_any(&mut [&mut cli, &mut r1]);
    if who == 0 {
        assert_eq!(
            show(&m.data),
            show(error("responder-lost", Some("q0"), "Responder lost for REQ T").as_bytes())
        );
    } else {
        let rid = m.parse().header("Rid").unwrap().to_owned();
        r1.send_text(&msg("RES", "T", &[("Rid", &rid)], "ok"));
        expect_res(&mut cli, "T", Some("q0"), &r1.cid, &[], "ok");
    }
    // Once the broker has forgotten r0 and its unregistration has reached T's owner, every
    // REQ goes to r1.
    server.await_forgotten(&mut r1, &r0_cid);
    server.settle_replies();
    for i in 1..=4 {
        let q = format!("q{i}");
        cli.send_text(&msg("REQ", "T", &[("ReqID", &q)], ""));
        let rid = expect_req(&mut r1, "T", &[("ReqID", &q)], &cli.cid, "");
        r1.send_text(&msg("RES", "T", &[("Rid", &rid)], "ok"));
        expect_res(&mut cli, "T", Some(&q), &r1.cid, &[], "ok");
    }
}

#[test]
fn unanswered_request_times_out_and_a_late_res_is_no_request() {
    let server = Server::start(&["--request-timeout", "500ms"]);
    let mut cli = server.client_on(0);
    let mut svc = responder(&server, 1, "Slow", &mut [&mut cli]);
    let start = Instant::now();
    cli.send_text(&msg("REQ", "Slow", &[("ReqID", "t1")], "wait"));
    let rid = expect_req(&mut svc, "Slow", &[("ReqID", "t1")], &cli.cid, "wait");
    cli.expect_error_with_req_id("timeout", "t1", "Request timed out REQ Slow");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450),
        "timed out after {elapsed:?}, before the 500ms timeout"
    );
    assert!(elapsed < Duration::from_millis(2500), "500ms timeout took {elapsed:?}");
    svc.send_text(&msg("RES", "Slow", &[("Rid", &rid)], "too late"));
    svc.expect_error("no-request", "No client for request ID  RES Slow");
    // The late RES was not relayed: it would be queued ahead of the sync's reply.
    server.settle_replies();
    cli.sync();
}

#[test]
fn answered_request_does_not_time_out_later() {
    let server = Server::start(&["--request-timeout", "500ms"]);
    let mut cli = server.client_on(1);
    let mut svc = responder(&server, 0, "T", &mut [&mut cli]);
    cli.send_text(&msg("REQ", "T", &[("ReqID", "x")], ""));
    let rid = expect_req(&mut svc, "T", &[("ReqID", "x")], &cli.cid, "");
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "in time"));
    expect_res(&mut cli, "T", Some("x"), &svc.cid, &[], "in time");
    // A second REQ, left unanswered, times out after the first one's deadline would have
    // passed; the requester's shard expires requests in deadline order and queues the
    // errors in that order, so its timeout must be the next message, with no `timeout` for x
    // ahead of it.
    cli.send_text(&msg("REQ", "T", &[("ReqID", "y")], ""));
    expect_req(&mut svc, "T", &[("ReqID", "y")], &cli.cid, "");
    cli.expect_error_with_req_id("timeout", "y", "Request timed out REQ T");
}

#[test]
fn request_timeout_zero_waits_forever() {
    // The broker's keep-alive pings are its own clock: a quiet connection is pinged only an
    // interval after it was last heard from, and the ping is queued behind anything queued
    // for it before, such as a `timeout` error.
    let server = Server::start(&["--request-timeout", "0", "--ping-interval", "300ms"]);
    let mut cli = server.client_on(0);
    let mut svc = responder(&server, 1, "T", &mut [&mut cli]);
    cli.send_text(&msg("REQ", "T", &[("ReqID", "z")], ""));
    let rid = expect_req(&mut svc, "T", &[("ReqID", "z")], &cli.cid, "");
    // Two pings: at least two intervals have passed at the requester's shard with no error.
    // The responder reads (and so answers) its own first ping in between: a responder silent
    // for two intervals would rightly be closed, failing the request with `responder-lost`.
    cli.expect_ping(RECV_TIMEOUT);
    svc.expect_ping(RECV_TIMEOUT);
    // The pong goes out with the next write; a SUB is silent for a service and a sign of life.
    svc.send_text(&msg("SUB", "alive", &[], ""));
    cli.expect_ping(RECV_TIMEOUT);
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "eventually"));
    expect_res(&mut cli, "T", Some("z"), &svc.cid, &[], "eventually");
}

#[test]
fn res_for_a_requester_that_left_is_dropped_silently() {
    let mut server = Server::start(&[]);
    for (req_shard, resp_shard) in [(0, 1), (1, 1)] {
        let mut cli = server.client_on(req_shard);
        let topic = format!("Gone{req_shard}{resp_shard}");
        let mut svc = responder(&server, resp_shard, &topic, &mut [&mut cli]);
        cli.send_text(&msg("REQ", &topic, &[], "q"));
        let rid = expect_req(&mut svc, &topic, &[], &cli.cid, "q");
        let cid = cli.cid.clone();
        drop(cli);
        // The broker has run its clean-up for the requester (and once every shard has
        // answered every other, the clean-up's mail to T's owner and on to the responder's
        // shard has been handled too).
        server.await_forgotten(&mut svc, &cid);
        server.settle_replies();
        // The RES is accepted without an error (an error would be queued ahead of the sync's
        // reply) and goes nowhere.
        svc.send_text(&msg("RES", &topic, &[("Rid", &rid)], "nobody home"));
        svc.sync();
        // Accepted once: the request is forgotten now.
        svc.send_text(&msg("RES", &topic, &[("Rid", &rid)], "again"));
        svc.expect_error("no-request", &format!("No client for request ID  RES {topic}"));
    }
    server.assert_serving();
}
