//! middleman: a sharded, thread-per-core WebSocket pub/sub and request/response broker.
//!
//! # Layout
//!
//! - [`protocol`]: the wire formats, sans-IO (WebSocket frames, the upgrade, middleman
//!   messages, the broker's own replies).
//! - [`shard`]: one core's routing state and logic, sans-IO: subscriptions, topic ownership,
//!   grants, requests, and the cross-shard mail that ties shards together.
//! - [`connection`]: a connection's state, its bounded outbound queue, and its socket I/O.
//! - [`server`]: the glommio runtime: executors, listeners, the shard loops, shutdown.
//! - [`admin`]: the metrics, health and stats endpoint.
//! - [`auth`], [`grants`], [`ids`], [`config`]: keys and roles, client grants, identifiers,
//!   the command line.
//!
//! `docs/ARCHITECTURE.md` is the map; `docs/PROTOCOL.md` the contract as built.

pub mod admin;
pub mod auth;
pub(crate) mod cluster;
pub mod config;
pub mod connection;
pub mod grants;
pub mod ids;
pub mod logging;
pub mod protocol;
pub mod server;
pub mod shard;
