//! Shared by the integration tests: start a broker on a loopback port, run the built
//! `middleman-loadtest` with `--json`, and read its one JSON object.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// A broker process, killed when dropped.
pub struct Broker {
    child: Child,
    pub url: String,
    _dir: Option<TempDir>,
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A directory of its own: the tests of one binary run in parallel, so the process id
    /// alone would let one test's drop remove another's files.
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory cargo builds into (honours CARGO_TARGET_DIR): the test binary's
/// `<target>/<profile>/middleman-loadtest` tells.
fn target_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_middleman-loadtest"));
    exe.parent().and_then(Path::parent).expect("binary lives in <target>/<profile>/").to_path_buf()
}

/// `MIDDLEMAN_BIN`, or a fresh release build of the workspace's broker.
pub fn middleman_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("MIDDLEMAN_BIN") {
        return PathBuf::from(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let target = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--release", "-p", "middleman", "--bin", "middleman", "--target-dir"])
        .arg(&target)
        .status()
        .expect("run cargo build for the broker");
    assert!(status.success(), "building the broker failed");
    target.join("release").join("middleman")
}

/// Reads `stream` line by line until one contains `marker`; returns that line.
fn wait_for_line(stream: impl Read + Send + 'static, marker: &'static str) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(marker) {
                let _ = tx.send(line);
                sent = true;
            }
            // Keep draining so the broker never blocks on a full pipe.
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no `{marker}` line"))
}

pub fn start_middleman() -> Broker {
    let mut child = Command::new(middleman_binary())
        .args(["--listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--service-key", "xyzzy", "--client-key", "plugh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start middleman");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = wait_for_line(stdout, "listening on ");
    let url = line.split("listening on ").nth(1).expect("url after marker").trim().to_string();
    Broker { child, url: format!("{url}/"), _dir: None }
}

/// A middleman serving both ws:// and wss:// (a fresh self-signed certificate for 127.0.0.1 on
/// a free port). `url` is the wss:// one; the returned path is the certificate to trust.
pub fn start_middleman_tls() -> (Broker, String, PathBuf) {
    let dir = TempDir::new("lt-tls");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("generate a self-signed certificate");
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port();
    let mut child = Command::new(middleman_binary())
        .args(["--listen", "127.0.0.1:0", "--shards", "2"])
        .arg("--tls-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--service-key", "xyzzy", "--client-key", "plugh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start middleman");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let mut plain = None;
    let mut secure = None;
    while plain.is_none() || secure.is_none() {
        let url = rx.recv_timeout(Duration::from_secs(60)).expect("no `listening on` lines");
        if url.starts_with("wss://") {
            secure = Some(format!("{url}/"));
        } else {
            plain = Some(format!("{url}/"));
        }
    }
    let secure = secure.unwrap_or_default();
    assert_eq!(secure, format!("wss://127.0.0.1:{port}/"));
    let broker = Broker { child, url: secure, _dir: Some(dir) };
    (broker, plain.unwrap_or_default(), cert)
}

/// Runs the load generator with `args` plus `--json`, expecting it to fail; returns stderr.
pub fn loadtest_fails(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_middleman-loadtest"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run middleman-loadtest");
    assert!(!output.status.success(), "middleman-loadtest {args:?} should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn nats_server_available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn start_nats() -> Broker {
    let dir = TempDir::new("lt-nats");
    let config = dir.0.join("nats.conf");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:-1\nwebsocket {\n  listen: \"127.0.0.1:-1\"\n  no_tls: true\n}\n",
    )
    .expect("write nats config");
    let mut child = Command::new("nats-server")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nats-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let line = wait_for_line(stderr, "Listening for websocket clients on ");
    let url = line
        .split("Listening for websocket clients on ")
        .nth(1)
        .expect("url after marker")
        .trim()
        .to_string();
    Broker { child, url: format!("{url}/"), _dir: Some(dir) }
}

/// Runs the load generator with `args` plus `--json` and returns its report.
pub fn loadtest(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_middleman-loadtest"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run middleman-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "middleman-loadtest {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints exactly one line: {stdout}");
    serde_json::from_str(lines[0]).expect("the line is one JSON object")
}

pub fn u(report: &serde_json::Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or_else(|| panic!("`{key}` missing in {report}"))
}

/// The checks every fan-out run must pass, whatever the broker.
pub fn assert_clean_fanout(report: &serde_json::Value) {
    assert_eq!(u(report, "lost"), 0, "{report}");
    assert_eq!(u(report, "order_violations"), 0, "{report}");
    assert_eq!(u(report, "corrupt"), 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["closed"], serde_json::json!({}), "{report}");
    assert!(u(report, "delivered") > 0, "{report}");
    assert_eq!(u(report, "delivered_total"), u(report, "expected_total"), "{report}");
    assert!(report["latency"]["count"].as_u64().unwrap_or(0) > 0, "{report}");
}

pub fn assert_clean_reqres(report: &serde_json::Value) {
    assert!(u(report, "completed") > 0, "{report}");
    for key in ["unanswered", "unmatched", "corrupt", "warmup_errors"] {
        assert_eq!(u(report, key), 0, "{key}: {report}");
    }
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["rtt"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{report}");
}
