//! Checks that the protocol suites (permissions, private topics and INT, requests, messages,
//! ordering) still pass with their peers spread over two cluster nodes joined through NATS.
//! How: re-runs those suites' own test binaries (siblings of this one in target/*/deps, the
//! newest of each name) with `MIDDLEMAN_TEST_NODES=2`, which makes `tests/common::Server` a
//! two-node cluster (see tests/common/cluster.rs); asserts they pass and prints their summary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

/// The newest executable in this binary's directory named `<suite>-<hash>`.
fn sibling(suite: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the path of this test binary");
    let dir = me.parent().expect("a deps directory");
    let prefix = format!("{suite}-");
    let newest = std::fs::read_dir(dir)
        .expect("read the deps directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_test_binary(p, &prefix))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH));
    newest.unwrap_or_else(|| {
        panic!(
            "no {suite} test binary next to {}; build it first: \
             cargo test --release --no-run --test {suite} (cargo test --workspace builds it)",
            me.display()
        )
    })
}

fn is_test_binary(path: &Path, prefix: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let Some(hash) = name.strip_prefix(prefix) else { return false };
    !hash.is_empty()
        && hash.chars().all(|c| c.is_ascii_hexdigit())
        && path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `suite` over two nodes and asserts every test passed.
fn over_two_nodes(suite: &str) {
    // One suite at a time: each runs two tests at once, each with a nats-server and two nodes.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let binary = sibling(suite);
    let out = Command::new(&binary)
        // Two at a time: each test runs a nats-server and two brokers on a small machine.
        .args(["--test-threads", "2"])
        .env("MIDDLEMAN_TEST_NODES", "2")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("test result:") || l.contains("FAILED") || l.contains("failures:")
        })
        .collect();
    println!("{suite} over two nodes ({}):\n{}", binary.display(), summary.join("\n"));
    assert!(
        out.status.success() && stdout.contains("test result: ok."),
        "{suite} failed over two nodes ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // A binary that ran nothing proves nothing.
    assert!(!stdout.contains("test result: ok. 0 passed"), "{suite} ran no test: {stdout}");
}

#[test]
#[ignore = "not yet: the cross-node settle needs MSG:<cid> across nodes, and REQ/RES across nodes is not wired (issue 9); run with --ignored"]
fn permissions_private_topics_and_int_over_two_nodes() {
    over_two_nodes("it_permissions");
}

#[test]
#[ignore = "not yet: the cross-node settle needs MSG:<cid> across nodes, and REQ/RES across nodes is not wired (issue 9); run with --ignored"]
fn requests_over_two_nodes() {
    over_two_nodes("it_requests");
}

#[test]
#[ignore = "not yet: the cross-node settle needs MSG:<cid> across nodes, and REQ/RES across nodes is not wired (issue 9); run with --ignored"]
fn messages_over_two_nodes() {
    over_two_nodes("it_messages");
}

#[test]
#[ignore = "not yet: the cross-node settle needs MSG:<cid> across nodes, and REQ/RES across nodes is not wired (issue 9); run with --ignored"]
fn ordering_over_two_nodes() {
    over_two_nodes("it_ordering");
}
