//! The wire protocol, sans-IO: bytes in, events and bytes out.
//!
//! Nothing in this module does I/O or reads a clock. Every function takes a byte slice (or a
//! buffer to append to) and returns what it found; incomplete input is a state (`Ok(None)`),
//! not an error. That is what lets the codecs be fuzzed and tested one byte at a time.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade request and its `101`/`400`/`503` answers.
//! - [`ws`]: WebSocket frames (RFC 6455): decoding client frames with full validation and
//!   encoding unmasked server frames.
//! - [`message`]: the middleman message (`CMD target`, headers, dot-stuffed body): parsing and
//!   the head rewrite the broker applies when it relays a message.
//! - [`reply`]: the messages the broker writes itself (`PUB ERROR`, `MM OK`).

pub mod handshake;
pub mod message;
pub mod reply;
pub mod ws;
