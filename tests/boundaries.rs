//! Checks the architecture's boundaries: nothing in `src/protocol/` or `src/shard/` does I/O,
//! names the runtime or reads a clock. How: scans the source text of every file there.
//!
//! These modules are sans-IO: the runtime hands them bytes, messages, mail and the time, and
//! moves what they produce. A forbidden word in one of them (outside comments) fails the test
//! with its file and line.

use std::path::{Path, PathBuf};

/// What a sans-IO module must not name, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("glommio", "the runtime's executor"),
    ("tokio", "the cluster bridge's executor"),
    ("async_nats", "the cluster bridge's NATS client"),
    ("std::net", "sockets"),
    ("socket2", "sockets"),
    ("libc", "system calls"),
    ("std::os::fd", "file descriptors"),
    ("Instant::now", "the clock (pass the time in)"),
    ("SystemTime::now", "the clock (pass the time in)"),
    ("crate::runtime", "the runtime (it depends on the shard, not the other way)"),
    ("crate::server", "the runtime (it depends on the shard, not the other way)"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every line of code (comments stripped) naming a forbidden word, as `file:line: word`.
fn violations(dirs: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 5, "found only {} files: wrong directory?", files.len());
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (word, why) in FORBIDDEN {
                if code.contains(word) {
                    let name = file.strip_prefix(root).unwrap_or(&file).display();
                    found.push(format!("{name}:{}: `{word}` ({why})", n + 1));
                }
            }
        }
    }
    found
}

#[test]
fn protocol_and_shard_do_no_io_and_read_no_clock() {
    let found = violations(&["src/protocol", "src/shard"]);
    assert!(found.is_empty(), "sans-IO modules name I/O or the clock:\n{}", found.join("\n"));
}

#[test]
fn the_scan_sees_what_the_runtime_does() {
    // The same scan over the runtime must find its socket calls: proof the scan can fail.
    let found = violations(&["src/runtime"]);
    assert!(found.iter().any(|f| f.contains("`libc`")), "{found:?}");
    assert!(found.iter().any(|f| f.contains("`glommio`")), "{found:?}");
}
