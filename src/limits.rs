//! The broker's limits: every bound on what a peer can make it hold, in one place.
//!
//! The configurable limits are one [`Limits`] value, read from the command line (or the
//! `MIDDLEMAN_*` environment) as a flattened group of `Config`, together with the policy for
//! the one limit a peer can pass without being refused at once ([`SlowConsumer`]). Fixed limits,
//! numbers no operator should need to change, follow under their own heading, each with the
//! reason for its value.
//!
//! This module is a leaf: it depends on nothing in the crate, so every layer (protocol,
//! shard, connection, server, config) may import it without a dependency running back up.
//! Limits are named with the qualifier last (`message_bytes_max`), so they sort together; each
//! field's doc comment also names its flag (`--max-message-bytes`), spelled as the original's
//! issue fixed it. The checks that a combination of values can work live in
//! `Config::validate`, not here.

use clap::Args;

/// The limits an operator sets (the "Limits" section of `--help`).
#[derive(Args, Clone, Copy, Debug, PartialEq, Eq)]
#[command(next_help_heading = "Limits")]
pub struct Limits {
    /// Largest WebSocket message accepted (message_bytes_max); larger closes with 1009.
    #[arg(
        long = "max-message-bytes",
        env = "MIDDLEMAN_MAX_MESSAGE_BYTES",
        value_name = "BYTES",
        default_value = "1MiB",
        value_parser = parse_bytes
    )]
    pub message_bytes_max: usize,

    /// Unsent bytes a connection may have queued before the slow-consumer policy applies
    /// (pending_bytes_max).
    #[arg(
        long = "max-pending-bytes",
        env = "MIDDLEMAN_MAX_PENDING_BYTES",
        value_name = "BYTES",
        default_value = "8MiB",
        value_parser = parse_bytes
    )]
    pub pending_bytes_max: usize,

    /// What to do with a subscriber over --max-pending-bytes.
    #[arg(
        long = "slow-consumer",
        env = "MIDDLEMAN_SLOW_CONSUMER",
        value_enum,
        default_value = "disconnect"
    )]
    pub slow_consumer: SlowConsumer,

    /// Longest topic (target) in bytes (topic_bytes_max).
    #[arg(
        long = "max-topic-bytes",
        env = "MIDDLEMAN_MAX_TOPIC_BYTES",
        value_name = "BYTES",
        default_value = "1024",
        value_parser = parse_bytes
    )]
    pub topic_bytes_max: usize,

    /// Most headers in one message (headers_max).
    #[arg(
        long = "max-headers",
        env = "MIDDLEMAN_MAX_HEADERS",
        value_name = "N",
        default_value_t = 64
    )]
    pub headers_max: usize,

    /// Most connections over all shards (connections_max); past it the upgrade gets 503.
    #[arg(
        long = "max-connections",
        env = "MIDDLEMAN_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 100_000
    )]
    pub connections_max: usize,

    /// Most topics one connection may subscribe to (subscriptions_max).
    #[arg(
        long = "max-subscriptions-per-connection",
        env = "MIDDLEMAN_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub subscriptions_max: usize,

    /// Most unanswered REQs one connection may have (pending_requests_max).
    #[arg(
        long = "max-pending-requests",
        env = "MIDDLEMAN_MAX_PENDING_REQUESTS",
        value_name = "N",
        default_value_t = 1_000
    )]
    pub pending_requests_max: u32,
}

/// What happens to a subscriber whose unsent bytes would pass `--max-pending-bytes`.
///
/// The publisher is never slowed down for it: one slow subscriber must not stall a topic's
/// other subscribers, so the policy only chooses between losing the subscriber and losing
/// messages for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowConsumer {
    /// Close it with 1008 `slow consumer` (the default: at-most-once, like NATS).
    Disconnect,
    /// Skip the frame for it and count the drop.
    Drop,
}

/// Parses `1024`, `64KiB`, `1MiB`, `1GiB` (also `KB`/`MB`/`k`/`m` as binary multiples).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize =
        digits.parse().map_err(|_| format!("`{text}` is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{text}`: unknown size unit `{unit}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

// Fixed limits

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("2mb"), Ok(2 << 20));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }
}
