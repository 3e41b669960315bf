//! Checks relaying (§1, §3, §6): headers, anti-spoofing, exact bodies, frames, malformed input.
//! How: real binary, two shards; publisher and subscriber on different shards, exact bytes.

mod common;

use common::*;
use tungstenite::protocol::frame::coding::Data;

/// A subscriber to `topic` on shard 0 and a service publisher on shard 1.
fn pair(server: &Server, topic: &str) -> (Client, Client) {
    let mut sub = server.service_on(0);
    let publisher = server.service_on(1);
    sub.send_text(&msg("SUB", topic, &[], ""));
    sub.sync();
    server.settle();
    (sub, publisher)
}

/// What `sub` should receive for the raw `wire_body` (everything between the blank line and the
/// final `.` line) published by `cid` on `topic` with `headers`.
fn delivered(topic: &str, headers: &[(&str, &str)], cid: &str, wire_body: &str) -> String {
    let mut out = format!("PUB {topic}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Cid: {cid}\r\nUid: \r\n\r\n{wire_body}.\r\n"));
    out
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[test]
fn headers_keep_the_senders_spelling_and_order_then_cid_and_uid() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let headers = [
        ("Zeta", "1"),
        ("alpha", "2"),
        ("ReqID", "abc123"),
        ("A", "1"),
        ("A", "2"),
        ("content-TYPE", "text/plain; charset=utf-8"),
        ("X-Empty", ""),
        ("X-Spaces", "a  b  c"),
    ];
    publisher.send_text(&msg("PUB", "T", &headers, "hello"));
    sub.expect_text(&relayed("PUB", "T", &headers, &publisher.cid, "", "hello"));
}

#[test]
fn header_value_whitespace_after_the_colon_is_optional() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    publisher.send_text("PUB T\r\nTight:v1\r\nTab:\tv2\r\nWide:   v3\r\n\r\n.\r\n");
    let got = sub.recv().parse();
    assert_eq!(
        got.headers,
        owned(&[
            ("Tight", "v1"),
            ("Tab", "v2"),
            ("Wide", "v3"),
            ("Cid", &publisher.cid),
            ("Uid", "")
        ])
    );
}

#[test]
fn spoofed_cid_uid_rid_are_removed_in_any_case() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let sent = [
        ("cid", "spoof1"),
        ("X", "1"),
        ("CID", "spoof2"),
        ("Uid", "root"),
        ("uID", "root2"),
        ("rid", "7"),
        ("RID", "8"),
        ("Rid", "9"),
        ("Cid-Like", "kept"),
        ("XCid", "kept"),
        ("Y", "2"),
    ];
    publisher.send_text(&msg("PUB", "T", &sent, "b"));
    sub.expect_text(&relayed(
        "PUB",
        "T",
        &[("X", "1"), ("Cid-Like", "kept"), ("XCid", "kept"), ("Y", "2")],
        &publisher.cid,
        "",
        "b",
    ));
}

#[test]
fn a_client_cannot_spoof_cid_either() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut cli = server.client_on(1);
    svc.send_text(&msg("EPUB", "T", &[], ""));
    svc.send_text(&msg("SUB", "T", &[], ""));
    tell(&mut svc, &mut cli);
    let spoof = svc.cid.clone();
    cli.send_text(&msg("PUB", "T", &[("Cid", &spoof), ("Uid", "admin")], "trust me"));
    svc.expect_text(&relayed("PUB", "T", &[], &cli.cid, "", "trust me"));
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn body_is_relayed_byte_exact() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let bodies = [
        // (wire body as the sender encodes it, between the blank line and the `.` line)
        "",
        "hello\r\n",
        "line1\r\n..\r\n..hidden\r\n...two\r\nlast\r\n",
        "..x\r\n",
        ".hidden\r\n",
        "lf only\nsecond\n",
        "mixed\r\nendings\nhere\r\n",
        "\r\n\r\nblank lines around\r\n\r\n",
        "lone\rcarriage return\r\n",
        "trailing spaces   \r\n\ttab\r\n",
        "unicode h\u{e9}llo \u{2603} \u{1f600}\r\n",
        "nul \u{0} inside\r\n",
        "a dot later . in the line\r\n. \r\n",
    ];
    for body in bodies {
        publisher.send_text(&format!("PUB T\r\n\r\n{body}.\r\n"));
        sub.expect_text(&delivered("T", &[], &publisher.cid, body));
    }
}

#[test]
fn lf_only_message_is_relayed_with_crlf_framing_and_the_body_untouched() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    publisher.send_text("PUB T\nA: 1\nB: 2\n\nlf1\n..lf2\n.\n");
    sub.expect_text(&delivered("T", &[("A", "1"), ("B", "2")], &publisher.cid, "lf1\n..lf2\n"));
    // A CRLF body with an LF-only final line.
    publisher.send_text("PUB T\r\n\r\nx\r\n.\n");
    sub.expect_text(&delivered("T", &[], &publisher.cid, "x\r\n"));
}

#[test]
fn large_body_is_relayed_byte_exact() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let mut body = String::new();
    for i in 0..4000 {
        if i % 7 == 0 {
            body.push_str("..");
        }
        body.push_str(&format!("line {i} of a large body\r\n"));
    }
    publisher.send_text(&format!("PUB T\r\n\r\n{body}.\r\n"));
    sub.expect_text(&delivered("T", &[], &publisher.cid, &body));
}

#[test]
fn body_survives_several_hops_unchanged() {
    let server = Server::start(&[]);
    let mut first = server.service_on(0);
    let mut middle = server.service_on(1);
    let mut last = server.service_on(0);
    middle.send_text(&msg("SUB", "Hop1", &[], ""));
    middle.sync();
    last.send_text(&msg("SUB", "Hop2", &[], ""));
    last.sync();
    server.settle();
    let body = "a\r\n..b\r\n\r\nc\nd\r\n";
    first.send_text(&format!("PUB Hop1\r\n\r\n{body}.\r\n"));
    let got = middle.recv().parse();
    assert_eq!(show(&got.body), show(body.as_bytes()));
    // Forward exactly what arrived, as a relay service would.
    let mut forward = b"PUB Hop2\r\n\r\n".to_vec();
    forward.extend_from_slice(&got.body);
    forward.extend_from_slice(b".\r\n");
    middle.send_text(std::str::from_utf8(&forward).unwrap());
    last.expect_text(&delivered("Hop2", &[], &middle.cid, body));
}

// ---------------------------------------------------------------------------------------------
// Several messages per WebSocket message; frame types
// ---------------------------------------------------------------------------------------------

#[test]
fn several_messages_in_one_websocket_message_are_handled_in_order() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let batch = [
        msg("PUB", "T", &[("N", "1")], "one"),
        msg("SUB", "Self", &[], ""),
        msg("PUB", "T", &[("N", "2")], "two"),
        msg("PUB", "Self", &[], "to myself"),
        "PUB T\nN: 3\n\nthree\n.\n".to_owned(),
        msg("PUB", "T", &[("N", "4")], ""),
    ]
    .concat();
    publisher.send_text(&batch);
    sub.expect_text(&relayed("PUB", "T", &[("N", "1")], &publisher.cid, "", "one"));
    sub.expect_text(&relayed("PUB", "T", &[("N", "2")], &publisher.cid, "", "two"));
    sub.expect_text(&delivered("T", &[("N", "3")], &publisher.cid, "three\n"));
    sub.expect_text(&relayed("PUB", "T", &[("N", "4")], &publisher.cid, "", ""));
    // Nothing else from the batch reached T: the publisher's next message on T comes next.
    expect_marker_next(&mut publisher, "T", &mut sub);
    publisher.expect_text(&relayed("PUB", "Self", &[], &publisher.cid, "", "to myself"));
}

#[test]
fn binary_in_binary_out_text_in_text_out() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    publisher.send_text(&msg("PUB", "T", &[], "as text"));
    sub.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", "as text"));

    publisher.send_binary(msg("PUB", "T", &[("B", "1")], "as binary").as_bytes());
    sub.expect_binary(
        relayed("PUB", "T", &[("B", "1")], &publisher.cid, "", "as binary").as_bytes(),
    );

    // Binary bodies need not be UTF-8.
    let mut raw = b"PUB T\r\n\r\n\xff\xfe\x00\x80 not utf-8\r\n".to_vec();
    raw.extend_from_slice(b".\r\n");
    publisher.send_binary(&raw);
    let mut expected = format!("PUB T\r\nCid: {}\r\nUid: \r\n\r\n", publisher.cid).into_bytes();
    expected.extend_from_slice(b"\xff\xfe\x00\x80 not utf-8\r\n.\r\n");
    sub.expect_binary(&expected);

    // Two messages in one binary frame: both delivered, both binary.
    let two = [msg("PUB", "T", &[], "b1"), msg("PUB", "T", &[], "b2")].concat();
    publisher.send_binary(two.as_bytes());
    sub.expect_binary(relayed("PUB", "T", &[], &publisher.cid, "", "b1").as_bytes());
    sub.expect_binary(relayed("PUB", "T", &[], &publisher.cid, "", "b2").as_bytes());
}

#[test]
fn errors_about_binary_input_come_in_text_frames() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    // A malformed message in a binary frame: the error still comes in a text frame.
    publisher.send_binary(b"PUB\r\n\r\n.\r\n");
    publisher.expect_malformed();
    publisher.send_binary(b"FOO T\r\n\r\n.\r\n");
    publisher.expect_error("unknown-command", "Unknown command FOO T");
    // Neither was relayed: the publisher's next message on T is the first thing on T.
    expect_marker_next(&mut publisher, "T", &mut sub);
}

#[test]
fn publisher_receives_its_own_pub_when_subscribed() {
    let server = Server::start(&[]);
    let mut a = server.service_on(0);
    let mut b = server.service_on(1);
    for c in [&mut a, &mut b] {
        c.send_text(&msg("SUB", "T", &[], ""));
        c.sync();
        server.settle();
    }
    a.send_text(&msg("PUB", "T", &[], "from a"));
    let expected = relayed("PUB", "T", &[], &a.cid, "", "from a");
    a.expect_text(&expected);
    b.expect_text(&expected);
    // Each got it once: a's next message on T is the next thing either receives.
    let marker = Marker::publish(&mut a, "T");
    a.expect_marker(&marker);
    b.expect_marker(&marker);
}

#[test]
fn fragmented_message_is_reassembled_and_sent_as_one_frame() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    publisher.send_frame(frame(Data::Text, false, b"PUB T\r\n\r\nfrag"));
    publisher.send_frame(ping_frame(b"between fragments"));
    publisher.send_frame(frame(Data::Continue, false, b"men"));
    publisher.send_frame(frame(Data::Continue, true, b"ted\r\n.\r\n"));
    sub.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", "fragmented"));

    // A UTF-8 character split across two fragments is valid (RFC 6455 checks the message).
    let text = "PUB T\r\n\r\ncaf\u{e9}\r\n.\r\n".as_bytes();
    let cut = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
    publisher.send_frame(frame(Data::Text, false, &text[..cut]));
    publisher.send_frame(frame(Data::Continue, true, &text[cut..]));
    sub.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", "caf\u{e9}"));
}

#[test]
fn server_writes_each_message_as_one_final_unmasked_frame() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut raw = RawWs::connect(server.port);
    let cid = raw.login(CLIENT_KEY);
    let body = "x".repeat(200_000);
    let topic = format!("MSG:{cid}");
    svc.send_text(&msg("PUB", &topic, &[], &body));
    let f = raw.read_frame();
    assert!(f.fin, "fragmented output");
    assert!(!f.masked, "server frames must not be masked");
    assert_eq!((f.rsv, f.opcode), (0, 0x1));
    assert_eq!(show(&f.payload), show(relayed("PUB", &topic, &[], &svc.cid, "", &body).as_bytes()));
    svc.send_binary(msg("PUB", &topic, &[], "bin").as_bytes());
    let f = raw.read_frame();
    assert!(f.fin && !f.masked);
    assert_eq!((f.rsv, f.opcode), (0, 0x2));
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let server = Server::start(&[]);
    let mut raw = RawWs::connect(server.port);
    let _cid = raw.login(SERVICE_KEY);
    raw.send_frame(true, 0x9, b"are you there");
    let f = raw.read_frame();
    assert_eq!((f.fin, f.opcode, f.payload.as_slice()), (true, 0xA, &b"are you there"[..]));
}

// ---------------------------------------------------------------------------------------------
// Malformed messages
// ---------------------------------------------------------------------------------------------

/// Sends `good1 + bad (+ good2)` in one WebSocket message: good1 is delivered, the sender gets a
/// `malformed` error, good2 is skipped; then a later WebSocket message is delivered again.
fn check_malformed(
    sub: &mut Client,
    publisher: &mut Client,
    bad: &str,
    trailing_good: bool,
) -> String {
    let n = unique();
    let good1 = msg("PUB", "T", &[], &format!("before {n}"));
    let good2 = msg("PUB", "T", &[], &format!("skipped {n}"));
    let good3 = msg("PUB", "T", &[], &format!("later {n}"));
    let mut payload = format!("{good1}{bad}");
    if trailing_good {
        payload.push_str(&good2);
    }
    publisher.send_text(&payload);
    sub.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", &format!("before {n}")));
    let text = publisher.expect_malformed();
    // good2 was skipped: the publisher's next message on T (good3) is the next thing on T.
    publisher.send_text(&good3);
    sub.expect_text(&relayed("PUB", "T", &[], &publisher.cid, "", &format!("later {n}")));
    text
}

#[test]
fn malformed_message_gets_an_error_skips_the_rest_and_keeps_the_connection() {
    let server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let followed = [
        "PUB\r\n\r\n.\r\n",                         // no space in the first line
        "PUBT\r\n\r\nbody\r\n.\r\n",                // no space either
        "PUB T\r\nNoColonHere\r\n\r\n.\r\n",        // header without a colon
        "PUB T\r\nA: 1\r\nbad header\r\n\r\n.\r\n", // a later header without a colon
        "PUB T\r\n.\r\n",                           // no blank line after the first line
        "PUB \r\n\r\nempty target\r\n.\r\n",        // empty target
        "SUB \r\n\r\n.\r\n",                        // empty target on another command
        "PUB a\u{0}b\r\n\r\n.\r\n",                 // NUL in the target
    ];
    for bad in followed {
        check_malformed(&mut sub, &mut publisher, bad, true);
    }
    let last = [
        "PUB T\r\n\r\nbody without the dot line\r\n", // missing `.` line
        "PUB T\r\nA: 1\r\n",                          // missing blank line, then the end
        "PUB T\r\n",                                  // nothing after the first line
        "PUB T",                                      // not even an EOL
    ];
    for bad in last {
        check_malformed(&mut sub, &mut publisher, bad, false);
    }
}

#[test]
fn malformed_error_comes_from_a_client_too() {
    let server = Server::start(&[]);
    let mut cli = server.client_on(1);
    cli.send_text("PUB\r\n\r\n.\r\n");
    cli.expect_malformed();
    cli.send_text("PUB T\r\nno colon\r\n\r\n.\r\n");
    cli.expect_malformed();
    cli.sync();
}

#[test]
fn topic_length_limit_is_enforced_exactly() {
    // Private topics (`MSG:` + 20) must still fit: the harness syncs through them.
    let server = Server::start(&["--max-topic-bytes", "30"]);
    let longest = "T".repeat(30);
    let (mut sub, mut publisher) = pair(&server, &longest);
    publisher.send_text(&msg("PUB", &longest, &[], "fits"));
    sub.expect_text(&relayed("PUB", &longest, &[], &publisher.cid, "", "fits"));
    let too_long = "T".repeat(31);
    // A SUB with an over-long topic is malformed too.
    publisher.send_text(&msg("SUB", &too_long, &[], ""));
    publisher.expect_malformed();
    let n = unique();
    publisher.send_text(
        &[
            msg("PUB", &longest, &[], &format!("a{n}")),
            msg("PUB", &too_long, &[], "x"),
            msg("PUB", &longest, &[], "skipped"),
        ]
        .concat(),
    );
    sub.expect_text(&relayed("PUB", &longest, &[], &publisher.cid, "", &format!("a{n}")));
    publisher.expect_malformed();
    // Neither the over-long PUB nor the one skipped after it reached the subscriber.
    expect_marker_next(&mut publisher, &longest, &mut sub);
}

#[test]
fn header_count_limit_is_enforced_exactly() {
    let server = Server::start(&["--max-headers", "4"]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let four = [("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")];
    publisher.send_text(&msg("PUB", "T", &four, "four"));
    sub.expect_text(&relayed("PUB", "T", &four, &publisher.cid, "", "four"));
    let five = [("A", "1"), ("B", "2"), ("C", "3"), ("D", "4"), ("E", "5")];
    check_malformed(&mut sub, &mut publisher, &msg("PUB", "T", &five, "five"), true);
}

// ---------------------------------------------------------------------------------------------
// WebSocket-level limits
// ---------------------------------------------------------------------------------------------

/// A text `PUB T` message of exactly `len` bytes.
fn pub_of_len(len: usize) -> String {
    let head = "PUB T\r\n\r\n";
    let tail = "\r\n.\r\n";
    let fill = len - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(fill))
}

#[test]
fn websocket_message_over_max_message_bytes_closes_with_1009() {
    let mut server = Server::start(&["--max-message-bytes", "4096"]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let exact = pub_of_len(4096);
    assert_eq!(exact.len(), 4096);
    publisher.send_text(&exact);
    let got = sub.recv().parse();
    assert_eq!(got.body.len(), 4096 - "PUB T\r\n\r\n.\r\n".len());

    publisher.send_text(&pub_of_len(4097));
    let (code, _) = publisher.expect_close();
    assert_eq!(code, 1009);
    // The oversize PUB was not relayed: a later PUB on T from the closed publisher's shard
    // is the first thing on T (see `Marker`).
    expect_marker_next(&mut server.service_on(publisher.shard()), "T", &mut sub);
    server.assert_serving();
}

#[test]
fn fragmented_message_over_max_message_bytes_closes_with_1009() {
    let mut server = Server::start(&["--max-message-bytes", "4096"]);
    let (mut sub, mut publisher) = pair(&server, "T");
    let big = pub_of_len(6000);
    publisher.send_frame(frame(Data::Text, false, &big.as_bytes()[..3000]));
    publisher.send_frame(frame(Data::Continue, true, &big.as_bytes()[3000..]));
    let (code, _) = publisher.expect_close();
    assert_eq!(code, 1009);
    // The oversize PUB was not relayed: a later PUB on T from the closed publisher's shard
    // is the first thing on T (see `Marker`).
    expect_marker_next(&mut server.service_on(publisher.shard()), "T", &mut sub);
    server.assert_serving();
}

#[test]
fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let mut server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    publisher.send_frame(frame(Data::Text, true, b"PUB T\r\n\r\n\xff\xfe bad\r\n.\r\n"));
    let (code, _) = publisher.expect_close();
    assert_eq!(code, 1007);
    // The invalid PUB was not relayed: a later PUB on T from the closed publisher's shard is
    // the first thing on T (see `Marker`).
    expect_marker_next(&mut server.service_on(publisher.shard()), "T", &mut sub);
    server.assert_serving();
}

#[test]
fn invalid_utf8_split_across_fragments_closes_with_1007() {
    let mut server = Server::start(&[]);
    let (mut sub, mut publisher) = pair(&server, "T");
    // A lead byte that the next fragment does not continue.
    publisher.send_frame(frame(Data::Text, false, b"PUB T\r\n\r\ncaf\xc3"));
    publisher.send_frame(frame(Data::Continue, true, b"(\r\n.\r\n"));
    let (code, _) = publisher.expect_close();
    assert_eq!(code, 1007);
    // The invalid PUB was not relayed: a later PUB on T from the closed publisher's shard is
    // the first thing on T (see `Marker`).
    expect_marker_next(&mut server.service_on(publisher.shard()), "T", &mut sub);
    server.assert_serving();
}
