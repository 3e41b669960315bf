//! cargo-fuzz target for the HTTP upgrade parser; the properties it checks are in `../checks/handshake.rs`,
//! shared with `tests/fuzz_smoke.rs`.

#![no_main]

#[path = "../checks/handshake.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
