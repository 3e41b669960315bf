//! Fuzzes `protocol::ws::Decoder::decode` with arbitrary client bytes, fed whole and in
//! arbitrary pieces, against a naive model of RFC 6455 server-side decoding.
//!
//! Input: `[limit selector] [split seed] stream...`. The stream is decoded three ways: by a
//! straightforward model (below), by one `Decoder` given the whole stream, and by another fed
//! in pieces whose sizes come from the seed, the way the connection reads a socket (unfinished
//! frames carried over, consumed bytes dropped). All three must agree on the events, the
//! close code, and the bytes left over. Every call must also keep the decoder's contract:
//!
//! - `Ok(None)` leaves the buffer untouched; `Ok(Some((n, _)))` consumes `0 < n <= given`;
//! - a message is at most the limit, text is UTF-8, control payloads are at most 125 bytes,
//!   a close code is one that may be sent and its reason is UTF-8;
//! - nothing panics, and nothing allocates what the header announces (a 2^63-byte length must
//!   be refused from the header alone, which the model's `limit` check mirrors).
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/ws_decoder.rs` and by `tests/fuzz_smoke.rs`
//! (which includes this file), so the normal test run checks the same properties.

use middleman::protocol::ws::{
    CloseCode, Decoder, WsEvent, CLOSE_REASON_BYTES_MAX, CONTROL_PAYLOAD_BYTES_MAX,
};

/// Message size limits to try: the edges of the three length encodings, and the default.
const LIMITS: [usize; 13] = [0, 1, 2, 5, 6, 125, 126, 127, 1000, 4096, 65535, 65536, 1 << 20];

/// Largest piece size for the chunked decoder, picked by the seed (1 is byte by byte).
const CHUNK_MAX: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, 4096];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Message(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
    /// The close code of the error that ended the stream.
    Error(u16),
}

/// What decoding a whole stream gave: the events in order, and the bytes not consumed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    seen: Vec<Seen>,
    left: usize,
}

/// The whole check for one input.
pub fn run(data: &[u8]) {
    let Some((&[limit, seed], stream)) = data.split_first_chunk::<2>() else { return };
    let limit = LIMITS[usize::from(limit) % LIMITS.len()];

    let model = model(limit, stream);
    let whole = decode_in_pieces(limit, stream, std::iter::once(stream.len()));
    assert_eq!(whole, model, "decoder (whole input) disagrees with the model");

    // Piece sizes from the seed; long inputs get longer pieces so a run stays fast.
    let chunk_max = CHUNK_MAX[usize::from(seed & 7)].max(stream.len() / 64);
    let mut rng = XorShift(u64::from(seed >> 3).wrapping_add(stream.len() as u64) | 1);
    let mut ends = Vec::new();
    let mut end = 0;
    while end < stream.len() {
        end = (end + 1 + rng.below(chunk_max)).min(stream.len());
        ends.push(end);
    }
    let pieces = decode_in_pieces(limit, stream, ends.into_iter());
    assert_eq!(pieces, whole, "the outcome depends on how the input was split");
}

/// Decodes `stream` delivered up to each of `ends` in turn, as the connection's reader does,
/// checking the decoder's contract on every call.
fn decode_in_pieces(limit: usize, stream: &[u8], ends: impl Iterator<Item = usize>) -> Outcome {
    let mut decoder = Decoder::new(limit);
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = Vec::new();
    let mut fed = 0;
    for end in ends {
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        let mut used = 0;
        loop {
            let before = buf[used..].to_vec();
            let given = buf.len() - used;
            match decoder.decode(&mut buf[used..]) {
                Ok(None) => {
                    assert_eq!(buf[used..], before[..], "Ok(None) changed the buffer");
                    break;
                }
                Ok(Some((consumed, event))) => {
                    assert!(consumed > 0, "consumed nothing but returned Some");
                    assert!(consumed <= given, "consumed {consumed} of {given} bytes");
                    if let Some(event) = event {
                        seen.push(check(&event, limit));
                    }
                    used += consumed;
                }
                Err(error) => {
                    seen.push(Seen::Error(error.close_code().0));
                    return Outcome { seen, left: 0 };
                }
            }
        }
        buf.drain(..used);
    }
    Outcome { seen, left: buf.len() }
}

/// Checks what every event must satisfy, and returns an owned copy.
fn check(event: &WsEvent<'_>, limit: usize) -> Seen {
    match *event {
        WsEvent::Message { binary, payload } => {
            assert!(
                payload.len() <= limit,
                "{}-byte message over the limit {limit}",
                payload.len()
            );
            assert!(binary || std::str::from_utf8(payload).is_ok(), "text message not UTF-8");
            Seen::Message(binary, payload.to_vec())
        }
        WsEvent::Ping(payload) => {
            assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX);
            Seen::Ping(payload.to_vec())
        }
        WsEvent::Pong(payload) => {
            assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX);
            Seen::Pong(payload.to_vec())
        }
        WsEvent::Close { code, reason } => {
            assert!(reason.len() <= CLOSE_REASON_BYTES_MAX);
            assert!(std::str::from_utf8(reason).is_ok(), "close reason not UTF-8");
            match code {
                Some(code) => assert!(CloseCode(code).is_allowed(), "close code {code}"),
                None => assert!(reason.is_empty()),
            }
            Seen::Close(code, reason.to_vec())
        }
    }
}

/// RFC 6455 server-side decoding written as plainly as possible, on the whole stream.
///
/// Checks in the order the decoder documents: opcode, RSV bits, mask, control frame rules,
/// fragmentation order, size (all from the header, before the payload is there), then the
/// payload (close payload, UTF-8).
fn model(limit: usize, stream: &[u8]) -> Outcome {
    const PROTOCOL_ERROR: u16 = 1002;
    let mut seen = Vec::new();
    let mut at = 0;
    // `Some((binary, bytes so far))` inside a fragmented message.
    let mut message: Option<(bool, Vec<u8>)> = None;
    let error = |mut seen: Vec<Seen>, code| {
        seen.push(Seen::Error(code));
        Outcome { seen, left: 0 }
    };
    loop {
        let rest = &stream[at..];
        let [b0, b1, ..] = *rest else { break };
        let (len, mut header_len) = match b1 & 0x7f {
            126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => {
                (u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes")), 10)
            }
            126 | 127 => break,
            n => (u64::from(n), 2),
        };
        let masked = b1 & 0x80 != 0;
        if masked {
            header_len += 4;
        }
        if rest.len() < header_len {
            break;
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let so_far = message.as_ref().map_or(0, |(_, bytes)| bytes.len() as u64);
        let refused = match opcode {
            3..=7 | 11..=15 => true,
            _ if b0 & 0x70 != 0 || !masked => true,
            8..=10 => !fin || len > 125,
            0 => message.is_none(),
            _ => message.is_some(),
        };
        if refused {
            return error(seen, PROTOCOL_ERROR);
        }
        if opcode < 8 && so_far.saturating_add(len) > limit as u64 {
            return error(seen, 1009);
        }
        if ((rest.len() - header_len) as u64) < len {
            break;
        }
        let len = len as usize;
        let mask = &rest[header_len - 4..header_len];
        let payload: Vec<u8> = rest[header_len..header_len + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        at += header_len + len;
        match opcode {
            8 => match payload.as_slice() {
                [] => seen.push(Seen::Close(None, Vec::new())),
                [_] => return error(seen, PROTOCOL_ERROR),
                [high, low, reason @ ..] => {
                    let code = u16::from_be_bytes([*high, *low]);
                    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                    if !sendable || std::str::from_utf8(reason).is_err() {
                        return error(seen, PROTOCOL_ERROR);
                    }
                    seen.push(Seen::Close(Some(code), reason.to_vec()));
                }
            },
            9 => seen.push(Seen::Ping(payload)),
            10 => seen.push(Seen::Pong(payload)),
            _ => {
                let (binary, mut bytes) = match message.take() {
                    Some(started) => started,
                    None => (opcode == 2, Vec::new()),
                };
                bytes.extend_from_slice(&payload);
                if !fin {
                    message = Some((binary, bytes));
                    continue;
                }
                if !binary && std::str::from_utf8(&bytes).is_err() {
                    return error(seen, 1007);
                }
                seen.push(Seen::Message(binary, bytes));
            }
        }
    }
    Outcome { seen, left: stream.len() - at }
}

/// xorshift64: the piece sizes, reproducible from the input alone.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
