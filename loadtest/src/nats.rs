//! The NATS client protocol (text, as carried inside WebSocket binary frames), sans-IO: the few
//! operations the load generator sends and a streaming parser for what the server sends.
//!
//! NATS operations are a byte stream: nats-server may put several in one WebSocket frame or
//! split one across frames, so the parser works on a stream buffer and returns `Ok(None)` when
//! the operation at its front is incomplete. It borrows and never allocates.

/// What the client sends right after the server's INFO: no `+OK` echoes, no pedantic checks.
pub const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"lang\":\"rust\",\"version\":\"middleman-loadtest\"}\r\n";
pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// A control line longer than this is an error rather than something to wait for.
const CONTROL_LINE_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsError {
    UnknownOperation,
    BadMsgLine,
    ControlLineTooLong,
}

impl std::fmt::Display for NatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsError::UnknownOperation => f.write_str("unknown NATS operation"),
            NatsError::BadMsgLine => f.write_str("malformed NATS MSG line"),
            NatsError::ControlLineTooLong => f.write_str("NATS control line too long"),
        }
    }
}

/// One operation from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Info,
    Msg { subject: &'a [u8], sid: &'a [u8], reply: Option<&'a [u8]>, payload: &'a [u8] },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

/// Parses the operation at the front of `buf`: `Ok(None)` if it is not complete yet, else the
/// operation and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, NatsError> {
    let Some(newline) = memchr::memchr(b'\n', buf) else {
        if buf.len() > CONTROL_LINE_BYTES_MAX {
            return Err(NatsError::ControlLineTooLong);
        }
        return Ok(None);
    };
    let mut line = &buf[..newline];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let after_line = newline + 1;
    let word_end = memchr::memchr2(b' ', b'\t', line).unwrap_or(line.len());
    let word = &line[..word_end];
    let args = &line[word_end..];
    if word.eq_ignore_ascii_case(b"MSG") {
        return parse_msg(buf, args, after_line);
    }
    let op = if word.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if word.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if word.eq_ignore_ascii_case(b"INFO") {
        Op::Info
    } else if word.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if word.eq_ignore_ascii_case(b"-ERR") {
        Op::Err(trim_start(args))
    } else {
        return Err(NatsError::UnknownOperation);
    };
    Ok(Some((op, after_line)))
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n`
fn parse_msg<'a>(
    buf: &'a [u8],
    args: &'a [u8],
    after_line: usize,
) -> Result<Option<(Op<'a>, usize)>, NatsError> {
    let mut fields = args.split(|&b| b == b' ' || b == b'\t').filter(|f| !f.is_empty());
    let mut slots: [&[u8]; 4] = [&[]; 4];
    let mut count = 0;
    for field in &mut fields {
        if count == slots.len() {
            return Err(NatsError::BadMsgLine);
        }
        slots[count] = field;
        count += 1;
    }
    let (subject, sid, reply, size) = match count {
        3 => (slots[0], slots[1], None, slots[2]),
        4 => (slots[0], slots[1], Some(slots[2]), slots[3]),
        _ => return Err(NatsError::BadMsgLine),
    };
    let size = parse_usize(size).ok_or(NatsError::BadMsgLine)?;
    let payload_end = after_line + size;
    if buf.len() < payload_end + 2 {
        return Ok(None);
    }
    let payload = &buf[after_line..payload_end];
    let consumed = match &buf[payload_end..payload_end + 2] {
        b"\r\n" => payload_end + 2,
        [b'\n', _] => payload_end + 1,
        _ => return Err(NatsError::BadMsgLine),
    };
    Ok(Some((Op::Msg { subject, sid, reply, payload }, consumed)))
}

pub fn parse_usize(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    digits
        .iter()
        .try_fold(0usize, |n, &d| d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0')))
}

fn decimal_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

fn push_decimal(buf: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Bytes [`write_pub`] appends.
pub fn pub_len(subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) -> usize {
    4 + subject.len()
        + reply.map_or(0, |r| r.len() + 1)
        + 1
        + decimal_len(payload.len())
        + 2
        + payload.len()
        + 2
}

/// `PUB <subject> [reply-to] <#bytes>\r\n<payload>\r\n`
pub fn write_pub(buf: &mut Vec<u8>, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
    buf.extend_from_slice(b"PUB ");
    buf.extend_from_slice(subject);
    if let Some(reply) = reply {
        buf.push(b' ');
        buf.extend_from_slice(reply);
    }
    buf.push(b' ');
    push_decimal(buf, payload.len());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\r\n");
}

/// `SUB <subject> [queue group] <sid>\r\n`
pub fn sub(subject: &str, queue: Option<&str>, sid: u32) -> Vec<u8> {
    match queue {
        Some(queue) => format!("SUB {subject} {queue} {sid}\r\n").into_bytes(),
        None => format!("SUB {subject} {sid}\r\n").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(mut buf: &[u8]) -> Vec<Op<'_>> {
        let mut ops = Vec::new();
        while let Some((op, used)) = parse(buf).unwrap() {
            ops.push(op);
            buf = &buf[used..];
        }
        assert!(buf.is_empty(), "left over: {:?}", String::from_utf8_lossy(buf));
        ops
    }

    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n\
        PING\r\n\
        MSG lt.t0 1 5\r\nhello\r\n\
        MSG lt.req 2 _INBOX.ab.17 3\r\nabc\r\n\
        +OK\r\n\
        MSG lt.t0 1 0\r\n\r\n\
        -ERR 'Slow Consumer'\r\n\
        pong\r\n";

    fn expected() -> Vec<Op<'static>> {
        vec![
            Op::Info,
            Op::Ping,
            Op::Msg { subject: b"lt.t0", sid: b"1", reply: None, payload: b"hello" },
            Op::Msg {
                subject: b"lt.req",
                sid: b"2",
                reply: Some(b"_INBOX.ab.17"),
                payload: b"abc",
            },
            Op::Ok,
            Op::Msg { subject: b"lt.t0", sid: b"1", reply: None, payload: b"" },
            Op::Err(b"'Slow Consumer'"),
            Op::Pong,
        ]
    }

    #[test]
    fn parses_every_operation() {
        assert_eq!(parse_all(STREAM), expected());
    }

    /// Splits the stream into two reads at every offset, the way frames or reads may cut it.
    #[test]
    fn parses_when_split_at_every_offset() {
        for cut in 0..=STREAM.len() {
            let mut pending = Vec::new();
            let mut ops = Vec::new();
            for part in [&STREAM[..cut], &STREAM[cut..]] {
                pending.extend_from_slice(part);
                let mut used_total = 0;
                while let Some((op, used)) = parse(&pending[used_total..]).unwrap() {
                    ops.push(format!("{op:?}"));
                    used_total += used;
                }
                pending.drain(..used_total);
            }
            let want: Vec<String> = expected().iter().map(|op| format!("{op:?}")).collect();
            assert_eq!(ops, want, "cut at {cut}");
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn payload_may_contain_line_breaks() {
        let buf = b"MSG s 1 4\r\na\r\nb\r\n";
        assert_eq!(
            parse_all(buf),
            vec![Op::Msg { subject: b"s", sid: b"1", reply: None, payload: b"a\r\nb" }]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(parse(b"WHAT\r\n"), Err(NatsError::UnknownOperation));
        assert_eq!(parse(b"MSG a\r\n"), Err(NatsError::BadMsgLine));
        assert_eq!(parse(b"MSG a 1 x\r\n"), Err(NatsError::BadMsgLine));
        assert_eq!(parse(b"MSG a 1 2\r\nabXY"), Err(NatsError::BadMsgLine));
    }

    #[test]
    fn builds_pub_and_sub() {
        let mut buf = Vec::new();
        write_pub(&mut buf, b"lt.req", Some(b"_INBOX.a.1"), b"0123456789");
        assert_eq!(buf, b"PUB lt.req _INBOX.a.1 10\r\n0123456789\r\n");
        assert_eq!(buf.len(), pub_len(b"lt.req", Some(b"_INBOX.a.1"), b"0123456789"));
        buf.clear();
        write_pub(&mut buf, b"t", None, b"");
        assert_eq!(buf, b"PUB t 0\r\n\r\n");
        assert_eq!(buf.len(), pub_len(b"t", None, b""));
        assert_eq!(sub("lt.req", Some("lt"), 2), b"SUB lt.req lt 2\r\n");
        assert_eq!(sub("lt.t0", None, 1), b"SUB lt.t0 1\r\n");
    }
}
