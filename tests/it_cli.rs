//! The command line, the environment and the logs: `--help` documents every flag and its
//! `MIDDLEMAN_*` variable, every flag can come from its variable and the flag wins,
//! `--print-config` lists every flag and masks keys, a bad value fails with one line, and log
//! lines (text or JSON) name connections, never keys.
//!
//! Runs the real binary with a controlled environment; the flag lists come from its own
//! `--help`; the behaviour cases drive a real broker configured only through variables.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// The binary with none of the caller's `MIDDLEMAN_*` variables, then `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_middleman"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MIDDLEMAN_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied());
    command
}

fn middleman(args: &[&str]) -> std::process::Output {
    middleman_with(args, &[])
}

fn middleman_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    command(args, env).output().expect("run middleman")
}

/// `--print-config` with `args` and `env`, which must succeed.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let args: Vec<&str> = ["--print-config"].iter().chain(args).copied().collect();
    let out = middleman_with(&args, env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// One flag as `--help` documents it.
#[derive(Debug)]
struct HelpFlag {
    /// Without the dashes: `max-headers`.
    name: String,
    /// `ADDR` in `--listen <ADDR>`; `None` for a switch.
    value_name: Option<String>,
    /// The `MIDDLEMAN_*` variable from `[env: …]`.
    env: Option<String>,
    repeatable: bool,
}

/// Every flag `--help` lists, read from its output, so a flag added later is covered without
/// a line added here.
fn help_flags() -> Vec<HelpFlag> {
    let out = middleman(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut flags: Vec<HelpFlag> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        // `--listen <ADDR>` or `-h, --help`; a possible value (`- drop: …`) is neither.
        let spec = trimmed.strip_prefix("--").or_else(|| {
            let rest = trimmed.strip_prefix('-')?;
            rest.get(1..)?.strip_prefix(", --")
        });
        if let Some(spec) = spec {
            let mut words = spec.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let value_name = words
                .next()
                .and_then(|w| w.strip_prefix('<'))
                .and_then(|w| w.strip_suffix('>'))
                .map(str::to_owned);
            flags.push(HelpFlag { name, value_name, env: None, repeatable: false });
            continue;
        }
        let Some(flag) = flags.last_mut() else { continue };
        if trimmed.contains("(repeatable") {
            flag.repeatable = true;
        }
        if let Some(rest) = trimmed.strip_prefix("[env: ") {
            let name: String = rest.chars().take_while(|c| *c != '=' && *c != ']').collect();
            flag.env = Some(name);
        }
    }
    assert!(flags.len() > 20, "could not read the flags from --help:\n{help}");
    flags
}

/// Flags that configure nothing: they make the binary print something and exit.
fn is_action(flag: &HelpFlag) -> bool {
    matches!(flag.name.as_str(), "help" | "version" | "print-config")
}

/// A temporary file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "middleman-cli-{}-{}-{name}",
            std::process::id(),
            unique()
        ));
        std::fs::write(&path, text).expect("write a temporary file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A broker on the port it printed; killed on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    /// Starts the binary with `args` and `env` and waits for `listening on ws://127.0.0.1:PORT`.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut child = command(args, env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn middleman");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps reading after the first line so the broker never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut broker = Broker { child, port: 0 };
        while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(10)) {
            if let Some(rest) = line.strip_prefix("listening on ws://127.0.0.1:") {
                broker.port = rest.parse().unwrap_or_else(|_| panic!("bad line {line:?}"));
                return broker;
            }
        }
        panic!("the broker did not print `listening on ws://127.0.0.1:PORT` (env {env:?})");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SUBs to `T0`…`T{n-1}` in one WebSocket message.
fn subscribe_to(client: &mut Client, n: usize) {
    let subs: String = (0..n).map(|i| msg("SUB", &format!("T{i}"), &[], "")).collect();
    client.send_text(&subs);
}

#[test]
fn help_documents_every_flag_with_its_default() {
    let out = middleman(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--shards",
        "--service-key",
        "--client-key",
        "--max-message-bytes",
        "--max-pending-bytes",
        "--slow-consumer",
        "--request-timeout",
        "--auth-timeout",
        "--drain-timeout",
        "--max-topic-bytes",
        "--max-headers",
        "--max-connections",
        "--max-subscriptions-per-connection",
        "--max-pending-requests",
        "--admin-listen",
        "--log-level",
        "--log-format",
        "--print-config",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    for default in
        ["[default: 127.0.0.1:8765]", "[default: 1MiB]", "[default: 30s]", "[default: disconnect]"]
    {
        assert!(help.contains(default), "--help does not show {default}");
    }
}

#[test]
fn print_config_shows_values_and_masks_keys() {
    let text = print_config(
        &["--client-key", "visible-nowhere-2", "--max-headers", "9"],
        &[("MIDDLEMAN_SERVICE_KEYS", "visible-nowhere-1,visible-nowhere-3")],
    );
    assert!(!text.contains("visible-nowhere"), "{text}");
    assert!(text.contains("keys = 2 service key(s), 1 client key(s) (masked)"), "{text}");
    assert!(text.contains("max-headers = 9"), "{text}");
}

#[test]
fn help_names_the_variable_of_every_flag() {
    for flag in help_flags().iter().filter(|f| !matches!(f.name.as_str(), "help" | "version")) {
        let expected = match flag.name.as_str() {
            // The original's names, plural, kept as they were.
            "service-key" => "MIDDLEMAN_SERVICE_KEYS".to_owned(),
            "client-key" => "MIDDLEMAN_CLIENT_KEYS".to_owned(),
            name => format!("MIDDLEMAN_{}", name.to_ascii_uppercase().replace('-', "_")),
        };
        assert_eq!(flag.env.as_deref(), Some(expected.as_str()), "--{}", flag.name);
    }
}

#[test]
fn help_hides_the_keys_in_the_environment() {
    let out = middleman_with(
        &["--help"],
        &[
            ("MIDDLEMAN_SERVICE_KEYS", "hidden-service-secret"),
            ("MIDDLEMAN_CLIENT_KEYS", "hidden-client-secret"),
            ("MIDDLEMAN_MAX_HEADERS", "17"),
        ],
    );
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(!help.contains("secret"), "--help shows a key:\n{help}");
    assert!(help.contains("[env: MIDDLEMAN_SERVICE_KEYS]"), "{help}");
    // Only keys are hidden: other variables show their value, as clap does.
    assert!(help.contains("[env: MIDDLEMAN_MAX_HEADERS=17]"), "{help}");
}

#[test]
fn print_config_names_every_flag_help_lists() {
    let text = print_config(&[], &[]);
    for flag in help_flags().iter().filter(|f| !is_action(f)) {
        let prefix = format!("{} = ", flag.name);
        assert!(
            text.lines().any(|l| l.starts_with(&prefix)),
            "no line for --{}:\n{text}",
            flag.name
        );
    }
}

/// Every flag that takes a value is set from its variable alone (with a value unlike its
/// default), and `--print-config`, itself switched on by its variable, shows each value as
/// coming from that variable.
#[test]
fn every_flag_can_come_from_its_variable() {
    let flags = help_flags();
    let mut env: Vec<(String, String)> = vec![("MIDDLEMAN_PRINT_CONFIG".into(), "1".into())];
    let mut expected = Vec::new();
    for flag in flags.iter().filter(|f| !is_action(f)) {
        let value_name = flag.value_name.as_deref().unwrap_or("(none)");
        let (one, two) = match value_name {
            "ADDR" => ("127.0.0.1:7001", "127.0.0.1:7002"),
            "FILE" => ("/nonexistent/middleman-a", "/nonexistent/middleman-b"),
            "ORIGIN" => ("https://a.example", "https://b.example"),
            "KEY" => ("env-secret-one", "env-secret-two"),
            "BYTES" => ("4KiB", "8KiB"),
            "N" => ("7", "8"),
            "DURATION" => ("3s", "4s"),
            "LEVEL" => ("debug", "trace"),
            "SLOW_CONSUMER" => ("drop", "drop"),
            "LOG_FORMAT" => ("json", "json"),
            "URL" => ("nats://127.0.0.1:7001", "nats://127.0.0.1:7002"),
            "NAME" => ("node-a", "node-b"),
            "P" => ("pa", "pb"),
            other => panic!("--{}: no sample value for <{other}>: add one here", flag.name),
        };
        // A repeatable flag takes a comma list from its variable.
        let (value, shown) = if flag.repeatable {
            (format!("{one},{two}"), format!("{one}, {two}"))
        } else {
            (one.to_owned(), one.to_owned())
        };
        let shown = if value_name == "KEY" {
            format!("{} key(s) (masked)", value.split(',').count())
        } else {
            shown
        };
        let variable =
            flag.env.clone().unwrap_or_else(|| panic!("--{} has no variable", flag.name));
        expected.push(format!("{} = {shown}  # from {variable}", flag.name));
        env.push((variable, value));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let out = middleman_with(&[], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for line in &expected {
        assert!(text.lines().any(|l| l == line), "missing `{line}`:\n{text}");
    }
    assert!(!text.contains("env-secret"), "a key was printed:\n{text}");
}

#[test]
fn a_flag_wins_over_its_variable() {
    let text = print_config(
        &["--max-headers", "10", "--listen", "127.0.0.1:3", "--slow-consumer", "drop"],
        &[
            ("MIDDLEMAN_MAX_HEADERS", "9"),
            // The variable's list is replaced, not merged.
            ("MIDDLEMAN_LISTEN", "127.0.0.1:1,127.0.0.1:2"),
            // Not even parsed when the flag is given.
            ("MIDDLEMAN_SLOW_CONSUMER", "maybe"),
            ("MIDDLEMAN_REQUEST_TIMEOUT", "7s"),
        ],
    );
    for line in [
        "max-headers = 10",
        "listen = 127.0.0.1:3",
        "slow-consumer = drop",
        "request-timeout = 7s  # from MIDDLEMAN_REQUEST_TIMEOUT",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}`:\n{text}");
    }
}

/// Listen address, keys and a limit from variables alone reach the running broker: it listens
/// where the variable says (not on the default 8765), accepts the key, and refuses SUBs past
/// the variable's limit; the same variables with the flag raise the limit.
#[test]
fn variables_configure_the_running_broker() {
    let env = [
        ("MIDDLEMAN_LISTEN", "127.0.0.1:0"),
        ("MIDDLEMAN_SHARDS", "1"),
        ("MIDDLEMAN_SERVICE_KEYS", "env-service-key"),
        ("MIDDLEMAN_CLIENT_KEYS", "env-client-key"),
        ("MIDDLEMAN_MAX_SUBSCRIPTIONS_PER_CONNECTION", "3"),
    ];
    let broker = Broker::start(&[], &env);
    assert_ne!(broker.port, 8765, "the broker ignored MIDDLEMAN_LISTEN");
    let mut client = Client::upgrade(broker.port, "/").expect("upgrade");
    client.login("env-service-key").expect("the key from MIDDLEMAN_SERVICE_KEYS");
    subscribe_to(&mut client, 6);
    // Whether the private topic counts as a subscription is not written down (see
    // it_adversarial), so the first refusal is T2 or T3; the default limit refuses none.
    let text = String::from_utf8(client.recv().data).unwrap();
    assert!(
        text.contains("Limit reached: subscriptions SUB T2")
            || text.contains("Limit reached: subscriptions SUB T3"),
        "{text}"
    );
    drop(broker);

    let broker = Broker::start(&["--max-subscriptions-per-connection", "10"], &env);
    let mut client = Client::upgrade(broker.port, "/").expect("upgrade");
    client.login("env-client-key").expect("the key from MIDDLEMAN_CLIENT_KEYS");
    client.send_text(&msg("SUB", "MSG:granted-nowhere", &[], ""));
    client.expect_error("not-trusted", "Not trusted: SUB MSG:granted-nowhere");
    let mut service = Client::upgrade(broker.port, "/").expect("upgrade");
    service.login("env-service-key").expect("login");
    subscribe_to(&mut service, 6);
    // The round trip's reply comes first only if none of the six SUBs was refused.
    service.sync();
}

#[test]
fn keys_file_keys_are_counted_and_never_printed() {
    let file = TempFile::new(
        "keys",
        "# comment\nservice file-secret-1\nservice file-secret-2\nclient file-secret-3\n",
    );
    let out = middleman_with(
        &["--print-config", "--keys-file", file.path(), "--service-key", "flag-secret-4"],
        &[("MIDDLEMAN_CLIENT_KEYS", "env-secret-5,env-secret-6")],
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!text.contains("secret") && !err.contains("secret"), "{text}{err}");
    assert!(text.contains("keys = 3 service key(s), 3 client key(s) (masked)\n"), "{text}");
    assert!(text.contains(&format!("keys-file = {}\n", file.path())), "{text}");
    // The same file from its variable counts the same.
    let text = print_config(&[], &[("MIDDLEMAN_KEYS_FILE", file.path())]);
    assert!(text.contains("keys = 2 service key(s), 1 client key(s) (masked)\n"), "{text}");
}

#[test]
fn shards_out_of_range_are_refused_with_one_line() {
    for (args, env) in [
        (&["--shards", "0"][..], &[][..]),
        (&["--shards", "65"], &[]),
        (&[], &[("MIDDLEMAN_SHARDS", "65")]),
    ] {
        let args: Vec<&str> = ["--listen", "127.0.0.1:0"].iter().chain(args).copied().collect();
        let out = middleman_with(&args, env);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {err}");
        assert_eq!(err, "middleman: --shards must be between 1 and 64\n", "{args:?} {env:?}");
    }
}

#[test]
fn a_bad_variable_fails_with_one_line_naming_flag_and_variable() {
    for (variable, value) in [
        ("MIDDLEMAN_REQUEST_TIMEOUT", "fast"),
        ("MIDDLEMAN_MAX_PENDING_BYTES", "12XB"),
        ("MIDDLEMAN_LISTEN", "127.0.0.1:1,nowhere"),
    ] {
        let out = middleman_with(&[], &[(variable, value)]);
        assert_eq!(out.status.code(), Some(2), "{variable}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{variable}: {err}");
        let flag = format!("--{}", variable["MIDDLEMAN_".len()..].to_lowercase().replace('_', "-"));
        assert!(err.contains(&flag) && err.contains(variable), "{variable}: {err}");
    }
    // A variable's check happens where a flag's does: it reaches `validate`.
    let out = middleman_with(&["--listen", "127.0.0.1:0"], &[("MIDDLEMAN_MAX_HEADERS", "2")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--max-headers must be at least 3"), "{err}");
}

#[test]
fn invalid_values_fail_with_one_clear_line() {
    for args in [
        &["--max-pending-bytes", "12XB"][..],
        &["--request-timeout", "fast"],
        &["--slow-consumer", "maybe"],
        &["--shards", "many"],
    ] {
        let out = middleman(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("middleman: "), "{err}");
        assert!(err.contains(args[0]), "{args:?}: the line names the flag: {err}");
    }
}

#[test]
fn values_that_cannot_work_are_refused_at_start() {
    let out = middleman(&["--listen", "127.0.0.1:0", "--max-topic-bytes", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--max-topic-bytes must be at least 24"), "{err}");
}

#[test]
fn no_keys_on_a_public_address_is_refused_with_the_reason() {
    let out = middleman(&["--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no keys configured"), "{err}");
}

#[test]
fn json_logs_name_the_connection_and_never_a_key() {
    let server = Server::start_with_keys(
        &["svc-secret-key"],
        &["cli-secret-key"],
        &["--log-format", "json", "--log-level", "debug"],
    );
    assert!(server.try_connect("not-the-key").is_err());
    let mut service = server.connect("svc-secret-key");
    service.send_text("PUB\r\n\r\n.\r\n"); // malformed: logged at debug
    service.expect_malformed();
    let log = server.log_when(|log| log.contains("bad key") && log.contains("malformed message"));
    assert!(!log.contains("secret-key"), "a key was logged:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().all(|l| l.starts_with('{') && l.ends_with('}')), "not JSON lines:\n{log}");
    let bad = lines.iter().find(|l| l.contains("\"bad key\"")).expect("a bad-key line");
    assert!(bad.contains("\"cid\":\"") && bad.contains("\"peer\":\"127.0.0.1:"), "{bad}");
    let started = lines.iter().find(|l| l.contains("middleman started")).expect("a start-up line");
    assert!(started.contains("\"shards\":2") && started.contains("listen"), "{started}");
    assert!(
        lines.iter().any(|l| l.contains("malformed message") && l.contains(&service.cid)),
        "{log}"
    );
}

/// Without CAP_IPC_LOCK and with a 64 KiB memlock limit, io_uring cannot register its memory:
/// the broker must say so and how to fix it, not panic. Needs `prlimit` and `setpriv`
/// (util-linux) and root, to drop the capability; CI runs as root.
#[test]
fn io_uring_that_cannot_start_is_explained() {
    let available =
        |tool: &str| Command::new("which").arg(tool).output().is_ok_and(|o| o.status.success());
    assert!(
        available("prlimit") && available("setpriv"),
        "util-linux's prlimit and setpriv are needed"
    );
    let out = Command::new("prlimit")
        .args([
            "--memlock=65536:65536",
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
        ])
        .arg(env!("CARGO_BIN_EXE_middleman"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot set up io_uring: the locked-memory limit is too low"), "{err}");
    assert!(err.contains("ulimit -l"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
