//! No silent loss when the events stream fills: `SPOOR_EVENTS` is
//! `discard: new`, so during a ClickHouse outage a full stream refuses new
//! frames instead of dropping stored ones. Through the real edge (under
//! `wrangler dev`, for the spill queue), a relay and a ClickHouse server
//! that goes down:
//!
//! - an existing stream (the old `discard: old` definition) is moved to
//!   `discard: new` by the relay, at the test's tiny `max_bytes`;
//! - before the stream fills, the relay's `spoor_relay_stream_fullness_ratio`
//!   and `/healthz` ("degraded: …", still 200 unless something fails) and
//!   the edge's `/healthz` (`"status": "degraded"`) warn, with nothing
//!   refused yet;
//! - once full, durable acks are refused with 503 `stream_full` and
//!   `Retry-After`, fast acks are answered 202 and their frames spilled,
//!   the refusals counted by reason; the stream never holds more than its
//!   limit;
//! - after ClickHouse recovers and the limit is raised, ClickHouse holds
//!   exactly the events the edge accepted (durable 202s and every fast
//!   202, spilled or not), each once, and none of the refused ones.
//!
//! With `discard: old` the stream would never refuse: the 503s this test
//! waits for would not come, and the oldest stored frames would be dropped
//! while ClickHouse was down, so the final count would fall short.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::DiscardPolicy;
use serde_json::{json, Value};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::{NatsRole, NatsServer};

use crate::e2e::{send, uuid, Answer};
use crate::relay::query;
use crate::support::{eventually, eventually_within, sample_value, Relay};

const STREAM: &str = "SPOOR_EVENTS";
const PROJECT: &str = "shop";
const KEY: &str = "wk_shop";
const REGION: &str = "full-test";
/// Room for about twenty of the requests below.
const MAX_BYTES: i64 = 48 * 1024;
const DEGRADED_AT: f64 = 0.5;

/// One request: three events of one device (one partition, so one frame of
/// about 2 KB that LZ4 cannot shrink), with fresh ids.
fn request() -> (String, Vec<String>) {
    let device = uuid();
    let ids: Vec<String> = (0..3).map(|_| uuid()).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            let pad: String = (0..10).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
            json!({"event": "page_view", "anonymous_id": device, "event_id": id, "properties": {"pad": pad}})
        })
        .collect();
    (json!({ "batch": events }).to_string(), ids)
}

fn post(edge: &Edge, durable: bool, body: &str) -> Answer {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Spoor-Write-Key", KEY),
    ];
    if durable {
        headers.push(("X-Spoor-Ack", "durable"));
    }
    send(
        "POST",
        &format!("{}/v1/batch", edge.url()),
        &headers,
        Some(body.as_bytes()),
    )
}

fn edge_health(edge: &Edge) -> Value {
    let a = send("GET", &format!("{}/healthz", edge.url()), &[], None);
    assert_eq!(
        a.status, 200,
        "degraded or not, the edge answers 200: {}",
        a.body
    );
    a.json()
}

fn edge_metric(edge: &Edge, sample: &str) -> f64 {
    let a = send("GET", &format!("{}/metrics", edge.url()), &[], None);
    assert_eq!(a.status, 200, "{}", a.body);
    sample_value(&a.body, sample)
}

fn labels(name: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!("{name}{{region=\"{REGION}\"}}")
    } else {
        format!("{name}{{region=\"{REGION}\",{extra}}}")
    }
}

/// (bytes, max_bytes, discard) of the stream, as JetStream reports them.
async fn stream_state(js: &jetstream::Context) -> (u64, i64, DiscardPolicy) {
    let mut s = js.get_stream(STREAM).await.unwrap();
    let info = s.info().await.unwrap();
    (info.state.bytes, info.config.max_bytes, info.config.discard)
}

async fn stored_ids(ch: &ClickHouseServer, db: &str) -> (u64, u64, BTreeSet<String>) {
    let stats = query(
        ch,
        format!("SELECT count(), uniqExact(event_id) FROM {db}.events FORMAT TabSeparated"),
    )
    .await;
    let (count, uniq) = stats.trim().split_once('\t').unwrap();
    let ids = query(
        ch,
        format!("SELECT DISTINCT toString(event_id) FROM {db}.events FORMAT TabSeparated"),
    )
    .await;
    (
        count.parse().unwrap(),
        uniq.parse().unwrap(),
        ids.lines().map(str::to_string).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_new_events_and_loses_none_it_acknowledged() {
    let nats = NatsServer::start().unwrap();
    let admin = jetstream::new(nats.connect(NatsRole::Admin).await.unwrap());
    // An existing deployment: the stream as defined before `discard: new`.
    let mut old = spoor_relay::source::nats::stream_config(STREAM).unwrap();
    old.discard = DiscardPolicy::Old;
    old.max_messages = -1;
    admin.create_stream(old).await.unwrap();

    // A private ClickHouse this test stops and restarts.
    let ch = &tokio::task::block_in_place(ClickHouseServer::start).unwrap();
    let db = "stream_full";
    let mut config = crate::relay::config(&nats, ch.http_url(), db);
    config.stream_limits.max_bytes = Some(MAX_BYTES);
    config.stream_degraded_at = DEGRADED_AT;
    let relay = Relay::start(config.clone()).await;
    let (bytes, max_bytes, discard) = stream_state(&admin).await;
    assert_eq!(
        (bytes, max_bytes, discard),
        (0, MAX_BYTES, DiscardPolicy::New),
        "the relay moves an existing stream to discard new, at its limit"
    );

    let edge = Edge::start_wrangler(
        &EdgeConfig::for_nats(&nats)
            .var("WRITE_KEYS", json!({ KEY: PROJECT }).to_string())
            .var("REGION", REGION)
            .var("PARTITIONS", "4")
            .var("PUBLISH_TIMEOUT_MS", "2000")
            .var("PUBLISH_ATTEMPTS", "2")
            .var("PUBLISH_RETRY_BASE_MS", "50")
            .var("SPILL_RETRY_DELAY_S", "1")
            .var("STREAM_FULLNESS_DEGRADED", DEGRADED_AT.to_string())
            .var("STREAM_INFO_TTL_MS", "200"),
    )
    .unwrap();
    let h = edge_health(&edge);
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["stream"]["max_bytes"], MAX_BYTES, "{h}");
    assert_eq!(relay.get("/healthz").await, (200, "ok\n".to_string()));

    tokio::task::block_in_place(|| ch.stop());
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();

    // 1. Durable requests until the stream is past the threshold, with
    // room left: every one is acknowledged.
    loop {
        let (body, ids) = request();
        let a = post(&edge, true, &body);
        assert_eq!(a.status, 202, "room left, yet: {}", a.body);
        accepted.extend(ids);
        let (bytes, _, _) = stream_state(&admin).await;
        let fill = bytes as f64 / MAX_BYTES as f64;
        if fill >= DEGRADED_AT {
            assert!(
                fill < 0.8,
                "stopped at {fill}: too close to full to prove an early warning"
            );
            break;
        }
    }
    // The warnings, while nothing has been refused.
    let ratio = r#"spoor_relay_stream_fullness_ratio{limit="bytes"}"#;
    eventually("the relay's fullness gauge", || async {
        (relay.metric(ratio).await >= DEGRADED_AT).then_some(())
    })
    .await;
    let relay_health = eventually("the relay's /healthz degraded", || async {
        let (status, body) = relay.get("/healthz").await;
        body.lines()
            .any(|l| l.starts_with("degraded: stream SPOOR_EVENTS is "))
            .then_some((status, body))
    })
    .await;
    // Degraded alone is 200, the reasons one per line; once an insert has
    // failed (ClickHouse is down) the relay fails (503) with that on the
    // first line and the degradation after it.
    match relay_health.0 {
        200 => assert!(relay_health.1.starts_with("degraded: "), "{relay_health:?}"),
        503 => assert!(
            relay_health.1.starts_with("last ClickHouse insert failed"),
            "{relay_health:?}"
        ),
        _ => panic!("{relay_health:?}"),
    }
    let h = eventually("the edge's /healthz degraded", || async {
        let h = edge_health(&edge);
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    let fullness = h["stream"]["fullness"].as_f64().unwrap();
    assert!((DEGRADED_AT..0.8).contains(&fullness), "{h}");
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("stream SPOOR_EVENTS is "),
        "{h}"
    );
    let refused_home = labels(
        "spoor_edge_publish_refused_total",
        r#"target="home",reason="stream_full""#,
    );
    assert_eq!(
        edge_metric(&edge, &refused_home),
        0.0,
        "warned before refusing"
    );

    // 2. Durable and fast requests until the full stream has refused
    // several durable ones and spilled fast ones.
    let spilled = labels("spoor_edge_events_spilled_total", "");
    let mut rounds = 0;
    while refused.len() < 3 * 4 || edge_metric(&edge, &spilled) == 0.0 {
        rounds += 1;
        assert!(
            rounds <= 60,
            "the stream never refused enough: {} durable events refused, {} spilled (is it discard: new?)",
            refused.len(),
            edge_metric(&edge, &spilled)
        );
        let (body, ids) = request();
        let a = post(&edge, true, &body);
        match a.status {
            202 => accepted.extend(ids),
            503 => {
                assert_eq!(a.error(), "stream_full", "{}", a.body);
                assert_eq!(a.header("retry-after"), Some("10"));
                refused.extend(ids);
            }
            other => panic!("durable: {other} {}", a.body),
        }
        let (body, ids) = request();
        let a = post(&edge, false, &body);
        assert_eq!(a.status, 202, "a fast ack is always answered: {}", a.body);
        assert_eq!(a.json()["accepted"], 3);
        accepted.extend(ids);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (bytes, _, _) = stream_state(&admin).await;
    assert!(bytes <= MAX_BYTES as u64, "{bytes} bytes stored");
    assert!(edge_metric(&edge, &refused_home) >= (refused.len() / 3) as f64);
    assert_eq!(
        edge_metric(
            &edge,
            &labels(
                "spoor_edge_requests_rejected_total",
                r#"reason="stream_full""#
            )
        ),
        (refused.len() / 3) as f64
    );
    let h = edge_health(&edge);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("refused frames as full")),
        "{h}"
    );

    // 3. ClickHouse is back and the operator raises the limit (restarting
    // the relay with a bigger --stream-max-bytes): the stored frames are
    // inserted, the spilled ones replayed and inserted.
    tokio::task::block_in_place(|| ch.restart()).unwrap();
    relay.shutdown().await;
    config.stream_limits.max_bytes = Some(MAX_BYTES * 32);
    let relay = Relay::start(config).await;
    let expected = accepted.len() as u64;
    eventually_within(
        "every accepted event in ClickHouse",
        Duration::from_secs(120),
        || async {
            let (count, _, _) = stored_ids(ch, db).await;
            (count >= expected).then_some(())
        },
    )
    .await;
    // Settle: nothing more arrives (no duplicate, no refused event).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (count, uniq, ids) = stored_ids(ch, db).await;
    assert_eq!((count, uniq), (expected, expected));
    assert_eq!(
        ids, accepted,
        "ClickHouse holds exactly the accepted events"
    );
    assert!(ids.is_disjoint(&refused), "a refused event was stored");
    assert_eq!(
        edge_metric(&edge, &labels("spoor_edge_spill_failed_events_total", "")),
        0.0
    );
    assert!(
        edge_metric(&edge, &labels("spoor_edge_events_replayed_total", ""))
            >= edge_metric(&edge, &spilled)
    );
    eventually("the edge healthy again", || async {
        let h = edge_health(&edge);
        // Refusals are remembered for a minute; the fullness is back down.
        (h["stream"]["fullness"].as_f64().unwrap() < DEGRADED_AT).then_some(())
    })
    .await;
    relay.shutdown().await;
}
