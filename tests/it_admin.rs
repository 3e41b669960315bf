//! The admin endpoint: /healthz, /metrics read with Prometheus's own text-format parser
//! (Python's `prometheus_client`), and /stats as JSON, checked to move as traffic flows.
//!
//! A real two-shard broker with `--admin-listen`; traffic from real WebSocket clients.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use common::*;

/// A free loopback port (there is a small window in which another process could take it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn python_with(module: &str, package: &str) {
    let has = || {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", package])
            .status();
    }
    assert!(has(), "python3 with `{package}` is needed (pip install {package})");
}

/// Every number the endpoint shows, by name, read through `tests/python/scrape.py`.
fn scrape(admin: u16) -> HashMap<String, f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/scrape.py");
    let out = Command::new("python3")
        .args([script, &format!("http://127.0.0.1:{admin}")])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "scrape failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').expect("name<TAB>value");
            (k.to_owned(), v.parse().unwrap_or_else(|_| panic!("{l:?}")))
        })
        .collect()
}

fn get(admin: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn metrics_and_stats_move_with_traffic() {
    python_with("prometheus_client", "prometheus_client");
    let admin = free_port();
    let server = Server::start(&["--admin-listen", &format!("127.0.0.1:{admin}")]);
    assert_eq!(get(admin, "/healthz"), ("HTTP/1.1 200 OK".into(), "ok\n".into()));
    assert_eq!(get(admin, "/nope").0, "HTTP/1.1 404 Not Found");

    let before = scrape(admin);
    let value = |m: &HashMap<String, f64>, name: &str| -> f64 {
        *m.get(name).unwrap_or_else(|| panic!("no {name} in {m:?}"))
    };
    assert_eq!(value(&before, "middleman_connections{role=service}"), 0.0);
    assert_eq!(value(&before, "middleman_messages_in_total{command=PUB}"), 0.0);

    let mut service = server.service_on(0);
    let mut client = server.client_on(1);
    service.send_text(&msg("SUB", "T", &[], ""));
    service.sync();
    for i in 0..10 {
        service.send_text(&msg("PUB", "T", &[], &format!("m{i}")));
        service.recv();
    }
    client.send_text(&msg("PUB", "T", &[], "denied"));
    client.expect_error("not-trusted", "Not trusted PUB T");
    assert!(server.try_connect("wrong key").is_err());

    let after = scrape(admin);
    let m = |name: &str| value(&after, name);
    assert_eq!(m("middleman_connections{role=service}"), 1.0);
    assert_eq!(m("middleman_connections{role=client}"), 1.0);
    assert!(m("middleman_connections_total{role=service}") >= 1.0);
    assert!(m("middleman_messages_in_total{command=PUB}") >= 11.0);
    assert_eq!(m("middleman_messages_in_total{command=SUB}"), 1.0);
    assert!(m("middleman_deliveries_total") >= 10.0);
    assert_eq!(m("middleman_errors_total{code=not-trusted}"), 1.0);
    assert_eq!(m("middleman_auth_failures_total"), 1.0);
    assert!(m("middleman_bytes_in_total") > value(&before, "middleman_bytes_in_total"));
    assert!(m("middleman_bytes_out_total") > value(&before, "middleman_bytes_out_total"));
    let per_shard =
        m("middleman_shard_connections{shard=0}") + m("middleman_shard_connections{shard=1}");
    assert_eq!(
        per_shard,
        m("middleman_connections{role=service}") + m("middleman_connections{role=client}")
    );
    assert_eq!(m("stats.shards"), 2.0);
    assert_eq!(m("stats.total.connections.client"), 1.0);
    assert_eq!(m("stats.total.errors.not-trusted"), 1.0);
    assert_eq!(m("stats.total.deliveries"), m("middleman_deliveries_total"));
}
