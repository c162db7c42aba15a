//! End to end on the real parts: the edge's WASM build in workerd → a real
//! nats-server (JetStream) → spoor-relay in this process → a real
//! clickhouse-server, driven by spoor-loadtest and by hand-written requests.
//!
//! - The whole pipeline stores exactly the unique valid events sent, through
//!   invalid events, resent batches and gzip bodies, and each rejection has
//!   the reason the traffic model planted.
//! - The edge's HTTP contract: 401, 413, 415, 400 with where the JSON broke,
//!   CORS preflight, `/healthz`, 404/405.
//! - Enrichment reaches the stored row: geo from the cf object, device from
//!   the User-Agent, the IP only as a prefix, received_at and skew-corrected
//!   time; the test cf header is ignored unless the config allows it.
//! - NATS unreachable, durable ack requested: 503 with Retry-After and
//!   nothing acknowledged.

use std::io::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use spoor_relay::RelayConfig;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;

use crate::support::{eventually, Relay};

const WRITE_KEY: &str = "wk_e2e";
const PROJECT: &str = "e2e";

fn edge_config(nats: &NatsServer) -> EdgeConfig {
    EdgeConfig::for_nats(nats)
        .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
        .var("REGION", "e2e-region")
        .var("PARTITIONS", "4")
}

fn relay_config(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> RelayConfig {
    crate::support::project_relay_config(nats, ch, db, PROJECT)
}

/// A raw HTTP answer: status, headers (lower-case names) and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.body))
    }

    /// The `error` code of an error body.
    pub(crate) fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends one request with ureq, which (unlike a browser) lets the test set
/// any header, and returns the answer whatever its status.
pub(crate) fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(20));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or_default().to_string();
            (n.to_ascii_lowercase(), v)
        })
        .collect();
    let body = resp.into_string().unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

fn post_json(url: &str, extra: &[(&str, &str)], body: &str) -> Answer {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Spoor-Write-Key", WRITE_KEY),
    ];
    headers.extend_from_slice(extra);
    send("POST", url, &headers, Some(body.as_bytes()))
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

pub(crate) fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn query(ch: &ClickHouseServer, sql: &str) -> String {
    tokio::task::block_in_place(|| ch.query(sql).unwrap_or_else(|e| panic!("{sql}: {e:#}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_stores_exactly_the_unique_valid_events_sent() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("e2e_flow");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let edge = Edge::start(&edge_config(&nats)).unwrap();

    let mut opts = spoor_loadtest::RunOptions {
        edge_url: edge.url(),
        write_key: WRITE_KEY.into(),
        project: PROJECT.into(),
        concurrency: 4,
        gzip: true,
        clickhouse_url: Some(ch.http_url()),
        clickhouse_db: db.clone(),
        verify_timeout_secs: 120,
        ..Default::default()
    };
    opts.traffic.events = 10_000;
    opts.traffic.users = 150;
    opts.traffic.invalid_ratio = 0.02;
    opts.traffic.resend_ratio = 0.1;
    opts.traffic.seed = 2;
    let summary = spoor_loadtest::run(&opts).await.unwrap();

    assert!(
        summary.ok,
        "loadtest found mismatches: {:#?}\nedge log:\n{}",
        summary.mismatches,
        edge.log()
    );
    assert_eq!(summary.failed_requests, 0);
    assert!(summary.resends > 0, "the run resent no batch");
    assert!(
        summary.unique_valid >= 9_500,
        "expected ~9,800 unique valid events, got {}",
        summary.unique_valid
    );
    assert_eq!(summary.accepted + summary.rejected, summary.sent);
    // Every planted defect was rejected with a reason, several kinds of them.
    assert!(summary.rejected > 0);
    assert!(
        summary.rejected_by_reason.len() >= 3,
        "{:?}",
        summary.rejected_by_reason
    );
    assert_eq!(
        summary.rejected_by_reason.values().sum::<usize>(),
        summary.rejected
    );

    // Independently of the loadtest's own check: exactly once, without FINAL.
    let row = query(
        ch,
        &format!(
            "SELECT count(), uniqExact(event_id) FROM {db}.events \
             WHERE project_id = '{PROJECT}' FORMAT TSV"
        ),
    );
    let nums: Vec<u64> = row.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(
        nums,
        vec![summary.unique_valid as u64, summary.unique_valid as u64],
        "count() and uniqExact(event_id) must both equal the unique valid events sent"
    );
    // Verbatim resends carry the same batch ids, so JetStream's duplicate
    // window drops most of them before the relay; whatever reaches the relay
    // twice is dropped there. Either way the relay's books balance.
    let received = relay.metric("spoor_relay_events_received_total").await;
    let deduped = relay.metric("spoor_relay_events_deduped_total").await;
    let inserted = relay.metric("spoor_relay_rows_inserted_total").await;
    assert_eq!(inserted as usize, summary.unique_valid);
    assert_eq!(
        received - deduped,
        inserted,
        "received {received}, deduped {deduped}"
    );
    relay.shutdown().await;
}

#[test]
fn edge_answers_bad_requests_with_clear_statuses() {
    // No NATS is needed: every request here fails before publishing.
    let edge = Edge::start(
        &EdgeConfig::default().var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string()),
    )
    .unwrap();
    let batch = format!("{}/v1/batch", edge.url());
    let ok_body = json!({"batch": [{"event": "page_view", "anonymous_id": "d1",
        "event_id": uuid(), "timestamp": 1_700_000_000_000_i64}]})
    .to_string();

    // 401: no key, unknown key.
    let a = send(
        "POST",
        &batch,
        &[("Content-Type", "application/json")],
        Some(ok_body.as_bytes()),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "missing_write_key"),
        "{}",
        a.body
    );
    let a = send(
        "POST",
        &batch,
        &[
            ("Content-Type", "application/json"),
            ("X-Spoor-Write-Key", "nope"),
        ],
        Some(ok_body.as_bytes()),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "invalid_write_key"),
        "{}",
        a.body
    );

    // 415: wrong content type, unknown encoding.
    let a = send(
        "POST",
        &batch,
        &[
            ("Content-Type", "application/xml"),
            ("X-Spoor-Write-Key", WRITE_KEY),
        ],
        Some(ok_body.as_bytes()),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (415, "unsupported_media_type"),
        "{}",
        a.body
    );
    let a = post_json(&batch, &[("Content-Encoding", "br")], &ok_body);
    assert_eq!(
        (a.status, a.error().as_str()),
        (415, "unsupported_encoding"),
        "{}",
        a.body
    );

    // 400: broken JSON says where it broke.
    let a = post_json(&batch, &[], "{\"batch\": [\n  {\"event\": \"x\",, }]}");
    assert_eq!(
        (a.status, a.error().as_str()),
        (400, "invalid_json"),
        "{}",
        a.body
    );
    let msg = a.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("line 2") && msg.contains("column"), "{msg}");
    // 400: JSON that is not a batch.
    let a = post_json(&batch, &[], "[1,2,3]");
    assert_eq!(a.status, 400, "{}", a.body);

    // 413: over 512 KB, plain and (counted after decompression) gzip.
    let filler = "x".repeat(600 * 1024);
    let big = json!({"batch": [], "pad": filler}).to_string();
    let a = post_json(&batch, &[], &big);
    assert_eq!(
        (a.status, a.error().as_str()),
        (413, "payload_too_large"),
        "{}",
        a.body
    );
    let zipped = gzip(big.as_bytes());
    assert!(zipped.len() < 64 * 1024, "the gzip body itself is small");
    let a = send(
        "POST",
        &batch,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("X-Spoor-Write-Key", WRITE_KEY),
        ],
        Some(&zipped),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (413, "payload_too_large"),
        "{}",
        a.body
    );
    // 413: more than 500 events.
    let many: Vec<Value> = (0..501)
        .map(|_| json!({"event": "e", "anonymous_id": "d", "event_id": uuid()}))
        .collect();
    let a = post_json(&batch, &[], &json!({ "batch": many }).to_string());
    assert_eq!(
        (a.status, a.error().as_str()),
        (413, "payload_too_large"),
        "{}",
        a.body
    );

    // CORS preflight from any site, and CORS headers on answers.
    let a = send(
        "OPTIONS",
        &batch,
        &[
            ("Origin", "https://shop.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,x-spoor-write-key",
            ),
        ],
        None,
    );
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let allowed = a
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("x-spoor-write-key") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(a
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .contains("POST"));
    let a = send(
        "POST",
        &batch,
        &[
            ("Content-Type", "application/json"),
            ("Origin", "https://shop.example"),
        ],
        Some(ok_body.as_bytes()),
    );
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://shop.example")
    );

    // Health, unknown paths, wrong methods.
    let a = send("GET", &format!("{}/healthz", edge.url()), &[], None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["status"], "ok");
    let a = send("GET", &format!("{}/nope", edge.url()), &[], None);
    assert_eq!((a.status, a.error().as_str()), (404, "not_found"));
    let a = send("GET", &batch, &[], None);
    assert_eq!((a.status, a.error().as_str()), (405, "method_not_allowed"));
}

const CF: &str = r#"{"country":"DE","region":"Hesse","city":"Frankfurt am Main","timezone":"Europe/Berlin","continent":"EU","colo":"FRA","asn":3320}"#;
const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
    (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rows_carry_geo_device_ip_prefix_and_corrected_time() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("e2e_enrich");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let edge = Edge::start(&edge_config(&nats)).unwrap();
    let strict = Edge::start(&edge_config(&nats).var("ALLOW_TEST_CF", "false")).unwrap();

    // The client's clock runs exactly one hour fast: sent_at and timestamp
    // are both an hour ahead, so the stored time is shifted back an hour.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let skew = 3_600_000_i64;
    let happened = now_ms - 60_000; // a minute ago, by the server's clock
    let id_track = uuid();
    let body = json!({
        "event": "purchase", "event_id": id_track, "user_id": "u-42",
        "anonymous_id": "dev-42", "session_id": "s-1",
        "timestamp": happened + skew, "sent_at": now_ms + skew,
        "properties": {"order_id": "o-1", "revenue": 99.5, "items": [{"sku": "a"}]},
        "context": {"page": {"url": "https://shop.example/checkout?x=1", "path": "/checkout",
            "referrer": "https://search.example/", "title": "Checkout"},
            "library": {"name": "spoor-js", "version": "1.2.3"}, "locale": "de-DE",
            "screen": {"width": 1440, "height": 900}}
    })
    .to_string();
    let a = send(
        "POST",
        &format!("{}/v1/track", edge.url()),
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("X-Spoor-Write-Key", WRITE_KEY),
            ("User-Agent", CHROME_MAC),
            ("X-Spoor-Test-Cf", CF),
            ("X-Spoor-Test-Ip", "203.0.113.77"),
        ],
        Some(&gzip(body.as_bytes())),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.json()["accepted"], 1);
    let ack_ms: u64 = a
        .header("x-spoor-ack-ms")
        .expect("X-Spoor-Ack-Ms")
        .parse()
        .unwrap();
    assert!(ack_ms < 20_000);

    // The same test headers on an edge that does not allow them change nothing.
    let id_strict = uuid();
    let a = post_json(
        &format!("{}/v1/batch", strict.url()),
        &[("User-Agent", CHROME_MAC), ("X-Spoor-Test-Cf", CF), ("X-Spoor-Test-Ip", "203.0.113.77")],
        &json!({"batch": [{"event": "page_view", "event_id": id_strict, "anonymous_id": "dev-43"}]})
            .to_string(),
    );
    assert_eq!(a.status, 202, "{}", a.body);

    let sql = format!(
        "SELECT event, user_id, anonymous_id, session_id, country, region, city, timezone, \
         continent, colo, asn, browser, os, device_type, is_bot, ip_prefix, edge_region, \
         page_path, page_title, library_name, locale, screen_width, \
         visitParamExtractString(properties, 'order_id'), ts_ms, received_at_ms, \
         client_ts_ms, sent_at_ms \
         FROM {db}.events WHERE event_id = '{id_track}' FORMAT JSONCompact"
    );
    let row = eventually("the tracked event to be stored", || {
        let out = query(ch, &sql);
        let v: Value = serde_json::from_str(&out).unwrap();
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        async move { rows.into_iter().next() }
    })
    .await;
    let s = |i: usize| {
        row[i]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| row[i].to_string())
    };
    assert_eq!(s(0), "purchase");
    assert_eq!(
        (s(1), s(2), s(3)),
        ("u-42".into(), "dev-42".into(), "s-1".into())
    );
    assert_eq!(
        (s(4), s(5), s(6), s(7), s(8), s(9)),
        (
            "DE".into(),
            "Hesse".into(),
            "Frankfurt am Main".into(),
            "Europe/Berlin".into(),
            "EU".into(),
            "FRA".into()
        )
    );
    assert_eq!(s(10), "3320");
    assert_eq!(
        (s(11), s(12), s(13), s(14)),
        (
            "Chrome".into(),
            "Mac OSX".into(),
            "desktop".into(),
            "0".into()
        )
    );
    assert_eq!(
        s(15),
        "203.0.113.0",
        "the IP is stored only as its /24 network"
    );
    assert_eq!(s(16), "e2e-region");
    assert_eq!(
        (s(17), s(18), s(19), s(20), s(21)),
        (
            "/checkout".into(),
            "Checkout".into(),
            "spoor-js".into(),
            "de-DE".into(),
            "1440".into()
        )
    );
    assert_eq!(s(22), "o-1");
    let num = |i: usize| -> i64 { s(i).trim_matches('"').parse().unwrap() };
    let (ts, received, client_ts, sent_at) = (num(23), num(24), num(25), num(26));
    assert_eq!(
        client_ts,
        happened + skew,
        "the client's own timestamp is kept"
    );
    assert_eq!(sent_at, now_ms + skew);
    // Corrected time = client time - (sent_at - received_at).
    assert_eq!(ts, client_ts - (sent_at - received));
    assert!(
        (ts - happened).abs() < 5_000,
        "corrected {ts} vs happened {happened}"
    );
    assert!((received - now_ms).abs() < 30_000);

    // Nowhere does the raw address appear.
    let leaks = query(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE positionCaseInsensitive(properties, '203.0.113.77') > 0 OR ip_prefix LIKE '%.77%'"),
    );
    assert_eq!(leaks.trim(), "0");

    let strict_sql = format!(
        "SELECT country, ip_prefix, browser FROM {db}.events WHERE event_id = '{id_strict}' FORMAT TSV"
    );
    let strict_row = eventually("the strict edge's event to be stored", || {
        let out = query(ch, &strict_sql);
        async move { (!out.trim().is_empty()).then_some(out) }
    })
    .await;
    let cols: Vec<&str> = strict_row.trim_end_matches('\n').split('\t').collect();
    assert_eq!(
        cols[0], "",
        "X-Spoor-Test-Cf must be ignored unless ALLOW_TEST_CF=true"
    );
    assert_eq!(
        cols[1], "",
        "X-Spoor-Test-Ip must be ignored unless ALLOW_TEST_CF=true"
    );
    assert_eq!(cols[2], "Chrome");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_id_in_one_request_is_answered_duplicate_and_stored_once() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("e2e_dup_in_request");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let edge = Edge::start(&edge_config(&nats)).unwrap();
    let (id, other) = (uuid(), uuid());
    let body = json!({"batch": [
        {"event": "first", "event_id": id, "anonymous_id": "dev-d"},
        {"event": "again", "event_id": id, "anonymous_id": "dev-d"},
        {"event": "other", "event_id": other, "anonymous_id": "dev-d"},
    ]})
    .to_string();
    let a = post_json(&format!("{}/v1/batch", edge.url()), &[], &body);
    assert_eq!(a.status, 202, "{}", a.body);
    let receipt = a.json();
    assert_eq!(receipt["accepted"], 2, "{receipt}");
    assert_eq!(receipt["rejected"], json!([]), "{receipt}");
    assert_eq!(
        receipt["duplicates"],
        json!([{"index": 1, "event_id": id, "duplicate_of": 0}]),
        "{receipt}"
    );
    let metrics = spoor_tests::metrics::fetch(&edge.url()).unwrap();
    assert_eq!(
        spoor_tests::metrics::sum(&metrics, "spoor_edge_events_duplicate_total"),
        1.0,
        "{metrics}"
    );
    let sql = format!(
        "SELECT event FROM {db}.events WHERE event_id IN ('{id}', '{other}') ORDER BY event FORMAT TSV"
    );
    let stored = eventually("both events to be stored", || {
        let out = query(ch, &sql);
        async move { (out.lines().count() == 2).then_some(out) }
    })
    .await;
    assert_eq!(stored, "first\nother\n", "the first copy is the one stored");
    relay.shutdown().await;
}

#[test]
fn nats_unreachable_durable_ack_is_503_with_retry_after_and_nothing_accepted() {
    // Nothing listens on this port: the connect fails at once.
    let port = spoor_tests::tools::free_port().unwrap();
    let edge = Edge::start(
        &EdgeConfig::new(format!("127.0.0.1:{port}"))
            .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
            .var("PUBLISH_TIMEOUT_MS", "2000"),
    )
    .unwrap();
    let body = json!({"batch": [{"event": "page_view", "anonymous_id": "d1", "event_id": uuid()}]})
        .to_string();
    // A durable ack is answered only after the PubAck, so it must fail.
    // (Fast acks answer 202 and spill; tests/it/edge_delivery.rs covers them.)
    let a = post_json(
        &format!("{}/v1/batch", edge.url()),
        &[("X-Spoor-Ack", "durable")],
        &body,
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (503, "unavailable"),
        "{}",
        a.body
    );
    assert_eq!(a.header("retry-after"), Some("1"));
    assert!(
        a.json().get("accepted").is_none(),
        "a 503 acknowledges nothing: {}",
        a.body
    );
    // A batch with only invalid events needs no publish, so it is answered.
    let bad = json!({"batch": [{"event": "page_view"}]}).to_string();
    let a = post_json(&format!("{}/v1/batch", edge.url()), &[], &bad);
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.json()["accepted"], 0);
    assert_eq!(a.json()["rejected"][0]["reason"], "missing_identity");
}
