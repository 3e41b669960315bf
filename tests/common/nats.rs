//! A nats-server for tests: started on a free loopback port with JetStream in a temporary
//! directory, stopped (SIGKILL) and restarted on the same port and store, removed on drop.
//!
//! What it is: process management only, std only, so it compiles both as a module of the
//! integration tests (`#[path = "common/nats.rs"] mod nats;`) and inside the crate's own
//! `cluster` unit tests. What it is not: a NATS client.
//!
//! Invariants: the server listens on 127.0.0.1 only; a missing `nats-server` fails the test
//! with the install command, never skips it; every wait has a deadline, none is a fixed sleep.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y nats-server";
const READY_WITHIN: Duration = Duration::from_secs(10);

pub struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    program: &'static str,
}

impl NatsServer {
    /// Starts a server on a port nats-server picks itself (`-p -1`), read back from its
    /// ports file.
    pub fn start() -> Self {
        Self::start_program("nats-server")
    }

    /// [`NatsServer::start`] with another binary name (the harness's own test uses a missing
    /// one).
    pub fn start_program(program: &'static str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "mm-nats-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("ports")).expect("create the nats-server directory");
        let child = match spawn(program, &dir, None) {
            Ok(child) => child,
            Err(message) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("{message}");
            }
        };
        let pid = child.id();
        let port = wait_for_port_file(&dir.join("ports"), pid);
        let mut server = Self { child: Some(child), dir, port, program };
        server.wait_listening();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: a crash, no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        self.child =
            Some(spawn(self.program, &self.dir, Some(self.port)).unwrap_or_else(|m| panic!("{m}")));
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("nats-server exited with {status}; see {}", self.dir.join("log").display());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} in time",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(program: &str, dir: &Path, port: Option<u16>) -> Result<Child, String> {
    let port = port.map_or("-1".to_owned(), |p| p.to_string());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("open the nats-server log");
    let result = Command::new(program)
        .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
        .arg(dir.join("js"))
        .arg("--ports_file_dir")
        .arg(dir.join("ports"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    result.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{program} is not on PATH; the cluster tests need it: {INSTALL}")
        } else {
            format!("cannot start {program} ({e}); is it installed? {INSTALL}")
        }
    })
}

/// Reads `nats-server_<pid>.ports`: `{"nats":["nats://127.0.0.1:43411"],...}`.
fn wait_for_port_file(dir: &Path, pid: u32) -> u16 {
    let path = dir.join(format!("nats-server_{pid}.ports"));
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let port = text
                .split("nats://127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok());
            if let Some(port) = port {
                return port;
            }
        }
        assert!(Instant::now() < deadline, "nats-server wrote no ports file at {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}
