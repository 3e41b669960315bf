//! Checks the examples in `docs/examples/`: the Python service answers the Python client, and
//! the browser page (on the `clients/js` library) completes its session against the same service.
//! How: a real two-shard broker on 127.0.0.1:0, the Python programs (on the client library in
//! `clients/python`) as child processes, and the page served by a small file server in this
//! test and loaded in headless Chromium, which the test reads over the DevTools protocol
//! (`--dump-dom` does not wait for WebSocket traffic).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::{Message, WebSocket};

mod common;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples");
/// The Python examples import the `middleman` package from the checkout (clients/python), so
/// they always run against the library as it is in this tree, installed or not.
const PYTHON_LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/src");
/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long the service gets to log in, grant and print `ready`.
const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Python client may run in all.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Chromium gets to start and open its DevTools port.
const BROWSER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the page gets to print its `status:` line.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one DevTools call may take.
const DEVTOOLS_CALL_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn python_client_gets_the_echo_and_its_chat_message() {
    assert!(
        python_with_websockets(),
        "python3 with the `websockets` package is needed (python3 -m pip install websockets)"
    );
    let server = common::Server::start(&[]);
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let service = start_service(&url);

    // Leading dots and a line that is only "." would end or shorten the body if either side
    // got the dot-stuffing wrong.
    let message = ".leading dot\n.\n..two dots\nend";
    let mut client = Process::spawn(
        "client.py",
        Command::new("python3").env("PYTHONPATH", PYTHON_LIB).args([
            &format!("{EXAMPLES}/python/client.py"),
            "--url",
            &url,
            "--key",
            common::CLIENT_KEY,
            "--message",
            message,
            "--wait",
            "30",
        ]),
    );
    let status = client.finish(CLIENT_TIMEOUT);
    assert!(status.success(), "client.py failed ({status})\n{}", client.output());

    let stdout = client.stdout();
    let cid = stdout
        .lines()
        .find_map(|line| line.strip_prefix("cid: "))
        .unwrap_or_else(|| panic!("client.py printed no cid\n{}", client.output()))
        .to_owned();
    assert!(
        middleman::ids::ConnectionId::parse(cid.as_bytes()).is_some(),
        "not a cid: {cid:?}\n{}",
        client.output()
    );
    // The client prints bodies with Python's repr.
    let echo = r"echo: '.LEADING DOT\n.\n..TWO DOTS\nEND'";
    let chat = format!(r"chat from {cid}: '.leading dot\n.\n..two dots\nend'");
    for expected in [echo, chat.as_str()] {
        assert!(
            stdout.lines().any(|line| line == expected),
            "client.py did not print {expected:?}\n{}",
            client.output()
        );
    }
    // The service is subscribed to Chat too, and prints what it hears.
    service.wait_for_line(|line| line == chat, Duration::from_secs(10));
}

#[test]
fn python_client_waits_for_a_service_that_starts_after_it() {
    assert!(
        python_with_websockets(),
        "python3 with the `websockets` package is needed (python3 -m pip install websockets)"
    );
    let server = common::Server::start(&[]);
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let mut client = Process::spawn(
        "client.py",
        Command::new("python3").env("PYTHONPATH", PYTHON_LIB).args([
            &format!("{EXAMPLES}/python/client.py"),
            "--url",
            &url,
            "--key",
            common::CLIENT_KEY,
            "--message",
            "early",
            "--wait",
            "30",
        ]),
    );
    // Logged in, asked Echo, which nobody has granted or registered yet, and was told so.
    client.wait_for_line(|line| line.starts_with("cid: "), SERVICE_READY_TIMEOUT);
    client.wait_for_line(
        |line| line.starts_with("waiting for the Echo service ("),
        SERVICE_READY_TIMEOUT,
    );
    let _service = start_service(&url);
    let status = client.finish(CLIENT_TIMEOUT);
    assert!(status.success(), "client.py failed ({status})\n{}", client.output());
    assert!(
        client.stdout().lines().any(|line| line == "echo: 'EARLY'"),
        "client.py did not print the echo\n{}",
        client.output()
    );
}

#[test]
fn browser_page_gets_its_cid_the_echo_and_its_chat_messages() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "this test needs headless Chromium at {CHROMIUM}: install the Debian package \
         `chromium` (apt-get install -y chromium); CI installs it"
    );
    assert!(
        python_with_websockets(),
        "python3 with the `websockets` package is needed (python3 -m pip install websockets)"
    );
    let server = common::Server::start(&[]);
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let service = start_service(&url);
    let files = serve_directory(PathBuf::from(env!("CARGO_MANIFEST_DIR")), &SERVED);

    let message = ".dot line\n.\nend";
    let page = format!(
        "http://127.0.0.1:{files}/docs/examples/browser/index.html?url={}&key={}&message={}",
        percent_encode(&url),
        percent_encode(common::CLIENT_KEY),
        percent_encode(message)
    );
    let mut browser = Chromium::launch();
    let session = browser.open(&page);
    let text = browser.wait_for_log(&session, PAGE_TIMEOUT);
    let context =
        || format!("page log:\n{text}\n{}\nservice:\n{}", browser.output(), service.output());

    assert!(
        text.lines().any(|line| line == "status: ok"),
        "the page did not finish\n{}",
        context()
    );
    let cid = text
        .lines()
        .find_map(|line| line.strip_prefix("cid: "))
        .unwrap_or_else(|| panic!("the page shows no cid\n{}", context()))
        .to_owned();
    assert!(
        middleman::ids::ConnectionId::parse(cid.as_bytes()).is_some(),
        "not a cid: {cid:?}\n{}",
        context()
    );
    // The page shows bodies with JSON.stringify.
    let expected = [
        r#"echo: ".DOT LINE\n.\nEND""#.to_owned(),
        format!(r#"received: text PUB Chat from {cid}: ".dot line\n.\nend (text)""#),
        format!(r#"received: binary PUB Chat from {cid}: ".dot line\n.\nend (binary)""#),
    ];
    for line in &expected {
        assert!(text.lines().any(|l| l == line), "the page does not show {line:?}\n{}", context());
    }
}

// ---------------------------------------------------------------------------------------------
// Python
// ---------------------------------------------------------------------------------------------

/// Whether `python3` can import `websockets`, after installing it with pip if it could not.
fn python_with_websockets() -> bool {
    let has = || {
        Command::new("python3")
            .args(["-c", "import websockets"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has() {
        return true;
    }
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "websockets"])
        .status();
    has()
}

/// Starts `service.py` with the service key and returns once it printed `ready <cid>`: its
/// grants are then in effect on every shard.
fn start_service(url: &str) -> Process {
    let service = Process::spawn(
        "service.py",
        Command::new("python3").env("PYTHONPATH", PYTHON_LIB).args([
            &format!("{EXAMPLES}/python/service.py"),
            "--url",
            url,
            "--key",
            common::SERVICE_KEY,
        ]),
    );
    service.wait_for_line(|line| line.starts_with("ready "), SERVICE_READY_TIMEOUT);
    service
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process whose output is collected as it comes; killed on drop.
struct Process {
    name: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn spawn(name: &str, command: &mut Command) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&stdout);
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                // The receiver may be gone; keep draining so the child never blocks.
                let _ = lines_tx.send(line);
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Process { name: name.to_owned(), child, stdout, stderr, lines }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Both streams, for assertion messages (the last 8 KiB of stderr: Chromium is chatty).
    fn output(&self) -> String {
        let stderr = self.stderr.lock().unwrap();
        let start = stderr.len().saturating_sub(8192);
        let start = (start..stderr.len()).find(|&i| stderr.is_char_boundary(i)).unwrap_or(0);
        format!(
            "---- {} stdout ----\n{}---- {} stderr ----\n{}",
            self.name,
            self.stdout(),
            self.name,
            &stderr[start..]
        )
    }

    /// Waits for a line of standard output that satisfies `wanted`; panics after `timeout` or
    /// when the process ends first.
    fn wait_for_line(&self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{} did not print the line in {timeout:?}\n{}", self.name, self.output())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(100)); // let stderr catch up
                    panic!("{} ended before printing the line\n{}", self.name, self.output())
                }
            }
        }
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    fn finish(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                thread::sleep(Duration::from_millis(100)); // let the readers drain the pipes
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not finish in {timeout:?}\n{}", self.name, self.output());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A static file server for the page
// ---------------------------------------------------------------------------------------------

/// The directories, relative to the repository, whose files the page may load: the page
/// itself and the library it imports by a relative path.
const SERVED: [&str; 2] = ["docs/examples/browser", "clients/js"];

/// Serves, over HTTP/1.0 on 127.0.0.1, the regular files directly inside the directories
/// `dirs` (relative to `root`); returns the port. The thread lives as long as the test process.
fn serve_directory(root: PathBuf, dirs: &'static [&'static str]) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the file server");
    let port = listener.local_addr().expect("file server address").port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let root = root.clone();
            thread::spawn(move || serve_one(stream, &root, dirs));
        }
    });
    port
}

fn serve_one(mut stream: TcpStream, root: &Path, dirs: &[&str]) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let path = path.trim_start_matches('/');
    // Only `<dir>/<plain file name>` for one of `dirs`: nothing else can be asked for.
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let file =
        (dirs.contains(&dir) && !name.is_empty() && !name.contains('\\') && !name.starts_with('.'))
            .then(|| std::fs::read(root.join(dir).join(name)).ok())
            .flatten();
    let response = match file {
        Some(body) => {
            let kind = match name.rsplit('.').next() {
                Some("html") => "text/html; charset=utf-8",
                // Module scripts need a JavaScript type.
                Some("js") => "text/javascript; charset=utf-8",
                _ => "application/octet-stream",
            };
            let mut out = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        }
        None => {
            b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = stream.write_all(&response);
}

/// Everything but RFC 3986 unreserved characters as `%XX`, for query-string values.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium over the DevTools protocol
// ---------------------------------------------------------------------------------------------

/// A headless Chromium with a fresh profile, driven over its DevTools WebSocket. Closed, and
/// its profile removed, on drop.
struct Chromium {
    process: Process,
    profile: PathBuf,
    devtools: WebSocket<TcpStream>,
    next_id: u64,
    /// DevTools messages read while waiting for another call's answer (events, mostly).
    skipped: VecDeque<String>,
}

impl Chromium {
    fn launch() -> Chromium {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let profile = std::env::temp_dir()
            .join(format!("middleman-it-examples-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&profile).expect("create the Chromium profile directory");
        let mut process = Process::spawn(
            "chromium",
            Command::new(CHROMIUM).args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                &format!("--user-data-dir={}", profile.display()),
                // Port 0: Chromium picks one and writes it to DevToolsActivePort.
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ]),
        );

        // DevToolsActivePort holds the port, then the browser endpoint's path.
        let active_port = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_START_TIMEOUT;
        let (port, path) = loop {
            let text = std::fs::read_to_string(&active_port).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                if let Ok(port) = port.trim().parse::<u16>() {
                    break (port, path.trim().to_owned());
                }
            }
            assert!(!process.exited(), "chromium exited at start\n{}", process.output());
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port in {BROWSER_START_TIMEOUT:?}\n{}",
                process.output()
            );
            thread::sleep(Duration::from_millis(100));
        };

        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("connect to DevTools: {e}\n{}", process.output()));
        stream.set_read_timeout(Some(DEVTOOLS_CALL_TIMEOUT)).expect("set_read_timeout");
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (devtools, _) = tungstenite::client::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("DevTools upgrade: {e}\n{}", process.output()));
        devtools
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        Chromium { process, profile, devtools, next_id: 0, skipped: VecDeque::new() }
    }

    fn output(&self) -> String {
        self.process.output()
    }

    /// Sends a DevTools command and returns the text of its answer; panics on an error answer.
    /// `params` is a JSON object.
    fn call(&mut self, session: Option<&str>, method: &str, params: &str) -> String {
        self.next_id += 1;
        let id = self.next_id;
        let session = session.map(|s| format!(r#","sessionId":"{s}""#)).unwrap_or_default();
        let command = format!(r#"{{"id":{id}{session},"method":"{method}","params":{params}}}"#);
        self.devtools
            .send(Message::text(command))
            .unwrap_or_else(|e| panic!("DevTools send {method}: {e}\n{}", self.output()));
        let marker = format!(r#""id":{id},"#);
        let deadline = Instant::now() + DEVTOOLS_CALL_TIMEOUT;
        loop {
            match self.devtools.read() {
                Ok(Message::Text(text)) => {
                    let text = text.as_str();
                    if text.starts_with(&format!("{{{}", marker)) {
                        assert!(
                            !text.contains(r#""error":"#),
                            "DevTools {method} failed: {text}\n{}",
                            self.output()
                        );
                        return text.to_owned();
                    }
                    // Events and stray answers; kept only as context for failures.
                    self.skipped.push_back(text.to_owned());
                    if self.skipped.len() > 20 {
                        self.skipped.pop_front();
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("DevTools read for {method}: {e}\n{}", self.output()),
            }
            assert!(
                Instant::now() < deadline,
                "no DevTools answer to {method} in {DEVTOOLS_CALL_TIMEOUT:?}; last events: \
                 {:?}\n{}",
                self.skipped,
                self.output()
            );
        }
    }

    /// Opens `url` in a new tab and returns the DevTools session attached to it.
    fn open(&mut self, url: &str) -> String {
        // The URL is ours: no quote or backslash needs escaping in JSON.
        assert!(!url.contains(['"', '\\']), "{url}");
        let created = self.call(None, "Target.createTarget", &format!(r#"{{"url":"{url}"}}"#));
        let target = string_field(&created, "targetId").expect("targetId in createTarget");
        let attached = self.call(
            None,
            "Target.attachToTarget",
            &format!(r#"{{"targetId":"{target}","flatten":true}}"#),
        );
        string_field(&attached, "sessionId").expect("sessionId in attachToTarget")
    }

    /// Reads the page's `#log` until it has a `status:` line; returns it either way after
    /// `timeout`.
    fn wait_for_log(&mut self, session: &str, timeout: Duration) -> String {
        // encodeURIComponent keeps the value free of JSON escapes.
        let expression =
            "encodeURIComponent((document.getElementById('log') || {}).textContent || '')";
        let params = format!(r#"{{"expression":"{expression}","returnByValue":true}}"#);
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.call(Some(session), "Runtime.evaluate", &params);
            let text =
                string_field(&answer, "value").map(|v| percent_decode(&v)).unwrap_or_default();
            if text.lines().any(|line| line.starts_with("status: ")) || Instant::now() >= deadline {
                return text;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ask politely, so that the browser takes its helper processes down with it.
        if self
            .devtools
            .send(Message::text(r#"{"id":0,"method":"Browser.close","params":{}}"#))
            .is_ok()
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.process.exited() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The value of the first `"name":"..."` in a DevTools answer. Only for values that contain no
/// escapes (ids, and what `wait_for_log` percent-encodes).
fn string_field(json: &str, name: &str) -> Option<String> {
    let key = format!(r#""{name}":""#);
    let start = json.find(&key)? + key.len();
    let len = json[start..].find('"')?;
    Some(json[start..start + len].to_owned())
}
