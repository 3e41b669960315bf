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
    /// The monitoring endpoint (`http://…`): middleman's `--admin-listen`, nats-server's `http`.
    pub admin: Option<String>,
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

/// Reads `stream` line by line until each of `markers` has been seen; returns, per marker,
/// what follows it on its first line.
fn wait_for_lines(
    stream: impl Read + Send + 'static,
    markers: &'static [&'static str],
) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the last marker so the broker never blocks on a full pipe.
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            for (i, marker) in markers.iter().enumerate() {
                if let Some(rest) = line.split(marker).nth(1) {
                    let _ = tx.send((i, rest.trim().to_string()));
                }
            }
        }
    });
    let mut found: Vec<Option<String>> = vec![None; markers.len()];
    while found.iter().any(Option::is_none) {
        let (i, rest) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("not all of {markers:?} in the broker's output"));
        found[i].get_or_insert(rest);
    }
    found.into_iter().flatten().collect()
}

pub fn start_middleman() -> Broker {
    start_middleman_with(&[]).0
}

/// A middleman on free loopback ports with 2 shards and `extra` arguments. Returns the broker
/// (`url` the first `listening on` URL; `admin` set with `--admin-listen`) and every URL it
/// printed.
pub fn start_middleman_with(extra: &[&str]) -> (Broker, Vec<String>) {
    let admin = extra.contains(&"--admin-listen");
    let listeners = 1 + extra.iter().filter(|&&a| a == "--tls-listen").count();
    let mut child = Command::new(middleman_binary())
        .args(["--listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--service-key", "xyzzy", "--client-key", "plugh"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start middleman");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the last marker so the broker never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            for marker in ["listening on ", "admin on "] {
                if let Some(url) = line.split(marker).nth(1) {
                    let _ = tx.send((marker, url.trim().to_string()));
                }
            }
        }
    });
    let (mut urls, mut admin_url) = (Vec::new(), None);
    while urls.len() < listeners || (admin && admin_url.is_none()) {
        let (marker, url) = rx.recv_timeout(Duration::from_secs(60)).expect("broker output");
        match marker {
            "admin on " => admin_url = Some(url),
            _ => urls.push(format!("{url}/")),
        }
    }
    let broker = Broker { child, url: urls[0].clone(), admin: admin_url, _dir: None };
    (broker, urls)
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
    let listen = format!("127.0.0.1:{port}");
    let (cert_s, key_s) = (cert.to_str().expect("utf-8 path"), key.to_str().expect("utf-8 path"));
    let args = ["--tls-listen", &listen, "--tls-cert", cert_s, "--tls-key", key_s];
    let (mut broker, urls) = start_middleman_with(&args);
    let secure = urls.iter().find(|u| u.starts_with("wss://")).cloned().unwrap_or_default();
    let plain = urls.iter().find(|u| u.starts_with("ws://")).cloned().unwrap_or_default();
    assert_eq!(secure, format!("wss://127.0.0.1:{port}/"));
    broker.url = secure;
    broker._dir = Some(dir);
    (broker, plain, cert)
}

/// `GET path` from a broker's monitoring endpoint, as JSON.
pub fn admin_json(broker: &Broker, path: &str) -> serde_json::Value {
    use std::io::Write;
    let admin = broker.admin.as_deref().expect("the broker has a monitoring endpoint");
    let addr = admin.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the admin endpoint");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let body = response.split("\r\n\r\n").nth(1).expect("a body after the head");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {response}"))
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

/// Fails the test, with the command that fixes it, when nats-server is not on PATH: a test
/// that cannot run must not pass.
pub fn require_nats_server() {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "nats-server is not on PATH: install it with `apt-get install -y nats-server`");
}

pub fn start_nats() -> Broker {
    let dir = TempDir::new("lt-nats");
    let config = dir.0.join("nats.conf");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:-1\nhttp: \"127.0.0.1:-1\"\nwebsocket {\n  listen: \"127.0.0.1:-1\"\n  no_tls: true\n}\n",
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
    let found = wait_for_lines(
        stderr,
        &["Listening for websocket clients on ", "Starting http monitor on "],
    );
    let (url, admin) = (format!("{}/", found[0]), Some(format!("http://{}", found[1])));
    Broker { child, url, admin, _dir: Some(dir) }
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
