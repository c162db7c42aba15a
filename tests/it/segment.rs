//! Segment-compatible ingest on the real parts: the edge's WASM build in
//! workerd → nats-server → spoor-relay → clickhouse-server.
//!
//! - What analytics-node (Basic auth, `/v1/batch`), analytics.js
//!   (`text/plain`, `writeKey` in the body, one-letter paths, a non-UUID
//!   `messageId`, the clock-skew rule), analytics-kotlin (`POST /b`, gzip,
//!   chunked) and analytics-swift (`POST /v1/b`, `application/json;
//!   charset=utf-8`) send is answered `200 {"success": true}` and stored:
//!   event id = `messageId`, event names, context columns, device, times,
//!   and the identify / group / alias fields in `properties.$segment`.
//!   Kotlin's and Swift's bodies are the fixtures in `tests/fixtures/segment/`.
//! - Spoor's own `/v1/batch` and `/v1/track` keep working beside them.
//! - 400 for bad JSON and for more than 500 KB, 401 without a known key,
//!   a bad message rejected alone (listed in the answer and counted in
//!   `/metrics`), and 429 with `Retry-After` over the rate limit.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use spoor_core::timestamp::{format_rfc3339_ms, parse_rfc3339_ms};
use spoor_relay::RelayConfig;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;
use spoor_tests::tools::workspace_root;

use crate::e2e::{send, uuid, Answer};
use crate::support::{eventually, now_ms, Relay};

const WRITE_KEY: &str = "wk_segment";
const PROJECT: &str = "segment";
/// base64("wk_segment:"), Basic auth as analytics-node sends it.
const BASIC: &str = "Basic d2tfc2VnbWVudDo=";

fn edge_config(nats: Option<&NatsServer>) -> EdgeConfig {
    let config = match nats {
        Some(n) => EdgeConfig::for_nats(n),
        None => EdgeConfig::default(),
    };
    config
        .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
        .var("REGION", "seg")
        .var("PARTITIONS", "4")
}

fn relay_config(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> RelayConfig {
    crate::support::project_relay_config(nats, ch, db, PROJECT)
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

/// Posts with a chunked body (no Content-Length), as analytics-kotlin's
/// `setChunkedStreamingMode(0)` does.
fn post_chunked(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let mut req = ureq::post(url).timeout(Duration::from_secs(20));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send(std::io::Cursor::new(body)) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    Answer {
        status: resp.status(),
        headers: Vec::new(),
        body: resp.into_string().unwrap(),
    }
}

/// A fixture body with every time moved by the same amount, so its
/// `sentAt` is `sent_at_ms` and the offsets between its times are kept.
fn fixture(name: &str, sent_at_ms: i64) -> (String, i64) {
    let path = workspace_root().join("tests/fixtures/segment").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut body: Value = serde_json::from_str(&text).unwrap();
    let shift = sent_at_ms - parse_rfc3339_ms(body["sentAt"].as_str().unwrap()).unwrap();
    let moved = |v: &mut Value| {
        let ms = parse_rfc3339_ms(v.as_str().unwrap()).unwrap();
        *v = Value::String(format_rfc3339_ms(ms + shift));
    };
    moved(&mut body["sentAt"]);
    for m in body["batch"].as_array_mut().unwrap() {
        moved(&mut m["timestamp"]);
    }
    (body.to_string(), shift)
}

fn assert_success(a: &Answer, accepted: u64) -> Value {
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["success"], true, "{}", a.body);
    assert_eq!(v["accepted"], accepted, "{}", a.body);
    v
}

fn rows(ch: &ClickHouseServer, db: &str) -> BTreeMap<String, Value> {
    let sql = format!(
        "SELECT toString(event_id) AS id, event, user_id, anonymous_id, toString(ts_ms) AS ts, \
         toString(client_ts_ms) AS client_ts, event_id_derived, properties, page_url, page_title, \
         app_name, app_version, library_name, library_version, locale, screen_width, \
         screen_height, os, os_version, device_type, browser, utm_source, utm_medium, \
         utm_campaign, utm_term, utm_content \
         FROM {db}.events WHERE project_id = '{PROJECT}' FORMAT JSONEachRow"
    );
    let text = tokio::task::block_in_place(|| ch.query(&sql).unwrap());
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["properties"] = serde_json::from_str(v["properties"].as_str().unwrap()).unwrap();
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn ms(v: &Value) -> i64 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_sdks_are_answered_and_stored() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("segment");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let edge = Edge::start(&edge_config(Some(&nats))).unwrap();
    let url = |path: &str| format!("{}{path}", edge.url());
    let now = now_ms();
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
                  (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

    // analytics-node: /v1/batch with Basic auth, batch-level context.
    let (track_id, identify_id, page_id) = (uuid(), uuid(), uuid());
    let node = json!({
        "batch": [
            {"type": "track", "event": "Order Completed", "messageId": track_id,
             "userId": "u-node", "anonymousId": "a-node",
             "timestamp": format_rfc3339_ms(now - 60_000),
             "properties": {"total": 79.5},
             "context": {"page": {"url": "https://shop.example/done", "title": "Done"},
                         "userAgent": iphone, "locale": "de-DE",
                         "screen": {"width": 390, "height": 844},
                         "campaign": {"name": "winter", "source": "newsletter",
                                      "medium": "email", "term": "boots",
                                      "content": "hero", "id": "c-7"},
                         "ip": "203.0.113.77"}},
            {"type": "identify", "messageId": identify_id, "userId": "u-node",
             "traits": {"email": "node@example.com"}},
            {"type": "page", "messageId": page_id, "anonymousId": "a-node",
             "name": "Shoes", "category": "Catalog", "properties": {"path": "/shoes"},
             "context": {"page": {"url": "https://shop.example/shoes?utm_source=ads&utm_medium=cpc&utm_campaign=spring+sale"}}}
        ],
        "context": {"library": {"name": "analytics-node", "version": "2.1.2"}},
        "sentAt": format_rfc3339_ms(now)
    });
    let a = send(
        "POST",
        &url("/v1/batch"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", BASIC),
        ],
        Some(node.to_string().as_bytes()),
    );
    assert_success(&a, 3);

    // analytics.js: /v1/t, text/plain, writeKey in the body, a client clock
    // two hours fast, a messageId that is no UUID.
    let fast = 2 * 3_600_000;
    let ajs = json!({
        "type": "track", "event": "Signed Up", "messageId": "ajs-next-6c1d0e9f",
        "anonymousId": "a-ajs", "writeKey": WRITE_KEY,
        "originalTimestamp": format_rfc3339_ms(now + fast - 30_000),
        "sentAt": format_rfc3339_ms(now + fast),
        "context": {"library": {"name": "analytics.js", "version": "npm:next-1.70.0"}}
    });
    let sent = now_ms();
    let a = send(
        "POST",
        &url("/v1/t"),
        &[("Content-Type", "text/plain")],
        Some(ajs.to_string().as_bytes()),
    );
    let answered = now_ms();
    assert_success(&a, 1);

    // analytics-kotlin, from its fixture: POST /b, gzip, chunked.
    let (kotlin, _) = fixture("analytics-kotlin-batch.json", now);
    let a = post_chunked(
        &url("/b"),
        &[
            ("Content-Type", "text/plain"),
            ("Content-Encoding", "gzip"),
            ("User-Agent", "analytics-kotlin/1.24.1"),
        ],
        gzip(kotlin.as_bytes()),
    );
    assert_success(&a, 3);

    // analytics-swift, from its fixture: POST /v1/b (the default apiHost).
    let (swift, swift_shift) = fixture("analytics-swift-batch.json", now);
    let a = send(
        "POST",
        &url("/v1/b"),
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("User-Agent", "analytics-ios/1.8.0"),
        ],
        Some(swift.as_bytes()),
    );
    assert_success(&a, 3);

    // One bad message costs only itself, and the answer names it.
    let mixed = json!({"writeKey": WRITE_KEY, "batch": [
        {"type": "track", "event": "Kept", "userId": "u-mixed", "messageId": uuid()},
        {"type": "teleport", "userId": "u-mixed", "messageId": "m-bad"}
    ]});
    let a = send(
        "POST",
        &url("/v1/batch"),
        &[("Content-Type", "text/plain")],
        Some(mixed.to_string().as_bytes()),
    );
    let v = assert_success(&a, 1);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert_eq!(v["rejected"][0]["reason"], "invalid_type");
    assert_eq!(v["rejected"][0]["event_id"], "m-bad");
    let metrics = send("GET", &url("/metrics"), &[], None).body;
    assert!(
        metrics
            .contains("spoor_edge_events_rejected_total{region=\"seg\",reason=\"invalid_type\"} 1"),
        "{metrics}"
    );

    // Spoor's own format on the same paths, told apart by its key header.
    let (spoor_batch_id, spoor_track_id) = (uuid(), uuid());
    let a = send(
        "POST",
        &url("/v1/batch"),
        &[
            ("Content-Type", "application/json"),
            ("X-Spoor-Write-Key", WRITE_KEY),
        ],
        Some(
            json!({"batch": [{"event": "add_to_cart", "event_id": spoor_batch_id,
                              "anonymous_id": "a-spoor", "properties": {"sku": "s-1"}}]})
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(
        (a.status, a.json()["accepted"].as_u64()),
        (202, Some(1)),
        "{}",
        a.body
    );
    let a = send(
        "POST",
        &url("/v1/track"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {WRITE_KEY}")),
        ],
        Some(
            json!({"event": "purchase", "event_id": spoor_track_id, "user_id": "u-spoor"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(
        (a.status, a.json()["accepted"].as_u64()),
        (202, Some(1)),
        "{}",
        a.body
    );

    // Whole-request failures.
    let a = send(
        "POST",
        &url("/v1/b"),
        &[("Content-Type", "text/plain"), ("Authorization", BASIC)],
        Some(b"{\"batch\": [{\"type\": "),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (400, "invalid_json"),
        "{}",
        a.body
    );
    let a = send(
        "POST",
        &url("/v1/track"),
        &[("Content-Type", "text/plain")],
        Some(
            json!({"type": "track", "event": "x", "userId": "u"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "missing_write_key"),
        "{}",
        a.body
    );
    let a = send(
        "POST",
        &url("/v1/i"),
        &[("Content-Type", "text/plain")],
        Some(
            json!({"userId": "u", "writeKey": "nope"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "invalid_write_key"),
        "{}",
        a.body
    );
    let big = json!({"type": "track", "event": "x", "userId": "u", "properties": {"p": "y".repeat(20_000)}});
    let body = json!({"batch": vec![big; 26], "writeKey": WRITE_KEY}).to_string();
    assert!(body.len() > 500 * 1024);
    let a = send(
        "POST",
        &url("/v1/batch"),
        &[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
        Some(&gzip(body.as_bytes())),
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (400, "payload_too_large"),
        "{}",
        a.body
    );

    // What is stored.
    let expected = 3 + 1 + 3 + 3 + 1 + 2;
    let stored = eventually("every accepted event stored", || async {
        let r = rows(ch, &db);
        (r.len() == expected).then_some(r)
    })
    .await;

    let t = &stored[&track_id];
    assert_eq!(t["event"], "Order Completed");
    assert_eq!(
        (&t["user_id"], &t["anonymous_id"]),
        (&json!("u-node"), &json!("a-node"))
    );
    assert_eq!(ms(&t["ts"]), now - 60_000, "`timestamp` is taken as is");
    assert_eq!(t["page_url"], "https://shop.example/done");
    assert_eq!(t["page_title"], "Done");
    assert_eq!(
        t["library_name"], "analytics-node",
        "the batch's context merged in"
    );
    assert_eq!(t["locale"], "de-DE");
    assert_eq!(
        (&t["screen_width"], &t["screen_height"]),
        (&json!(390), &json!(844))
    );
    assert_eq!(
        (&t["os"], &t["device_type"]),
        (&json!("iPhone"), &json!("mobile"))
    );
    assert_eq!(t["properties"]["total"], 79.5);
    // context.campaign: its five fields are the utm_* columns, and only
    // the keys Spoor has no column for stay in $segment.context.
    let utm = |r: &Value| -> Vec<String> {
        [
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "utm_term",
            "utm_content",
        ]
        .iter()
        .map(|c| r[*c].as_str().unwrap().to_string())
        .collect()
    };
    assert_eq!(utm(t), ["newsletter", "email", "winter", "boots", "hero"]);
    let seg = &t["properties"]["$segment"];
    assert_eq!(seg["context"]["campaign"], json!({"id": "c-7"}));
    assert_eq!(
        seg["context"]["ip"], "203.0.113.0",
        "only the IP's prefix is kept"
    );
    let i = &stored[&identify_id];
    assert_eq!(i["event"], "identify");
    assert_eq!(
        i["properties"]["$segment"]["traits"]["email"],
        "node@example.com"
    );
    let p = &stored[&page_id];
    assert_eq!(p["event"], "page_view");
    // No context.campaign: the page URL's utm_* parameters are the campaign.
    assert_eq!(utm(p), ["ads", "cpc", "spring sale", "", ""]);
    assert_eq!(utm(i), ["", "", "", "", ""], "no campaign, no page: empty");
    assert_eq!(
        (&p["properties"]["name"], &p["properties"]["category"]),
        (&json!("Shoes"), &json!("Catalog"))
    );

    // analytics.js: the skew rule put the event 30 s before it was received.
    let a = stored
        .values()
        .find(|r| r["properties"]["$segment"]["messageId"] == "ajs-next-6c1d0e9f")
        .expect("the analytics.js event");
    assert_eq!(a["event"], "Signed Up");
    assert_eq!(a["event_id_derived"], 0);
    let ts = ms(&a["ts"]);
    assert!(
        (sent - 30_000..=answered - 30_000).contains(&ts),
        "ts {ts} not 30 s before the request ({sent}..{answered})"
    );

    // analytics-kotlin's fixture.
    let k = &stored["5b0b2f4e-8f3a-4a8e-9a57-3c1e0d2f6a11"];
    assert_eq!(k["event"], "Product Added");
    assert_eq!(k["user_id"], "");
    assert_eq!(k["anonymous_id"], "8f1c1a2e-7b3d-4c59-a0c4-2e9f7d6b5a01");
    assert_eq!(
        (&k["app_name"], &k["app_version"]),
        (&json!("Spoor Shop"), &json!("3.2.1"))
    );
    assert_eq!(
        (&k["library_name"], &k["library_version"]),
        (&json!("analytics-kotlin"), &json!("1.24.1"))
    );
    assert_eq!(
        (&k["screen_width"], &k["screen_height"]),
        (&json!(1080), &json!(2205))
    );
    assert_eq!(
        (&k["os"], &k["os_version"]),
        (&json!("Android"), &json!("14"))
    );
    assert_eq!(k["device_type"], "mobile");
    assert_eq!(
        k["properties"]["$segment"]["context"]["device"]["model"],
        "Pixel 8"
    );
    assert_eq!(
        stored["5b0b2f4e-8f3a-4a8e-9a57-3c1e0d2f6a12"]["properties"]["$segment"]["traits"]["plan"],
        "pro"
    );
    let screen = &stored["5b0b2f4e-8f3a-4a8e-9a57-3c1e0d2f6a13"];
    assert_eq!(screen["event"], "screen_view");
    assert_eq!(screen["properties"]["name"], "Cart");
    assert_eq!(screen["properties"]["items"], 2);

    // analytics-swift's fixture: upper-case UUIDs are the same ids.
    let s = &stored["3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"];
    assert_eq!(s["event"], "Checkout Started");
    assert_eq!(
        ms(&s["ts"]),
        parse_rfc3339_ms("2026-11-22T09:59:57.250Z").unwrap() + swift_shift
    );
    assert_eq!(
        (&s["os"], &s["device_type"]),
        (&json!("iOS"), &json!("mobile"))
    );
    assert_eq!(s["locale"], "en-US");
    let g = &stored["3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e70"];
    assert_eq!(g["event"], "group");
    assert_eq!(g["properties"]["$segment"]["groupId"], "org-swift");
    assert_eq!(g["properties"]["$segment"]["traits"]["name"], "Acme Inc");
    let al = &stored["3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e71"];
    assert_eq!(al["event"], "alias");
    assert_eq!(
        al["properties"]["$segment"]["previousId"],
        "0B9C7E2A-1D3F-4E5A-8B6C-7D8E9F0A1B2C"
    );

    // Spoor's own events, untouched by the Segment mapping.
    let sb = &stored[&spoor_batch_id];
    assert_eq!(sb["event"], "add_to_cart");
    assert_eq!(sb["properties"], json!({"sku": "s-1"}));
    assert_eq!(stored[&spoor_track_id]["event"], "purchase");
    assert!(stored.values().any(|r| r["event"] == "Kept"));
    relay.shutdown().await;
}

#[test]
fn segment_over_the_rate_limit_is_429_with_retry_after() {
    // No NATS: nothing here needs to be stored.
    let edge = Edge::start(
        &edge_config(None)
            .var("RATE_LIMIT_EVENTS_PER_SEC", "1")
            .var("RATE_LIMIT_BURST", "2"),
    )
    .unwrap();
    let msg = || json!({"type": "track", "event": "x", "userId": "u", "messageId": uuid()});
    let post = || {
        let body = json!({"batch": [msg(), msg(), msg()], "writeKey": WRITE_KEY}).to_string();
        send(
            "POST",
            &format!("{}/v1/b", edge.url()),
            &[("Content-Type", "text/plain")],
            Some(body.as_bytes()),
        )
    };
    // A full bucket lets one request through; it drains it.
    assert_success(&post(), 3);
    let a = post();
    assert_eq!(
        (a.status, a.error().as_str()),
        (429, "rate_limited"),
        "{}",
        a.body
    );
    let retry_after: u64 = a
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
}
