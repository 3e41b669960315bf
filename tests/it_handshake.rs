//! Checks handshake (§1-2): MM OK + cid, bad key, auth timeout, any path, HTTP 400, MSG:<cid>.
//! How: real binary, two shards on 127.0.0.1:0, tungstenite and raw-TCP peers over loopback.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use middleman::ids::ConnectionId;

fn assert_cid_shape(cid: &str) {
    assert_eq!(cid.len(), 20, "cid {cid:?} is not 20 characters");
    assert!(
        cid.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'v').contains(&c)),
        "cid {cid:?} has characters outside 0-9a-v"
    );
    let id = ConnectionId::parse(cid.as_bytes()).expect("cid parses");
    assert!(id.shard.0 < 2, "cid {cid:?} names shard {} of 2", id.shard.0);
}

#[test]
fn accepted_key_gets_mm_ok_then_the_cid_and_nothing_else() {
    let server = Server::start(&[]);
    for key in [SERVICE_KEY, CLIENT_KEY] {
        let mut c = Client::upgrade(server.port, "/").unwrap();
        c.send_text(key);
        c.expect_text("MM OK");
        let cid = c.recv_text();
        assert_cid_shape(&cid);
        // Nothing else: the sync's reply is the next message.
        c.cid = cid;
        c.service = key == SERVICE_KEY;
        c.sync();
    }
}

#[test]
fn cids_are_unique_and_name_both_shards() {
    let server = Server::start(&[]);
    let mut cids = HashSet::new();
    let mut shards = HashSet::new();
    // Some connections stay open while others close, so a reused id would show.
    let mut kept = Vec::new();
    for i in 0..60 {
        let c = server.connect(if i % 2 == 0 { SERVICE_KEY } else { CLIENT_KEY });
        assert_cid_shape(&c.cid);
        assert!(cids.insert(c.cid.clone()), "cid {} handed out twice", c.cid);
        shards.insert(c.shard());
        if i % 3 == 0 {
            kept.push(c);
        }
    }
    assert_eq!(shards, HashSet::from([0, 1]), "60 connections did not reach both shards");
}

#[test]
fn bad_key_gets_close_1008_bad_key_and_nothing_else() {
    let server = Server::start(&[]);
    let keys = [
        "wrong".to_owned(),
        String::new(),
        format!("{SERVICE_KEY}\n"),
        format!(" {SERVICE_KEY}"),
        format!("{CLIENT_KEY} "),
        SERVICE_KEY.to_uppercase(),
        SERVICE_KEY[..SERVICE_KEY.len() - 1].to_owned(),
    ];
    for key in &keys {
        let mut c = Client::upgrade(server.port, "/").unwrap();
        c.send_text(key);
        let close = c.expect_close();
        assert_eq!(
            close,
            (1008, "bad key".to_owned()),
            "key {key:?} was not refused with 1008 bad key"
        );
        // Then the broker closes the TCP connection, with nothing in between.
        c.expect_end();
    }
}

#[test]
fn no_key_within_the_auth_timeout_gets_1008_auth_timeout() {
    let server = Server::start(&["--auth-timeout", "500ms"]);
    let mut c = Client::upgrade(server.port, "/").unwrap();
    let start = Instant::now();
    let close = c.expect_close_within(Duration::from_secs(5));
    let elapsed = start.elapsed();
    assert_eq!(close, (1008, "auth timeout".to_owned()));
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the 500ms auth timeout"
    );
    assert!(elapsed < Duration::from_secs(3), "auth timeout of 500ms took {elapsed:?}");
}

#[test]
fn key_sent_before_the_auth_timeout_is_accepted() {
    let server = Server::start(&["--auth-timeout", "1s", "--ping-interval", "700ms"]);
    let mut c = Client::upgrade(server.port, "/").unwrap();
    // Part of the scenario, not a proof: the key comes late, but inside the timeout.
    std::thread::sleep(Duration::from_millis(300));
    c.send_text(SERVICE_KEY);
    c.expect_text("MM OK");
    c.cid = c.recv_text();
    c.service = true;
    // Past the auth timeout by the broker's own clock: a quiet connection is pinged an
    // interval after it was last heard from, so the second ping comes at least 1.4 s after
    // the login, 1.7 s after the accept. An auth-timeout close would have come first.
    c.expect_ping(RECV_TIMEOUT);
    c.expect_ping(RECV_TIMEOUT);
    c.sync();
}

#[test]
fn every_configured_service_and_client_key_is_accepted_with_its_role() {
    let server = Server::start_with_keys(&["svc-a", "svc-b"], &["cli-a", "cli-b"], &[]);
    for key in ["svc-a", "svc-b"] {
        let mut s = server.connect(key);
        // EPUB is service-only: no error before the sync round trip.
        s.send_text(&msg("EPUB", "Topic", &[], ""));
        s.sync();
    }
    for key in ["cli-a", "cli-b"] {
        let mut c = server.connect(key);
        c.send_text(&msg("EPUB", "Topic", &[], ""));
        c.expect_error("not-trusted", "Not trusted EPUB Topic");
    }
}

#[test]
fn upgrade_is_accepted_on_any_path() {
    let server = Server::start(&[]);
    for path in ["/", "/ws", "/middleman/v1", "/a/b/c?x=1&y=two", "/%20spaced"] {
        let mut c = server
            .try_connect_path(SERVICE_KEY, path)
            .unwrap_or_else(|e| panic!("path {path:?}: {e}"));
        c.sync();
    }
}

#[test]
fn plain_http_request_gets_400() {
    let mut server = Server::start(&[]);
    let response =
        raw_http(server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 400"), "a non-upgrade GET got {response:?}");
    server.assert_serving();
}

#[test]
fn garbage_instead_of_http_does_not_hurt_the_server() {
    let mut server = Server::start(&[]);
    let _ = raw_http(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n");
    let _ = raw_http(server.port, b"\r\n\r\n");
    server.assert_serving();
}

#[test]
fn commands_sent_right_behind_the_key_are_handled_after_login() {
    let server = Server::start(&[]);
    let mut c = Client::upgrade(server.port, "/").unwrap();
    c.service = true;
    c.queue_text(SERVICE_KEY);
    c.queue_text(&msg("SUB", "Early", &[], ""));
    c.queue_text(&msg("PUB", "Early", &[("N", "1")], "first"));
    c.flush();
    c.expect_text("MM OK");
    let cid = c.recv_text();
    assert_cid_shape(&cid);
    c.expect_text(&relayed("PUB", "Early", &[("N", "1")], &cid, "", "first"));
}

#[test]
fn service_reaches_a_connection_through_its_private_topic_on_either_shard() {
    let server = Server::start(&[]);
    for (service_shard, client_shard) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let mut svc = server.service_on(service_shard);
        let mut target = server.client_on(client_shard);
        let mut other = server.client_on(client_shard);
        let topic = format!("MSG:{}", target.cid);
        svc.send_text(&msg("PUB", &topic, &[("X", "y")], "direct"));
        target.expect_text(&relayed("PUB", &topic, &[("X", "y")], &svc.cid, "", "direct"));
        // `other` shares target's shard, which handed the message to its subscribers in one
        // step: had `other` got it too, it would be queued ahead of its sync's reply. And no
        // reply for the publisher.
        other.sync();
        svc.sync();
    }
}

#[test]
fn private_topic_works_for_services_too() {
    let server = Server::start(&[]);
    let mut a = server.service_on(0);
    let mut b = server.service_on(1);
    let topic = format!("MSG:{}", b.cid);
    a.send_text(&msg("PUB", &topic, &[], "to a service"));
    b.expect_text(&relayed("PUB", &topic, &[], &a.cid, "", "to a service"));
}

#[test]
fn close_from_the_peer_is_answered_with_a_close_frame() {
    let mut server = Server::start(&[]);
    let mut c = server.client();
    c.close(1000);
    let (code, _reason) = c.expect_close();
    assert_eq!(code, 1000, "the server should echo the peer's close code");
    server.assert_serving();
}
