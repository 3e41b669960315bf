//! Checks the fuzz targets' properties in the normal test run, on stable, without libFuzzer.
//! How: the targets' checks (`fuzz/checks/`, shared) over `fuzz/corpus/` and 21 000 xorshift
//! mutations of it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Mutated inputs per target: about 20 000 over the three.
const MUTATIONS: usize = 7_000;

/// Bytes that matter to some parser: frame opcodes and lengths, line ends, separators.
const INTERESTING: &[u8] = b"\x00\x01\x02\x08\x09\x0a\x7e\x7f\x80\x81\x82\x88\x89\xff\r\n:. \t";

#[test]
fn ws_decoder_properties_hold_on_the_corpus_and_mutations() {
    check_corpus_and_mutations("ws_decoder", ws_decoder::run);
}

#[test]
fn handshake_properties_hold_on_the_corpus_and_mutations() {
    check_corpus_and_mutations("handshake", handshake::run);
}

#[test]
fn message_properties_hold_on_the_corpus_and_mutations() {
    check_corpus_and_mutations("message", message::run);
}

/// Runs `run` on every seed of `target`, then on `MUTATIONS` mutations of them; a failure
/// names the input as a byte string that can be saved and replayed with `cargo fuzz run`.
fn check_corpus_and_mutations(target: &str, run: fn(&[u8])) {
    let seeds = corpus(target);
    for (name, input) in &seeds {
        check_one(target, name, input, run);
    }
    let mut rng =
        XorShift(target.bytes().fold(0x5EED_F00D, |h, b| h.rotate_left(5) ^ u64::from(b)));
    for i in 0..MUTATIONS {
        let input = mutate(&mut rng, &seeds);
        check_one(target, &format!("mutation {i}"), &input, run);
    }
}

fn check_one(target: &str, what: &str, input: &[u8], run: fn(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
        panic!(
            "fuzz target `{target}` fails on {what} (the panic above says why); input:\n\
             b\"{}\"",
            input.escape_ascii()
        );
    }
}

/// The checked-in seeds of `target`, sorted by file name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 12, "{}: only {} seeds", dir.display(), paths.len());
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().expect("file name").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, bytes)
        })
        .collect()
}

/// xorshift64: deterministic, dependency-free randomness.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A seed with one to four edits: bit flips, interesting bytes set or inserted, bytes
/// removed, a piece repeated, the end cut off, or a piece of another seed spliced in.
fn mutate(rng: &mut XorShift, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        let interesting = INTERESTING[rng.below(INTERESTING.len())];
        match rng.below(8) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 if at < input.len() => input[at] = interesting,
            2 => input.insert(at, interesting),
            3 if at < input.len() => {
                input.remove(at);
            }
            4 => {
                let len = rng.below(input.len() - at + 1).min(64);
                let piece = input[at..at + len].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, piece);
            }
            5 if at > 3 => input.truncate(at),
            6 => {
                let other = &seeds[rng.below(seeds.len())].1;
                let from = rng.below(other.len() + 1);
                let len = rng.below(other.len() - from + 1).min(256);
                input.splice(at..at, other[from..from + len].iter().copied());
            }
            _ if at < input.len() => input[at] = rng.next() as u8,
            _ => input.push(interesting),
        }
    }
    input
}

#[path = "../fuzz/checks/ws_decoder.rs"]
mod ws_decoder;

#[path = "../fuzz/checks/handshake.rs"]
mod handshake;

#[path = "../fuzz/checks/message.rs"]
mod message;
