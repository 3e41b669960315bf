//! The broker's limits: every fixed number the code relies on, each with the reason for its
//! value, and the policy for what happens when a configurable one is reached.
//!
//! What it is not: the command line. The configurable limits (`--max-*`) are flags in
//! `config.rs`; the constants here are not meant to be tuned per deployment. Protocol-level
//! constants that RFC 6455 fixes (control payload 125 bytes, header 10 bytes) stay in
//! `protocol::ws`, next to the code that enforces them.

use std::time::Duration;

// Configurable-limit policies.

/// What happens to a subscriber whose unsent bytes would pass `--max-pending-bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowConsumer {
    /// Close it with 1008 `slow consumer` (the default: at-most-once, like NATS).
    Disconnect,
    /// Skip the frame for it and count the drop.
    Drop,
}

// Fixed limits

/// The largest supported `--shards`: a topic's interested shards are a 64-bit mask.
pub const SHARDS_MAX: usize = 64;

/// Mails per shard inbox. At ~64 bytes a mail this is ~1 MiB per shard; a full inbox pauses
/// the readers that feed it (the mail waits in the sender's backlog), it never grows.
pub const INBOX_CAPACITY: usize = 16 * 1024;

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
