//! middleman: a sharded, thread-per-core WebSocket broker.
pub mod protocol;
