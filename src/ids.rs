//! Identifiers: shards, connections, requests.
//!
//! A connection id (`cid`) is what the protocol shows: 20 characters of `0-9a-v`
//! (base32hex, as the original's `xid`). Ours carries where the connection lives, so any shard
//! can route `MSG:<cid>` and `INT UID` to the right place without a lookup table:
//!
//! ```text
//! 100 bits = [32: process start, unix seconds][16: shard][52: per-shard sequence]
//! ```
//!
//! The sequence never repeats within a process (2^52 connections per shard), so a cid is unique
//! for the life of the process; the start time makes reuse across restarts unlikely.
//! Request ids (`Rid`) carry the requester's shard the same way: `sequence * shards + shard`.

use std::fmt;

/// The index of a shard, `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A connection, unique for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    pub epoch: u32,
    pub shard: ShardId,
    /// Per-shard sequence number, below 2^52.
    pub local: u64,
}

/// The length of a cid in characters.
pub const CID_LEN: usize = 20;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
const LOCAL_BITS: u32 = 52;

impl ConnectionId {
    fn bits(self) -> u128 {
        debug_assert!(self.local < 1 << LOCAL_BITS);
        (u128::from(self.epoch) << 68) | (u128::from(self.shard.0) << 52) | u128::from(self.local)
    }

    /// The 20-character wire form.
    pub fn encode(self) -> [u8; CID_LEN] {
        let bits = self.bits();
        let mut out = [0u8; CID_LEN];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 5 * (CID_LEN - 1 - i);
            *c = ALPHABET[((bits >> shift) & 31) as usize];
        }
        out
    }

    /// Parses the wire form; `None` if it is not 20 characters of `0-9a-v`.
    pub fn parse(text: &[u8]) -> Option<Self> {
        if text.len() != CID_LEN {
            return None;
        }
        let mut bits: u128 = 0;
        for &c in text {
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'v' => c - b'a' + 10,
                _ => return None,
            };
            bits = (bits << 5) | u128::from(v);
        }
        Some(Self {
            epoch: (bits >> 68) as u32,
            shard: ShardId((bits >> 52) as u16),
            local: (bits & ((1 << LOCAL_BITS) - 1)) as u64,
        })
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The alphabet is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&self.encode()).unwrap_or("?"))
    }
}

/// A request id as the `Rid` header shows it (decimal). Globally unique: it encodes the shard
/// of the requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl RequestId {
    pub fn new(sequence: u64, shard: ShardId, shards: usize) -> Self {
        Self(sequence * shards as u64 + u64::from(shard.0))
    }

    /// Parses the decimal `Rid` header value.
    pub fn parse(text: &[u8]) -> Option<Self> {
        if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut v: u64 = 0;
        for &d in text {
            v = v * 10 + u64::from(d - b'0');
        }
        Some(Self(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_round_trips_and_uses_the_alphabet() {
        for (epoch, shard, local) in
            [(0, 0, 0), (u32::MAX, u16::MAX, (1 << 52) - 1), (1_790_000_000, 3, 77)]
        {
            let id = ConnectionId { epoch, shard: ShardId(shard), local };
            let text = id.encode();
            assert!(text.iter().all(|c| ALPHABET.contains(c)));
            assert_eq!(ConnectionId::parse(&text), Some(id));
        }
    }

    #[test]
    fn cid_parse_rejects_bad_input() {
        assert_eq!(ConnectionId::parse(b"short"), None);
        assert_eq!(ConnectionId::parse(b"wwwwwwwwwwwwwwwwwwww"), None);
        assert_eq!(ConnectionId::parse(b"ABCDEFGHIJ0123456789"), None);
    }

    #[test]
    fn request_id_carries_the_shard() {
        let rid = RequestId::new(41, ShardId(2), 3);
        assert_eq!(rid.0, 125);
        assert_eq!(rid.0 % 3, 2, "the low digits in base `shards` are the requester's shard");
        assert_eq!(RequestId::parse(b"125"), Some(rid));
        assert_eq!(RequestId::parse(b"12a"), None);
        assert_eq!(RequestId::parse(b""), None);
        assert_eq!(RequestId::parse(b"99999999999999999999"), None);
    }
}
