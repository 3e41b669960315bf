//! Runs the client libraries' own suites as part of `cargo test`: `clients/python` (pytest and
//! `mypy --strict`) and `clients/js` (`tsc` and `node --test`, headless Chromium included).
//! How: each suite is a child process given this build's broker (`MIDDLEMAN_BIN`); a missing
//! tool fails the test with the command that installs it, it never passes by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

const BROKER: &str = env!("CARGO_BIN_EXE_middleman");

fn clients() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Runs `program args` in `dir` with the broker under test; panics with its output and `hint`
/// if it cannot start or fails.
fn run(dir: &Path, program: &str, args: &[&str], hint: &str) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("MIDDLEMAN_BIN", BROKER)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {hint}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{program} {}` in {} failed ({}); {hint}\n{text}",
        args.join(" "),
        dir.display(),
        output.status
    );
    // The closing lines name what ran, so a suite that collected nothing is visible here.
    let tail: Vec<&str> = text.lines().rev().filter(|l| !l.trim().is_empty()).take(8).collect();
    eprintln!("{program}: {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n  "));
}

const PYTHON_HINT: &str =
    "install the test tools: python3 -m pip install ./clients/python pytest hypothesis mypy";
const JS_HINT: &str = "install the JavaScript dependencies: (cd clients/js && npm ci), and \
                       Chromium for the browser test: apt-get install -y chromium";

#[test]
fn python_client_suite_passes_against_this_broker() {
    let dir = clients().join("python");
    run(&dir, "python3", &["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], PYTHON_HINT);
}

#[test]
fn python_client_is_mypy_strict_clean() {
    run(&clients().join("python"), "python3", &["-m", "mypy", "--strict"], PYTHON_HINT);
}

#[test]
fn javascript_client_types_check() {
    let dir = clients().join("js");
    assert!(dir.join("node_modules").is_dir(), "clients/js/node_modules is missing; {JS_HINT}");
    run(&dir, "npm", &["run", "--silent", "check"], JS_HINT);
}

#[test]
fn javascript_client_suite_passes_against_this_broker() {
    let dir = clients().join("js");
    assert!(dir.join("node_modules").is_dir(), "clients/js/node_modules is missing; {JS_HINT}");
    let tests: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("clients/js/test")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("test/{name}"))
        .collect();
    assert!(!tests.is_empty(), "no clients/js/test/*.test.js found");
    let mut args = vec!["--test"];
    args.extend(tests.iter().map(String::as_str));
    run(&dir, "node", &args, JS_HINT);
}
