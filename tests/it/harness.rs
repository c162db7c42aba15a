//! Smoke tests of the harness itself: each handle starts its real server
//! and answers, and a missing tool fails with the set-up command. These
//! check the harness, not Spoor; they must stay fast and never skip.

use spoor_tests::clickhouse::{ClickHouseServer, READONLY_USER};
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::tools::Tool;
use std::io::Read as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[test]
fn shared_clickhouse_answers_select_version() {
    let ch = ClickHouseServer::shared();
    let version = ch.query("SELECT version()").unwrap();
    assert!(
        version
            .trim()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit()),
        "version() = {version:?}"
    );
    assert!(ch.http_url().starts_with("http://127.0.0.1:"));
    assert_ne!(ch.tcp_port(), ch.http_port());
}

#[test]
fn fresh_databases_are_distinct_and_usable() {
    let ch = ClickHouseServer::shared();
    let a = ch.fresh_database("harness-smoke");
    let b = ch.fresh_database("harness-smoke");
    assert_ne!(a, b);
    ch.query(&format!(
        "CREATE TABLE {a}.t (x UInt32) ENGINE = MergeTree ORDER BY x"
    ))
    .unwrap();
    ch.query(&format!("INSERT INTO {a}.t VALUES (1), (2), (3)"))
        .unwrap();
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {a}.t"))
            .unwrap()
            .trim(),
        "3"
    );
    assert_eq!(
        ch.query(&format!(
            "SELECT count() FROM system.tables WHERE database = '{b}'"
        ))
        .unwrap()
        .trim(),
        "0"
    );
}

#[test]
fn readonly_user_reads_but_cannot_write() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("harness-readonly");
    ch.query(&format!(
        "CREATE TABLE {db}.t (x UInt32) ENGINE = MergeTree ORDER BY x"
    ))
    .unwrap();
    assert_eq!(
        ch.query_as(READONLY_USER, &format!("SELECT count() FROM {db}.t"))
            .unwrap()
            .trim(),
        "0"
    );
    let err = ch
        .query_as(READONLY_USER, &format!("INSERT INTO {db}.t VALUES (1)"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("readonly"), "{err:#}");
}

#[test]
fn private_clickhouse_keeps_data_and_ports_across_restart() {
    let ch = ClickHouseServer::start().unwrap();
    let url = ch.http_url();
    ch.query("CREATE TABLE default.t (x UInt32) ENGINE = MergeTree ORDER BY x")
        .unwrap();
    ch.query("INSERT INTO default.t VALUES (7)").unwrap();
    ch.stop();
    assert!(!ch.is_running());
    assert!(
        ch.query("SELECT 1").is_err(),
        "a stopped server must not answer"
    );
    ch.restart().unwrap();
    assert_eq!(ch.http_url(), url);
    assert_eq!(
        ch.query("SELECT sum(x) FROM default.t").unwrap().trim(),
        "7"
    );
}

#[test]
fn workerd_serves_the_edge_build() {
    let edge = Edge::start(&EdgeConfig::default()).unwrap();
    let resp = ureq::get(&format!("{}/healthz", edge.url()))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Two instances side by side get their own ports.
    let other = Edge::start(&EdgeConfig::default()).unwrap();
    assert_ne!(other.url(), edge.url());
}

/// The edge's `connect()` to nats-server on 127.0.0.1 must get through
/// workerd's outbound network (the default one allows public addresses only).
/// A bare listener stands in for nats-server: it only has to see the connection.
#[test]
fn workerd_edge_can_open_sockets_to_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let edge =
        Edge::start(&EdgeConfig::new(addr.to_string()).var("PUBLISH_TIMEOUT_MS", "1000")).unwrap();
    let url = format!("{}/v1/batch", edge.url());
    let post = std::thread::spawn(move || {
        let body =
            r#"{"batch":[{"event":"page_view","anonymous_id":"anon-harness-1","properties":{}}]}"#;
        let _ = ureq::post(&url)
            .set("X-Spoor-Write-Key", "wk_demo")
            .set("Content-Type", "application/json")
            .timeout(Duration::from_secs(10))
            .send_string(body);
    });
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!(
                "the edge never connected to {addr}: {e}\nedge log:\n{}",
                edge.log()
            ),
        }
    };
    // Closing answers the edge's NATS handshake with EOF, so the request ends quickly.
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let _ = conn.read(&mut [0u8; 64]);
    drop(conn);
    post.join().unwrap();
}

#[test]
fn a_missing_tool_names_the_setup_command() {
    let err = Tool::NatsServer
        .path_in(Some("/nonexistent/nats-server".into()), None)
        .unwrap_err();
    assert!(format!("{err:#}").contains("cargo xtask setup"), "{err:#}");
    let err = Tool::ClickHouseServer
        .path_in(Some("/nonexistent/clickhouse-server".into()), None)
        .unwrap_err();
    assert!(format!("{err:#}").contains("cargo xtask setup"), "{err:#}");
}

#[test]
fn wrangler_dev_serves_the_edge_build() {
    let edge = Edge::start_wrangler(&EdgeConfig::default()).unwrap();
    let resp = ureq::get(&format!("{}/healthz", edge.url()))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
}
