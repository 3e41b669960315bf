//! Checks permissions (§4): command x role x grant, refusals, UNS, SUB, unknown, INT UID.
//! How: real binary, two shards; a grant is followed by a hand-off (`tell`) before it is used.

mod common;

use common::*;
use middleman::ids::{ConnectionId, ShardId};

// ---------------------------------------------------------------------------------------------
// SUB / UNS
// ---------------------------------------------------------------------------------------------

#[test]
fn service_sub_pub_uns_need_no_grant() {
    let server = Server::start(&[]);
    let mut sub = server.service_on(0);
    let mut publisher = server.service_on(1);
    let mut witness = server.subscriber_on(sub.shard(), "T");
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    server.settle();
    publisher.send_text(&msg("PUB", "T", &[("H", "v")], "one"));
    sub.expect_text(&relayed("PUB", "T", &[("H", "v")], &publisher.cid, "", "one"));
    witness.expect_text(&relayed("PUB", "T", &[("H", "v")], &publisher.cid, "", "one"));

    sub.send_text(&msg("UNS", "T", &[], ""));
    sub.sync();
    server.settle();
    publisher.send_text(&msg("PUB", "T", &[], "two"));
    // The witness on sub's shard has "two", so sub would have it queued ahead of its sync.
    witness.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", "two"));
    sub.sync();
    // No reply to a service's PUB either.
    publisher.sync();
}

#[test]
fn client_sub_without_grant_is_refused_and_not_carried_out() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    for shard in [0, 1] {
        let mut witness = server.subscriber_on(shard, "T");
        let mut cli = server.client_on(shard);
        cli.send_text(&msg("SUB", "T", &[], ""));
        cli.expect_error("not-trusted", "Not trusted: SUB T");
        cli.sync();
        server.settle();
        svc.send_text(&msg("PUB", "T", &[], "secret"));
        // The witness on cli's shard has it, so cli would have it queued ahead of its sync.
        witness.expect_text(&relayed("PUB", "T", &[], &svc.cid, "", "secret"));
        cli.sync();
    }
}

#[test]
fn client_sub_with_esub_grant_works_on_both_shards() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    svc.send_text(&msg("ESUB", "T", &[], ""));
    for shard in [0, 1] {
        let mut cli = server.client_on(shard);
        tell(&mut svc, &mut cli);
        cli.send_text(&msg("SUB", "T", &[], ""));
        cli.sync();
        server.settle();
        svc.send_text(&msg("PUB", "T", &[], "news"));
        cli.expect_text(&relayed("PUB", "T", &[], &svc.cid, "", "news"));
    }
}

#[test]
fn client_uns_needs_no_grant_and_unsubscribes() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(1);
    let mut cli = server.client_on(0);
    let mut witness = server.subscriber_on(cli.shard(), "T");
    // UNS of a topic never subscribed or granted: no error, nothing.
    cli.send_text(&msg("UNS", "Never", &[], ""));
    cli.sync();

    svc.send_text(&msg("ESUB", "T", &[], ""));
    tell(&mut svc, &mut cli);
    cli.send_text(&msg("SUB", "T", &[], ""));
    cli.sync();
    server.settle();
    svc.send_text(&msg("PUB", "T", &[], "before"));
    cli.expect_text(&relayed("PUB", "T", &[], &svc.cid, "", "before"));
    cli.send_text(&msg("UNS", "T", &[], ""));
    cli.sync();
    server.settle();
    svc.send_text(&msg("PUB", "T", &[], "after"));
    // The witness on cli's shard has both, so cli would have "after" queued ahead of its sync.
    witness.expect_text(&relayed("PUB", "T", &[], &svc.cid, "", "before"));
    witness.expect_text(&relayed("PUB", "T", &[], &svc.cid, "", "after"));
    cli.sync();
}

#[test]
fn sub_twice_delivers_once() {
    let server = Server::start(&[]);
    let mut sub = server.service_on(0);
    let mut publisher = server.service_on(1);
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    server.settle();
    publisher.send_text(&msg("PUB", "T", &[], "once"));
    sub.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", "once"));
    // No second copy: the publisher's next message on T comes next.
    expect_marker_next(&mut publisher, "T", &mut sub);
    // And one UNS undoes both.
    let mut witness = server.subscriber_on(sub.shard(), "T");
    sub.send_text(&msg("UNS", "T", &[], ""));
    sub.sync();
    server.settle();
    publisher.send_text(&msg("PUB", "T", &[], "gone"));
    // The witness on sub's shard has it, so sub would have it queued ahead of its sync.
    witness.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", "gone"));
    sub.sync();
}

// ---------------------------------------------------------------------------------------------
// PUB
// ---------------------------------------------------------------------------------------------

#[test]
fn client_pub_without_grant_is_refused_and_not_carried_out() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    svc.send_text(&msg("SUB", "T", &[], ""));
    svc.sync();
    server.settle();
    for shard in [0, 1] {
        let mut cli = server.client_on(shard);
        cli.send_text(&msg("PUB", "T", &[], "sneaky"));
        cli.expect_error("not-trusted", "Not trusted PUB T");
        // Not delivered: a later PUB on T from cli's shard is the first thing on T.
        expect_marker_next(&mut server.service_on(cli.shard()), "T", &mut svc);
    }
}

#[test]
fn client_pub_with_epub_grant_is_delivered_from_both_shards() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(1);
    let mut sub = server.service_on(0);
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    server.settle();
    svc.send_text(&msg("EPUB", "T", &[], ""));
    for shard in [0, 1] {
        let mut cli = server.client_on(shard);
        tell(&mut svc, &mut cli);
        cli.send_text(&msg("PUB", "T", &[("K", "v")], "allowed"));
        sub.expect_text(&relayed("PUB", "T", &[("K", "v")], &cli.cid, "", "allowed"));
        // No error for cli: its next reply is the sync's.
        cli.sync();
    }
}

// ---------------------------------------------------------------------------------------------
// REQ / RES
// ---------------------------------------------------------------------------------------------

#[test]
fn service_req_needs_no_grant() {
    let server = Server::start(&[]);
    let mut responder = server.service_on(0);
    let mut requester = server.service_on(1);
    responder.send_text(&msg("EREQ", "T", &[], ""));
    tell(&mut responder, &mut requester);
    requester.send_text(&msg("REQ", "T", &[], "q"));
    let got = responder.recv().parse();
    assert_eq!(got.first_line, "REQ T");
    assert_eq!(got.header("Cid"), Some(requester.cid.as_str()));
    let rid = got.all("Rid")[0].to_owned();
    assert_eq!(got.all("Rid").len(), 1);
    // No error for the requester: its next message is the answer.
    responder.send_text(&msg("RES", "T", &[("Rid", &rid)], "a"));
    let res = requester.recv().parse();
    assert_eq!((res.first_line.as_str(), show(&res.body)), ("RES T", show(b"a\r\n")));
}

#[test]
fn client_req_without_grant_is_refused_and_not_carried_out() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    // The other two grants for T do not allow REQ.
    svc.send_text(&msg("EPUB", "T", &[], ""));
    svc.send_text(&msg("ESUB", "T", &[], ""));
    for shard in [0, 1] {
        let mut cli = server.client_on(shard);
        tell(&mut svc, &mut cli);
        cli.send_text(&msg("REQ", "T", &[], "q"));
        // Only the refusal: the REQ is not carried out, so no `no-responder` either.
        cli.expect_error("not-trusted", "Not trusted REQ T");
        // A `no-responder` would come from T's owner: once every shard has answered every
        // other (twice), it would be queued ahead of the sync's reply.
        server.settle_replies();
        cli.sync();
    }
}

#[test]
fn client_req_with_ereq_grant_reaches_the_responder() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    svc.send_text(&msg("EREQ", "T", &[], ""));
    for shard in [0, 1] {
        let mut cli = server.client_on(shard);
        tell(&mut svc, &mut cli);
        cli.send_text(&msg("REQ", "T", &[("ReqID", "r1")], "ping"));
        let req = svc.recv().parse();
        assert_eq!(req.first_line, "REQ T");
        assert_eq!(req.header("Cid"), Some(cli.cid.as_str()));
        let rid = req.header("Rid").expect("Rid on a REQ").to_owned();
        svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "pong"));
        let res = cli.recv().parse();
        assert_eq!(res.first_line, "RES T");
        assert_eq!(show(&res.body), show(b"pong\r\n"));
    }
}

#[test]
fn client_res_for_a_request_it_did_not_receive_is_no_request() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut requester = server.client_on(1);
    let mut intruder = server.client_on(0);
    svc.send_text(&msg("EREQ", "T", &[], ""));
    tell(&mut svc, &mut requester);
    requester.send_text(&msg("REQ", "T", &[], "q"));
    let rid = svc.recv().parse().header("Rid").unwrap().to_owned();
    intruder.send_text(&msg("RES", "T", &[("Rid", &rid)], "forged"));
    intruder.expect_error("no-request", "No client for request ID  RES T");
    // The intruder and the responder share a shard, so the forged RES, had it been relayed,
    // would arrive before the real one, which must be the next thing the requester gets.
    assert_eq!(intruder.shard(), svc.shard());
    svc.send_text(&msg("RES", "T", &[("Rid", &rid)], "real"));
    let res = requester.recv().parse();
    assert_eq!(show(&res.body), show(b"real\r\n"));
    assert_eq!(res.header("Cid"), Some(svc.cid.as_str()));
}

// ---------------------------------------------------------------------------------------------
// EPUB / ESUB / EREQ / INT from a client
// ---------------------------------------------------------------------------------------------

#[test]
fn client_epub_is_refused_and_grants_nothing() {
    let server = Server::start(&[]);
    let mut sub = server.service_on(0);
    let mut a = server.client_on(1);
    let mut b = server.client_on(0);
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    server.settle();
    a.send_text(&msg("EPUB", "T", &[], ""));
    a.expect_error("not-trusted", "Not trusted EPUB T");
    for c in [&mut a, &mut b] {
        c.send_text(&msg("PUB", "T", &[], "x"));
        c.expect_error("not-trusted", "Not trusted PUB T");
        // Not delivered: a later PUB on T from c's shard is the first thing on T.
        expect_marker_next(&mut server.service_on(c.shard()), "T", &mut sub);
    }
}

#[test]
fn client_esub_is_refused_and_grants_nothing() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut a = server.client_on(1);
    let mut b = server.client_on(0);
    let mut witnesses = [server.subscriber_on(0, "T"), server.subscriber_on(1, "T")];
    a.send_text(&msg("ESUB", "T", &[], ""));
    a.expect_error("not-trusted", "Not trusted ESUB T");
    for c in [&mut a, &mut b] {
        c.send_text(&msg("SUB", "T", &[], ""));
        c.expect_error("not-trusted", "Not trusted: SUB T");
    }
    svc.send_text(&msg("PUB", "T", &[], "x"));
    // A witness on each shard has it, so a and b would have it queued ahead of their syncs.
    for w in &mut witnesses {
        w.expect_text(&relayed("PUB", "T", &[], &svc.cid, "", "x"));
    }
    a.sync();
    b.sync();
}

#[test]
fn client_ereq_is_refused_registers_nothing_and_grants_nothing() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut a = server.client_on(1);
    let mut b = server.client_on(0);
    a.send_text(&msg("EREQ", "T", &[], ""));
    a.expect_error("not-trusted", "Not trusted EREQ T");
    a.sync();
    server.settle();
    // `a` is not a responder: a service's REQ finds nobody.
    svc.send_text(&msg("REQ", "T", &[("ReqID", "x1")], ""));
    svc.expect_error_with_req_id("no-responder", "x1", "No responder for REQ T");
    // Nor was the REQ delivered to `a`: T's owner has handled it, and once it has answered
    // a's shard, a delivery would be queued ahead of a's sync.
    server.settle();
    a.sync();
    // And clients were not granted REQ T.
    b.send_text(&msg("REQ", "T", &[], ""));
    b.expect_error("not-trusted", "Not trusted REQ T");
}

#[test]
fn service_grants_and_int_need_no_grant_and_get_no_reply() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let cli = server.client_on(1);
    svc.send_text(&msg("EPUB", "T", &[], ""));
    svc.send_text(&msg("ESUB", "T", &[], ""));
    svc.send_text(&msg("EREQ", "T", &[], ""));
    svc.send_text(&msg("SUB", "T", &[], ""));
    svc.send_text(&msg("UNS", "T", &[], ""));
    svc.send_text(&msg("INT", "UID", &[("forcid", &cli.cid), ("setuid", "u1")], ""));
    // No acknowledgement and no error for any of them: the next thing is the sync echo.
    svc.sync();
}

// ---------------------------------------------------------------------------------------------
// Grants are separate and per exact topic
// ---------------------------------------------------------------------------------------------

#[test]
fn epub_allows_pub_only() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut cli = server.client_on(1);
    svc.send_text(&msg("EPUB", "T", &[], ""));
    svc.send_text(&msg("SUB", "T", &[], ""));
    tell(&mut svc, &mut cli);
    cli.send_text(&msg("SUB", "T", &[], ""));
    cli.expect_error("not-trusted", "Not trusted: SUB T");
    cli.send_text(&msg("REQ", "T", &[], "q"));
    cli.expect_error("not-trusted", "Not trusted REQ T");
    cli.send_text(&msg("PUB", "T", &[], "ok"));
    svc.expect_text(&relayed("PUB", "T", &[], &cli.cid, "", "ok"));
    // Once: cli's next message on T comes next.
    expect_marker_next(&mut cli, "T", &mut svc);
    // cli got neither its own PUB (the SUB was refused) nor a `no-responder` (the REQ was
    // refused): both would come through T's owner, so once every shard has answered every
    // other they would be queued ahead of the sync's reply.
    server.settle_replies();
    cli.sync();
}

#[test]
fn esub_allows_sub_only() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut cli = server.client_on(1);
    svc.send_text(&msg("ESUB", "T", &[], ""));
    svc.send_text(&msg("SUB", "T", &[], ""));
    tell(&mut svc, &mut cli);
    cli.send_text(&msg("PUB", "T", &[], "x"));
    cli.expect_error("not-trusted", "Not trusted PUB T");
    cli.send_text(&msg("REQ", "T", &[], "q"));
    cli.expect_error("not-trusted", "Not trusted REQ T");
    // The PUB was not delivered: a later PUB on T from cli's shard is the first thing on T.
    expect_marker_next(&mut server.service_on(cli.shard()), "T", &mut svc);
    cli.send_text(&msg("SUB", "T", &[], ""));
    cli.sync();
    server.settle();
    svc.send_text(&msg("PUB", "T", &[], "ok"));
    cli.expect_text(&relayed("PUB", "T", &[], &svc.cid, "", "ok"));
}

#[test]
fn ereq_allows_req_only() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut cli = server.client_on(1);
    svc.send_text(&msg("EREQ", "T", &[], ""));
    svc.send_text(&msg("SUB", "T", &[], ""));
    tell(&mut svc, &mut cli);
    cli.send_text(&msg("PUB", "T", &[], "x"));
    cli.expect_error("not-trusted", "Not trusted PUB T");
    cli.send_text(&msg("SUB", "T", &[], ""));
    cli.expect_error("not-trusted", "Not trusted: SUB T");
    // The PUB was not delivered: a later PUB on T from cli's shard is the first thing on T.
    expect_marker_next(&mut server.service_on(cli.shard()), "T", &mut svc);
    cli.send_text(&msg("REQ", "T", &[], "q"));
    let req = svc.recv().parse();
    assert_eq!((req.first_line.as_str(), show(&req.body)), ("REQ T", show(b"q\r\n")));
    // Delivered once: cli's next REQ on T (same path, same order) is the next thing.
    cli.send_text(&msg("REQ", "T", &[], "q2"));
    let req = svc.recv().parse();
    assert_eq!((req.first_line.as_str(), show(&req.body)), ("REQ T", show(b"q2\r\n")));
}

#[test]
fn grants_are_for_the_exact_topic() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut cli = server.client_on(1);
    svc.send_text(&msg("EPUB", "News", &[], ""));
    svc.send_text(&msg("ESUB", "News", &[], ""));
    svc.send_text(&msg("EREQ", "News", &[], ""));
    tell(&mut svc, &mut cli);
    for topic in ["news", "NEWS", "News2", "New", "News ", " News", "News/x"] {
        cli.send_text(&msg("PUB", topic, &[], ""));
        cli.expect_error("not-trusted", &format!("Not trusted PUB {topic}"));
        cli.send_text(&msg("SUB", topic, &[], ""));
        cli.expect_error("not-trusted", &format!("Not trusted: SUB {topic}"));
        cli.send_text(&msg("REQ", topic, &[], ""));
        cli.expect_error("not-trusted", &format!("Not trusted REQ {topic}"));
    }
}

#[test]
fn grants_outlive_the_service_that_made_them() {
    let server = Server::start(&[]);
    let mut granter = server.service_on(0);
    let mut cli = server.client_on(1);
    let mut sub = server.service_on(1);
    granter.send_text(&msg("EPUB", "T", &[], ""));
    granter.send_text(&msg("ESUB", "T", &[], ""));
    tell(&mut granter, &mut cli);
    drop(granter);
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    cli.send_text(&msg("SUB", "T", &[], ""));
    cli.sync();
    server.settle();
    cli.send_text(&msg("PUB", "T", &[], "still allowed"));
    let expected = relayed("PUB", "T", &[], &cli.cid, "", "still allowed");
    sub.expect_text(&expected);
    cli.expect_text(&expected);
}

// ---------------------------------------------------------------------------------------------
// Private topics
// ---------------------------------------------------------------------------------------------

#[test]
fn client_may_not_pub_or_sub_another_private_topic_without_a_grant() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut a = server.client_on(0);
    let mut b = server.client_on(1);
    let topic_b = format!("MSG:{}", b.cid);
    // svc shares a's shard, so it is both the marker's publisher and a witness for a.
    assert_eq!(svc.shard(), a.shard());
    svc.send_text(&msg("SUB", &topic_b, &[], ""));
    svc.sync();
    server.settle();

    a.send_text(&msg("PUB", &topic_b, &[], "spoof"));
    a.expect_error("not-trusted", &format!("Not trusted PUB {topic_b}"));
    a.send_text(&msg("SUB", &topic_b, &[], ""));
    a.expect_error("not-trusted", &format!("Not trusted: SUB {topic_b}"));
    a.sync();
    server.settle();

    // The spoofed PUB was not delivered: this later PUB on b's topic from a's shard is the
    // first thing b gets. And the eavesdropping SUB was not carried out: svc, on a's shard,
    // has the message, so a would have it queued ahead of its sync.
    svc.send_text(&msg("PUB", &topic_b, &[], "for b only"));
    let expected = relayed("PUB", &topic_b, &[], &svc.cid, "", "for b only");
    b.expect_text(&expected);
    svc.expect_text(&expected);
    a.sync();
}

#[test]
fn client_may_pub_and_sub_another_private_topic_once_granted() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut a = server.client_on(0);
    let mut b = server.client_on(1);
    let topic_b = format!("MSG:{}", b.cid);
    svc.send_text(&msg("EPUB", &topic_b, &[], ""));
    svc.send_text(&msg("ESUB", &topic_b, &[], ""));
    tell(&mut svc, &mut a);

    a.send_text(&msg("PUB", &topic_b, &[], "hello b"));
    b.expect_text(&relayed("PUB", &topic_b, &[], &a.cid, "", "hello b"));

    a.send_text(&msg("SUB", &topic_b, &[], ""));
    a.sync();
    server.settle();
    svc.send_text(&msg("PUB", &topic_b, &[], "both"));
    let expected = relayed("PUB", &topic_b, &[], &svc.cid, "", "both");
    b.expect_text(&expected);
    a.expect_text(&expected);
}

#[test]
fn client_pub_to_its_own_private_topic_needs_a_grant_too() {
    // §4: "A client may publish to it or subscribe to it only if a service granted that exact
    // topic" - the rule names no exception for the client's own topic.
    let server = Server::start(&[]);
    let mut a = server.client_on(0);
    let topic = format!("MSG:{}", a.cid);
    a.send_text(&msg("PUB", &topic, &[], "me"));
    a.expect_error("not-trusted", &format!("Not trusted PUB {topic}"));
    // Not delivered: a later PUB on the topic from a's shard is the first thing a gets.
    expect_marker_next(&mut server.service_on(a.shard()), &topic, &mut a);
}

// ---------------------------------------------------------------------------------------------
// Unknown commands
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_command_gets_an_error_and_the_connection_stays_open() {
    let server = Server::start(&[]);
    for key in [SERVICE_KEY, CLIENT_KEY] {
        let mut c = server.connect(key);
        for cmd in ["FOO", "pub", "Sub", "PUBX", "ERROR", "MM"] {
            c.send_text(&msg(cmd, "T", &[], "x"));
            c.expect_error("unknown-command", &format!("Unknown command {cmd} T"));
        }
        c.sync();
    }
}

// ---------------------------------------------------------------------------------------------
// INT UID
// ---------------------------------------------------------------------------------------------

#[test]
fn int_uid_sets_uid_on_later_messages_of_that_connection() {
    let server = Server::start(&[]);
    let mut sub = server.service_on(0);
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    server.settle();
    for (admin_shard, client_shard) in [(0, 1), (1, 0), (0, 0)] {
        let mut admin = server.service_on(admin_shard);
        let mut cli = server.client_on(client_shard);
        admin.send_text(&msg("EPUB", "T", &[], ""));
        tell(&mut admin, &mut cli);
        cli.send_text(&msg("PUB", "T", &[], "anonymous"));
        sub.expect_text(&relayed("PUB", "T", &[], &cli.cid, "", "anonymous"));

        admin.send_text(&msg("INT", "UID", &[("forcid", &cli.cid), ("setuid", "user42")], ""));
        tell(&mut admin, &mut cli);
        cli.send_text(&msg("PUB", "T", &[("Uid", "spoofed")], "logged in"));
        sub.expect_text(&relayed("PUB", "T", &[], &cli.cid, "user42", "logged in"));

        admin.send_text(&msg("INT", "UID", &[("forcid", &cli.cid), ("setuid", "user43")], ""));
        tell(&mut admin, &mut cli);
        cli.send_text(&msg("PUB", "T", &[], "changed"));
        sub.expect_text(&relayed("PUB", "T", &[], &cli.cid, "user43", "changed"));
        // No reply to either INT, from cli's shard or admin's: once every shard has answered
        // every other, one would be queued ahead of the sync's reply.
        server.settle_replies();
        admin.sync();
    }
}

#[test]
fn int_uid_header_names_are_case_insensitive() {
    let server = Server::start(&[]);
    let mut admin = server.service_on(0);
    let mut cli = server.client_on(1);
    let mut sub = server.service_on(1);
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    server.settle();
    admin.send_text(&msg("EPUB", "T", &[], ""));
    admin.send_text(&msg("INT", "UID", &[("ForCid", &cli.cid), ("SETUID", "mixed")], ""));
    tell(&mut admin, &mut cli);
    cli.send_text(&msg("PUB", "T", &[], "x"));
    sub.expect_text(&relayed("PUB", "T", &[], &cli.cid, "mixed", "x"));
}

#[test]
fn int_uid_for_an_unknown_connection_is_an_error_not_a_crash() {
    let mut server = Server::start(&[]);
    let mut admins = [server.service_on(0), server.service_on(1)];
    let real = ConnectionId::parse(admins[0].cid.as_bytes()).unwrap();
    let mut unknown: Vec<String> = vec!["nosuchconnection".into(), "x".into(), String::new()];
    for shard in [0u16, 1, 7, u16::MAX] {
        // Well-formed cids that were never handed out, on existing and missing shards.
        let id = ConnectionId { epoch: real.epoch, shard: ShardId(shard), local: (1 << 52) - 1 };
        unknown.push(id.to_string());
    }
    for forcid in &unknown {
        for admin in admins.iter_mut() {
            admin.send_text(&msg("INT", "UID", &[("forcid", forcid), ("setuid", "u")], ""));
            admin.expect_error("no-connection", "No client for INT UID");
        }
    }
    for admin in admins.iter_mut() {
        admin.sync();
    }
    server.assert_serving();
}

#[test]
fn int_uid_for_a_connection_that_has_left_is_an_error() {
    let mut server = Server::start(&[]);
    let mut admin = server.service_on(0);
    let gone = server.client_on(1);
    let cid = gone.cid.clone();
    drop(gone);
    // The server learns of the close asynchronously: the INT succeeds silently while the
    // connection is still known, then must start failing with `no-connection`.
    server.await_forgotten(&mut admin, &cid);
    server.assert_serving();
}

#[test]
fn client_int_is_refused_and_not_carried_out() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut cli = server.client_on(1);
    let mut sub = server.service_on(1);
    sub.send_text(&msg("SUB", "T", &[], ""));
    sub.sync();
    server.settle();
    svc.send_text(&msg("EPUB", "T", &[], ""));
    tell(&mut svc, &mut cli);
    cli.send_text(&msg("INT", "UID", &[("forcid", &cli.cid), ("setuid", "admin")], ""));
    cli.expect_error("not-trusted", "Not trusted INT UID");
    cli.send_text(&msg("PUB", "T", &[], "who am i"));
    sub.expect_text(&relayed("PUB", "T", &[], &cli.cid, "", "who am i"));
}
