//! The middleman message (PROTOCOL.md §3), sans-IO: parsing one message out of a WebSocket
//! payload, and writing the relayed form of a message.
//!
//! ```text
//! message  = command SP target EOL *(header EOL) EOL body "." EOL
//! header   = name ":" *WSP value
//! EOL      = CRLF / LF            (input; the broker always writes CRLF)
//! ```
//!
//! What it is:
//!
//! - [`next`] takes what is left of one WebSocket payload and returns the next [`Message`],
//!   borrowing every field from the payload, plus the bytes after it. A payload may hold several
//!   messages back to back, with blank lines between them; the caller loops until `None`.
//! - [`write_relay`] appends the form the broker delivers: the first line and headers
//!   rewritten (spoofed `Cid`/`Uid`/`Rid` removed, the broker's own added), the body copied
//!   byte for byte. [`relay_len`] says how many bytes that is, so a caller can size a frame
//!   header before writing.
//!
//! What it is not:
//!
//! - It does not decode the body. The body is returned and relayed *still dot-stuffed*, exactly
//!   as the sender encoded it (line endings included): the broker never needs the decoded body,
//!   and relaying the sender's bytes is what keeps a body unchanged through any number of hops.
//! - It does not decide anything: authorization, routing and error replies live elsewhere.
//!   [`Malformed`] only says what is wrong, in the words of `Malformed message: <text>`.
//! - It does not handle partial input. A WebSocket message is complete by the time it gets here
//!   (fragments are reassembled before), so a message cut short is [`Malformed`], not
//!   "incomplete".
//!
//! Invariants:
//!
//! - No allocation while parsing, except when a message has more than 8 headers (the
//!   [`SmallVec`] spills to the heap). [`write_relay`] grows only `out`, once.
//! - A successful parse always consumes at least one byte, and `rest` is a suffix of the input,
//!   so a caller's loop over a payload always ends.
//! - Nothing a peer sends can make the parser panic: every index is derived from a search
//!   inside the slice it indexes (the tests feed truncated and random input to check this).
//! - Parsed `target`s contain no CR, LF or NUL and are 1 to `topic_bytes_max` bytes; header
//!   `line`s, `name`s and `value`s contain no LF, so writing them back followed by CRLF always
//!   yields exactly one line.
//!
//! Parsing decisions where PROTOCOL.md is silent:
//!
//! - Blank lines (`LF` or `CRLF` alone) before a message are skipped, so payloads such as
//!   `msg1 "\r\n" msg2` work. A payload of nothing but blank lines holds no message.
//! - The first line is split at the *first* space: the target may contain spaces (as in the
//!   original, Go's `SplitN(line, " ", 2)`).
//! - The terminating `.` may be the very last byte of the payload, without an EOL.
//! - The first line is checked before its EOL, so `PING` alone is "no space in the first line"
//!   rather than "no blank line"; any other input that ends before the blank line is
//!   [`Malformed::NoBlankLine`].

use memchr::{memchr, memchr2, memchr_iter};
use smallvec::SmallVec;

/// The commands of PROTOCOL.md §4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Sub,
    Uns,
    Pub,
    Req,
    Res,
    Epub,
    Esub,
    Ereq,
    Int,
}

impl Command {
    /// Every command, in the order of PROTOCOL.md §4 (`UNS` after `SUB`).
    pub const ALL: [Command; 9] = [
        Command::Sub,
        Command::Uns,
        Command::Pub,
        Command::Req,
        Command::Res,
        Command::Epub,
        Command::Esub,
        Command::Ereq,
        Command::Int,
    ];

    /// Matches the command word exactly (upper case); `None` for an unknown word.
    pub fn parse(word: &[u8]) -> Option<Self> {
        Some(match word {
            b"SUB" => Self::Sub,
            b"UNS" => Self::Uns,
            b"PUB" => Self::Pub,
            b"REQ" => Self::Req,
            b"RES" => Self::Res,
            b"EPUB" => Self::Epub,
            b"ESUB" => Self::Esub,
            b"EREQ" => Self::Ereq,
            b"INT" => Self::Int,
            _ => return None,
        })
    }

    /// The command word as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sub => "SUB",
            Self::Uns => "UNS",
            Self::Pub => "PUB",
            Self::Req => "REQ",
            Self::Res => "RES",
            Self::Epub => "EPUB",
            Self::Esub => "ESUB",
            Self::Ereq => "EREQ",
            Self::Int => "INT",
        }
    }
}

/// Limits the parser enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub topic_bytes_max: usize,
    pub headers_max: usize,
}

/// One header line as the sender wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The whole line without its EOL, relayed as is.
    pub line: &'a [u8],
    /// The name, whitespace-trimmed; compare with [`Header::is`].
    pub name: &'a [u8],
    /// The value, leading and trailing whitespace removed.
    pub value: &'a [u8],
}

impl Header<'_> {
    /// Case-insensitive name match.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A parsed message, borrowing from the WebSocket payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The command word as sent (for `Unknown command <CMD> T`).
    pub word: &'a [u8],
    /// `None` when the word is not a known command.
    pub command: Option<Command>,
    pub target: &'a [u8],
    pub headers: SmallVec<[Header<'a>; 8]>,
    /// The body exactly as encoded by the sender: from after the blank line up to (not
    /// including) the terminating `.` line. Still dot-stuffed; ends with the EOL of its last
    /// line (or is empty).
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.is(name)).map(|h| h.value)
    }
}

/// Why a message could not be parsed; the text follows `Malformed message: `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A zero-length WebSocket message. Never returned by [`next`] (which returns `None` for
    /// empty input); the caller uses it when a whole WebSocket message is empty.
    Empty,
    /// The first line has no space between the command and the target.
    NoSpace,
    /// Nothing after the first space of the first line.
    EmptyTarget,
    /// The target is longer than [`Limits::topic_bytes_max`].
    TargetTooLong,
    /// The target contains a NUL or a CR that is not part of the line's CRLF.
    BadTargetByte,
    /// A line between the first line and the blank line has no `:`.
    HeaderNoColon,
    /// A header line holds a NUL or a CR that is not part of its CRLF. Relayed as is, a lone
    /// CR would let a lax receiver (one that splits lines on CR) see a header the broker
    /// never checked, such as a spoofed `Uid`.
    BadHeaderByte,
    /// A header line whose name (before the `:`, whitespace trimmed) is empty.
    EmptyHeaderName,
    /// A header name with a byte that is not an RFC 9110 token character. Such a name could
    /// look like `Cid` or `Uid` to a receiver that trims more than spaces and tabs (vertical
    /// tab, form feed, Unicode spaces), and so smuggle a spoofed id past the broker.
    BadHeaderName,
    /// More than [`Limits::headers_max`] headers.
    TooManyHeaders,
    /// The input ends before the blank line that closes the headers.
    NoBlankLine,
    /// The input ends before the line that is exactly `.`.
    NoTerminator,
}

impl Malformed {
    /// A short lowercase phrase for `Malformed message: <text>`.
    pub fn text(self) -> &'static str {
        match self {
            Self::Empty => "empty message",
            Self::NoSpace => "no space in the first line",
            Self::EmptyTarget => "empty target",
            Self::TargetTooLong => "target too long",
            Self::BadTargetByte => "target contains a control byte",
            Self::HeaderNoColon => "header line without a colon",
            Self::BadHeaderByte => "header contains a control byte",
            Self::EmptyHeaderName => "empty header name",
            Self::BadHeaderName => "header name is not a token",
            Self::TooManyHeaders => "too many headers",
            Self::NoBlankLine => "no blank line after the headers",
            Self::NoTerminator => "no terminating dot line",
        }
    }
}

/// Parses the next message from `input` (a WebSocket payload or what is left of it).
///
/// Returns `None` when `input` holds nothing but blank lines (the end of the payload),
/// `Some(Ok((message, rest)))`, or `Some(Err(_))`, after which the rest of the payload is
/// skipped.
pub fn next(input: &[u8], limits: Limits) -> Option<Result<(Message<'_>, &[u8]), Malformed>> {
    let input = skip_blank_lines(input);
    if input.is_empty() {
        return None;
    }
    Some(parse(input, limits))
}

/// Parses one message that starts at `input[0]` (blank lines already skipped).
fn parse(input: &[u8], limits: Limits) -> Result<(Message<'_>, &[u8]), Malformed> {
    let (first, after_first) = match split_line(input) {
        Some((line, rest)) => (line, Some(rest)),
        // The payload ends inside the first line. Check what there is, so that a lone word
        // such as `PING` is reported as what it is; a CR at the very end is the start of a
        // CRLF that was cut off, not part of the target.
        None => (input.strip_suffix(b"\r").unwrap_or(input), None),
    };
    let (word, target) = split_first_line(first, limits)?;
    let mut rest = after_first.ok_or(Malformed::NoBlankLine)?;

    let mut headers = SmallVec::new();
    loop {
        let (line, after) = split_line(rest).ok_or(Malformed::NoBlankLine)?;
        rest = after;
        if line.is_empty() {
            break;
        }
        if headers.len() == limits.headers_max {
            return Err(Malformed::TooManyHeaders);
        }
        headers.push(parse_header(line)?);
    }

    let (body, rest) = split_body(rest)?;
    let message = Message { word, command: Command::parse(word), target, headers, body };
    Ok((message, rest))
}

/// Drops every leading line that is empty (`LF` or `CRLF`).
fn skip_blank_lines(mut input: &[u8]) -> &[u8] {
    loop {
        match input {
            [b'\n', rest @ ..] | [b'\r', b'\n', rest @ ..] => input = rest,
            _ => return input,
        }
    }
}

/// Splits off the first line: its content without the EOL (LF, or CRLF), and the bytes after
/// the EOL. `None` when `input` has no LF.
#[inline]
fn split_line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let lf = memchr(b'\n', input)?;
    let line = &input[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &input[lf + 1..]))
}

/// Splits the first line (without its EOL) into the command word and the target.
fn split_first_line(line: &[u8], limits: Limits) -> Result<(&[u8], &[u8]), Malformed> {
    let space = memchr(b' ', line).ok_or(Malformed::NoSpace)?;
    let word = &line[..space];
    let target = &line[space + 1..];
    if target.is_empty() {
        return Err(Malformed::EmptyTarget);
    }
    if target.len() > limits.topic_bytes_max {
        return Err(Malformed::TargetTooLong);
    }
    // LF cannot occur (the line was split at it); a CR here is a lone one.
    if memchr2(0, b'\r', target).is_some() {
        return Err(Malformed::BadTargetByte);
    }
    Ok((word, target))
}

/// Parses one header line (without its EOL, not empty).
fn parse_header(line: &[u8]) -> Result<Header<'_>, Malformed> {
    if memchr::memchr2(b'\r', 0, line).is_some() {
        return Err(Malformed::BadHeaderByte);
    }
    let colon = memchr(b':', line).ok_or(Malformed::HeaderNoColon)?;
    let name = trim_wsp(&line[..colon]);
    if name.is_empty() {
        return Err(Malformed::EmptyHeaderName);
    }
    if !name.iter().all(|&b| is_token_byte(b)) {
        return Err(Malformed::BadHeaderName);
    }
    let value = trim_wsp(&line[colon + 1..]);
    Ok(Header { line, name, value })
}

/// RFC 9110 `tchar`: what a header name may be made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Removes leading and trailing spaces and tabs (the `WSP` of RFC 5234), nothing else.
fn trim_wsp(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Splits `input` (starting right after the blank line) into the body, still dot-stuffed, and
/// the bytes after the terminating `.` line.
fn split_body(input: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    // A terminator can only start at a line start: offset 0 or right after an LF. Scanning
    // for LFs (rather than dots, which are common in JSON numbers) visits each line once.
    if let Some(rest) = terminator(input) {
        return Ok((&input[..0], rest));
    }
    for lf in memchr_iter(b'\n', input) {
        let start = lf + 1;
        if let Some(rest) = terminator(&input[start..]) {
            return Ok((&input[..start], rest));
        }
    }
    Err(Malformed::NoTerminator)
}

/// If `line_start` begins with the line `.` (ended by LF, CRLF or the end of the input), the
/// bytes after it. `..` and `.x` are stuffed body lines, not terminators.
#[inline]
fn terminator(line_start: &[u8]) -> Option<&[u8]> {
    match line_start {
        [b'.'] => Some(&line_start[1..]),
        [b'.', b'\n', rest @ ..] | [b'.', b'\r', b'\n', rest @ ..] => Some(rest),
        _ => None,
    }
}

/// Who sent a relayed message: the values of the `Cid` and `Uid` headers the broker adds.
#[derive(Clone, Copy, Debug)]
pub struct Sender<'a> {
    pub cid: &'a [u8],
    pub uid: &'a [u8],
}

const CRLF: &[u8] = b"\r\n";

/// Whether the relay drops this header of the sender: the broker's own `Cid`, `Uid` and `Rid`
/// always (no spoofing), and `ReqID` when the broker writes its own.
#[inline]
fn is_replaced(header: &Header<'_>, replace_req_id: bool) -> bool {
    header.is("Cid")
        || header.is("Uid")
        || header.is("Rid")
        || (replace_req_id && header.is("ReqID"))
}

/// The exact number of bytes [`write_relay`] appends for these arguments.
pub fn relay_len(
    message: &Message<'_>,
    sender: Sender<'_>,
    req_id: Option<&[u8]>,
    rid: Option<u64>,
) -> usize {
    let first = message.word.len() + 1 + message.target.len() + CRLF.len();
    let kept: usize = message
        .headers
        .iter()
        .filter(|h| !is_replaced(h, req_id.is_some()))
        .map(|h| h.line.len() + CRLF.len())
        .sum();
    let req_id = req_id.map_or(0, |v| b"ReqID: ".len() + v.len() + CRLF.len());
    let cid = b"Cid: ".len() + sender.cid.len() + CRLF.len();
    let uid = b"Uid: ".len() + sender.uid.len() + CRLF.len();
    let rid = rid.map_or(0, |n| b"Rid: ".len() + decimal_len(n) + CRLF.len());
    let tail = CRLF.len() + message.body.len() + b".\r\n".len();
    first + kept + req_id + cid + uid + rid + tail
}

/// Appends the relayed form of `message`: `CMD target`, the sender's headers minus any
/// `Cid`/`Uid`/`Rid` (and minus `ReqID` when `req_id` is set), then `ReqID: <req_id>` when
/// set, `Cid`, `Uid`, `Rid: <rid>` when set, the blank line, the body as sent, and `.` CRLF.
pub fn write_relay(
    message: &Message<'_>,
    sender: Sender<'_>,
    req_id: Option<&[u8]>,
    rid: Option<u64>,
    out: &mut Vec<u8>,
) {
    // These values come from the broker (the cid) or from header values it parsed, which
    // cannot hold an LF; one would split the line and let a peer inject headers.
    debug_assert!(memchr2(b'\r', b'\n', sender.cid).is_none());
    debug_assert!(memchr(b'\n', sender.uid).is_none());
    debug_assert!(req_id.is_none_or(|v| memchr(b'\n', v).is_none()));

    let start = out.len();
    out.reserve(relay_len(message, sender, req_id, rid));

    out.extend_from_slice(message.word);
    out.push(b' ');
    out.extend_from_slice(message.target);
    out.extend_from_slice(CRLF);
    for header in &message.headers {
        if !is_replaced(header, req_id.is_some()) {
            out.extend_from_slice(header.line);
            out.extend_from_slice(CRLF);
        }
    }
    if let Some(req_id) = req_id {
        out.extend_from_slice(b"ReqID: ");
        out.extend_from_slice(req_id);
        out.extend_from_slice(CRLF);
    }
    out.extend_from_slice(b"Cid: ");
    out.extend_from_slice(sender.cid);
    out.extend_from_slice(CRLF);
    // `Uid` is present even when empty, as in the original.
    out.extend_from_slice(b"Uid: ");
    out.extend_from_slice(sender.uid);
    out.extend_from_slice(CRLF);
    if let Some(rid) = rid {
        out.extend_from_slice(b"Rid: ");
        push_decimal(rid, out);
        out.extend_from_slice(CRLF);
    }
    out.extend_from_slice(CRLF);
    out.extend_from_slice(message.body);
    out.extend_from_slice(b".\r\n");

    debug_assert_eq!(out.len() - start, relay_len(message, sender, req_id, rid));
}

/// The number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Appends `n` in decimal without allocating.
fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    //! Checks the parser and the relay writer on byte vectors: every error, every EOL style,
    //! several messages per payload, the relay rewrite, truncated and random input.

    use super::*;

    const LIMITS: Limits = Limits { topic_bytes_max: 64, headers_max: 16 };

    const SENDER: Sender<'static> = Sender { cid: b"0123456789abcdefghij", uid: b"alice" };

    /// Parses exactly one message that must fill `input`.
    fn one(input: &[u8]) -> Message<'_> {
        match next(input, LIMITS) {
            Some(Ok((message, rest))) => {
                assert!(rest.is_empty(), "rest {:?}", String::from_utf8_lossy(rest));
                message
            }
            other => panic!("expected one message, got {other:?}"),
        }
    }

    fn err(input: &[u8]) -> Malformed {
        err_with(input, LIMITS)
    }

    fn err_with(input: &[u8], limits: Limits) -> Malformed {
        match next(input, limits) {
            Some(Err(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Every message of a payload, until the end or the first error.
    fn all(mut input: &[u8]) -> (Vec<Message<'_>>, Option<Malformed>) {
        let mut messages = Vec::new();
        while let Some(result) = next(input, LIMITS) {
            match result {
                Ok((message, rest)) => {
                    messages.push(message);
                    input = rest;
                }
                Err(e) => return (messages, Some(e)),
            }
        }
        (messages, None)
    }

    fn relay(message: &Message<'_>, req_id: Option<&[u8]>, rid: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        write_relay(message, SENDER, req_id, rid, &mut out);
        assert_eq!(out.len(), relay_len(message, SENDER, req_id, rid));
        out
    }

    fn names<'a>(message: &Message<'a>) -> Vec<&'a [u8]> {
        message.headers.iter().map(|h| h.name).collect()
    }

    #[test]
    fn command_parse_and_as_str_round_trip() {
        for command in Command::ALL {
            assert_eq!(Command::parse(command.as_str().as_bytes()), Some(command));
        }
        for word in [&b"sub"[..], b"Pub", b"SUBX", b"SU", b"", b"UNSUB", b"PUB "] {
            assert_eq!(Command::parse(word), None, "{word:?}");
        }
    }

    #[test]
    fn malformed_texts_are_short_distinct_lowercase_phrases() {
        let all = [
            Malformed::Empty,
            Malformed::NoSpace,
            Malformed::EmptyTarget,
            Malformed::TargetTooLong,
            Malformed::BadTargetByte,
            Malformed::HeaderNoColon,
            Malformed::BadHeaderByte,
            Malformed::EmptyHeaderName,
            Malformed::BadHeaderName,
            Malformed::TooManyHeaders,
            Malformed::NoBlankLine,
            Malformed::NoTerminator,
        ];
        for (i, a) in all.iter().enumerate() {
            let text = a.text();
            assert!(!text.is_empty() && text.len() < 40);
            assert_eq!(text, text.to_lowercase());
            assert!(text.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
            for b in &all[i + 1..] {
                assert_ne!(text, b.text());
            }
        }
        assert_eq!(Malformed::NoSpace.text(), "no space in the first line");
        assert_eq!(Malformed::NoTerminator.text(), "no terminating dot line");
    }

    #[test]
    fn parses_lf_message() {
        let m = one(b"PUB chat\nReqID: 7\nX-Trace:abc\n\nhello\n.\n");
        assert_eq!(m.word, b"PUB");
        assert_eq!(m.command, Some(Command::Pub));
        assert_eq!(m.target, b"chat");
        assert_eq!(m.headers.len(), 2);
        assert_eq!(m.headers[0].line, b"ReqID: 7");
        assert_eq!(m.headers[0].name, b"ReqID");
        assert_eq!(m.headers[0].value, b"7");
        assert_eq!(m.headers[1].line, b"X-Trace:abc");
        assert_eq!(m.headers[1].value, b"abc");
        assert_eq!(m.body, b"hello\n");
    }

    #[test]
    fn parses_crlf_message() {
        let m = one(b"REQ svc.echo\r\nReqID: 7\r\n\r\nhello\r\nworld\r\n.\r\n");
        assert_eq!(m.command, Some(Command::Req));
        assert_eq!(m.target, b"svc.echo");
        assert_eq!(m.headers[0].line, b"ReqID: 7");
        assert_eq!(m.header("reqid"), Some(&b"7"[..]));
        assert_eq!(m.body, b"hello\r\nworld\r\n");
    }

    #[test]
    fn parses_mixed_eols() {
        let m = one(b"SUB t\r\nA: 1\nB: 2\r\n\nline1\r\nline2\n.\r\n");
        assert_eq!(m.target, b"t");
        assert_eq!(names(&m), [&b"A"[..], b"B"]);
        assert_eq!(m.headers[0].line, b"A: 1");
        assert_eq!(m.headers[1].line, b"B: 2");
        assert_eq!(m.body, b"line1\r\nline2\n");
    }

    #[test]
    fn empty_and_blank_only_input_is_the_end() {
        for input in [&b""[..], b"\n", b"\r\n", b"\r\n\n\r\n\n"] {
            assert_eq!(next(input, LIMITS), None, "{input:?}");
        }
    }

    #[test]
    fn several_messages_in_one_payload_with_blank_lines_between() {
        let input = b"\r\nSUB a\n\n.\n\n\r\nPUB a\r\n\r\nx\r\n.\r\nPUB b\nK: v\n\n.\n\r\n";
        let (messages, error) = all(input);
        assert_eq!(error, None);
        assert_eq!(messages.len(), 3);
        assert_eq!((messages[0].word, messages[0].target), (&b"SUB"[..], &b"a"[..]));
        assert_eq!(messages[0].body, b"");
        assert_eq!(messages[1].body, b"x\r\n");
        assert_eq!(messages[2].target, b"b");
        assert_eq!(messages[2].header("k"), Some(&b"v"[..]));
    }

    #[test]
    fn an_error_stops_the_payload_after_good_messages() {
        let (messages, error) = all(b"PUB a\n\n1\n.\nPUB\n\n.\nPUB b\n\n2\n.\n");
        assert_eq!(messages.len(), 1);
        assert_eq!(error, Some(Malformed::NoSpace));
    }

    #[test]
    fn target_is_everything_after_the_first_space() {
        let m = one(b"PUB a topic with  spaces \n\n.\n");
        assert_eq!(m.word, b"PUB");
        assert_eq!(m.target, b"a topic with  spaces ");
        let m = one(b"PUB  lead\n\n.\n");
        assert_eq!(m.target, b" lead");
    }

    #[test]
    fn unknown_command_parses_with_its_word() {
        let m = one(b"FROB x\n\n.\n");
        assert_eq!(m.word, b"FROB");
        assert_eq!(m.command, None);
        let m = one(b"pub x\n\n.\n");
        assert_eq!(m.command, None);
        let m = one(b" x\n\n.\n");
        assert_eq!((m.word, m.target), (&b""[..], &b"x"[..]));
    }

    #[test]
    fn error_no_space() {
        assert_eq!(err(b"PUB\n\n.\n"), Malformed::NoSpace);
        assert_eq!(err(b"PUBchat\r\n\r\n.\r\n"), Malformed::NoSpace);
        assert_eq!(err(b"PING"), Malformed::NoSpace);
        assert_eq!(err(b"\r\r\n\n.\n"), Malformed::NoSpace);
    }

    #[test]
    fn error_empty_target() {
        assert_eq!(err(b"PUB \n\n.\n"), Malformed::EmptyTarget);
        assert_eq!(err(b"PUB \r\n\r\n.\r\n"), Malformed::EmptyTarget);
        assert_eq!(err(b" \n\n.\n"), Malformed::EmptyTarget);
    }

    #[test]
    fn error_target_too_long_at_the_limit_plus_one() {
        let limits = Limits { topic_bytes_max: 4, headers_max: 4 };
        let ok = next(b"PUB abcd\n\n.\n", limits).unwrap().unwrap();
        assert_eq!(ok.0.target, b"abcd");
        let ok = next(b"PUB abcd\r\n\r\n.\r\n", limits).unwrap().unwrap();
        assert_eq!(ok.0.target, b"abcd");
        assert_eq!(err_with(b"PUB abcde\n\n.\n", limits), Malformed::TargetTooLong);
    }

    #[test]
    fn error_bad_target_byte() {
        assert_eq!(err(b"PUB a\0b\n\n.\n"), Malformed::BadTargetByte);
        assert_eq!(err(b"PUB a\rb\n\n.\n"), Malformed::BadTargetByte);
        assert_eq!(err(b"PUB ab\r\r\n\r\n.\r\n"), Malformed::BadTargetByte);
        // A CR in the command word is not a target byte: that is an unknown command.
        assert_eq!(one(b"P\rB t\n\n.\n").command, None);
    }

    #[test]
    fn error_header_no_colon() {
        assert_eq!(err(b"PUB t\nNoColon\n\n.\n"), Malformed::HeaderNoColon);
        assert_eq!(err(b"PUB t\r\nCIDb\rUid:c\r\n\r\n.\r\n"), Malformed::BadHeaderByte);
        assert_eq!(err(b"PUB t\nA: 1\0\n\n.\n"), Malformed::BadHeaderByte);
        assert_eq!(err(b"PUB t\nCid\x0b: evil\n\n.\n"), Malformed::BadHeaderName);
        assert_eq!(err("PUB t\n\u{2003}uid: admin\n\n.\n".as_bytes()), Malformed::BadHeaderName);
        assert_eq!(err(b"PUB t\nX Y: 1\n\n.\n"), Malformed::BadHeaderName);
        assert_eq!(err(b"PUB t\nA: 1\r\nB 2\r\n\r\n.\r\n"), Malformed::HeaderNoColon);
        // A line holding only whitespace is not a blank line.
        assert_eq!(err(b"PUB t\n \n\n.\n"), Malformed::HeaderNoColon);
        // Forgetting the headers' blank line makes the body a header.
        assert_eq!(err(b"PUB t\nhello\n.\n"), Malformed::HeaderNoColon);
    }

    #[test]
    fn error_empty_header_name() {
        assert_eq!(err(b"PUB t\n: v\n\n.\n"), Malformed::EmptyHeaderName);
        assert_eq!(err(b"PUB t\n \t: v\r\n\r\n.\r\n"), Malformed::EmptyHeaderName);
    }

    #[test]
    fn error_too_many_headers_at_the_limit_plus_one() {
        let limits = Limits { topic_bytes_max: 64, headers_max: 2 };
        let (m, _) = next(b"PUB t\nA: 1\nB: 2\n\n.\n", limits).unwrap().unwrap();
        assert_eq!(m.headers.len(), 2);
        assert_eq!(err_with(b"PUB t\nA: 1\nB: 2\nC: 3\n\n.\n", limits), Malformed::TooManyHeaders);
        let none = Limits { topic_bytes_max: 64, headers_max: 0 };
        assert!(next(b"PUB t\n\n.\n", none).unwrap().is_ok());
        assert_eq!(err_with(b"PUB t\nA: 1\n\n.\n", none), Malformed::TooManyHeaders);
    }

    #[test]
    fn error_no_blank_line() {
        for input in [
            &b"PUB t"[..],
            b"PUB t\r",
            b"PUB t\n",
            b"PUB t\r\n",
            b"PUB t\nA: 1",
            b"PUB t\nA: 1\n",
            b"PUB t\nA: 1\r\n\r",
            b"PUB t\nNoColonAtTheEnd",
        ] {
            assert_eq!(err(input), Malformed::NoBlankLine, "{input:?}");
        }
    }

    #[test]
    fn error_no_terminator() {
        for input in [
            &b"PUB t\n\n"[..],
            b"PUB t\r\n\r\n",
            b"PUB t\n\nhello",
            b"PUB t\n\nhello\n",
            b"PUB t\n\nhello.\n",
            b"PUB t\n\nhello\n..\n",
            b"PUB t\n\nhello\n.x\n",
            b"PUB t\n\nhello\n. \n",
            b"PUB t\n\nhello\n.\r",
            b"PUB t\n\nhello\n.\rx\n",
            b"PUB t\n\n..",
        ] {
            assert_eq!(err(input), Malformed::NoTerminator, "{input:?}");
        }
    }

    #[test]
    fn header_spelling_order_and_trimming_are_kept() {
        let m = one(b"PUB t\nzeta: 1\nReqID:  \t2 \t\n  Alpha \t: 3\nx-Y: a: b:c\nEmpty:\n\n.\n");
        assert_eq!(names(&m), [&b"zeta"[..], b"ReqID", b"Alpha", b"x-Y", b"Empty"]);
        assert_eq!(m.headers[1].line, b"ReqID:  \t2 \t");
        assert_eq!(m.headers[1].value, b"2");
        assert_eq!(m.headers[2].line, b"  Alpha \t: 3");
        assert_eq!(m.headers[2].value, b"3");
        assert_eq!(m.headers[3].value, b"a: b:c");
        assert_eq!(m.headers[4].value, b"");
        assert_eq!(m.header("ALPHA"), Some(&b"3"[..]));
        assert_eq!(m.header("missing"), None);
    }

    #[test]
    fn header_lookup_returns_the_first_of_repeated_names() {
        let m = one(b"PUB t\nK: 1\nk: 2\n\n.\n");
        assert_eq!(m.header("K"), Some(&b"1"[..]));
        assert!(m.headers[1].is("K"));
    }

    #[test]
    fn more_than_eight_headers_spill_and_stay_in_order() {
        let mut input = b"PUB t\n".to_vec();
        for i in 0..12 {
            input.extend_from_slice(format!("H{i}: {i}\n").as_bytes());
        }
        input.extend_from_slice(b"\n.\n");
        let m = one(&input);
        assert_eq!(m.headers.len(), 12);
        for (i, h) in m.headers.iter().enumerate() {
            assert_eq!(h.value, i.to_string().as_bytes());
        }
    }

    #[test]
    fn body_keeps_stuffed_lines_verbatim() {
        let m = one(b"PUB t\n\n..\n.hidden\n...\n.. x\nplain\n.\n");
        assert_eq!(m.body, b"..\n.hidden\n...\n.. x\nplain\n");
        let m = one(b"PUB t\r\n\r\n..\r\n.\r\n");
        assert_eq!(m.body, b"..\r\n");
    }

    #[test]
    fn a_body_line_that_is_exactly_a_dot_ends_the_body() {
        let input = b"PUB t\n\nfirst\n.\nsecond\n.\n";
        let (m, rest) = next(input, LIMITS).unwrap().unwrap();
        assert_eq!(m.body, b"first\n");
        assert_eq!(rest, b"second\n.\n");
        let (m, rest) = next(b"PUB t\n\n.\r\nPUB u\n\n.\n", LIMITS).unwrap().unwrap();
        assert_eq!(m.body, b"");
        assert_eq!(rest, b"PUB u\n\n.\n");
    }

    #[test]
    fn terminator_may_end_the_payload_without_eol() {
        let m = one(b"PUB t\n\nhello\n.");
        assert_eq!(m.body, b"hello\n");
        let m = one(b"PUB t\r\n\r\n.");
        assert_eq!(m.body, b"");
    }

    #[test]
    fn body_may_hold_bytes_that_are_not_utf8_or_look_like_headers() {
        let m = one(b"PUB t\n\n\xff\x00\r\nA: b\n\n\r\n.\n");
        assert_eq!(m.body, b"\xff\x00\r\nA: b\n\n\r\n");
    }

    #[test]
    fn relay_writes_the_exact_bytes() {
        let m = one(b"PUB chat\nX-B: 2\nx-a:1\n\nhi\n..dot\n.\n");
        assert_eq!(
            relay(&m, None, None),
            b"PUB chat\r\nX-B: 2\r\nx-a:1\r\nCid: 0123456789abcdefghij\r\nUid: alice\r\n\r\nhi\n..dot\n.\r\n"
        );
    }

    #[test]
    fn relay_writes_an_empty_uid() {
        let m = one(b"SUB t\n\n.\n");
        let mut out = Vec::new();
        let sender = Sender { cid: b"c", uid: b"" };
        write_relay(&m, sender, None, None, &mut out);
        assert_eq!(out, b"SUB t\r\nCid: c\r\nUid: \r\n\r\n.\r\n");
        assert_eq!(out.len(), relay_len(&m, sender, None, None));
    }

    #[test]
    fn relay_removes_spoofed_sender_headers() {
        let m = one(
            b"PUB t\ncid: evil\nKeep: 1\nUID: root\nrId: 9\ncid : x\n\tCID\t:y\nCidX: kept\n\n.\n",
        );
        assert_eq!(
            relay(&m, None, None),
            b"PUB t\r\nKeep: 1\r\nCidX: kept\r\nCid: 0123456789abcdefghij\r\nUid: alice\r\n\r\n.\r\n"
        );
    }

    #[test]
    fn relay_keeps_req_id_unless_it_writes_its_own() {
        let m = one(b"REQ svc\nreqid: mine\nA: 1\n\nq\n.\n");
        assert_eq!(
            relay(&m, None, Some(42)),
            b"REQ svc\r\nreqid: mine\r\nA: 1\r\nCid: 0123456789abcdefghij\r\nUid: alice\r\nRid: 42\r\n\r\nq\n.\r\n"
        );
        let m = one(b"RES x\nREQID: wrong\nA: 1\nRid: 42\nReqId: again\n\nr\n.\n");
        assert_eq!(
            relay(&m, Some(b"mine"), None),
            b"RES x\r\nA: 1\r\nReqID: mine\r\nCid: 0123456789abcdefghij\r\nUid: alice\r\n\r\nr\n.\r\n"
        );
    }

    #[test]
    fn relay_writes_rid_in_decimal() {
        let m = one(b"REQ t\n\n.\n");
        for (rid, text) in [
            (0, "0"),
            (7, "7"),
            (10, "10"),
            (99, "99"),
            (100, "100"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let out = relay(&m, None, Some(rid));
            let expected = format!(
                "REQ t\r\nCid: 0123456789abcdefghij\r\nUid: alice\r\nRid: {text}\r\n\r\n.\r\n"
            );
            assert_eq!(out, expected.as_bytes());
        }
    }

    #[test]
    fn relay_appends_to_what_is_in_out() {
        let m = one(b"PUB t\n\nb\n.\n");
        let mut out = b"prefix".to_vec();
        write_relay(&m, SENDER, None, None, &mut out);
        assert!(out.starts_with(b"prefix"));
        assert_eq!(&out[6..], relay(&m, None, None).as_slice());
    }

    #[test]
    fn relay_round_trip_keeps_body_and_headers() {
        let inputs: [&[u8]; 5] = [
            b"PUB t\nA: 1\nb:2\nCid: spoof\n\nline\n..stuffed\n.x\n\n.\n",
            b"REQ svc.x\r\nReqID: 5\r\n\r\n{\"a\": 1.5}\r\n.\r\n",
            b"SUB t\n\n.",
            b"PUB a b\nX:  y \n\n\xff\xfe\r\n\n.\n",
            b"INT UID\nforcid: c\nsetuid: u\n\n.\n",
        ];
        for input in inputs {
            let first = one(input);
            let relayed = relay(&first, None, Some(3));
            let second = one(&relayed);
            assert_eq!(second.word, first.word);
            assert_eq!(second.target, first.target);
            assert_eq!(second.body, first.body);
            let kept: Vec<_> = first
                .headers
                .iter()
                .filter(|h| !h.is("cid") && !h.is("uid") && !h.is("rid"))
                .collect();
            assert_eq!(second.headers.len(), kept.len() + 3);
            for (a, b) in kept.iter().zip(&second.headers) {
                assert_eq!((a.line, a.name, a.value), (b.line, b.name, b.value));
            }
            assert_eq!(second.header("Cid"), Some(SENDER.cid));
            assert_eq!(second.header("Uid"), Some(SENDER.uid));
            assert_eq!(second.header("Rid"), Some(&b"3"[..]));

            // Another hop changes nothing but the broker's own headers.
            let again = relay(&second, None, Some(3));
            assert_eq!(again, relayed);
        }
    }

    #[test]
    fn truncating_at_every_offset_is_an_error_or_a_shorter_valid_parse() {
        let full: &[u8] =
            b"PUB topic\r\nReqID: 1\r\nA:b\n\r\n..x\r\nbody\n.\r\n\nREQ t2\nK: v\n\n.\n";
        let (complete, error) = all(full);
        assert_eq!((complete.len(), error), (2, None));
        for cut in 0..=full.len() {
            let prefix = &full[..cut];
            let (messages, _) = all(prefix);
            assert!(messages.len() <= complete.len());
            for (got, whole) in messages.iter().zip(&complete) {
                assert_eq!(got.word, whole.word);
                assert!(whole.target.starts_with(got.target));
                assert!(got.headers.len() <= whole.headers.len());
                assert!(whole.body.starts_with(got.body));
            }
        }
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Parses `input` to the end, checking the invariants of every message found; returns how
    /// many were found.
    fn check_invariants(mut input: &[u8], limits: Limits) -> usize {
        let mut found = 0;
        while let Some(result) = next(input, limits) {
            let Ok((m, rest)) = result else { break };
            found += 1;
            assert!(rest.len() < input.len(), "no progress");
            assert!(input.ends_with(rest));
            assert!(!m.target.is_empty() && m.target.len() <= limits.topic_bytes_max);
            assert!(!m.target.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
            assert!(m.headers.len() <= limits.headers_max);
            for h in &m.headers {
                assert!(!h.name.is_empty());
                assert!(!h.line.contains(&b'\n'));
            }
            let mut out = Vec::new();
            write_relay(&m, SENDER, Some(b"r"), Some(1), &mut out);
            // The relay adds up to four headers of its own (ReqID, Cid, Uid, Rid).
            let relayed = Limits { headers_max: limits.headers_max + 4, ..limits };
            let (again, after) = next(&out, relayed).unwrap().unwrap();
            assert!(after.is_empty());
            assert_eq!(again.body, m.body);
            input = rest;
        }
        found
    }

    #[test]
    fn random_input_never_panics() {
        // Random lines rather than random bytes, so that many inputs get far into the parser:
        // each line is a likely first line, header, blank, dot or body line, or random bytes,
        // and ends with LF, CRLF, a lone CR or nothing.
        const LINES: [&[u8]; 16] = [
            b"PUB t",
            b"SUB topic",
            b"REQ a b",
            b"X",
            b"PUB ",
            b"A: b",
            b"ReqID:1",
            b":v",
            b" \t:",
            b"",
            b"",
            b".",
            b".",
            b"..",
            b".x",
            b"\0",
        ];
        const EOLS: [&[u8]; 6] = [b"\n", b"\r\n", b"\n", b"\r\n", b"\r", b""];
        let limits = Limits { topic_bytes_max: 8, headers_max: 3 };
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut input = Vec::new();
        let mut found = 0;
        for _ in 0..100_000 {
            input.clear();
            for line in 0..rng.below(12) {
                if line == 0 && rng.below(2) == 0 {
                    input.extend_from_slice(b"PUB t");
                } else if rng.below(8) == 0 {
                    for _ in 0..rng.below(6) {
                        input.push(rng.next() as u8);
                    }
                } else {
                    input.extend_from_slice(LINES[rng.below(LINES.len())]);
                }
                input.extend_from_slice(EOLS[rng.below(EOLS.len())]);
            }
            found += check_invariants(&input, limits);
        }
        // Some random inputs must be messages, so the checks above run, not only the errors.
        assert!(found > 500, "only {found} messages parsed");
    }

    #[test]
    fn random_mutations_of_valid_messages_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"PUB topic\r\nReqID: 1\r\n\r\nbody\r\n..x\r\n.\r\n",
            b"REQ t\nA: b\nC:d\n\n.\nSUB u\n\n.\n",
            b"\nEREQ svc\n\n\n.",
        ];
        let mut rng = XorShift(42);
        let mut found = 0;
        for seed in seeds {
            for _ in 0..5_000 {
                let mut input = seed.to_vec();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(input.len());
                    match rng.below(3) {
                        0 => input[at] = b"\r\n.: \0"[rng.below(6)],
                        1 => {
                            input.remove(at);
                        }
                        _ => input.insert(at, b"\r\n.: "[rng.below(5)]),
                    }
                    if input.is_empty() {
                        break;
                    }
                }
                found += check_invariants(&input, LIMITS);
            }
        }
        assert!(found > 1_000, "only {found} messages parsed");
    }
}
