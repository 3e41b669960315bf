//! The body of every data message the generator sends: who sent it, its sequence number on its
//! stream, and its intended send time, in 16 fixed-width characters, padded to the payload size.
//!
//! Layout: 2 characters publisher id (12 bits), 6 characters sequence number (36 bits), 8
//! characters timestamp in nanoseconds since the run's clock epoch (48 bits, 78 hours), each
//! big-endian in a 64-letter alphabet of digits, letters, `-` and `_`. The alphabet has no `.`,
//! space or line break, so bodies need no dot-stuffing, are valid UTF-8 and survive a text
//! frame; 16 bytes is the smallest payload any scenario uses. A probe (used to check that a
//! subscription is in place before measuring) starts with `~`, which the alphabet lacks.

pub const HEADER_BYTES: usize = 16;
pub const PUBLISHER_MAX: u64 = (1 << 12) - 1;
pub const SEQUENCE_MAX: u64 = (1 << 36) - 1;
pub const STAMP_MAX: u64 = (1 << 48) - 1;
const PROBE_MARK: u8 = b'~';
const PAD: u8 = b'x';

const ALPHABET: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

const fn decode_table() -> [u8; 256] {
    let mut table = [0xFFu8; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
}
const DECODE: [u8; 256] = decode_table();

/// What a data body says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub sequence: u64,
    pub sent_ns: u64,
}

/// What a received body turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Data(Stamp),
    Probe {
        publisher: u32,
    },
    /// Not ours, or damaged in transit: counted as corrupt.
    Invalid,
}

fn put(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 63) as usize];
        value >>= 6;
    }
}

fn get(input: &[u8]) -> Option<u64> {
    input.iter().try_fold(0u64, |acc, &c| {
        let digit = DECODE[usize::from(c)];
        (digit != 0xFF).then_some((acc << 6) | u64::from(digit))
    })
}

/// A reusable body buffer: the padding is written once, each message rewrites the 16-byte
/// header in place.
#[derive(Clone, Debug)]
pub struct BodyWriter {
    bytes: Vec<u8>,
}

impl BodyWriter {
    pub fn new(payload_bytes: usize) -> BodyWriter {
        assert!(payload_bytes >= HEADER_BYTES, "payload below the 16-byte header");
        BodyWriter { bytes: vec![PAD; payload_bytes] }
    }

    pub fn data(&mut self, stamp: Stamp) -> &[u8] {
        assert!(u64::from(stamp.publisher) <= PUBLISHER_MAX);
        assert!(stamp.sequence <= SEQUENCE_MAX, "sequence number space exhausted");
        assert!(stamp.sent_ns <= STAMP_MAX, "run longer than the stamp allows");
        put(&mut self.bytes[0..2], u64::from(stamp.publisher));
        put(&mut self.bytes[2..8], stamp.sequence);
        put(&mut self.bytes[8..16], stamp.sent_ns);
        &self.bytes
    }

    pub fn probe(&mut self, publisher: u32) -> &[u8] {
        self.bytes[0] = PROBE_MARK;
        put(&mut self.bytes[1..3], u64::from(publisher));
        put(&mut self.bytes[3..16], 0);
        &self.bytes
    }
}

pub fn decode(body: &[u8]) -> Body {
    if body.len() < HEADER_BYTES {
        return Body::Invalid;
    }
    if body[0] == PROBE_MARK {
        return match get(&body[1..3]) {
            Some(publisher) => Body::Probe { publisher: publisher as u32 },
            None => Body::Invalid,
        };
    }
    match (get(&body[0..2]), get(&body[2..8]), get(&body[8..16])) {
        (Some(publisher), Some(sequence), Some(sent_ns)) => {
            Body::Data(Stamp { publisher: publisher as u32, sequence, sent_ns })
        }
        _ => Body::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_at_the_limits() {
        let mut writer = BodyWriter::new(128);
        for stamp in [
            Stamp { publisher: 0, sequence: 0, sent_ns: 0 },
            Stamp { publisher: PUBLISHER_MAX as u32, sequence: SEQUENCE_MAX, sent_ns: STAMP_MAX },
            Stamp { publisher: 17, sequence: 123_456_789, sent_ns: 9_876_543_210_123 },
        ] {
            let body = writer.data(stamp).to_vec();
            assert_eq!(body.len(), 128);
            assert!(!body.contains(&b'.') && !body.contains(&b'\n') && !body.contains(&b' '));
            assert_eq!(decode(&body), Body::Data(stamp));
        }
    }

    #[test]
    fn probes_are_told_apart() {
        let mut writer = BodyWriter::new(16);
        let probe = writer.probe(4095).to_vec();
        assert_eq!(decode(&probe), Body::Probe { publisher: 4095 });
        let data = writer.data(Stamp { publisher: 3, sequence: 1, sent_ns: 2 }).to_vec();
        assert_eq!(&data[..], b"0300000100000002");
    }

    #[test]
    fn foreign_bodies_are_invalid() {
        assert_eq!(decode(b"short"), Body::Invalid);
        assert_eq!(decode(b"................"), Body::Invalid);
    }
}
