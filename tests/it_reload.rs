//! Keys from `--keys-file`, re-read on SIGHUP without dropping connections, and
//! `--allowed-origin`.
//!
//! Real broker; keys swapped in a temporary file; upgrade requests written by hand.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("middleman-{}-{}-{name}", std::process::id(), unique()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sighup_reloads_the_keys_file_and_keeps_connections() {
    let file = temp_file("keys", "# test keys\nservice first-service\n\nclient first-client\n");
    let server = Server::start_with_keys(&[], &[], &["--keys-file", file.to_str().unwrap()]);
    let mut old = server.connect("first-service");
    server.connect("first-client");

    std::fs::write(&file, "service second-service\n").unwrap();
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.try_connect("second-service").is_err() {
        assert!(Instant::now() < deadline, "the new key was not accepted after SIGHUP");
        // Pacing between tries: the loop waits for the login itself to succeed.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.try_connect("first-service").is_err(), "a removed key still works");
    assert!(server.try_connect("first-client").is_err(), "a removed key still works");
    old.sync(); // logged in with a removed key, still connected and served

    // A file that cannot be read keeps the keys in use.
    std::fs::remove_file(&file).unwrap();
    server.signal(libc::SIGHUP);
    let log = server.log_when(|log| log.contains("keys not reloaded"));
    assert!(log.contains("keys not reloaded"), "{log}");
    server.connect("second-service");
    assert!(!server.log().contains("second-service"), "a key was logged");
}

#[test]
fn a_bad_keys_file_is_refused_at_start_without_showing_keys() {
    let file = temp_file("badkeys", "service ok-key\nadmin secret-value\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_middleman"))
        .args(["--listen", "127.0.0.1:0", "--keys-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 2: expected `service KEY` or `client KEY`"), "{err}");
    assert!(!err.contains("secret-value") && !err.contains("ok-key"), "{err}");
}

fn upgrade(port: u16, origin: Option<&str>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
}

#[test]
fn only_allowed_origins_may_upgrade() {
    let server = Server::start(&[
        "--allowed-origin",
        "https://good.example",
        "--allowed-origin",
        "http://127.0.0.1:8000",
    ]);
    assert_eq!(
        upgrade(server.port, Some("https://good.example")),
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(
        upgrade(server.port, Some("http://127.0.0.1:8000")),
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(upgrade(server.port, Some("https://evil.example")), "HTTP/1.1 403 Forbidden");
    assert_eq!(upgrade(server.port, None), "HTTP/1.1 101 Switching Protocols");
    let open = Server::start(&[]);
    assert_eq!(upgrade(open.port, Some("https://any.example")), "HTTP/1.1 101 Switching Protocols");
}
