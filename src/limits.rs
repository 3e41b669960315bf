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

use std::time::Duration;

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

/// The largest supported `--shards`: a topic's interested shards are a 64-bit mask.
pub const SHARDS_MAX: usize = 64;

/// Mails per shard inbox. At ~64 bytes a mail this is ~1 MiB per shard; a full inbox pauses
/// the readers that feed it (the mail waits in the sender's backlog), it never grows.
pub const INBOX_CAPACITY: usize = 16 * 1024;

/// Events per shard's cluster inbox (from the bridge). When one is full the bridge keeps a
/// bounded backlog for that shard, in order, and past it drops and counts
/// (`middleman_cluster_dropped_total{reason="inbound"}`); it never waits on a shard.
pub const CLUSTER_INBOX_CAPACITY: usize = 16 * 1024;

/// Mails handled per turn of the mail loop before connections get to run: large enough to
/// amortise the loop, small enough that readers and writers are not starved behind it.
pub const MAIL_BATCH: usize = 512;

/// The shard's read buffer: one large read takes many messages, which the shard then
/// delivers before any subscriber is flushed (the batching that makes fan-out cheap). Also
/// the size a carried-over frame's buffer starts at.
pub const SCRATCH_BYTES: usize = 64 << 10;

/// How long a WebSocket upgrade request may be; longer gets 431. Browsers send well under
/// 2 KiB; 8 KiB is what common proxies allow.
pub const UPGRADE_REQUEST_BYTES_MAX: usize = 8 << 10;

/// How long an admin-endpoint HTTP request may be; the endpoint only has GETs without bodies.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 8 << 10;

/// How long the admin endpoint waits for a request, and for the shards to answer a scrape: a
/// scraper polls again anyway, and a stuck shard must not hang the admin thread.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames per `sendmsg`. IOV_MAX is 1024; 64 frames of a typical fan-out message are ~14 KB,
/// enough to amortise the syscall (loopback measurements in `../shared/notes`).
pub const IOVECS_MAX: usize = 64;

/// Frames up to this size are copied into the gather buffer; larger ones are sent in place
/// (past it the copy costs more than one more iovec).
pub const GATHER_FRAME_BYTES_MAX: usize = 2 << 10;

/// The per-shard gather buffer: one `sendmsg` sends at most this much gathered data, the
/// size of a loopback socket's usual send-buffer headroom.
pub const GATHER_BYTES: usize = 64 << 10;

/// An outbound queue whose ring buffer grew past this many slots gives it back once empty,
/// so an idle connection that once had a burst stays small (256 slots are 4 KiB).
pub const QUEUE_RING_RETAINED_MAX: usize = 256;

/// Room for an error reply's fixed part beyond its text and ReqID: `ERR <code>`, the
/// `ReqID: ` header and the line ends (the longest code plus framing is under 48 bytes).
pub const ERROR_ENVELOPE_BYTES: usize = 48;

/// One TLS record's worth of ciphertext per socket read (16 KiB record plus overhead).
pub const CIPHER_READ_BYTES: usize = 17 << 10;

/// Plaintext encrypted per TLS write batch, and rustls's limit on buffered plaintext.
pub const CIPHER_BATCH_BYTES: usize = 64 << 10;

/// The longest a closing connection waits for the peer's close frame before the socket is
/// shut (capped by `--drain-timeout`): a peer that is still there answers within a round trip.
pub const CLOSE_GRACE_MAX: Duration = Duration::from_secs(2);

/// How long start-up waits for each shard to bind its listeners before giving up.
pub const SHARD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// io_uring memory per executor. It only backs file I/O, which a broker does not do; the
/// default (10 MiB, three rings) fails under an 8 MiB memlock limit.
pub const IO_MEMORY: usize = 256 << 10;

/// Pending connections per listener (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// How long the accept loop backs off after a failed accept (out of descriptors, most
/// likely) instead of spinning on the error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often a shard retries backlogged mail when no inbox wakes it, and the finest grain of
/// request deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// How long an idle shard sleeps between ticks (a new deadline is at least a request timeout
/// away, so this only bounds how late the first look at it can be). Idle wake-ups are not
/// free on a VM: each park issues a membarrier.
pub const IDLE_TICK: Duration = Duration::from_millis(100);

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
