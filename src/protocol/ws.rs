//! WebSocket frames (RFC 6455), sans-IO. STUB: being written.

/// The close codes the broker sends.
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
    /// A text message (or a close reason) that is not UTF-8.
    InvalidUtf8,
    /// A close frame with a one-byte payload or a code that may not be sent.
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
    pub fn reason(self) -> &'static str {
        todo!()
    }
}

/// One decoded item.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent<'a> {
    /// A complete data message (fragments already joined, unmasked, UTF-8 checked if text).
    Message { binary: bool, payload: &'a [u8] },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `code` is `None` for an empty close payload.
    Close { code: Option<u16>, reason: &'a [u8] },
}

/// Decodes client frames.
#[derive(Debug)]
pub struct Decoder {
    _todo: (),
}

impl Decoder {
    pub fn new(message_bytes_max: usize) -> Self {
        let _ = message_bytes_max;
        todo!()
    }

    /// Decodes at most one event from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete frame yet (nothing consumed), or
    /// `Ok(Some((consumed, event)))`. `consumed` may be positive with `event == None` when a
    /// non-final fragment was absorbed. Unmasks in place, so `buf` is `&mut`.
    #[allow(clippy::type_complexity)]
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, Option<WsEvent<'a>>)>, WsError> {
        let _ = buf;
        todo!()
    }

    /// True while a fragmented message is being assembled.
    pub fn in_message(&self) -> bool {
        todo!()
    }
}

/// The largest server frame header: 2 bytes + 8 bytes of extended length.
pub const HEADER_BYTES_MAX: usize = 10;

/// Appends a final, unmasked server frame header for a payload of `len` bytes.
pub fn encode_header(opcode: Opcode, len: usize, out: &mut Vec<u8>) {
    let _ = (opcode, len, out);
    todo!()
}

/// Appends a whole server frame.
pub fn encode_frame(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    encode_header(opcode, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (at most 123 bytes of reason).
pub fn encode_close(code: CloseCode, reason: &str, out: &mut Vec<u8>) {
    let _ = (code, reason, out);
    todo!()
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
