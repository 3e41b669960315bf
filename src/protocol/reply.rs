//! Messages the broker writes itself (PROTOCOL.md §2 and §6), sans-IO: the `MM OK` greeting
//! and the `PUB ERROR` messages.
//!
//! What it is: the one place that knows the error codes, the error texts the original server
//! wrote, and the exact bytes of an error message:
//!
//! ```text
//! PUB ERROR\r\nCode: <code>\r\n[ReqID: <the REQ's ReqID>\r\n]\r\n<text>\r\n.\r\n
//! ```
//!
//! A caller builds the text with [`write_error_text`] into a scratch buffer, then wraps it with
//! [`write_error`].
//!
//! What it is not: it does not decide when an error is sent, to whom, or in which frame (always
//! a text frame, PROTOCOL.md §6); the connection and router code do.
//!
//! Invariants:
//!
//! - An error message is always one valid middleman message: its body is exactly one line,
//!   dot-stuffed, ending with CRLF before the `.` line.
//! - Its bytes are valid UTF-8, because errors go out in text frames. The command word, target
//!   and `ReqID` come from a peer and may hold anything a binary frame can carry, so
//!   [`write_error_text`] and [`write_error`] replace every byte that is not UTF-8, and every
//!   CR or LF (which would end the line early and let a peer inject lines), with U+FFFD.
//! - No allocation beyond the growth of `out`.

use memchr::memchr2;

/// The first WebSocket message the broker sends after accepting a key (PROTOCOL.md §2).
pub const MM_OK: &[u8] = b"MM OK";

/// The error codes of PROTOCOL.md §6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    NotTrusted,
    NoResponder,
    ResponderLost,
    Timeout,
    NoRequest,
    NoConnection,
    UnknownCommand,
    Malformed,
    Limit,
}

impl ErrorCode {
    /// Every code, in the order of PROTOCOL.md §6.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::NotTrusted,
        ErrorCode::NoResponder,
        ErrorCode::ResponderLost,
        ErrorCode::Timeout,
        ErrorCode::NoRequest,
        ErrorCode::NoConnection,
        ErrorCode::UnknownCommand,
        ErrorCode::Malformed,
        ErrorCode::Limit,
    ];

    /// The value of the `Code` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTrusted => "not-trusted",
            Self::NoResponder => "no-responder",
            Self::ResponderLost => "responder-lost",
            Self::Timeout => "timeout",
            Self::NoRequest => "no-request",
            Self::NoConnection => "no-connection",
            Self::UnknownCommand => "unknown-command",
            Self::Malformed => "malformed",
            Self::Limit => "limit",
        }
    }
}

/// Appends `PUB ERROR` with `Code: <code>`, `ReqID: <req_id>` when set, and a body of one
/// line, `text` (dot-stuffed if it starts with `.`), CRLF, then `.` CRLF.
///
/// `text` must be one line of UTF-8 (no CR, no LF): what [`write_error_text`] writes, or a
/// fixed string such as [`Malformed::text`](super::message::Malformed::text). Passing anything
/// else is a bug in the caller, checked in debug builds. `req_id` is a peer's header value and
/// is made safe here (see the module invariants).
pub fn write_error(code: ErrorCode, req_id: Option<&[u8]>, text: &[u8], out: &mut Vec<u8>) {
    debug_assert!(
        memchr2(b'\r', b'\n', text).is_none(),
        "error text is more than one line: {:?}",
        String::from_utf8_lossy(text)
    );
    debug_assert!(std::str::from_utf8(text).is_ok(), "error text is not UTF-8");

    let code = code.as_str().as_bytes();
    let req_id_len = req_id.map_or(0, |v| b"ReqID: \r\n".len() + v.len());
    out.reserve(
        b"PUB ERROR\r\nCode: \r\n\r\n".len()
            + code.len()
            + req_id_len
            + 1
            + text.len()
            + b"\r\n.\r\n".len(),
    );

    out.extend_from_slice(b"PUB ERROR\r\nCode: ");
    out.extend_from_slice(code);
    out.extend_from_slice(b"\r\n");
    if let Some(req_id) = req_id {
        out.extend_from_slice(b"ReqID: ");
        push_one_line(req_id, out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if text.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n.\r\n");
}

/// Appends the text of the standard error for `code` about `command` and `target`, as the
/// original wrote it: `Not trusted PUB T`, `Not trusted: SUB T`, `No responder for REQ T`,
/// `No client for request ID  RES T` ... (see PROTOCOL.md §6).
///
/// Each text is a fixed prefix, then `command`, then a space and `target` when `target` is
/// not empty:
///
/// | code | text |
/// |---|---|
/// | `NotTrusted` | `Not trusted: SUB T` when `command` is `SUB` (the only one with a colon), else `Not trusted <CMD> T` |
/// | `NoResponder` | `No responder for <CMD> T` (`CMD` is `REQ`) |
/// | `ResponderLost` | `Responder lost for <CMD> T` (`REQ`) |
/// | `Timeout` | `Request timed out <CMD> T` (`REQ`) |
/// | `NoRequest` | `No client for request ID  <CMD> T` (two spaces; `RES`) |
/// | `NoConnection` | `No client for <CMD> T` (`INT UID`) |
/// | `UnknownCommand` | `Unknown command <CMD> T` (`CMD` is the word as sent) |
/// | `Malformed` | `Malformed message: <command>`: pass [`Malformed::text`](super::message::Malformed::text) as `command` and an empty `target` |
/// | `Limit` | `Limit reached: <command> T`: pass `<which limit> <CMD>` as `command`, e.g. `subscriptions SUB` or `pending requests REQ` |
///
/// `command` and `target` may be any bytes a peer sent: bytes that are not UTF-8, and CR or
/// LF, are written as U+FFFD, so the result can always be passed to [`write_error`].
pub fn write_error_text(code: ErrorCode, command: &[u8], target: &[u8], out: &mut Vec<u8>) {
    let prefix: &[u8] = match code {
        ErrorCode::NotTrusted if command == b"SUB" => b"Not trusted: ",
        ErrorCode::NotTrusted => b"Not trusted ",
        ErrorCode::NoResponder => b"No responder for ",
        ErrorCode::ResponderLost => b"Responder lost for ",
        ErrorCode::Timeout => b"Request timed out ",
        ErrorCode::NoRequest => b"No client for request ID  ",
        ErrorCode::NoConnection => b"No client for ",
        ErrorCode::UnknownCommand => b"Unknown command ",
        ErrorCode::Malformed => b"Malformed message: ",
        ErrorCode::Limit => b"Limit reached: ",
    };
    out.reserve(prefix.len() + command.len() + 1 + target.len());
    out.extend_from_slice(prefix);
    push_one_line(command, out);
    if !target.is_empty() {
        out.push(b' ');
        push_one_line(target, out);
    }
}

/// What replaces a byte that cannot appear in a one-line UTF-8 text.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Appends `bytes` with every CR, LF and maximal invalid UTF-8 sequence replaced by U+FFFD.
fn push_one_line(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.utf8_chunks() {
        let mut valid = chunk.valid().as_bytes();
        while let Some(i) = memchr2(b'\r', b'\n', valid) {
            out.extend_from_slice(&valid[..i]);
            out.extend_from_slice(REPLACEMENT);
            valid = &valid[i + 1..];
        }
        out.extend_from_slice(valid);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(REPLACEMENT);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Checks the exact bytes of every error message and text, and that peer bytes in them
    //! cannot break the message; by comparing byte vectors and re-parsing the output.

    use super::*;
    use crate::protocol::message::{self, Limits, Malformed};

    fn text(code: ErrorCode, command: &[u8], target: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_error_text(code, command, target, &mut out);
        out
    }

    fn error(code: ErrorCode, req_id: Option<&[u8]>, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_error(code, req_id, text, &mut out);
        out
    }

    #[test]
    fn mm_ok_is_the_greeting() {
        assert_eq!(MM_OK, b"MM OK");
    }

    #[test]
    fn code_strings() {
        let codes: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            codes,
            [
                "not-trusted",
                "no-responder",
                "responder-lost",
                "timeout",
                "no-request",
                "no-connection",
                "unknown-command",
                "malformed",
                "limit",
            ]
        );
    }

    #[test]
    fn error_without_req_id() {
        assert_eq!(
            error(ErrorCode::NotTrusted, None, b"Not trusted PUB news"),
            b"PUB ERROR\r\nCode: not-trusted\r\n\r\nNot trusted PUB news\r\n.\r\n"
        );
    }

    #[test]
    fn error_with_req_id() {
        assert_eq!(
            error(ErrorCode::Timeout, Some(b"abc-1"), b"Request timed out REQ svc"),
            b"PUB ERROR\r\nCode: timeout\r\nReqID: abc-1\r\n\r\nRequest timed out REQ svc\r\n.\r\n"
        );
    }

    #[test]
    fn error_with_empty_text_and_empty_req_id() {
        assert_eq!(
            error(ErrorCode::Limit, Some(b""), b""),
            b"PUB ERROR\r\nCode: limit\r\nReqID: \r\n\r\n\r\n.\r\n"
        );
    }

    #[test]
    fn error_text_starting_with_a_dot_is_stuffed() {
        assert_eq!(
            error(ErrorCode::Malformed, None, b".hidden"),
            b"PUB ERROR\r\nCode: malformed\r\n\r\n..hidden\r\n.\r\n"
        );
        assert_eq!(
            error(ErrorCode::Malformed, None, b"."),
            b"PUB ERROR\r\nCode: malformed\r\n\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn error_appends_to_what_is_in_out() {
        let mut out = b"x".to_vec();
        write_error(ErrorCode::Limit, None, b"t", &mut out);
        assert_eq!(out, b"xPUB ERROR\r\nCode: limit\r\n\r\nt\r\n.\r\n");
    }

    #[test]
    fn error_req_id_from_a_peer_is_made_safe() {
        assert_eq!(
            error(ErrorCode::NoResponder, Some(b"a\rb\xff"), b"t"),
            "PUB ERROR\r\nCode: no-responder\r\nReqID: a\u{FFFD}b\u{FFFD}\r\n\r\nt\r\n.\r\n"
                .as_bytes()
        );
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "more than one line")]
    fn error_text_with_a_line_break_is_a_bug() {
        error(ErrorCode::Malformed, None, b"two\r\nlines");
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "not UTF-8")]
    fn error_text_that_is_not_utf8_is_a_bug() {
        error(ErrorCode::Malformed, None, b"\xff");
    }

    #[test]
    fn not_trusted_texts() {
        assert_eq!(text(ErrorCode::NotTrusted, b"SUB", b"T"), b"Not trusted: SUB T");
        for cmd in ["PUB", "REQ", "RES", "EPUB", "ESUB", "EREQ"] {
            assert_eq!(
                text(ErrorCode::NotTrusted, cmd.as_bytes(), b"T"),
                format!("Not trusted {cmd} T").as_bytes()
            );
        }
        assert_eq!(text(ErrorCode::NotTrusted, b"INT", b"UID"), b"Not trusted INT UID");
    }

    #[test]
    fn request_error_texts() {
        assert_eq!(
            text(ErrorCode::NoResponder, b"REQ", b"svc.echo"),
            b"No responder for REQ svc.echo"
        );
        assert_eq!(text(ErrorCode::ResponderLost, b"REQ", b"T"), b"Responder lost for REQ T");
        assert_eq!(text(ErrorCode::Timeout, b"REQ", b"T"), b"Request timed out REQ T");
        assert_eq!(text(ErrorCode::NoRequest, b"RES", b"T"), b"No client for request ID  RES T");
    }

    #[test]
    fn other_error_texts() {
        assert_eq!(text(ErrorCode::NoConnection, b"INT", b"UID"), b"No client for INT UID");
        assert_eq!(
            text(ErrorCode::UnknownCommand, b"FROB", b"a topic"),
            b"Unknown command FROB a topic"
        );
        assert_eq!(text(ErrorCode::UnknownCommand, b"", b"T"), b"Unknown command  T");
        assert_eq!(
            text(ErrorCode::Malformed, Malformed::NoSpace.text().as_bytes(), b""),
            b"Malformed message: no space in the first line"
        );
        assert_eq!(
            text(ErrorCode::Limit, b"subscriptions SUB", b"T"),
            b"Limit reached: subscriptions SUB T"
        );
        assert_eq!(
            text(ErrorCode::Limit, b"pending requests REQ", b"svc"),
            b"Limit reached: pending requests REQ svc"
        );
    }

    #[test]
    fn text_appends_to_what_is_in_out() {
        let mut out = b"x".to_vec();
        write_error_text(ErrorCode::Timeout, b"REQ", b"T", &mut out);
        assert_eq!(out, b"xRequest timed out REQ T");
    }

    #[test]
    fn peer_bytes_in_texts_become_replacement_characters() {
        assert_eq!(
            text(ErrorCode::UnknownCommand, b"P\rB", b"caf\xc3\xa9\xff\xfe"),
            "Unknown command P\u{FFFD}B café\u{FFFD}\u{FFFD}".as_bytes()
        );
        assert_eq!(
            text(ErrorCode::NotTrusted, b"PUB", b"a\nb"),
            "Not trusted PUB a\u{FFFD}b".as_bytes()
        );
        // A truncated multi-byte sequence is one replacement.
        assert_eq!(
            text(ErrorCode::NotTrusted, b"PUB", b"\xe2\x82"),
            "Not trusted PUB \u{FFFD}".as_bytes()
        );
    }

    #[test]
    fn every_error_is_one_valid_utf8_message() {
        let limits = Limits { topic_bytes_max: 64, headers_max: 4 };
        let hostile: [&[u8]; 4] = [b"T", b".dot", b"\r\n.\r\nPUB x\r\n\r\n", b"\xff\0"];
        for code in ErrorCode::ALL {
            for target in hostile {
                for req_id in [None, Some(&b"r\r1"[..])] {
                    let mut body = Vec::new();
                    write_error_text(code, b"PUB", target, &mut body);
                    let out = error(code, req_id, &body);
                    assert!(std::str::from_utf8(&out).is_ok());
                    let (m, rest) = message::next(&out, limits).unwrap().unwrap();
                    assert!(rest.is_empty());
                    assert_eq!((m.word, m.target), (&b"PUB"[..], &b"ERROR"[..]));
                    assert_eq!(m.header("Code"), Some(code.as_str().as_bytes()));
                    assert_eq!(m.header("ReqID").is_some(), req_id.is_some());
                    assert_eq!(m.body.iter().filter(|&&b| b == b'\n').count(), 1);
                    assert!(m.body.ends_with(b"\r\n"));
                }
            }
        }
    }
}
