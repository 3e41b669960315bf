//! Helpers for the crate's own tests, benchmarks and fuzz targets (the `testing` feature):
//! a shard configuration, connections without sockets, masked client frames, and the
//! runtime's write path for a socket the test owns.
//!
//! What it is not: an API. Nothing here is built without the feature; a release build has
//! none of it.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;

use crate::auth::Role;
use crate::ids::{ConnectionId, ShardId};
use crate::limits::SlowConsumer;
use crate::protocol::message::Limits;
use crate::shard::connection::Connection;
use crate::shard::{Shard, ShardConfig};

/// The message limits the tests use.
pub const LIMITS: Limits = Limits { topic_bytes_max: 256, headers_max: 32 };

/// A configuration for shard `id` of `shards`: no request timeout, generous limits, the
/// given budget, `--slow-consumer disconnect`.
pub fn shard_config(id: u16, shards: usize, pending_bytes_max: usize) -> ShardConfig {
    ShardConfig {
        id: ShardId(id),
        shards,
        pending_bytes_max,
        slow_consumer: SlowConsumer::Disconnect,
        request_timeout: None,
        limits: LIMITS,
        subscriptions_max: 10_000,
        pending_requests_max: 1_000,
    }
}

/// A service connection with local id `local`, registered with `shard`.
/// A shard created now (the shard's own tests may not read the clock).
pub fn new_shard(config: ShardConfig) -> Shard {
    Shard::new(config, std::time::Instant::now())
}

pub fn connect(shard: &mut Shard, local: u64) -> Rc<Connection> {
    let conn = Connection::new(ConnectionId { epoch: 1, shard: shard.id(), local });
    conn.role.set(Some(Role::Service));
    shard.register(&conn);
    conn
}

/// A client frame: `first` is the first header byte (FIN, RSV and opcode), the length in its
/// shortest encoding, then `mask` (if any) and the payload masked with it.
pub fn client_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let len = payload.len() as u64;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Parks `conn`'s writer on `waker`, as the writer task does when its queue is empty.
pub fn park_writer(conn: &Connection, waker: &Waker) {
    conn.park_writer(waker);
}

/// Writes what `fd` takes of `conn`'s queue now, through the runtime's own write path (the
/// one it uses after a batch, and the writer task's `sendmsg`).
pub fn write_now(conn: &Connection, fd: RawFd) {
    crate::runtime::writer::write_now(conn, fd);
}
