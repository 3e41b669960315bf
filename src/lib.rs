//! middleman: a sharded, thread-per-core WebSocket pub/sub and request/response broker.
//!
//! # Layout
//!
//! - [`protocol`]: the wire formats, sans-IO (WebSocket frames, the upgrade, middleman
//!   messages, the broker's own replies).
//! - [`shard`]: one core's routing state and logic, sans-IO: subscriptions, topic ownership,
//!   grants, requests, and the cross-shard mail that ties shards together.
//! - `runtime`: one shard's I/O around its `Shard`: the connection reader and writer tasks,
//!   TLS, the handling of a batch of mail, closing connections, judging slow consumers.
//! - [`server`]: start-up and shutdown: executors, listeners, the shard loops.
//! - [`close`]: why a connection ends, and its close frame, counter and log line.
//! - [`admin`]: the metrics, health and stats endpoint.
//! - [`auth`], [`grants`], [`ids`], [`config`]: keys and roles, client grants, identifiers,
//!   the command line and its `MIDDLEMAN_*` variables.
//! - [`limits`]: every limit, the configurable ones and the fixed ones, with their reasons.
//!
//! `docs/ARCHITECTURE.md` is the map; `docs/PROTOCOL.md` the contract as built.

#![warn(unreachable_pub)]

pub mod admin;
pub mod auth;
pub mod close;
pub mod cluster;
pub mod config;
pub mod grants;
pub mod ids;
pub mod limits;
pub mod logging;
pub mod protocol;
pub(crate) mod runtime;
pub mod server;
pub mod shard;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
