//! Fuzzes `protocol::message::next` and `write_relay` with arbitrary WebSocket payloads.
//!
//! Input: `[topic limit] [header limit] [relay options] payload...`. Every message `next`
//! finds in the payload is relayed with `write_relay` (as the broker does for PUB, REQ and
//! RES) and the relayed bytes are parsed again. Checks:
//!
//! - nothing panics; `next` always makes progress and `rest` is a suffix of its input;
//! - a parsed target is 1 to `topic_bytes_max` bytes without CR, LF or NUL; at most
//!   `headers_max` headers, with non-empty names and no LF;
//! - `relay_len` is exactly what `write_relay` appends;
//! - the relayed message parses as one message with the same command, target and body, the
//!   sender's headers minus `Cid`, `Uid`, `Rid` (and `ReqID` when the broker writes its own)
//!   in the same order and spelling, then exactly the broker's headers;
//! - no `Cid`, `Uid` or `Rid` from the input survives, not even as a line that a receiver
//!   splitting on any CR or LF would see;
//! - a relayed text message is still UTF-8.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/message.rs` and by `tests/fuzz_smoke.rs`
//! (which includes this file), so the normal test run checks the same properties.

use middleman::protocol::message::{next, relay_len, write_relay, Header, Limits, Sender};

/// A cid as the broker writes it: 20 characters of `0-9a-v`.
const CID: &[u8] = b"0123456789abcdefghij";
/// Uids a service may set with `INT UID` (header values: no LF, no surrounding blanks).
const UIDS: [&[u8]; 4] = [b"", b"alice", b"b\xc3\xb6b the builder", b"x:y"];
/// `ReqID` values the broker may write on a RES (the requester's, from a header value).
const REQ_IDS: [Option<&[u8]>; 4] = [None, Some(b""), Some(b"abc-1"), Some(b"r e q")];
const RIDS: [Option<u64>; 4] = [None, Some(0), Some(12_345), Some(u64::MAX)];

/// The whole check for one input.
pub fn run(data: &[u8]) {
    let Some((&[topic, headers, options], payload)) = data.split_first_chunk::<3>() else {
        return;
    };
    let limits = Limits {
        topic_bytes_max: if topic == 0 { 1024 } else { usize::from(topic % 64) + 1 },
        headers_max: if headers == 0 { 64 } else { usize::from(headers % 12) },
    };
    let sender = Sender { cid: CID, uid: UIDS[usize::from(options & 3)] };
    let req_id = REQ_IDS[usize::from(options >> 2 & 3)];
    let rid = RIDS[usize::from(options >> 4 & 3)];
    let text = std::str::from_utf8(payload).is_ok();

    let mut input = payload;
    while let Some(parsed) = next(input, limits) {
        let Ok((message, rest)) = parsed else { break };
        assert!(rest.len() < input.len(), "no progress");
        assert!(input.ends_with(rest), "rest is not a suffix");
        let target = message.target;
        assert!(!target.is_empty() && target.len() <= limits.topic_bytes_max);
        assert!(!target.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)), "{target:?}");
        assert!(message.headers.len() <= limits.headers_max);
        for header in &message.headers {
            assert!(!header.name.is_empty() && !header.line.contains(&b'\n'), "{header:?}");
        }

        let mut out = b"before".to_vec();
        write_relay(&message, sender, req_id, rid, &mut out);
        let relayed = &out[b"before".len()..];
        assert_eq!(relayed.len(), relay_len(&message, sender, req_id, rid), "relay_len");
        assert!(!text || std::str::from_utf8(relayed).is_ok(), "relayed text is not UTF-8");

        // The relay adds up to four headers of its own (ReqID, Cid, Uid, Rid).
        let relay_limits = Limits { headers_max: limits.headers_max + 4, ..limits };
        let (again, after) = match next(relayed, relay_limits) {
            Some(Ok(parsed)) => parsed,
            other => panic!("relayed message does not parse: {other:?}"),
        };
        assert!(after.is_empty(), "relayed bytes after the message");
        assert_eq!(
            (again.word, again.command, again.target),
            (message.word, message.command, target)
        );
        assert_eq!(again.body, message.body, "body changed");

        let replaced = |h: &Header<'_>| {
            h.is("Cid") || h.is("Uid") || h.is("Rid") || (req_id.is_some() && h.is("ReqID"))
        };
        let kept: Vec<&Header<'_>> = message.headers.iter().filter(|h| !replaced(h)).collect();
        let mut own: Vec<(&str, Vec<u8>)> = Vec::new();
        if let Some(req_id) = req_id {
            own.push(("ReqID", req_id.to_vec()));
        }
        own.push(("Cid", CID.to_vec()));
        own.push(("Uid", sender.uid.to_vec()));
        if let Some(rid) = rid {
            own.push(("Rid", rid.to_string().into_bytes()));
        }
        assert_eq!(again.headers.len(), kept.len() + own.len(), "header count");
        let (sent, added) = again.headers.split_at(kept.len());
        for (relayed, original) in sent.iter().zip(&kept) {
            assert_eq!(relayed, *original, "a sender's header changed");
        }
        for (header, (name, value)) in added.iter().zip(&own) {
            assert_eq!((header.name, header.value), (name.as_bytes(), value.as_slice()));
        }
        for name in ["Cid", "Uid", "Rid"] {
            let count = again.headers.iter().filter(|h| h.is(name)).count();
            let expected = own.iter().filter(|(n, _)| *n == name).count();
            assert_eq!(count, expected, "{name} headers in the relayed message");
        }
        // The broker relays only known commands (an unknown word gets `unknown-command`).
        if message.command.is_some() {
            check_no_smuggled_lines(relayed, own.len());
        }
        input = rest;
    }
}

/// Splits the relayed head (first line and headers) at every CR and at every LF, as a lax
/// receiver would, and checks that the only `Cid`, `Uid` and `Rid` lines are the broker's own:
/// the last `own` lines of the head.
fn check_no_smuggled_lines(relayed: &[u8], own: usize) {
    let head_end =
        relayed.windows(4).position(|w| w == b"\r\n\r\n").expect("relayed head ends with CRLFCRLF");
    let head = &relayed[..head_end];
    let lines: Vec<&[u8]> =
        head.split(|&b| b == b'\r' || b == b'\n').filter(|l| !l.is_empty()).collect();
    let senders = &lines[..lines.len() - own];
    for line in senders.iter().skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = trim_blanks(&line[..colon]);
        for reserved in [&b"cid"[..], b"uid", b"rid"] {
            assert!(
                !name.eq_ignore_ascii_case(reserved),
                "a lax receiver sees a spoofed line {:?} in {:?}",
                String::from_utf8_lossy(line),
                String::from_utf8_lossy(head)
            );
        }
    }
}

/// Removes the blanks PROTOCOL.md §3 ignores around a name (space and tab). Other white space
/// (VT, FF, NBSP) is `tests/it_adversarial.rs`'s business.
fn trim_blanks(mut name: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = name {
        name = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = name {
        name = rest;
    }
    name
}
