//! The client side of WebSocket (RFC 6455), sans-IO: the upgrade request and response, masked
//! client frames out, unmasked server frames in.
//!
//! What it is not: a general WebSocket library. It handles exactly what a load generator needs
//! and nothing else (no extensions, no subprotocols). Decoding borrows from the caller's buffer
//! and never allocates; an incomplete frame is `Ok(None)`, not an error.

use sha1::{Digest, Sha1};

/// The GUID that RFC 6455 §1.3 appends to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The upgrade response may not be longer than this; a server that sends more is not one we
/// want to measure.
pub const UPGRADE_RESPONSE_BYTES_MAX: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        match bits {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why the server's bytes could not be understood. Every one of these ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsError {
    /// The upgrade response was not `101`, or lacked a correct `Sec-WebSocket-Accept`.
    UpgradeRejected,
    UpgradeTooLong,
    ReservedBits,
    UnknownOpcode,
    /// A control frame longer than 125 bytes or fragmented.
    BadControlFrame,
    /// A frame longer than the caller allows.
    FrameTooLong,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            WsError::UpgradeRejected => "upgrade rejected",
            WsError::UpgradeTooLong => "upgrade response too long",
            WsError::ReservedBits => "reserved bits set in a server frame",
            WsError::UnknownOpcode => "unknown opcode in a server frame",
            WsError::BadControlFrame => "malformed control frame",
            WsError::FrameTooLong => "server frame too long",
        };
        f.write_str(text)
    }
}

/// Base64 (standard alphabet, padded). Only the key and the accept value use it.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Sec-WebSocket-Accept` value a server must answer to `key`.
pub fn accept_value(key: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(ACCEPT_GUID);
    base64(&hasher.finalize())
}

/// A key for one upgrade request from 16 bytes of randomness (RFC 6455 §4.1).
pub fn key_from(random: [u8; 16]) -> String {
    base64(&random)
}

/// The HTTP upgrade request for `host` (as `host:port`) and `path`.
pub fn upgrade_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the upgrade response at the front of `buf`. `Ok(None)` while the header block is
/// incomplete; `Ok(Some(n))` when it is complete and valid, `n` being its length (the bytes
/// after it are already WebSocket frames).
pub fn parse_upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, WsError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > UPGRADE_RESPONSE_BYTES_MAX {
            return Err(WsError::UpgradeTooLong);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| WsError::UpgradeRejected)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.split(' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code != "101" {
        return Err(WsError::UpgradeRejected);
    }
    let expected = accept_value(key);
    let accepted = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
        })
    });
    if !accepted {
        return Err(WsError::UpgradeRejected);
    }
    Ok(Some(end + 4))
}

/// Appends one masked, unfragmented client frame whose payload is written by `write_payload`,
/// which must append exactly `payload_len` bytes. Writing the payload in place and masking it
/// afterwards avoids a second buffer.
pub fn encode_frame(
    buf: &mut Vec<u8>,
    opcode: Opcode,
    mask: [u8; 4],
    payload_len: usize,
    write_payload: impl FnOnce(&mut Vec<u8>),
) {
    buf.reserve(14 + payload_len);
    buf.push(0x80 | opcode.bits());
    if payload_len < 126 {
        buf.push(0x80 | payload_len as u8);
    } else if payload_len <= usize::from(u16::MAX) {
        buf.push(0x80 | 126);
        buf.extend_from_slice(&(payload_len as u16).to_be_bytes());
    } else {
        buf.push(0x80 | 127);
        buf.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
    buf.extend_from_slice(&mask);
    let start = buf.len();
    write_payload(buf);
    assert_eq!(buf.len() - start, payload_len, "frame payload length was announced wrongly");
    apply_mask(&mut buf[start..], mask);
}

/// XORs `data` with the repeating `mask`, starting at mask phase 0. Eight bytes at a time: the
/// mask repeats every four bytes, so a doubled mask lines up with every eight-byte chunk.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let masked = u64::from_ne_bytes(word) ^ wide;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// One decoded server frame. `payload` is the range of the payload inside the decoded buffer;
/// a masked server frame (not allowed, but harmless) has already been unmasked in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: std::ops::Range<usize>,
    /// Header plus payload: where the next frame starts.
    pub len: usize,
}

/// Decodes the frame at the front of `buf`. `Ok(None)` means more bytes are needed.
pub fn decode_frame(buf: &mut [u8], payload_bytes_max: usize) -> Result<Option<Frame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::UnknownOpcode)?;
    let masked = b1 & 0x80 != 0;
    let mut header = 2;
    let len7 = usize::from(b1 & 0x7F);
    let payload_len = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            header = 4;
            usize::from(u16::from_be_bytes([buf[2], buf[3]]))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            header = 10;
            let mut eight = [0u8; 8];
            eight.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(eight);
            usize::try_from(n).map_err(|_| WsError::FrameTooLong)?
        }
        n => n,
    };
    if opcode.is_control() && (payload_len > 125 || !fin) {
        return Err(WsError::BadControlFrame);
    }
    if payload_len > payload_bytes_max {
        return Err(WsError::FrameTooLong);
    }
    let mask_at = header;
    if masked {
        header += 4;
    }
    let total = header + payload_len;
    if buf.len() < total {
        return Ok(None);
    }
    if masked {
        let mask = [buf[mask_at], buf[mask_at + 1], buf[mask_at + 2], buf[mask_at + 3]];
        apply_mask(&mut buf[header..total], mask);
    }
    Ok(Some(Frame { fin, opcode, payload: header..total, len: total }))
}

/// The close code and reason of a close frame's payload (1005 when it has none).
pub fn close_code(payload: &[u8]) -> (u16, &[u8]) {
    if payload.len() >= 2 {
        (u16::from_be_bytes([payload[0], payload[1]]), &payload[2..])
    } else {
        (1005, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn accept_value_matches_rfc6455_example() {
        assert_eq!(accept_value("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn upgrade_response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05MM OK";
        let head_len = good.len() - 7;
        for cut in 0..head_len {
            assert_eq!(parse_upgrade_response(&good[..cut], key), Ok(None));
        }
        assert_eq!(parse_upgrade_response(good, key), Ok(Some(head_len)));
        let wrong_accept = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(parse_upgrade_response(wrong_accept, key), Err(WsError::UpgradeRejected));
        let busy = b"HTTP/1.1 503 Service Unavailable\r\n\r\n";
        assert_eq!(parse_upgrade_response(busy, key), Err(WsError::UpgradeRejected));
    }

    /// Unmasks a client frame the way a server would, for round-trip checks.
    fn server_side_decode(bytes: &[u8]) -> (Opcode, Vec<u8>) {
        let mut copy = bytes.to_vec();
        let frame = decode_frame(&mut copy, usize::MAX).unwrap().unwrap();
        assert!(frame.fin);
        assert_eq!(frame.len, bytes.len());
        (frame.opcode, copy[frame.payload].to_vec())
    }

    #[test]
    fn client_frames_round_trip_at_every_length_class() {
        for len in [0usize, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut buf = Vec::new();
            let mask = [0x12, 0x34, 0x56, 0x78];
            encode_frame(&mut buf, Opcode::Text, mask, len, |b| b.extend_from_slice(&payload));
            assert_eq!(buf[0], 0x81);
            assert_ne!(buf[1] & 0x80, 0, "client frames must be masked");
            if len >= 8 {
                assert_ne!(&buf[buf.len() - len..], &payload[..], "payload is masked");
            }
            let (opcode, decoded) = server_side_decode(&buf);
            assert_eq!(opcode, Opcode::Text);
            assert_eq!(decoded, payload);
        }
    }

    #[test]
    fn mask_handles_unaligned_tails() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut data = original.clone();
            let mask = [1, 2, 3, 4];
            apply_mask(&mut data, mask);
            for (i, (a, b)) in data.iter().zip(&original).enumerate() {
                assert_eq!(*a, *b ^ mask[i % 4]);
            }
        }
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else if payload.len() <= 65535 {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn server_frames_decode_when_complete_and_wait_otherwise() {
        for len in [0usize, 5, 125, 126, 300, 65536] {
            let payload = vec![b'x'; len];
            let bytes = server_frame(0x1, &payload);
            for cut in 0..bytes.len() {
                let mut part = bytes[..cut].to_vec();
                assert_eq!(decode_frame(&mut part, usize::MAX), Ok(None), "cut {cut}");
            }
            let mut whole = bytes.clone();
            whole.extend_from_slice(b"\x81\x00");
            let frame = decode_frame(&mut whole, usize::MAX).unwrap().unwrap();
            assert_eq!(frame.opcode, Opcode::Text);
            assert_eq!(frame.len, bytes.len());
            assert_eq!(&whole[frame.payload], &payload[..]);
        }
    }

    #[test]
    fn server_frame_errors() {
        assert_eq!(decode_frame(&mut [0xC1, 0x00], 100), Err(WsError::ReservedBits));
        assert_eq!(decode_frame(&mut [0x83, 0x00], 100), Err(WsError::UnknownOpcode));
        assert_eq!(decode_frame(&mut [0x09, 0x00], 100), Err(WsError::BadControlFrame));
        let mut long = server_frame(0x2, &[0; 200]);
        assert_eq!(decode_frame(&mut long, 100), Err(WsError::FrameTooLong));
    }

    #[test]
    fn close_payload() {
        let payload = [0x03, 0xF0, b's', b'l', b'o', b'w'];
        assert_eq!(close_code(&payload), (1008, &b"slow"[..]));
        assert_eq!(close_code(&[]), (1005, &b""[..]));
    }
}
