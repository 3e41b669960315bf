//! The command line and the logs: `--help` documents every flag, `--print-config` masks keys,
//! a bad value fails with one line, and log lines (text or JSON) name connections, never keys.
//!
//! Runs the real binary; the logging case also drives a real broker with a bad key.

mod common;

use std::process::Command;

use common::*;

fn middleman(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_middleman"))
        .args(args)
        .env_remove("MIDDLEMAN_SERVICE_KEYS")
        .env_remove("MIDDLEMAN_CLIENT_KEYS")
        .output()
        .expect("run middleman")
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
    let out = Command::new(env!("CARGO_BIN_EXE_middleman"))
        .args(["--print-config", "--client-key", "visible-nowhere-2", "--max-headers", "9"])
        .env("MIDDLEMAN_SERVICE_KEYS", "visible-nowhere-1,visible-nowhere-3")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("visible-nowhere"), "{text}");
    assert!(text.contains("keys = 2 service key(s), 1 client key(s) (masked)"), "{text}");
    assert!(text.contains("max-headers = 9"), "{text}");
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
