//! The runtime of one shard: everything that does I/O or reads the clock on the shard's
//! thread, around the sans-IO [`crate::shard::Shard`].
//!
//! - [`context`]: what a shard's tasks share (the `Shard`, its inbox, the live connections,
//!   the I/O counters), the handling of a batch of mail, and the one place connections are
//!   closed ([`context::ShardContext::close`]) and slow consumers judged after a batch.
//! - [`reader`]: a connection's reader task (upgrade, key, WebSocket frames, backpressure).
//! - [`writer`]: a connection's writer task and the gathered `sendmsg`.
//! - [`tls`]: the TLS variants of reading and writing.
//! - [`event`]: the shard-local events tasks wait on.
//!
//! The start-up, the accept loop, the tickers and shutdown are in `server.rs`. This module and
//! `server.rs` are the only ones that know about glommio and sockets.

pub(crate) mod context;
pub(crate) mod event;
pub(crate) mod reader;
pub(crate) mod tls;
pub(crate) mod writer;
