//! cargo-fuzz target for the WebSocket frame decoder; the properties it checks are in `../checks/ws_decoder.rs`,
//! shared with `tests/fuzz_smoke.rs`.

#![no_main]

#[path = "../checks/ws_decoder.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
