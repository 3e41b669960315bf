//! cargo-fuzz target for the message parser and the head rewrite; the properties it checks are in `../checks/message.rs`,
//! shared with `tests/fuzz_smoke.rs`.

#![no_main]

#[path = "../checks/message.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
