//! Checks the inputs the fuzz targets found (`fuzz/README.md`), minimised, one test each.
//! How: feeds each input to the sans-IO codec and asserts the property the fuzz target saw fail.

use middleman::protocol::message::{next, write_relay, Limits, Sender};

/// The broker's defaults.
const LIMITS: Limits = Limits { topic_bytes_max: 1024, headers_max: 64 };
const SENDER: Sender<'static> = Sender { cid: b"0123456789abcdefghij", uid: b"" };

/// Parses `input` and relays it as the broker would; then reads the relayed head the way a
/// lax receiver does (a line break at every CR and every LF, white space around a name
/// stripped, names lower-cased) and checks that the only `Cid`, `Uid` and `Rid` lines are the
/// broker's own. Refusing the message (`malformed`) passes too.
fn assert_no_id_reaches_a_lax_receiver(input: &[u8]) {
    let message = match next(input, LIMITS) {
        Some(Ok((message, _))) => message,
        Some(Err(_)) => return,
        None => panic!("no message in {:?}", input.escape_ascii().to_string()),
    };
    let mut relayed = Vec::new();
    write_relay(&message, SENDER, None, None, &mut relayed);
    let head_end = relayed.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = &relayed[..head_end];
    let lines: Vec<&[u8]> =
        head.split(|&b| b == b'\r' || b == b'\n').filter(|line| !line.is_empty()).collect();
    // The first line is the command; the last two are the broker's `Cid` and `Uid`.
    for line in &lines[1..lines.len() - 2] {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name).trim().to_lowercase();
        assert!(
            !["cid", "uid", "rid"].contains(&name.as_str()),
            "a lax receiver reads {:?} as the sender's {name}: relayed head {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(head)
        );
    }
}

/// Found by `message` on its first run (seed written by hand, then minimised by the fuzzer
/// in many variants): a lone CR inside a header value. middleman's parser sees one header
/// `X`; Python's `splitlines()`, `str.split` on `\r\n|\r|\n` and similar see `Cid: evil`.
#[test]
fn message_lone_cr_in_a_header_value_smuggles_no_cid() {
    assert_no_id_reaches_a_lax_receiver(b"PUB News\r\nX: a\rCid: evil\r\n\r\nbody\r\n.\r\n");
}

/// Found by `message` (20 s into a run): a lone CR inside a header *name*, `cid \ruId`, which
/// is not `Cid` to middleman and is relayed; a lax receiver sees `uId\t:\td`.
#[test]
fn message_lone_cr_in_a_header_name_smuggles_no_uid() {
    assert_no_id_reaches_a_lax_receiver(b"PUB News\r\ncid \ruId\t:\td\r\nKeep: me\r\n\r\n.\r\n");
}

/// Found by `fuzz_smoke` (mutation 234 of `spoofed-ids-every-spelling`): the same with the
/// smuggled line's name in upper case and nothing around it.
#[test]
fn message_lone_cr_after_a_name_without_colon_smuggles_no_uid() {
    assert_no_id_reaches_a_lax_receiver(b"PUB News\r\ncid: a\r\nCIDb\rUid:c\r\n\r\n.\r\n");
}

/// The same line break inside a REQ and a RES, where a smuggled `Rid` would matter most.
#[test]
fn message_lone_cr_smuggles_no_rid_on_req_or_res() {
    assert_no_id_reaches_a_lax_receiver(b"REQ svc\r\nReqID: 1\rRid: 7\r\n\r\nq\r\n.\r\n");
    assert_no_id_reaches_a_lax_receiver(b"RES svc\r\nRid: 9\r\nX: y\rRid: 7\r\n\r\na\r\n.\r\n");
}
