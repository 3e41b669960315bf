//! Fuzzes `protocol::handshake::parse` with arbitrary bytes and limits.
//!
//! Input: `[limit low] [limit high] [cut] request...`. The limit is 1 to 16 KiB (the broker
//! uses 8 KiB). Checks:
//!
//! - nothing panics; a rejection is `400` or `431`, never anything else;
//! - incomplete only while under the limit (a peer cannot make the broker buffer more);
//! - an accept consumes the request head (`0 < consumed <= min(len, limit)`), its head alone
//!   gives the same answer, and the `101` is well formed: ASCII lines, no extension and no
//!   subprotocol, and an accept key derived from a `Sec-WebSocket-Key` the request sent;
//! - the answer does not depend on how the bytes arrived: parsing a prefix gives either
//!   "incomplete" or the answer the whole input gives.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/handshake.rs` and by `tests/fuzz_smoke.rs`
//! (which includes this file), so the normal test run checks the same properties.

use middleman::protocol::handshake::{parse, Upgrade, BAD_REQUEST, REQUEST_TOO_LARGE};
use tungstenite::handshake::derive_accept_key;

/// The whole check for one input.
pub fn run(data: &[u8]) {
    let Some((&[low, high, cut], request)) = data.split_first_chunk::<3>() else { return };
    let limit = 1 + usize::from(u16::from_le_bytes([low, high])) % (16 << 10);

    let answer = parse(request, limit);
    match &answer {
        Upgrade::Incomplete => {
            assert!(request.len() < limit, "incomplete at {} bytes, limit {limit}", request.len())
        }
        Upgrade::Reject { response } => {
            assert!(*response == BAD_REQUEST || *response == REQUEST_TOO_LARGE, "{response:?}")
        }
        Upgrade::Accept { consumed, response, origin } => {
            assert!(*consumed > 0 && *consumed <= request.len().min(limit), "consumed {consumed}");
            let head = &request[..*consumed];
            check_101(head, response);
            if origin.is_some() {
                assert!(contains_ignore_case(head, b"origin"), "origin from nowhere");
            }
            assert_eq!(parse(head, limit), answer, "the head alone gives another answer");
        }
    }

    // A prefix: the reader parses whatever has arrived so far and stops at the first answer.
    let prefix = &request[..usize::from(cut) * request.len() / 256];
    match parse(prefix, limit) {
        Upgrade::Incomplete => {}
        early => assert_eq!(early, answer, "the answer depends on how the bytes arrived"),
    }
}

/// Checks the `101 Switching Protocols` response to the request head `head`.
fn check_101(head: &[u8], response: &[u8]) {
    let response = std::str::from_utf8(response).expect("101 is UTF-8");
    assert!(response.is_ascii(), "{response:?}");
    let lines = response.strip_suffix("\r\n\r\n").expect("101 ends with a blank line");
    let mut lines = lines.split("\r\n");
    assert_eq!(lines.next(), Some("HTTP/1.1 101 Switching Protocols"));
    let mut accept = None;
    for line in lines {
        let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("{line:?}"));
        assert!(!value.contains(['\r', '\n']), "{line:?}");
        let name = name.to_ascii_lowercase();
        assert!(
            name != "sec-websocket-extensions" && name != "sec-websocket-protocol",
            "negotiated {line:?}"
        );
        if name == "sec-websocket-accept" {
            accept = Some(value.to_owned());
        }
    }
    let accept = accept.expect("Sec-WebSocket-Accept");
    // The key the request sent, taken from any line that names it (httparse decides which
    // lines are headers; this only needs one candidate to match).
    let derived_from_a_sent_key = head.split(|&b| b == b'\n').any(|line| {
        let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        name.eq_ignore_ascii_case(b"sec-websocket-key") && derive_accept_key(value) == accept
    });
    assert!(derived_from_a_sent_key, "accept key {accept:?} matches no Sec-WebSocket-Key sent");
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}
