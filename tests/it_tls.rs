//! TLS (`--tls-listen`) beside a plain listener: a client through Python's ssl stack logs in,
//! publishes and subscribes across the two transports, and sends messages of many records.
//!
//! The certificate is made for 127.0.0.1 by rcgen at test time; the broker is the real binary.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tls_and_plain_clients_share_topics() {
    let dir = std::env::temp_dir().join(format!("middleman-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a self-signed certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let tls_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_middleman"))
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--service-key", "tls-test-key"])
        .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
        .args(["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _broker = Killed(child);
    let mut lines = BufReader::new(stdout).lines();
    let plain = lines.next().unwrap().unwrap();
    let secure = lines.next().unwrap().unwrap();
    assert!(plain.starts_with("listening on ws://127.0.0.1:"), "{plain}");
    assert_eq!(secure, format!("listening on wss://127.0.0.1:{tls_port}"));
    let plain_url = format!("{}/", plain.trim_start_matches("listening on "));

    let has_websockets = Command::new("python3").args(["-c", "import websockets"]).status();
    assert!(has_websockets.is_ok_and(|s| s.success()), "python3 with `websockets` is needed");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tls_client.py");
    let out = Command::new("python3")
        .args([script, &format!("wss://127.0.0.1:{tls_port}/"), &plain_url])
        .args([cert_path.to_str().unwrap(), "tls-test-key"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("OK"), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_listen_without_a_certificate_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_middleman"))
        .args(["--tls-listen", "127.0.0.1:0", "--service-key", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--tls-listen needs --tls-cert and --tls-key"));
}
