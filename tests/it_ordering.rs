//! Checks ordering (§7): one publisher's stream arrives in order on both shards, commands too.
//! How: real binary, two shards; peers on their own threads, sequence numbers in the messages.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const COUNT: u64 = 2000;

/// Publishes `COUNT` messages `"<tag> <seq>"` to `topic`: the first half one per WebSocket
/// message, the second half ten per WebSocket message.
fn publish_sequence(publisher: &mut Client, topic: &str, tag: &str) {
    for seq in 0..COUNT / 2 {
        publisher.queue_text(&msg(
            "PUB",
            topic,
            &[("Seq", &seq.to_string())],
            &format!("{tag} {seq}"),
        ));
        if seq % 50 == 49 {
            publisher.flush();
        }
    }
    let mut seq = COUNT / 2;
    while seq < COUNT {
        let batch: String = (seq..seq + 10)
            .map(|s| msg("PUB", topic, &[("Seq", &s.to_string())], &format!("{tag} {s}")))
            .collect();
        publisher.queue_text(&batch);
        seq += 10;
        if seq.is_multiple_of(100) {
            publisher.flush();
        }
    }
    publisher.flush();
}

/// Reads `total` messages and returns, per sender cid, the sequence numbers in arrival order.
fn collect(sub: &mut Client, total: usize) -> HashMap<String, Vec<u64>> {
    let mut by_sender: HashMap<String, Vec<u64>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0..total {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match sub.next_event(left) {
            Event::Message(m) => m,
            other => panic!("subscriber {} after {n} of {total} messages: {other:?}", sub.cid),
        };
        let p = m.parse();
        let cid = p.header("Cid").expect("Cid").to_owned();
        let seq: u64 = p.header("Seq").expect("Seq").parse().unwrap();
        let body = String::from_utf8(p.body).unwrap();
        assert!(body.ends_with(&format!(" {seq}\r\n")), "body {body:?} does not match Seq {seq}");
        by_sender.entry(cid).or_default().push(seq);
    }
    by_sender
}

#[test]
fn each_publishers_stream_reaches_subscribers_on_both_shards_in_order() {
    let server = Server::start(&["--max-pending-bytes", "64MiB"]);
    let mut subs = [server.service_on(0), server.service_on(1)];
    for s in subs.iter_mut() {
        s.send_text(&msg("SUB", "Stream", &[], ""));
        s.sync();
    }
    server.settle();
    let publishers = [server.service_on(0), server.service_on(1)];
    let cids: Vec<String> = publishers.iter().map(|p| p.cid.clone()).collect();

    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| thread::spawn(move || (s.shard(), collect(&mut s, 2 * COUNT as usize))))
        .collect();
    let writers: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            thread::spawn(move || {
                publish_sequence(&mut p, "Stream", &format!("p{i}"));
                p
            })
        })
        .collect();
    let _publishers: Vec<Client> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    let expected: Vec<u64> = (0..COUNT).collect();
    for r in readers {
        let (shard, by_sender) = r.join().expect("reader thread");
        for cid in &cids {
            let got = by_sender
                .get(cid)
                .unwrap_or_else(|| panic!("subscriber on shard {shard} got nothing from {cid}"));
            let first_bad = got.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(
                got == &expected,
                "subscriber on shard {shard}, publisher {cid}: {} messages, first out of order \
                 at index {first_bad:?}",
                got.len()
            );
        }
    }
}

#[test]
fn private_messages_from_one_service_arrive_in_order() {
    let server = Server::start(&["--max-pending-bytes", "64MiB"]);
    for (from, to) in [(0, 1), (1, 0)] {
        let mut svc = server.service_on(from);
        let mut cli = server.client_on(to);
        let topic = format!("MSG:{}", cli.cid);
        let reader = thread::spawn(move || {
            let got = collect(&mut cli, COUNT as usize);
            (cli, got)
        });
        publish_sequence(&mut svc, &topic, "direct");
        let (_cli, got) = reader.join().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[&svc.cid], (0..COUNT).collect::<Vec<_>>());
    }
}

#[test]
fn requests_from_one_connection_reach_a_single_responder_in_order() {
    let server = Server::start(&["--max-pending-bytes", "64MiB"]);
    let mut svc = server.service_on(1);
    let mut cli = server.client_on(0);
    svc.send_text(&msg("EREQ", "Q", &[], ""));
    tell(&mut svc, &mut cli);
    for seq in 0..500u64 {
        cli.queue_text(&msg("REQ", "Q", &[("Seq", &seq.to_string())], &format!("q {seq}")));
    }
    cli.flush();
    let mut rids = Vec::new();
    for seq in 0..500u64 {
        let p = svc.recv().parse();
        assert_eq!(p.header("Seq"), Some(seq.to_string().as_str()), "REQ order");
        rids.push(p.header("Rid").unwrap().to_owned());
    }
    for (seq, rid) in rids.iter().enumerate() {
        svc.queue_text(&msg("RES", "Q", &[("Rid", rid), ("Seq", &seq.to_string())], ""));
    }
    svc.flush();
    for seq in 0..500u64 {
        let p = cli.recv().parse();
        assert_eq!(p.header("Seq"), Some(seq.to_string().as_str()), "RES order");
    }
}

#[test]
fn sub_then_pub_from_the_same_connection_reaches_itself() {
    let server = Server::start(&[]);
    for shard in [0, 1] {
        let mut c = server.service_on(shard);
        let mut witness = server.subscriber_on(shard, "Mine2");
        // Two WebSocket messages, back to back, without waiting.
        c.queue_text(&msg("SUB", "Mine", &[], ""));
        c.queue_text(&msg("PUB", "Mine", &[], "first"));
        c.flush();
        c.expect_text(&relayed("PUB", "Mine", &[], &c.cid, "", "first"));
        // One WebSocket message.
        c.send_text(&[msg("SUB", "Mine2", &[], ""), msg("PUB", "Mine2", &[], "second")].concat());
        c.expect_text(&relayed("PUB", "Mine2", &[], &c.cid, "", "second"));
        // And UNS then PUB is not delivered.
        c.send_text(&[msg("UNS", "Mine2", &[], ""), msg("PUB", "Mine2", &[], "gone")].concat());
        // The witness on c's shard has both, so c would have "gone" queued ahead of its sync.
        witness.expect_text(&relayed("PUB", "Mine2", &[], &c.cid, "", "second"));
        witness.expect_text(&relayed("PUB", "Mine2", &[], &c.cid, "", "gone"));
        c.sync();
    }
}

#[test]
fn grant_then_hand_off_in_one_websocket_message_takes_effect_in_order() {
    let server = Server::start(&[]);
    let mut svc = server.service_on(0);
    let mut cli = server.client_on(1);
    let topic = format!("MSG:{}", cli.cid);
    svc.send_text(&[msg("EPUB", "G", &[], ""), msg("PUB", &topic, &[], "go")].concat());
    cli.expect_text(&relayed("PUB", &topic, &[], &svc.cid, "", "go"));
    svc.send_text(&msg("SUB", "G", &[], ""));
    svc.sync();
    server.settle();
    cli.send_text(&msg("PUB", "G", &[], "granted"));
    svc.expect_text(&relayed("PUB", "G", &[], &cli.cid, "", "granted"));
}

#[test]
fn a_sub_takes_effect_everywhere_once_a_later_command_is_answered() {
    // PROTOCOL.md §4: a PUB reaches "every connection subscribed to T at that moment". Once the
    // server has answered a command sent after the SUB, the SUB has happened; a PUB sent after
    // that, from any shard, must reach the subscriber. (No `settle` here on purpose.)
    let server = Server::start(&[]);
    let mut sub = server.service_on(0);
    let mut publishers = [server.service_on(0), server.service_on(1)];
    let mut missed = Vec::new();
    for i in 0..200 {
        let topic = format!("Fresh{i}");
        sub.send_text(&msg("SUB", &topic, &[], ""));
        sub.sync();
        let p = &mut publishers[i % 2];
        p.send_text(&msg("PUB", &topic, &[], "x"));
        match sub.next_event(Duration::from_secs(1)) {
            Event::Message(m) => {
                assert_eq!(m.parse().first_line, format!("PUB {topic}"));
            }
            Event::Timeout => missed.push(format!("{topic} from shard {}", p.shard())),
            other => panic!("subscriber: {other:?}"),
        }
    }
    assert!(
        missed.is_empty(),
        "{} of 200 PUBs sent after the subscriber's SUB and a round trip were lost: {missed:?}",
        missed.len()
    );
}

#[test]
fn frames_read_behind_a_grant_are_answered_without_more_input() {
    // EREQ/ESUB/EPUB pause the reader until every shard has them (PROTOCOL.md §4, docs). The
    // frames already read behind the grant must then be handled even though the peer sends
    // nothing more: it is waiting for their answer. (A load generator that pipelined its
    // login barrier behind EREQ, on several connections at once, once waited forever here.)
    let server = Server::start(&[]);
    let services: Vec<Client> = (0..8).map(|i| server.service_on(i % 2)).collect();
    let threads: Vec<_> = services
        .into_iter()
        .enumerate()
        .map(|(n, mut svc)| {
            std::thread::spawn(move || {
                let own = format!("MSG:{}", svc.cid);
                for i in 0..200 {
                    let topic = format!("Pipelined{n}-{i}");
                    svc.queue_text(&msg("EREQ", &topic, &[], ""));
                    svc.queue_text(&msg("ESUB", &topic, &[], ""));
                    svc.queue_text(&msg("PUB", &own, &[], &format!("after {i}")));
                    svc.flush();
                    match svc.next_event(Duration::from_secs(5)) {
                        Event::Message(m) => {
                            let p = m.parse();
                            assert_eq!(show(&p.body), show(format!("after {i}\r\n").as_bytes()));
                        }
                        other => {
                            panic!("connection {n}, round {i}: the PUB behind EREQ got {other:?}")
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("every PUB behind a grant was answered");
    }
}
