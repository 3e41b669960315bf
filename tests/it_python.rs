//! Interoperability with an independent WebSocket client: Python's `websockets` library drives
//! a real two-shard broker through login, grants, pub/sub, binary, request/response, ping and
//! close (`tests/python/interop.py`).
//!
//! The harness installs `websockets` with pip when it is missing, as `.ci/run` does.

use std::process::Command;

mod common;

fn python_with_websockets() -> bool {
    let has = |_: ()| {
        Command::new("python3")
            .args(["-c", "import websockets"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(()) {
        return true;
    }
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "websockets"])
        .status();
    has(())
}

#[test]
fn python_websockets_client_speaks_the_protocol() {
    assert!(
        python_with_websockets(),
        "python3 with the `websockets` package is needed (pip install websockets)"
    );
    let server = common::Server::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/interop.py");
    let out = Command::new("python3")
        .args([
            script,
            &format!("ws://127.0.0.1:{}/", server.port),
            common::SERVICE_KEY,
            common::CLIENT_KEY,
        ])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("OK"), "stdout:\n{stdout}\nstderr:\n{stderr}");
}
