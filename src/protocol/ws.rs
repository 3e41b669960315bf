//! WebSocket frames (RFC 6455), sans-IO: the server side.
//!
//! What it is:
//!
//! - [`Decoder`] turns the bytes a client sent into [`WsEvent`]s, one frame per call. It does
//!   every check RFC 6455 asks of a server: the client mask, RSV bits, reserved opcodes,
//!   control frame rules, fragmentation order, UTF-8 of text messages and close reasons, close
//!   codes, and the message size limit. tungstenite's `FrameHeader::parse` reads the header;
//!   everything it does not check is checked here.
//! - [`encode_header`], [`encode_frame`] and [`encode_close`] append the final, unmasked frames
//!   a server sends.
//!
//! What it is not:
//!
//! - No I/O and no clock. Ping timers, the close handshake and what to answer (pong to ping,
//!   close to close) belong to the connection; this module only reports what arrived.
//! - No extensions. The handshake never negotiates one (no permessage-deflate), so any RSV bit
//!   is a protocol error.
//! - No client side: server frames are never masked, client frames must be.
//!
//! Invariants:
//!
//! - [`Decoder::decode`] consumes whole frames or nothing. `Ok(None)` leaves `buf` untouched, so
//!   the caller retries with more bytes appended.
//! - A payload is unmasked exactly once: in place, in the call that consumes its frame. The
//!   caller must drop the consumed bytes before the next call.
//! - The size limit is enforced from the frame header, before any payload is waited for or
//!   buffered. The decoder owns at most `message_bytes_max` bytes of fragments, and frees them
//!   after delivery if they grew beyond [`FRAGMENTS_RETAINED_BYTES_MAX`].
//! - A single-frame message is returned borrowing `buf` (zero copy); only fragmented messages
//!   are copied, once, into the decoder.

use std::{fmt, io::Cursor, str};

use tungstenite::protocol::frame::{
    coding::{Control, Data, OpCode},
    FrameHeader,
};

/// A close code, as sent or received in a close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL_ERROR: Self = Self(1002);
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    pub const INVALID_PAYLOAD: Self = Self(1007);
    pub const POLICY_VIOLATION: Self = Self(1008);
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    pub const INTERNAL_ERROR: Self = Self(1011);

    /// May this code appear in a close frame on the wire (RFC 6455 section 7.4)?
    ///
    /// Allowed: the codes RFC 6455 defines for use on the wire (1000-1003, 1007-1011), the
    /// IANA-registered 1012-1014 (service restart, try again later, bad gateway: servers and
    /// proxies send them) and the ranges for registered and private use (3000-4999). Refused:
    /// below 1000, 1004 (reserved), 1005, 1006 and 1015 (which only stand for "no close frame"
    /// in APIs), 1016-2999 (reserved for future revisions) and 5000 and above.
    pub const fn is_allowed(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// What a client sent that ends the connection, with the close code it maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsError {
    /// A frame without the client mask.
    Unmasked,
    /// RSV1, RSV2 or RSV3 set (no extension is ever negotiated).
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    ReservedOpcode,
    /// A control frame with FIN clear.
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    ControlTooBig,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A close frame with a one-byte payload, a code that may not be sent, or a reason that is
    /// not UTF-8.
    InvalidClosePayload,
    /// A message (all fragments together) larger than `message_bytes_max`.
    MessageTooBig,
}

impl WsError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            Self::MessageTooBig => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame and the log line.
    ///
    /// Lowercase, ASCII, and well under the 123 bytes a close reason may hold.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unmasked => "unmasked frame",
            Self::ReservedBits => "reserved bits set",
            Self::ReservedOpcode => "reserved opcode",
            Self::FragmentedControl => "fragmented control frame",
            Self::ControlTooBig => "control frame too big",
            Self::UnexpectedContinuation => "unexpected continuation frame",
            Self::ExpectedContinuation => "expected continuation frame",
            Self::InvalidUtf8 => "invalid utf-8",
            Self::InvalidClosePayload => "invalid close payload",
            Self::MessageTooBig => "message too big",
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for WsError {}

/// One decoded item.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent<'a> {
    /// A complete data message (fragments already joined, unmasked, UTF-8 checked if text).
    Message {
        binary: bool,
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `code` is `None` for an empty close payload.
    Close {
        code: Option<u16>,
        reason: &'a [u8],
    },
}

/// The largest control frame payload (RFC 6455 section 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// The largest close reason: a control payload less the two-byte code.
pub const CLOSE_REASON_BYTES_MAX: usize = CONTROL_PAYLOAD_BYTES_MAX - 2;

/// The fragment buffer capacity a [`Decoder`] keeps after delivering a fragmented message.
///
/// Fragmented messages are rare (browsers send each message as one frame), and most
/// connections are idle most of the time. Keeping a buffer up to this size saves reallocating
/// for a client that fragments every message; freeing anything larger keeps 10k idle
/// connections from each holding on to their largest message ever.
pub const FRAGMENTS_RETAINED_BYTES_MAX: usize = 64 * 1024;

/// Decodes client frames.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
    /// `Some(binary)` while a fragmented message is being assembled.
    message: Option<bool>,
    /// The payload of the fragments received so far. When no message is in progress it may
    /// still hold the message returned by the previous call; it is cleared at the next call.
    fragments: Vec<u8>,
}

/// What a frame is, once its header passed every check.
#[derive(Clone, Copy)]
enum FrameKind {
    Close,
    Ping,
    Pong,
    /// `first` is false for a continuation frame.
    Data {
        binary: bool,
        first: bool,
    },
}

impl Decoder {
    /// A decoder accepting messages of up to `message_bytes_max` bytes (all fragments together).
    ///
    /// Allocates nothing until a fragmented message arrives.
    pub fn new(message_bytes_max: usize) -> Self {
        Self { message_bytes_max, message: None, fragments: Vec::new() }
    }

    /// Decodes at most one event from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete frame yet (nothing consumed), or
    /// `Ok(Some((consumed, event)))`. `consumed` may be positive with `event == None` when a
    /// non-final fragment was absorbed. Unmasks in place, so `buf` is `&mut`.
    ///
    /// The caller must drop the `consumed` bytes from the front of its buffer before the next
    /// call: they have been unmasked. After an `Err` the connection is to be closed (with
    /// [`WsError::close_code`]); the decoder must not be used again. Frames after a close frame
    /// are the caller's to ignore.
    // The nested type is the decoder's whole contract (consumed bytes, maybe an event, or an
    // error) and reads better spelled out than behind an alias used once.
    #[allow(clippy::type_complexity)]
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, Option<WsEvent<'a>>)>, WsError> {
        if self.message.is_none() {
            self.release_fragments();
        }

        let mut cursor = Cursor::new(&*buf);
        let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            // Reading from memory cannot fail, so the reserved opcode check is the only error
            // `parse` returns. Any other would still be a protocol error, which is what
            // `ReservedOpcode` closes with.
            Err(error) => {
                debug_assert!(
                    matches!(
                        error,
                        tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::InvalidOpcode(_)
                        )
                    ),
                    "unexpected FrameHeader::parse error: {error}"
                );
                return Err(WsError::ReservedOpcode);
            }
        };
        // At most 14 bytes, so the cast cannot truncate.
        let header_len = cursor.position() as usize;

        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::ReservedBits);
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Unmasked);
        };
        let kind = self.check(&header, payload_len)?;

        // `check` bounded the length by `message_bytes_max` (a `usize`) or by 125, so it fits.
        let payload_len = payload_len as usize;
        if buf.len() - header_len < payload_len {
            return Ok(None);
        }
        let consumed = header_len + payload_len;
        let payload = &mut buf[header_len..consumed];
        unmask(payload, mask);
        let payload: &'a [u8] = payload;

        let event = match kind {
            FrameKind::Ping => WsEvent::Ping(payload),
            FrameKind::Pong => WsEvent::Pong(payload),
            FrameKind::Close => {
                let (code, reason) = parse_close(payload)?;
                WsEvent::Close { code, reason }
            }
            FrameKind::Data { binary, first: true } if header.is_final => {
                check_text(binary, payload)?;
                WsEvent::Message { binary, payload }
            }
            FrameKind::Data { binary, .. } => {
                self.fragments.extend_from_slice(payload);
                if !header.is_final {
                    self.message = Some(binary);
                    return Ok(Some((consumed, None)));
                }
                self.message = None;
                check_text(binary, &self.fragments)?;
                WsEvent::Message { binary, payload: &self.fragments }
            }
        };
        Ok(Some((consumed, Some(event))))
    }

    /// True while a fragmented message is being assembled (for the tests).
    #[cfg(test)]
    fn in_message(&self) -> bool {
        self.message.is_some()
    }

    /// Checks what the header alone can tell: control frame rules, fragmentation order and the
    /// message size. Runs before the payload is complete, so a client that announces too much
    /// is refused at once instead of being waited for.
    fn check(&self, header: &FrameHeader, payload_len: u64) -> Result<FrameKind, WsError> {
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final {
                    return Err(WsError::FragmentedControl);
                }
                if payload_len > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                    return Err(WsError::ControlTooBig);
                }
                match control {
                    Control::Close => Ok(FrameKind::Close),
                    Control::Ping => Ok(FrameKind::Ping),
                    Control::Pong => Ok(FrameKind::Pong),
                    Control::Reserved(_) => Err(WsError::ReservedOpcode),
                }
            }
            OpCode::Data(data) => {
                let (binary, first) = match (data, self.message) {
                    (Data::Continue, Some(binary)) => (binary, false),
                    (Data::Continue, None) => return Err(WsError::UnexpectedContinuation),
                    (Data::Text | Data::Binary, Some(_)) => {
                        return Err(WsError::ExpectedContinuation)
                    }
                    (Data::Text, None) => (false, true),
                    (Data::Binary, None) => (true, true),
                    (Data::Reserved(_), _) => return Err(WsError::ReservedOpcode),
                };
                // In u64 and saturating: a 64-bit length near u64::MAX must neither overflow
                // nor get as far as an allocation.
                let message_len = (self.fragments.len() as u64).saturating_add(payload_len);
                if message_len > self.message_bytes_max as u64 {
                    return Err(WsError::MessageTooBig);
                }
                Ok(FrameKind::Data { binary, first })
            }
        }
    }

    /// Forgets the message delivered by the previous call.
    fn release_fragments(&mut self) {
        if self.fragments.capacity() > FRAGMENTS_RETAINED_BYTES_MAX {
            self.fragments = Vec::new();
        } else {
            self.fragments.clear();
        }
    }
}

/// Checks that a complete text message is UTF-8. Binary messages pass as they are.
fn check_text(binary: bool, payload: &[u8]) -> Result<(), WsError> {
    if binary || str::from_utf8(payload).is_ok() {
        Ok(())
    } else {
        Err(WsError::InvalidUtf8)
    }
}

/// Splits a close payload into code and reason, checking both (RFC 6455 section 5.5.1).
fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &[u8]), WsError> {
    match payload {
        [] => Ok((None, &[])),
        [_] => Err(WsError::InvalidClosePayload),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode(code).is_allowed() || str::from_utf8(reason).is_err() {
                return Err(WsError::InvalidClosePayload);
            }
            Ok((Some(code), reason))
        }
    }
}

/// XORs `payload` with the repeating four-byte `mask` (RFC 6455 section 5.3), eight bytes at
/// a time. Masking and unmasking are the same operation; `payload` must start at the first
/// payload byte of its frame.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let mask_word = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let word: &mut [u8; 8] = word.try_into().expect("chunks_exact_mut(8) yields 8-byte chunks");
        *word = (u64::from_ne_bytes(*word) ^ mask_word).to_ne_bytes();
    }
    // The remainder starts at a multiple of 8, so the mask phase restarts at 0.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The largest server frame header: 2 bytes + 8 bytes of extended length.
pub const HEADER_BYTES_MAX: usize = 10;

/// Appends a final, unmasked server frame header for a payload of `len` bytes.
///
/// Uses the shortest length encoding: 2 bytes up to 125, 4 bytes up to 65535, 10 beyond.
///
/// # Panics
///
/// If `opcode` is a control opcode and `len` exceeds 125: only a bug of ours can ask for that.
pub fn encode_header(opcode: Opcode, len: usize, out: &mut Vec<u8>) {
    assert!(
        !opcode.is_control() || len <= CONTROL_PAYLOAD_BYTES_MAX,
        "{opcode:?} frame with {len} bytes of payload"
    );
    let first = 0x80 | opcode.code();
    if len < 126 {
        out.extend_from_slice(&[first, len as u8]);
    } else if let Ok(len) = u16::try_from(len) {
        out.extend_from_slice(&[first, 126]);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&[first, 127]);
        // usize is at most 64 bits on every target Rust supports.
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a whole server frame.
pub fn encode_frame(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    encode_header(opcode, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (at most 123 bytes of reason).
///
/// A longer reason is cut at the last char boundary within 123 bytes, so it stays UTF-8.
///
/// # Panics
///
/// If `code` may not be sent ([`CloseCode::is_allowed`]): only a bug of ours can ask for that.
pub fn encode_close(code: CloseCode, reason: &str, out: &mut Vec<u8>) {
    assert!(code.is_allowed(), "close code {} may not be sent", code.0);
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    encode_header(Opcode::Close, 2 + reason.len(), out);
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Server frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    /// The four-bit opcode on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes of payload.
    pub const fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

#[cfg(test)]
mod tests {
    //! Decoder and encoders on byte vectors: every error, every split point, length encodings,
    //! and cross-checks against tungstenite's own frame parser and formatter.

    use super::*;
    use tungstenite::protocol::frame::{coding::CloseCode as TCloseCode, CloseFrame, Frame};

    const FIN: u8 = 0x80;
    const CONT: u8 = 0x0;
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX: usize = 1 << 20;

    use crate::testing::client_frame_with_len as frame_with_len;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        frame_with_len(first, payload.len() as u64, Some(MASK), payload)
    }

    fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        frame(FIN | CLOSE, &payload)
    }

    /// An owned copy of what the decoder returned, so results can be collected and compared.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Seen {
        Message(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, Vec<u8>),
        Error(WsError),
    }

    impl From<WsEvent<'_>> for Seen {
        fn from(event: WsEvent<'_>) -> Self {
            match event {
                WsEvent::Message { binary, payload } => Self::Message(binary, payload.to_vec()),
                WsEvent::Ping(payload) => Self::Ping(payload.to_vec()),
                WsEvent::Pong(payload) => Self::Pong(payload.to_vec()),
                WsEvent::Close { code, reason } => Self::Close(code, reason.to_vec()),
            }
        }
    }

    fn text(payload: &str) -> Seen {
        Seen::Message(false, payload.as_bytes().to_vec())
    }

    fn binary(payload: &[u8]) -> Seen {
        Seen::Message(true, payload.to_vec())
    }

    /// Feeds `input` to a fresh decoder in chunks ending at `ends` (then the rest), decoding
    /// as much as possible after each chunk, the way a connection would. Stops at the first
    /// error. Returns the events and the number of bytes left undecoded.
    fn feed(max: usize, input: &[u8], ends: impl IntoIterator<Item = usize>) -> (Vec<Seen>, usize) {
        let mut decoder = Decoder::new(max);
        let mut pending = Vec::new();
        let mut seen = Vec::new();
        let mut start = 0;
        for end in ends.into_iter().chain([input.len()]) {
            pending.extend_from_slice(&input[start..end]);
            start = end;
            loop {
                let before = (pending.len() < 4096).then(|| pending.clone());
                let consumed = match decoder.decode(&mut pending) {
                    Ok(None) => {
                        if let Some(before) = before {
                            assert_eq!(before, pending, "Ok(None) changed the buffer");
                        }
                        break;
                    }
                    Ok(Some((consumed, event))) => {
                        seen.extend(event.map(Seen::from));
                        consumed
                    }
                    Err(error) => {
                        seen.push(Seen::Error(error));
                        return (seen, pending.len());
                    }
                };
                assert!(consumed > 0 && consumed <= pending.len());
                pending.drain(..consumed);
            }
        }
        (seen, pending.len())
    }

    /// Decodes `input` given all at once.
    fn decode_all(max: usize, input: &[u8]) -> Vec<Seen> {
        let (seen, left) = feed(max, input, []);
        if !matches!(seen.last(), Some(Seen::Error(_))) {
            assert_eq!(left, 0, "bytes left over");
        }
        seen
    }

    /// Decodes `input` all at once, one byte at a time and split at every offset, checks all
    /// give the same events, and returns them.
    fn decode_every_way(max: usize, input: &[u8]) -> Vec<Seen> {
        let whole = decode_all(max, input);
        assert_eq!(feed(max, input, 1..input.len()).0, whole, "byte at a time");
        for split in 0..=input.len() {
            assert_eq!(feed(max, input, [split]).0, whole, "split at {split}");
        }
        whole
    }

    fn first_error(max: usize, input: &[u8]) -> WsError {
        match decode_every_way(max, input).last() {
            Some(Seen::Error(error)) => *error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn reasons_are_short_lowercase_and_fit_a_close_frame() {
        use WsError::*;
        let all = [
            Unmasked,
            ReservedBits,
            ReservedOpcode,
            FragmentedControl,
            ControlTooBig,
            UnexpectedContinuation,
            ExpectedContinuation,
            InvalidUtf8,
            InvalidClosePayload,
            MessageTooBig,
        ];
        for error in all {
            let reason = error.reason();
            assert!(!reason.is_empty() && reason.len() <= 40, "{reason}");
            assert_eq!(reason, reason.to_ascii_lowercase());
            assert_eq!(error.to_string(), reason);
            assert!(error.close_code().is_allowed());
            let mut out = Vec::new();
            encode_close(error.close_code(), reason, &mut out);
            assert_eq!(&out[4..], reason.as_bytes());
        }
        assert_eq!(InvalidUtf8.reason(), "invalid utf-8");
        assert_eq!(MessageTooBig.reason(), "message too big");
        assert_eq!(InvalidUtf8.close_code(), CloseCode::INVALID_PAYLOAD);
        assert_eq!(MessageTooBig.close_code(), CloseCode::MESSAGE_TOO_BIG);
        assert_eq!(Unmasked.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn unmasked_frame_is_rejected() {
        let input = frame_with_len(FIN | TEXT, 2, None, b"hi");
        assert_eq!(first_error(MAX, &input), WsError::Unmasked);
        let input = frame_with_len(FIN | PING, 0, None, b"");
        assert_eq!(first_error(MAX, &input), WsError::Unmasked);
    }

    #[test]
    fn reserved_bits_are_rejected() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            for opcode in [TEXT, BINARY, PING, CLOSE] {
                let input = frame(FIN | rsv | opcode, b"x");
                assert_eq!(first_error(MAX, &input), WsError::ReservedBits);
            }
        }
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            let input = frame(FIN | opcode, b"x");
            assert_eq!(first_error(MAX, &input), WsError::ReservedOpcode, "{opcode}");
            // Also in the middle of a fragmented message.
            let mut input = frame(TEXT, b"a");
            input.extend(frame(FIN | opcode, b""));
            assert_eq!(first_error(MAX, &input), WsError::ReservedOpcode, "{opcode}");
        }
    }

    #[test]
    fn fragmented_control_frame_is_rejected() {
        for opcode in [CLOSE, PING, PONG] {
            let input = frame(opcode, b"");
            assert_eq!(first_error(MAX, &input), WsError::FragmentedControl);
        }
    }

    #[test]
    fn control_payload_over_125_bytes_is_rejected() {
        for opcode in [CLOSE, PING, PONG] {
            // Detected from the header alone: the payload never arrives.
            let input = frame_with_len(FIN | opcode, 126, Some(MASK), b"");
            assert_eq!(first_error(MAX, &input), WsError::ControlTooBig);
            let input = frame_with_len(FIN | opcode, u64::MAX, Some(MASK), b"");
            assert_eq!(first_error(MAX, &input), WsError::ControlTooBig);
        }
        assert_eq!(decode_all(MAX, &frame(FIN | PING, &[7; 125])), [Seen::Ping(vec![7; 125])]);
    }

    #[test]
    fn continuation_without_a_message_is_rejected() {
        let input = frame(FIN | CONT, b"x");
        assert_eq!(first_error(MAX, &input), WsError::UnexpectedContinuation);
        let input = frame(CONT, b"x");
        assert_eq!(first_error(MAX, &input), WsError::UnexpectedContinuation);
        // After a fragmented message has ended.
        let mut input = frame(BINARY, b"a");
        input.extend(frame(FIN | CONT, b"b"));
        input.extend(frame(FIN | CONT, b"c"));
        assert_eq!(
            decode_every_way(MAX, &input),
            [binary(b"ab"), Seen::Error(WsError::UnexpectedContinuation)]
        );
    }

    #[test]
    fn new_message_during_a_fragmented_message_is_rejected() {
        for opcode in [TEXT, BINARY] {
            for fin in [0, FIN] {
                let mut input = frame(TEXT, b"a");
                input.extend(frame(fin | opcode, b"b"));
                assert_eq!(first_error(MAX, &input), WsError::ExpectedContinuation);
            }
        }
    }

    #[test]
    fn invalid_utf8_text_is_rejected() {
        let bad: &[&[u8]] =
            &[b"\xff", b"a\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"ok\xf4\x90\x80\x80"];
        for payload in bad {
            let input = frame(FIN | TEXT, payload);
            assert_eq!(first_error(MAX, &input), WsError::InvalidUtf8, "{payload:?}");
            // Fragmented: only the complete message is checked.
            let mut input = frame(TEXT, &payload[..1]);
            input.extend(frame(FIN | CONT, &payload[1..]));
            assert_eq!(first_error(MAX, &input), WsError::InvalidUtf8, "{payload:?}");
            // Binary messages are not text.
            assert_eq!(decode_all(MAX, &frame(FIN | BINARY, payload)), [binary(payload)]);
        }
        // A character split across fragments is fine.
        let mut input = frame(TEXT, "h\u{e9}".as_bytes()[..2].as_ref());
        input.extend(frame(FIN | CONT, &"h\u{e9}".as_bytes()[2..]));
        assert_eq!(decode_every_way(MAX, &input), [text("h\u{e9}")]);
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(decode_every_way(MAX, &frame(FIN | CLOSE, b"")), [Seen::Close(None, vec![])]);
        let input = frame(FIN | CLOSE, &[0x03]);
        assert_eq!(first_error(MAX, &input), WsError::InvalidClosePayload);

        let refused = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999];
        for code in refused.into_iter().chain([5000, u16::MAX]) {
            assert!(!CloseCode(code).is_allowed(), "{code}");
            assert_eq!(
                first_error(MAX, &close_frame(code, b"")),
                WsError::InvalidClosePayload,
                "{code}"
            );
        }
        for code in (1000..=1003).chain(1007..=1011).chain([3000, 3999, 4000, 4999]) {
            assert!(CloseCode(code).is_allowed(), "{code}");
            assert_eq!(
                decode_all(MAX, &close_frame(code, b"bye")),
                [Seen::Close(Some(code), b"bye".to_vec())]
            );
        }

        let input = close_frame(1000, b"\xffbad");
        assert_eq!(first_error(MAX, &input), WsError::InvalidClosePayload);
        let reason = "\u{2764}".repeat(41);
        assert_eq!(
            decode_every_way(MAX, &close_frame(1001, reason.as_bytes())),
            [Seen::Close(Some(1001), reason.into_bytes())]
        );
    }

    #[test]
    fn message_too_big_is_detected_from_the_header() {
        // Only the header is supplied: the decoder must not wait for the payload.
        let lens = [1001, 0xFFFF, 0x1_0000, 1 << 32, 1 << 63, u64::MAX - 1, u64::MAX];
        for len in lens {
            for opcode in [TEXT, BINARY] {
                let input = frame_with_len(FIN | opcode, len, Some(MASK), b"");
                assert_eq!(first_error(1000, &input), WsError::MessageTooBig, "{len}");
            }
        }
        // With a usize::MAX limit a huge length must not overflow: on 64-bit targets it is
        // simply incomplete.
        let input = frame_with_len(FIN | BINARY, u64::MAX, Some(MASK), b"");
        let mut decoder = Decoder::new(usize::MAX);
        let mut buf = input.clone();
        let expected = match usize::BITS {
            64 => Ok(None),
            _ => Err(WsError::MessageTooBig),
        };
        assert_eq!(decoder.decode(&mut buf), expected);
        assert_eq!(buf, input);
        // Exactly the limit is fine.
        assert_eq!(decode_all(1000, &frame(FIN | BINARY, &[1; 1000])), [binary(&[1; 1000])]);
        assert_eq!(decode_all(0, &frame(FIN | TEXT, b"")), [text("")]);
        assert_eq!(first_error(0, &frame(FIN | TEXT, b"a")), WsError::MessageTooBig);
    }

    #[test]
    fn fragmented_message_too_big_is_detected_at_the_fragment_header() {
        let mut input = frame(BINARY, &[1; 600]);
        input.extend(frame(CONT, &[2; 400]));
        let ok_len = input.len();
        input.extend(frame_with_len(FIN | CONT, 1, Some(MASK), b""));
        assert_eq!(first_error(1000, &input), WsError::MessageTooBig);

        let mut input = input[..ok_len].to_vec();
        input.extend(frame_with_len(FIN | CONT, u64::MAX, Some(MASK), b""));
        assert_eq!(first_error(1000, &input), WsError::MessageTooBig);

        let mut input = input[..ok_len].to_vec();
        input.extend(frame(FIN | CONT, b""));
        let mut expected = vec![1; 600];
        expected.extend([2; 400]);
        assert_eq!(decode_every_way(1000, &input), [binary(&expected)]);
    }

    #[test]
    fn incomplete_frames_consume_nothing_and_stay_masked() {
        let input = frame(FIN | TEXT, &[b'x'; 300]);
        let mut decoder = Decoder::new(MAX);
        for end in 0..input.len() {
            let mut buf = input[..end].to_vec();
            assert_eq!(decoder.decode(&mut buf), Ok(None), "{end}");
            assert_eq!(buf, input[..end], "{end}");
        }
        let mut buf = input.clone();
        let (consumed, event) = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(consumed, input.len());
        assert_eq!(event.map(Seen::from), Some(text(&"x".repeat(300))));
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let mut input = Vec::new();
        input.extend(frame(FIN | TEXT, b"hello"));
        input.extend(frame(FIN | PING, b"p"));
        input.extend(frame(BINARY, &[1, 2, 3]));
        input.extend(frame(FIN | PONG, b""));
        input.extend(frame(CONT, &[]));
        input.extend(frame(FIN | CONT, &[4; 200]));
        input.extend(frame(FIN | TEXT, "\u{1F600}".repeat(40).as_bytes()));
        input.extend(close_frame(1000, b"done"));
        let mut long = vec![1, 2, 3];
        long.extend([4; 200]);
        assert_eq!(
            decode_every_way(MAX, &input),
            [
                text("hello"),
                Seen::Ping(b"p".to_vec()),
                Seen::Pong(vec![]),
                binary(&long),
                text(&"\u{1F600}".repeat(40)),
                Seen::Close(Some(1000), b"done".to_vec()),
            ]
        );
    }

    #[test]
    fn many_frames_back_to_back() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for i in 0..1000u32 {
            let payload = i.to_string();
            if i % 2 == 0 {
                input.extend(frame(FIN | TEXT, payload.as_bytes()));
                expected.push(text(&payload));
            } else {
                input.extend(frame(FIN | BINARY, payload.as_bytes()));
                expected.push(binary(payload.as_bytes()));
            }
        }
        assert_eq!(decode_all(MAX, &input), expected);
        // In one buffer, without draining: offsets add up.
        let mut decoder = Decoder::new(MAX);
        let mut offset = 0;
        let mut count = 0;
        while let Some((consumed, event)) = decoder.decode(&mut input[offset..]).unwrap() {
            assert!(event.is_some());
            offset += consumed;
            count += 1;
        }
        assert_eq!((offset, count), (input.len(), 1000));
    }

    #[test]
    fn fragmented_message_with_interleaved_control_frames() {
        let mut input = Vec::new();
        input.extend(frame(TEXT, b"Hel"));
        input.extend(frame(FIN | PING, b"ping"));
        input.extend(frame(CONT, b"lo, "));
        input.extend(frame(FIN | PONG, b"pong"));
        input.extend(close_frame(1000, b""));
        input.extend(frame(FIN | CONT, b"world"));
        assert_eq!(
            decode_every_way(MAX, &input),
            [
                Seen::Ping(b"ping".to_vec()),
                Seen::Pong(b"pong".to_vec()),
                Seen::Close(Some(1000), vec![]),
                text("Hello, world"),
            ]
        );
    }

    #[test]
    fn non_final_fragments_return_no_event() {
        let mut decoder = Decoder::new(MAX);
        let mut buf = frame(BINARY, b"ab");
        let len = buf.len();
        assert_eq!(decoder.decode(&mut buf), Ok(Some((len, None))));
    }

    #[test]
    fn length_encodings_decode() {
        // 7-bit, 16-bit and 64-bit length fields, at their edges.
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 0x1_0001, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let input = frame(FIN | BINARY, &payload);
            let header_len = match len {
                0..=125 => 6,
                126..=0xFFFF => 8,
                _ => 14,
            };
            assert_eq!(input.len(), header_len + len);
            let (seen, left) = feed(MAX, &input, (0..input.len()).step_by(997));
            assert_eq!((seen, left), (vec![binary(&payload)], 0), "{len}");
        }
    }

    #[test]
    fn single_frame_messages_borrow_the_input() {
        let mut decoder = Decoder::new(MAX);
        let mut buf = frame(FIN | BINARY, b"zero copy");
        let start = buf.as_ptr() as usize;
        let (_, event) = decoder.decode(&mut buf).unwrap().unwrap();
        let Some(WsEvent::Message { payload, .. }) = event else { panic!("{event:?}") };
        assert_eq!(payload.as_ptr() as usize, start + 6);
        assert_eq!(decoder.fragments.capacity(), 0);
    }

    #[test]
    fn fragments_are_cleared_and_large_buffers_released() {
        let mut decoder = Decoder::new(MAX);
        let mut small = frame(BINARY, &[1; 100]);
        small.extend(frame(FIN | CONT, &[2; 100]));
        let mut large = frame(BINARY, &[3; 70_000]);
        large.extend(frame(FIN | CONT, &[4; 70_000]));

        let decode_message = |decoder: &mut Decoder, input: &[u8]| {
            let mut buf = input.to_vec();
            let (first, event) = decoder.decode(&mut buf).unwrap().unwrap();
            assert!(event.is_none() && decoder.in_message());
            let (_, event) = decoder.decode(&mut buf[first..]).unwrap().unwrap();
            assert!(matches!(event, Some(WsEvent::Message { .. })));
            assert!(!decoder.in_message());
        };

        decode_message(&mut decoder, &small);
        assert_eq!(decoder.fragments.len(), 200);
        let capacity = decoder.fragments.capacity();
        assert_eq!(decoder.decode(&mut []), Ok(None));
        assert_eq!(decoder.fragments.len(), 0);
        assert_eq!(decoder.fragments.capacity(), capacity, "small buffer kept");

        decode_message(&mut decoder, &large);
        assert!(decoder.fragments.capacity() > FRAGMENTS_RETAINED_BYTES_MAX);
        // The next call, even one that finds nothing, frees it.
        assert_eq!(decoder.decode(&mut [0x81]), Ok(None));
        assert_eq!(decoder.fragments.capacity(), 0);
    }

    #[test]
    fn in_message_tracks_fragmentation() {
        let mut decoder = Decoder::new(MAX);
        assert!(!decoder.in_message());
        let steps = [
            (frame(TEXT, b"a"), true),
            (frame(FIN | PING, b""), true),
            (frame(CONT, b"b"), true),
            (frame(FIN | CONT, b"c"), false),
            (frame(FIN | TEXT, b"d"), false),
        ];
        for (mut buf, in_message) in steps {
            decoder.decode(&mut buf).unwrap().unwrap();
            assert_eq!(decoder.in_message(), in_message);
        }
    }

    /// Frames built by tungstenite, masked as a client masks them.
    fn tungstenite_client_frame(mut frame: Frame, mask: [u8; 4]) -> Vec<u8> {
        frame.header_mut().mask = Some(mask);
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    #[test]
    fn tungstenite_client_frames_decode() {
        let mask = [1, 2, 3, 4];
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mut input = Vec::new();
        input.extend(tungstenite_client_frame(
            Frame::message("h\u{e9}llo".as_bytes().to_vec(), OpCode::Data(Data::Text), true),
            mask,
        ));
        input.extend(tungstenite_client_frame(
            Frame::message(big.clone(), OpCode::Data(Data::Binary), false),
            mask,
        ));
        input.extend(tungstenite_client_frame(Frame::ping(b"are you there".to_vec()), mask));
        input.extend(tungstenite_client_frame(
            Frame::message(vec![9; 300], OpCode::Data(Data::Continue), true),
            [0xff; 4],
        ));
        input.extend(tungstenite_client_frame(Frame::pong(vec![]), mask));
        input.extend(tungstenite_client_frame(
            Frame::close(Some(CloseFrame { code: TCloseCode::Away, reason: "tab closed".into() })),
            mask,
        ));
        let mut joined = big;
        joined.extend([9; 300]);
        let expected = [
            text("h\u{e9}llo"),
            Seen::Ping(b"are you there".to_vec()),
            binary(&joined),
            Seen::Pong(vec![]),
            Seen::Close(Some(1001), b"tab closed".to_vec()),
        ];
        assert_eq!(decode_all(MAX, &input), expected);
        assert_eq!(feed(MAX, &input, (0..input.len()).step_by(13)).0, expected);
    }

    fn parse_with_tungstenite(bytes: &[u8]) -> (FrameHeader, u64, usize) {
        let mut cursor = Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        (header, len, cursor.position() as usize)
    }

    #[test]
    fn encode_header_uses_the_shortest_length() {
        let cases = [
            (0, vec![0x82, 0]),
            (125, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (0xFFFF, vec![0x82, 126, 0xFF, 0xFF]),
            (0x1_0000, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for (len, expected) in cases {
            let mut out = vec![0xAA];
            encode_header(Opcode::Binary, len, &mut out);
            assert_eq!(out[1..], expected, "{len}");
            assert!(out.len() - 1 <= HEADER_BYTES_MAX);
        }
    }

    #[test]
    fn encode_header_round_trips_through_tungstenite() {
        let opcodes = [
            (Opcode::Text, OpCode::Data(Data::Text)),
            (Opcode::Binary, OpCode::Data(Data::Binary)),
            (Opcode::Close, OpCode::Control(Control::Close)),
            (Opcode::Ping, OpCode::Control(Control::Ping)),
            (Opcode::Pong, OpCode::Control(Control::Pong)),
        ];
        let lens = [0, 1, 2, 125, 126, 127, 1000, 0xFFFF, 0x1_0000, 1 << 32, usize::MAX];
        for (opcode, theirs) in opcodes {
            for len in lens {
                if opcode.is_control() && len > CONTROL_PAYLOAD_BYTES_MAX {
                    continue;
                }
                let mut out = Vec::new();
                encode_header(opcode, len, &mut out);
                let (header, parsed_len, header_len) = parse_with_tungstenite(&out);
                let expected = FrameHeader {
                    is_final: true,
                    rsv1: false,
                    rsv2: false,
                    rsv3: false,
                    opcode: theirs,
                    mask: None,
                };
                assert_eq!(header, expected);
                assert_eq!((parsed_len, header_len), (len as u64, out.len()));
                let mut formatted = Vec::new();
                expected.format(len as u64, &mut formatted).unwrap();
                assert_eq!(out, formatted);
            }
        }
    }

    #[test]
    #[should_panic]
    fn encode_header_refuses_oversize_control_frames() {
        encode_header(Opcode::Ping, 126, &mut Vec::new());
    }

    #[test]
    fn encode_frame_and_close() {
        let mut out = Vec::new();
        encode_frame(Opcode::Text, b"hi", &mut out);
        assert_eq!(out, b"\x81\x02hi");

        let mut out = Vec::new();
        encode_close(CloseCode::NORMAL, "", &mut out);
        assert_eq!(out, [0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn encode_close_truncates_on_a_char_boundary() {
        for reason in ["a".repeat(200), "\u{e9}".repeat(100), "\u{1F600}".repeat(40)] {
            for prefix in 0..4 {
                let reason = format!("{}{reason}", "x".repeat(prefix));
                let mut out = Vec::new();
                encode_close(CloseCode::POLICY_VIOLATION, &reason, &mut out);
                let (header, len, header_len) = parse_with_tungstenite(&out);
                assert_eq!(header.opcode, OpCode::Control(Control::Close));
                assert_eq!(len as usize, out.len() - header_len);
                assert!(len <= CONTROL_PAYLOAD_BYTES_MAX as u64);
                let payload = &out[header_len..];
                assert_eq!(payload[..2], 1008u16.to_be_bytes());
                let sent = str::from_utf8(&payload[2..]).unwrap();
                assert!(reason.starts_with(sent));
                assert!(sent.len() > CLOSE_REASON_BYTES_MAX - 4, "{}", sent.len());
            }
        }
    }

    #[test]
    #[should_panic]
    fn encode_close_refuses_codes_that_may_not_be_sent() {
        encode_close(CloseCode(1005), "", &mut Vec::new());
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow, "{len}");
            unmask(&mut fast, mask);
            assert_eq!(fast, data, "{len}");
        }
    }

    /// xorshift64: deterministic, dependency-free randomness for the tests below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_payload(rng: &mut Rng, binary: bool) -> Vec<u8> {
        let len = match rng.below(10) {
            0 => 0,
            1..=6 => rng.below(130),
            7 | 8 => rng.below(2000),
            _ => 65_530 + rng.below(12),
        };
        if binary {
            return (0..len).map(|_| rng.next() as u8).collect();
        }
        let mut text = String::new();
        while text.len() < len {
            text.push(['a', ' ', '\u{e9}', '\u{2764}', '\u{1F600}'][rng.below(5)]);
        }
        text.into_bytes()
    }

    #[test]
    fn random_streams_decode_like_a_model() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..20 {
                let mask = (rng.next() as u32).to_ne_bytes();
                if rng.below(4) == 0 {
                    let payload = random_payload(&mut rng, true);
                    let payload = &payload[..payload.len().min(125)];
                    let opcode = [PING, PONG][rng.below(2)];
                    input.extend(frame_with_len(
                        FIN | opcode,
                        payload.len() as u64,
                        Some(mask),
                        payload,
                    ));
                    expected.push(if opcode == PING {
                        Seen::Ping(payload.to_vec())
                    } else {
                        Seen::Pong(payload.to_vec())
                    });
                    continue;
                }
                let is_binary = rng.below(2) == 0;
                let payload = random_payload(&mut rng, is_binary);
                let fragments = 1 + rng.below(4);
                let mut cuts: Vec<usize> =
                    (1..fragments).map(|_| rng.below(payload.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.insert(0, 0);
                cuts.push(payload.len());
                let mut controls = Vec::new();
                for (i, piece) in cuts.windows(2).enumerate() {
                    let opcode = match (i, is_binary) {
                        (0, true) => BINARY,
                        (0, false) => TEXT,
                        _ => CONT,
                    };
                    let fin = if i + 2 == cuts.len() { FIN } else { 0 };
                    let mask = (rng.next() as u32).to_ne_bytes();
                    let piece = &payload[piece[0]..piece[1]];
                    input.extend(frame_with_len(
                        fin | opcode,
                        piece.len() as u64,
                        Some(mask),
                        piece,
                    ));
                    if fin == 0 && rng.below(3) == 0 {
                        input.extend(frame(FIN | PING, &[i as u8]));
                        controls.push(Seen::Ping(vec![i as u8]));
                    }
                }
                expected.extend(controls);
                expected.push(Seen::Message(is_binary, payload));
            }
            let mut ends = Vec::new();
            let mut end = 0;
            while end < input.len() {
                let chunk_max = if rng.below(2) == 0 { 16 } else { 20_000 };
                end += 1 + rng.below(chunk_max);
                ends.push(end.min(input.len()));
            }
            let (seen, left) = feed(MAX, &input, ends);
            assert_eq!(left, 0, "seed {seed}");
            assert_eq!(seen, expected, "seed {seed}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0xDEAD_BEEF);
        for _ in 0..20_000 {
            let len = rng.below(64);
            let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias towards plausible headers so the deeper checks run too.
            if let Some(first) = input.first_mut() {
                if rng.below(2) == 0 {
                    *first &= 0x8F;
                }
            }
            if let Some(second) = input.get_mut(1) {
                if rng.below(2) == 0 {
                    *second = 0x80 | (*second & 0x3F);
                }
            }
            let (seen, left) = feed(100, &input, [rng.below(len + 1)]);
            assert!(left <= len);
            assert!(seen.iter().filter(|s| matches!(s, Seen::Error(_))).count() <= 1);
        }
    }
}
