//! The edge's NATS links (Durable Objects holding one long-lived
//! connection each) in plain workerd against a real nats-server:
//!
//! - 10,000 requests open no more connections than there are links (plus
//!   slack), where the per-request path opened one each; every event is in
//!   the stream and nothing fell back to a per-request socket;
//! - durable acks are group-committed: concurrent requests for one
//!   partition share JetStream messages, and each gets its 202 after the
//!   PubAck of the message holding its events;
//! - a retried request whose events were already stored inside a coalesced
//!   message is stored once (the relay's event-id dedup), counted without
//!   FINAL;
//! - fast acks' frames are gathered across requests: concurrent requests
//!   share calls to their link, and every event is stored exactly once;
//! - a link reconnects lazily after nats-server restarts;
//! - a chunked 50 MB body is cut off at the limit with 413 while other
//!   requests' publishes complete.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use spoor_relay::{ClickHouseConfig, RelayConfig};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::metrics;
use spoor_tests::nats::{NatsRole, NatsServer};

use crate::e2e::{send, uuid, Answer};
use crate::support::{eventually, nats_endpoint, Relay};

const WRITE_KEY: &str = "wk_link";
const PROJECT: &str = "link";
const STREAM: &str = "SPOOR_EVENTS";
const SHARDS: u64 = 2;

fn edge_config(nats: &NatsServer) -> EdgeConfig {
    EdgeConfig::for_nats(nats)
        .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
        .var("REGION", "lk")
        .var("PARTITIONS", "16")
        .var("SHARDS", SHARDS.to_string())
        .var("RATE_LIMIT_EVENTS_PER_SEC", "0")
}

async fn admin(nats: &NatsServer) -> async_nats::Client {
    nats.connect(NatsRole::Admin).await.unwrap()
}

async fn create_stream(nats: &NatsServer) -> jetstream::Context {
    let js = jetstream::new(admin(nats).await);
    spoor_relay::source::nats::ensure_stream(&js, STREAM)
        .await
        .unwrap();
    js
}

/// Connections the server has seen, open and closed.
fn connections_seen(nats: &NatsServer) -> u64 {
    let url = format!(
        "http://127.0.0.1:{}/connz?state=all&limit=100000",
        nats.monitor_port()
    );
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["total"].as_u64().unwrap()
}

/// The names of the connections the server has seen, open and closed, in
/// the order they connected ('' for one cut off before its CONNECT named it).
fn connection_names(nats: &NatsServer) -> Vec<String> {
    let url = format!(
        "http://127.0.0.1:{}/connz?state=all&sort=cid&limit=100000",
        nats.monitor_port()
    );
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A batch of `n` events from one device, and their ids.
fn batch(device: &str, n: usize) -> (String, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|_| uuid()).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"event": "page_view", "event_id": id, "anonymous_id": device,
                   "properties": {"path": "/"}})
        })
        .collect();
    (json!({ "batch": events }).to_string(), ids)
}

const DURABLE: (&str, &str) = ("X-Spoor-Ack", "durable");

fn post(edge: &Edge, body: &str, durable: bool) -> Answer {
    post_batch(
        edge,
        WRITE_KEY,
        body,
        if durable { &[DURABLE] } else { &[] },
    )
}

/// POSTs a JSON batch to the edge with `write_key` and `extra` headers.
pub(crate) fn post_batch(
    edge: &Edge,
    write_key: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Spoor-Write-Key", write_key),
    ];
    headers.extend_from_slice(extra);
    send(
        "POST",
        &format!("{}/v1/batch", edge.url()),
        &headers,
        Some(body.as_bytes()),
    )
}

/// Posts `requests` fast-ack batches of `events` events from 16 senders at
/// once, request `i` from device `device(i)`; every answer must be a fast
/// 202. Answers the ids sent.
async fn post_fast_concurrently(
    edge: &Arc<Edge>,
    requests: usize,
    events: usize,
    device: fn(usize) -> String,
) -> BTreeSet<String> {
    let mut senders = Vec::new();
    for s in 0..16 {
        let edge = edge.clone();
        senders.push(tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            for i in (s..requests).step_by(16) {
                let (body, batch_ids) = batch(&device(i), events);
                let a = post(&edge, &body, false);
                assert_eq!(a.status, 202, "{}", a.body);
                assert_eq!(a.header("x-spoor-ack"), Some("fast"));
                ids.extend(batch_ids);
            }
            ids
        }));
    }
    let mut sent = BTreeSet::new();
    for s in senders {
        sent.extend(s.await.unwrap());
    }
    assert_eq!(sent.len(), requests * events);
    sent
}

/// Every event id in the stream (frames and bundles alike), and the
/// number of messages.
async fn stream_contents(js: &jetstream::Context) -> (u64, Vec<String>) {
    let stream = js.get_stream(STREAM).await.unwrap();
    let messages = stream.cached_info().state.messages;
    let mut ids = Vec::new();
    if messages == 0 {
        return (0, ids);
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut stream_msgs = consumer.messages().await.unwrap().take(messages as usize);
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), stream_msgs.next())
        .await
        .expect("reading the stream")
    {
        let m = m.unwrap();
        for batch in spoor_core::decode_message(&m.payload, 1 << 24).unwrap() {
            ids.extend(batch.events.iter().map(|e| e.event_id.to_string()));
        }
    }
    (messages, ids)
}

fn edge_metric(edge: &Edge, name: &str) -> f64 {
    metrics::sum(&metrics::fetch(&edge.url()).unwrap(), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_reuse_the_links_connections() {
    const REQUESTS: usize = 10_000;
    const EVENTS: usize = 2;
    let nats = NatsServer::start().unwrap();
    let js = create_stream(&nats).await;
    let before = connections_seen(&nats);
    let started = std::time::Instant::now();
    let edge = Arc::new(Edge::start(&edge_config(&nats)).unwrap());

    // Devices spread over partitions.
    let sent =
        post_fast_concurrently(&edge, REQUESTS, EVENTS, |i| format!("dev-{}", i % 500)).await;

    let frames = eventually("every frame published by the links", || async {
        let f = edge_metric(&edge, "spoor_edge_link_frames_total");
        let failed = edge_metric(&edge, "spoor_edge_link_failed_frames_total");
        if failed > 0.0 {
            let health = send("GET", &format!("{}/healthz", edge.url()), &[], None).body;
            panic!(
                "{failed} frames the links failed: {health}\n{}",
                nats.log_tail(40)
            );
        }
        (f as usize >= REQUESTS).then_some(f)
    })
    .await;
    assert_eq!(
        frames as usize, REQUESTS,
        "one frame per single-device request"
    );
    assert_eq!(
        edge_metric(&edge, "spoor_edge_link_fallback_requests_total"),
        0.0,
        "no request fell back to a socket of its own\n{}",
        edge.log()
    );
    let (messages, stored) = stream_contents(&js).await;
    let stored: BTreeSet<String> = stored.into_iter().collect();
    assert_eq!(stored, sent, "every accepted event is in the stream");
    assert!(
        messages <= REQUESTS as u64,
        "{messages} NATS messages for {REQUESTS} requests"
    );
    // Every connection the server saw during the run is accounted for:
    // - a link's one connection, or a handshake the network cut off and the
    //   link made again (`connect_retries`, which a loaded machine can
    //   provoke; cut off before CONNECT, it has no name);
    // - /healthz's stream-fullness ask, at most one per 5 s TTL.
    // No link opened a second connection for any of the 10,000 requests.
    let health: Value = tokio::task::block_in_place(|| {
        send("GET", &format!("{}/healthz", edge.url()), &[], None).json()
    });
    let elapsed = started.elapsed();
    // Listed by connection id: the ones before the edge started are the test's.
    let names = connection_names(&nats).split_off(before as usize);
    let opened = connections_seen(&nats) - before;
    let links = health["links"].as_array().unwrap();
    assert_eq!(links.len() as u64, SHARDS, "{health}");
    for link in links {
        assert!(
            link["connects"].as_u64().unwrap() <= 1,
            "a link reconnected during the run: {health}"
        );
    }
    let field = |name: &str| -> u64 { links.iter().map(|l| l[name].as_u64().unwrap()).sum() };
    let (connects, retries) = (field("connects"), field("connect_retries"));
    assert!(
        (1..=SHARDS).contains(&connects),
        "{connects} link connections for {REQUESTS} requests: {health}"
    );
    let named = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count() as u64;
    let (by_links, asks) = (named("spoor-edge-link-"), named("spoor-edge-health-"));
    let nameless = names.iter().filter(|n| n.is_empty()).count() as u64;
    assert!(
        by_links + nameless <= connects + retries,
        "{by_links} link connections and {nameless} unnamed ones for {REQUESTS} requests; \
         the links account for {connects} and {retries} retried handshakes: {health}"
    );
    assert!(
        asks <= 1 + elapsed.as_secs() / 5,
        "{asks} stream-info asks in {elapsed:?}, more than one per 5 s"
    );
    assert_eq!(
        opened,
        by_links + nameless + asks,
        "connections from something other than the links and /healthz: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_acks_share_hand_offs_and_every_event_is_stored_once() {
    const REQUESTS: usize = 600;
    const EVENTS: usize = 3;
    let nats = NatsServer::start().unwrap();
    let js = create_stream(&nats).await;
    let edge = Arc::new(Edge::start(&edge_config(&nats)).unwrap());

    let sent = post_fast_concurrently(&edge, REQUESTS, EVENTS, |i| format!("gather-{i}")).await;

    eventually("every fast ack's frame published by the links", || async {
        let f = edge_metric(&edge, "spoor_edge_link_frames_total");
        assert_eq!(
            edge_metric(&edge, "spoor_edge_link_failed_frames_total"),
            0.0,
            "{}",
            nats.log_tail(40)
        );
        (f as usize >= REQUESTS).then_some(())
    })
    .await;
    let requests = edge_metric(&edge, "spoor_edge_link_requests_total");
    let handoffs = edge_metric(&edge, "spoor_edge_link_handoffs_total");
    assert_eq!(
        requests as usize, REQUESTS,
        "every request's frames went to a link"
    );
    assert!(
        handoffs > 0.0 && handoffs < 0.75 * REQUESTS as f64,
        "{handoffs} calls to links for {REQUESTS} concurrent fast requests: frames were not gathered"
    );
    assert_eq!(
        edge_metric(&edge, "spoor_edge_link_fallback_requests_total"),
        0.0,
        "{}",
        edge.log()
    );
    let (_, stored) = stream_contents(&js).await;
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "an event was stored twice");
    assert_eq!(unique, sent, "every accepted event is in the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acks_are_group_committed_and_a_retry_is_stored_once() {
    const REQUESTS: usize = 24;
    const EVENTS: usize = 3;
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("edge_link");
    let mut relay_config = RelayConfig::new(
        nats_endpoint(&nats, NatsRole::Relay),
        ClickHouseConfig {
            url: ch.http_url(),
            database: db.clone(),
            user: None,
            password: None,
        },
    );
    relay_config.batch.flush_interval_ms = 200;
    let relay = Relay::start(relay_config).await;
    let js = jetstream::new(admin(&nats).await);
    // A wide window so that concurrent requests surely meet in one message.
    let edge = Arc::new(Edge::start(&edge_config(&nats).var("COALESCE_MS", "50")).unwrap());

    // Concurrent durable requests from one device: one partition, one link.
    let bodies: Vec<(String, Vec<String>)> =
        (0..REQUESTS).map(|_| batch("dev-group", EVENTS)).collect();
    let mut waits = Vec::new();
    for (body, _) in &bodies {
        let (edge, body) = (edge.clone(), body.clone());
        waits.push(tokio::task::spawn_blocking(move || {
            post(&edge, &body, true)
        }));
    }
    for w in waits {
        let a = w.await.unwrap();
        assert_eq!(a.status, 202, "{}", a.body);
        assert_eq!(a.header("x-spoor-ack"), Some("durable"));
    }
    // Every durable 202 came after its PubAck: all events are in the stream now.
    let (messages, stored) = stream_contents(&js).await;
    assert_eq!(stored.len(), REQUESTS * EVENTS);
    assert!(
        messages < REQUESTS as u64,
        "{REQUESTS} concurrent requests for one partition should share messages, got {messages}"
    );

    // The first request again, to the same link: the link remembers the
    // frame it stored inside the coalesced message and answers it without
    // publishing it again.
    let retry = post(&edge, &bodies[0].0, true);
    assert_eq!(retry.status, 202, "{}", retry.body);
    let (after, _) = stream_contents(&js).await;
    assert_eq!(after, messages, "the same link does not publish the retry");
    assert_eq!(
        edge_metric(&edge, "spoor_edge_link_duplicate_frames_total"),
        1.0
    );
    // The second request again, from another Cloudflare location: another
    // link, which has not seen it, publishes its frame bare under its own
    // id, unlike the coalesced message that already stored its events.
    let elsewhere = post_batch(
        &edge,
        WRITE_KEY,
        &bodies[1].0,
        &[DURABLE, ("X-Spoor-Test-Cf", r#"{"colo":"AMS"}"#)],
    );
    assert_eq!(elsewhere.status, 202, "{}", elsewhere.body);
    let (after, _) = stream_contents(&js).await;
    assert_eq!(after, messages + 1, "the retry is a new JetStream message");

    let expected = (REQUESTS * EVENTS) as u64;
    eventually("the retry's events dropped as duplicates", || async {
        (relay.metric("spoor_relay_events_deduped_total").await >= EVENTS as f64).then_some(())
    })
    .await;
    let counts = eventually("every event stored", || async {
        let row = tokio::task::block_in_place(|| {
            ch.query(&format!(
                "SELECT count(), uniqExact(event_id) FROM {db}.events \
                 WHERE project_id = '{PROJECT}' FORMAT TSV"
            ))
            .unwrap()
        });
        let v: Vec<u64> = row.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[1] >= expected).then_some(v)
    })
    .await;
    assert_eq!(
        counts,
        vec![expected, expected],
        "count() = uniqExact(event_id), no FINAL"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_reconnects_after_nats_restarts() {
    let nats = NatsServer::start().unwrap();
    create_stream(&nats).await;
    let edge = Edge::start(&edge_config(&nats)).unwrap();
    let one = |durable| post(&edge, &batch("dev-r", 1).0, durable);
    let a = tokio::task::block_in_place(|| one(true));
    assert_eq!(a.status, 202, "{}", a.body);

    nats.stop();
    let down = tokio::task::block_in_place(|| one(true));
    assert_eq!(down.status, 503, "{}", down.body);
    nats.restart().unwrap();
    let back = tokio::task::block_in_place(|| one(true));
    assert_eq!(back.status, 202, "{}", back.body);

    let health: Value = tokio::task::block_in_place(|| {
        send("GET", &format!("{}/healthz", edge.url()), &[], None).json()
    });
    let links = health["links"].as_array().unwrap();
    assert_eq!(links.len() as u64, SHARDS, "{health}");
    let used: Vec<&Value> = links.iter().filter(|l| l["connects"] != 0).collect();
    assert_eq!(used.len(), 1, "{health}");
    assert_eq!(
        used[0]["connects"], 2,
        "one reconnect after the restart: {health}"
    );
    assert_eq!(used[0]["connected"], true);
    assert!(
        used[0]["last_error"].is_string(),
        "the outage is remembered: {health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_50_mb_body_gets_413_and_other_publishes_complete() {
    let nats = NatsServer::start().unwrap();
    let js = create_stream(&nats).await;
    let edge = Arc::new(Edge::start(&edge_config(&nats)).unwrap());
    let addr = edge.url().trim_start_matches("http://").to_string();

    let big = std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             X-Spoor-Write-Key: {WRITE_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 64 * 1024];
        let mut written = 0usize;
        // The edge may answer and close long before 50 MB: a failed write
        // is expected then.
        while written < 50 << 20 {
            let framed = format!("{:x}\r\n", chunk.len());
            if tcp.write_all(framed.as_bytes()).is_err()
                || tcp.write_all(&chunk).is_err()
                || tcp.write_all(b"\r\n").is_err()
            {
                break;
            }
            written += chunk.len();
        }
        let _ = tcp.write_all(b"0\r\n\r\n");
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        (written, answer)
    });
    // Meanwhile, ordinary durable requests keep being stored.
    let mut sent = Vec::new();
    for i in 0..20 {
        let (body, ids) = batch(&format!("dev-{i}"), 2);
        let edge = edge.clone();
        let a = tokio::task::spawn_blocking(move || post(&edge, &body, true))
            .await
            .unwrap();
        assert_eq!(a.status, 202, "{}", a.body);
        sent.extend(ids);
    }
    let (written, answer) = tokio::task::spawn_blocking(move || big.join().unwrap())
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "after {written} bytes: {answer:?}"
    );
    assert!(answer.contains("payload_too_large"), "{answer}");
    let (_, stored) = stream_contents(&js).await;
    let stored: BTreeSet<String> = stored.into_iter().collect();
    assert!(sent.iter().all(|id| stored.contains(id)));
    // The edge is still well.
    let h =
        tokio::task::block_in_place(|| send("GET", &format!("{}/healthz", edge.url()), &[], None));
    assert_eq!(h.status, 200);
}
