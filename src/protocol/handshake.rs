//! The HTTP/1.1 WebSocket upgrade, sans-IO. STUB: being written.

/// The outcome of looking at the bytes a new connection sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The request is not complete yet; read more (unless `request_bytes_max` was reached,
    /// which [`parse`] reports as `Reject`).
    Incomplete,
    /// A valid upgrade: write `response`, then treat `buf[consumed..]` as WebSocket bytes.
    Accept { consumed: usize, response: Vec<u8> },
    /// Not a valid upgrade: write `response` and close.
    Reject { response: &'static [u8] },
}

/// `400 Bad Request`, for anything that is not a WebSocket upgrade.
pub const BAD_REQUEST: &[u8] = b"";
/// `503 Service Unavailable`, sent at the connection limit.
pub const SERVICE_UNAVAILABLE: &[u8] = b"";

/// Parses the upgrade request at the front of `buf`.
pub fn parse(buf: &[u8], request_bytes_max: usize) -> Upgrade {
    let _ = (buf, request_bytes_max);
    todo!()
}
