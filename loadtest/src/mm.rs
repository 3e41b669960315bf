//! Middleman messages, sans-IO: building the ones the load generator sends and parsing the ones
//! the broker delivers (PROTOCOL.md §3).
//!
//! Parsing borrows from the WebSocket payload and never allocates. It is tolerant in the ways
//! the original Go server needs: header names match case-insensitively (`Reqid`), and trailing
//! CR/LF of a body is trimmed (the original adds a newline per hop). Bodies the generator
//! sends never contain a line break or start with `.`, so they need no dot-stuffing; bodies it
//! echoes are relayed exactly as received, which the protocol says is already stuffed.

/// Why a delivered message could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    NoSpace,
    Unterminated,
}

impl std::fmt::Display for MmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MmError::NoSpace => f.write_str("first line has no space"),
            MmError::Unterminated => f.write_str("message is not terminated"),
        }
    }
}

/// One parsed middleman message, borrowing from the payload it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub command: &'a [u8],
    pub topic: &'a [u8],
    /// The header lines, each ending in LF or CRLF, without the blank line that ends them.
    headers: &'a [u8],
    /// The body as sent (still dot-stuffed), without its final line break.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// The value of the first header called `name` (case-insensitive), leading blanks and
    /// trailing white space removed.
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers().find_map(|(n, v)| n.eq_ignore_ascii_case(name).then_some(v))
    }

    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.headers.split(|&b| b == b'\n').filter_map(|line| {
            let colon = memchr::memchr(b':', line)?;
            let name = &line[..colon];
            Some((name, trim(&line[colon + 1..])))
        })
    }
}

fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = value {
        value = rest;
    }
    value
}

/// The first LF in `hay`. Lines of a message head are short, where memchr's call and set-up
/// cost more than the search: the first 32 bytes are scanned a word at a time (SWAR), longer
/// lines (bodies) go to memchr.
#[inline]
fn find_lf(hay: &[u8]) -> Option<usize> {
    const LF: u64 = 0x0A0A_0A0A_0A0A_0A0A;
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while at + 8 <= hay.len() && at < 32 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&hay[at..at + 8]);
        let x = u64::from_le_bytes(word) ^ LF;
        // A zero byte in x is an LF in the word; the lowest flagged byte is the first one.
        let found = x.wrapping_sub(LOW) & !x & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    memchr::memchr(b'\n', &hay[at..]).map(|i| at + i)
}

fn trim_line_end(mut line: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = line {
        line = rest;
    }
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    line
}

/// Parses the message at the front of `buf` (one WebSocket payload may hold several). Returns
/// it and the number of bytes it took, including any blank lines after its `.` line.
pub fn parse(buf: &[u8]) -> Result<(Message<'_>, usize), MmError> {
    let first_end = find_lf(buf).ok_or(MmError::Unterminated)?;
    let first = trim_line_end(&buf[..first_end]);
    let space = memchr::memchr(b' ', first).ok_or(MmError::NoSpace)?;
    let command = &first[..space];
    let topic = &first[space + 1..];

    // Headers run up to the first empty line.
    let headers_start = first_end + 1;
    let mut pos = headers_start;
    let headers_end = loop {
        let rest = &buf[pos..];
        let line_end = find_lf(rest).ok_or(MmError::Unterminated)?;
        if trim_line_end(&rest[..=line_end]).is_empty() {
            break pos;
        }
        pos += line_end + 1;
    };
    let headers = &buf[headers_start..headers_end];
    let body_start = pos + skip_line_break(&buf[pos..]);

    // The body ends at a line that is exactly ".", which may be the body's first line.
    let (body_end, after_dot) = find_dot_line(buf, body_start).ok_or(MmError::Unterminated)?;
    let mut body = &buf[body_start..body_end];
    while let [rest @ .., b'\r' | b'\n'] = body {
        body = rest;
    }
    // Tolerate blank lines between messages (the original writes an extra newline).
    let mut consumed = after_dot;
    while consumed < buf.len() && (buf[consumed] == b'\r' || buf[consumed] == b'\n') {
        consumed += 1;
    }
    Ok((Message { command, topic, headers, body }, consumed))
}

fn skip_line_break(buf: &[u8]) -> usize {
    match buf {
        [b'\r', b'\n', ..] => 2,
        [b'\n', ..] => 1,
        _ => 0,
    }
}

/// Finds the terminating `.` line at or after `from`, which must be at a line start. Returns
/// where the body ends (the start of the `.` line) and where the `.` line ends.
fn find_dot_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut line_start = from;
    loop {
        let rest = &buf[line_start..];
        if rest.first() == Some(&b'.') {
            let after = &rest[1..];
            let terminator = match after {
                [b'\r', b'\n', ..] => Some(2),
                [b'\n', ..] => Some(1),
                _ => None,
            };
            if let Some(eol) = terminator {
                return Some((line_start, line_start + 1 + eol));
            }
        }
        let newline = find_lf(rest)?;
        line_start += newline + 1;
    }
}

/// How many bytes [`write`] appends for this message.
pub fn encoded_len(command: &[u8], topic: &[u8], headers: &[(&[u8], &[u8])], body: &[u8]) -> usize {
    let header_bytes: usize =
        headers.iter().map(|(name, value)| name.len() + 2 + value.len() + 2).sum();
    let body_bytes = if body.is_empty() { 0 } else { body.len() + 2 };
    command.len() + 1 + topic.len() + 2 + header_bytes + 2 + body_bytes + 3
}

/// Appends `COMMAND topic\r\nName: value\r\n...\r\nbody\r\n.\r\n`. `body` must already be in
/// wire form (no line starting with `.` unless stuffed).
pub fn write(
    buf: &mut Vec<u8>,
    command: &[u8],
    topic: &[u8],
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) {
    buf.extend_from_slice(command);
    buf.push(b' ');
    buf.extend_from_slice(topic);
    buf.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        buf.extend_from_slice(name);
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    if !body.is_empty() {
        buf.extend_from_slice(body);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_lf_agrees_with_memchr() {
        for len in 0..80 {
            for lf in 0..=len {
                let mut hay = vec![b'a'; len];
                if lf < len {
                    hay[lf] = b'\n';
                    // A second LF later must not be reported first.
                    if lf + 3 < len {
                        hay[lf + 3] = b'\n';
                    }
                }
                assert_eq!(find_lf(&hay), memchr::memchr(b'\n', &hay), "len {len} lf {lf}");
            }
        }
        // Bytes that differ from LF by the borrow pattern must not count (0x0B, 0x8A).
        assert_eq!(find_lf(&[0x0B, 0x8A, 0x09, 0x0A]), Some(3));
    }

    #[test]
    fn builds_the_documented_form() {
        let mut buf = Vec::new();
        let headers: &[(&[u8], &[u8])] = &[(b"ReqID", b"7")];
        write(&mut buf, b"REQ", b"lt.req", headers, b"abc");
        assert_eq!(buf, b"REQ lt.req\r\nReqID: 7\r\n\r\nabc\r\n.\r\n");
        assert_eq!(buf.len(), encoded_len(b"REQ", b"lt.req", headers, b"abc"));

        let mut empty = Vec::new();
        write(&mut empty, b"SUB", b"t", &[], b"");
        assert_eq!(empty, b"SUB t\r\n\r\n.\r\n");
        assert_eq!(empty.len(), encoded_len(b"SUB", b"t", &[], b""));
    }

    #[test]
    fn parses_a_delivery_with_server_headers() {
        let raw = b"PUB lt.t0\r\nCid: abc\r\nUid: \r\n\r\n0123456789\r\n.\r\n";
        let (msg, used) = parse(raw).unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(msg.command, b"PUB");
        assert_eq!(msg.topic, b"lt.t0");
        assert_eq!(msg.body, b"0123456789");
        assert_eq!(msg.header(b"cid"), Some(&b"abc"[..]));
        assert_eq!(msg.header(b"UID"), Some(&b""[..]));
        assert_eq!(msg.header(b"Rid"), None);
    }

    #[test]
    fn tolerates_the_original_go_server() {
        // Canonicalised names, LF line ends, an extra newline at the end of the body.
        let raw = b"RES lt.req\nReqid: 42\nCid: x\n\nbody\n\r\n.\r\n";
        let (msg, used) = parse(raw).unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(msg.header(b"ReqID"), Some(&b"42"[..]));
        assert_eq!(msg.body, b"body");
    }

    #[test]
    fn empty_body_and_dot_stuffed_lines() {
        let (msg, _) = parse(b"PUB t\r\n\r\n.\r\n").unwrap();
        assert_eq!(msg.body, b"");
        let (msg, _) = parse(b"PUB t\r\n\r\n..x\r\n.\r\n").unwrap();
        assert_eq!(msg.body, b"..x");
        let (msg, _) = parse(b"PUB t\r\n\r\na\r\n..\r\nb\r\n.\r\n").unwrap();
        assert_eq!(msg.body, b"a\r\n..\r\nb");
    }

    #[test]
    fn several_messages_in_one_payload() {
        let raw = b"PUB a\r\n\r\n1\r\n.\r\nPUB ERROR\r\nCode: no-responder\r\nReqID: 9\r\n\r\nNo responder for REQ x\r\n.\r\n";
        let (first, used) = parse(raw).unwrap();
        assert_eq!((first.topic, first.body), (&b"a"[..], &b"1"[..]));
        let (second, used2) = parse(&raw[used..]).unwrap();
        assert_eq!(used + used2, raw.len());
        assert_eq!(second.topic, b"ERROR");
        assert_eq!(second.header(b"code"), Some(&b"no-responder"[..]));
        assert_eq!(second.header(b"reqid"), Some(&b"9"[..]));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let raw = b"PUB t\r\nA: b\r\n\r\nbody\r\n.\r\n";
        for cut in 0..raw.len() {
            assert!(parse(&raw[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(parse(b"NOSPACE\r\n\r\n.\r\n"), Err(MmError::NoSpace));
    }
}
