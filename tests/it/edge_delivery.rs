//! The edge's delivery guarantees on the real parts: the WASM build in
//! workerd (or under `wrangler dev` for Queues) publishing to real
//! nats-servers with JetStream.
//!
//! - Fast ack: 202 at once, `X-Spoor-Ack: fast`, and the frame still lands.
//! - Durable ack (header, query flag, critical event): the frame is in the
//!   stream when the 202 arrives; 503 + Retry-After when NATS is down.
//! - Failover to the secondary region, with the home region refusing or
//!   hanging (a fast ack does not wait for it, a durable one does).
//! - Spill: both regions down, fast acks go to the SPILL queue and the queue
//!   consumer replays them once NATS is back, with the same Nats-Msg-Id and
//!   no duplicate in the stream, big frames split into stable pieces.
//! - Rate limit: 429 + Retry-After per write key while other keys pass.
//! - `/metrics` counters move with all of the above.

use spoor_tests::nats::NatsRole;
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};
use spoor_core::decode_message;
use spoor_core::route::{batch_id, partition_of};
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;

use crate::e2e::{send, uuid, Answer};
use crate::support::{eventually, sample_value};

const PROJECT: &str = "shop";
const KEY: &str = "wk_shop";
const STREAM: &str = "SPOOR_EVENTS";
const PARTITIONS: u32 = 4;
const REGION: &str = "edge-test";

fn config(home: impl Into<String>) -> EdgeConfig {
    with_vars(EdgeConfig::new(home))
}

/// The edge publishing to `nats` as deployed (TLS, the edge's nkey).
fn config_for(nats: &NatsServer) -> EdgeConfig {
    with_vars(EdgeConfig::for_nats(nats))
}

fn with_vars(config: EdgeConfig) -> EdgeConfig {
    config
        .var(
            "WRITE_KEYS",
            json!({ KEY: PROJECT, "wk_blog": "blog", "wk_big": "shop" }).to_string(),
        )
        .var("REGION", REGION)
        .var("PARTITIONS", PARTITIONS.to_string())
        .var(
            "CRITICAL_EVENTS",
            json!({ PROJECT: ["purchase"] }).to_string(),
        )
        .var("PUBLISH_TIMEOUT_MS", "2000")
}

/// An address where nothing listens: connects are refused at once.
fn dead_addr() -> String {
    format!("127.0.0.1:{}", spoor_tests::tools::free_port().unwrap())
}

/// One event per `(device, name)`, with fresh ids; returns the body and the ids.
fn batch(events: &[(&str, &str)]) -> (String, Vec<String>) {
    let mut ids = Vec::new();
    let evs: Vec<Value> = events
        .iter()
        .map(|(device, name)| {
            let id = uuid();
            ids.push(id.clone());
            json!({"event": name, "anonymous_id": device, "event_id": id})
        })
        .collect();
    (json!({ "batch": evs }).to_string(), ids)
}

fn post(url: &str, key: &str, extra: &[(&str, &str)], body: &str) -> Answer {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Spoor-Write-Key", key),
    ];
    headers.extend_from_slice(extra);
    send("POST", url, &headers, Some(body.as_bytes()))
}

fn ack_ms(a: &Answer) -> u64 {
    a.header("x-spoor-ack-ms")
        .unwrap_or_else(|| panic!("no X-Spoor-Ack-Ms: {:?}", a.headers))
        .parse()
        .unwrap()
}

fn metrics(edge: &Edge) -> String {
    let a = send("GET", &format!("{}/metrics", edge.url()), &[], None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    a.body
}

fn metric(edge: &Edge, sample: &str) -> f64 {
    sample_value(&metrics(edge), sample)
}

fn labels(name: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!("{name}{{region=\"{REGION}\"}}")
    } else {
        format!("{name}{{region=\"{REGION}\",{extra}}}")
    }
}

/// One stored message of the events stream.
#[derive(Debug)]
struct Stored {
    msg_id: String,
    event_ids: Vec<String>,
}

/// The events stream on one nats-server, created from deploy/ like the relay does.
struct Stream {
    js: jetstream::Context,
}

impl Stream {
    async fn connect(nats: &NatsServer) -> Stream {
        let client = nats.connect(NatsRole::Admin).await.unwrap();
        let js = jetstream::new(client);
        spoor_relay::source::nats::ensure_stream(&js, STREAM)
            .await
            .unwrap();
        Stream { js }
    }

    async fn messages(&self) -> Vec<Stored> {
        let mut stream = self.js.get_stream(STREAM).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if state.messages == 0 {
                break;
            }
            let m = stream.get_raw_message(seq).await.unwrap();
            let msg_id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.to_string())
                .unwrap_or_default();
            // A link's coalesced message holds several frames under a
            // bundle id; a lone frame is published under its own batch id.
            let frames = decode_message(&m.payload, 1 << 24).unwrap();
            if !spoor_core::codec::is_bundle(&m.payload) {
                assert_eq!(
                    frames[0].batch_id, msg_id,
                    "a frame's batch id is its Nats-Msg-Id"
                );
            }
            let event_ids = frames
                .iter()
                .flat_map(|f| f.events.iter().map(|e| e.event_id.to_string()))
                .collect();
            out.push(Stored { msg_id, event_ids });
        }
        out
    }

    /// Event ids in the stream, each with how many times it is stored.
    async fn event_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for m in self.messages().await {
            for id in m.event_ids {
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    }

    /// Waits until every id in `ids` is stored.
    async fn wait_for(&self, what: &str, ids: &[String]) -> BTreeMap<String, usize> {
        eventually(what, || async {
            let counts = self.event_counts().await;
            ids.iter()
                .all(|id| counts.contains_key(id))
                .then_some(counts)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_ack_answers_202_at_once_and_the_frame_still_reaches_jetstream() {
    let nats = NatsServer::start().unwrap();
    let stream = Stream::connect(&nats).await;
    let edge = Edge::start(&config_for(&nats)).unwrap();
    let url = format!("{}/v1/batch", edge.url());

    let (body, ids) = batch(&[
        ("d1", "page_view"),
        ("d2", "page_view"),
        ("d3", "add_to_cart"),
    ]);
    // One bad event rides along: it is rejected alone and counted by reason.
    let body = body.replacen("\"batch\":[", "\"batch\":[{\"event\":\"page_view\"},", 1);
    let a = post(&url, KEY, &[], &body);
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.header("x-spoor-ack"), Some("fast"));
    assert_eq!(a.json()["accepted"], 3);
    assert!(ack_ms(&a) < 5_000);

    let counts = stream
        .wait_for("the fast-acked events in JetStream", &ids)
        .await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1));
    // Frames are named by content: project, partition, event ids.
    let mut by_partition: BTreeMap<u32, Vec<uuid::Uuid>> = BTreeMap::new();
    for (i, d) in ["d1", "d2", "d3"].iter().enumerate() {
        by_partition
            .entry(partition_of(d, PARTITIONS))
            .or_default()
            .push(ids[i].parse().unwrap());
    }
    let expected: BTreeSet<String> = by_partition
        .iter()
        .map(|(p, ids)| batch_id(PROJECT, *p, ids))
        .collect();
    let stored: BTreeSet<String> = stream
        .messages()
        .await
        .into_iter()
        .map(|m| m.msg_id)
        .collect();
    assert_eq!(stored, expected);

    let accepted = labels("spoor_edge_events_accepted_total", "ack=\"fast\"");
    let published = labels("spoor_edge_events_published_total", "target=\"home\"");
    let rejected = labels(
        "spoor_edge_events_rejected_total",
        "reason=\"missing_identity\"",
    );
    eventually("published counter", || async {
        (metric(&edge, &published) == 3.0).then_some(())
    })
    .await;
    assert_eq!(metric(&edge, &accepted), 3.0);
    assert_eq!(metric(&edge, &rejected), 1.0);
    let a = post(&url, "nope", &[], &body);
    assert_eq!(a.status, 401);
    assert_eq!(
        metric(
            &edge,
            &labels(
                "spoor_edge_requests_rejected_total",
                "reason=\"invalid_write_key\""
            )
        ),
        1.0
    );

    // With METRICS_TOKEN set, /metrics wants it.
    let locked = Edge::start(&config_for(&nats).var("METRICS_TOKEN", "s3cret")).unwrap();
    let metrics_url = format!("{}/metrics", locked.url());
    let a = send("GET", &metrics_url, &[], None);
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "metrics_token"),
        "{}",
        a.body
    );
    let a = send(
        "GET",
        &metrics_url,
        &[("Authorization", "Bearer nope")],
        None,
    );
    assert_eq!(a.status, 401);
    let a = send(
        "GET",
        &metrics_url,
        &[("Authorization", "Bearer s3cret")],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("spoor_edge_events_accepted_total"));
}

/// How a request asks for a durable ack: a name, the URL, extra headers and
/// the name of its second event.
type DurableCase<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_ack_answers_after_the_puback_and_503_when_nats_is_down() {
    let nats = NatsServer::start().unwrap();
    let stream = Stream::connect(&nats).await;
    let edge = Edge::start(&config_for(&nats)).unwrap();
    let base = edge.url();

    let cases: [DurableCase; 3] = [
        (
            "header",
            format!("{base}/v1/batch"),
            vec![("X-Spoor-Ack", "durable")],
            "page_view",
        ),
        (
            "query flag",
            format!("{base}/v1/batch?ack=durable"),
            vec![],
            "page_view",
        ),
        (
            "critical event",
            format!("{base}/v1/batch"),
            vec![],
            "purchase",
        ),
    ];
    for (how, url, extra, name) in &cases {
        let (body, ids) = batch(&[("d1", "page_view"), ("d2", name)]);
        let a = post(url, KEY, extra, &body);
        assert_eq!(a.status, 202, "{how}: {}", a.body);
        assert_eq!(a.header("x-spoor-ack"), Some("durable"), "{how}");
        ack_ms(&a);
        // No waiting: a durable 202 means JetStream already has every frame.
        let counts = stream.event_counts().await;
        for id in &ids {
            assert_eq!(
                counts.get(id),
                Some(&1),
                "{how}: {id} not in the stream at the 202"
            );
        }
    }
    // Critical names are per project: "purchase" is not critical for blog.
    let (body, _) = batch(&[("d9", "purchase")]);
    let a = post(&format!("{base}/v1/batch"), "wk_blog", &[], &body);
    assert_eq!(a.header("x-spoor-ack"), Some("fast"), "{}", a.body);
    // A client cannot downgrade a critical batch.
    let a = post(
        &format!("{base}/v1/batch?ack=fast"),
        KEY,
        &[("X-Spoor-Ack", "fast")],
        &body,
    );
    assert_eq!(a.header("x-spoor-ack"), Some("durable"), "{}", a.body);
    let durable = labels("spoor_edge_events_accepted_total", "ack=\"durable\"");
    assert_eq!(metric(&edge, &durable), 7.0);

    nats.stop();
    for (how, url, extra, name) in &cases {
        let (body, _) = batch(&[("d3", name)]);
        let a = post(url, KEY, extra, &body);
        assert_eq!(
            (a.status, a.error().as_str()),
            (503, "unavailable"),
            "{how}: {}",
            a.body
        );
        assert_eq!(a.header("retry-after"), Some("1"), "{how}");
        assert!(
            a.json().get("accepted").is_none(),
            "{how}: a 503 acknowledges nothing"
        );
    }
    assert_eq!(
        metric(&edge, &durable),
        7.0,
        "a 503 counts nothing as accepted"
    );
    assert_eq!(
        metric(
            &edge,
            &labels(
                "spoor_edge_requests_rejected_total",
                "reason=\"unavailable\""
            )
        ),
        3.0
    );

    // The same outage with a fast ack: answered at once; plain workerd has no
    // spill queue, so the loss is logged and counted, never silent.
    let (body, _) = batch(&[("d4", "page_view"), ("d5", "page_view")]);
    let a = post(&format!("{base}/v1/batch"), KEY, &[], &body);
    assert_eq!(
        (a.status, a.header("x-spoor-ack")),
        (202, Some("fast")),
        "{}",
        a.body
    );
    let failed = labels("spoor_edge_spill_failed_events_total", "");
    eventually("the failed spill to be counted", || async {
        (metric(&edge, &failed) == 2.0).then_some(())
    })
    .await;
    assert!(
        metric(
            &edge,
            &labels("spoor_edge_publish_failures_total", "target=\"home\"")
        ) >= 4.0
    );
    assert!(
        edge.log()
            .contains("2 of 2 events neither published nor spilled"),
        "{}",
        edge.log()
    );
}

/// Accepts TCP connections and never answers: a hung nats-server.
fn hung_server() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_fails_over_to_the_secondary_region() {
    let secondary = NatsServer::start().unwrap();
    let stream = Stream::connect(&secondary).await;

    // Home refuses connections.
    let edge = Edge::start(&config(dead_addr()).secondary(&secondary)).unwrap();
    let url = format!("{}/v1/batch", edge.url());
    let (fast_body, fast_ids) = batch(&[("d1", "page_view"), ("d2", "page_view")]);
    let a = post(&url, KEY, &[], &fast_body);
    assert_eq!(
        (a.status, a.header("x-spoor-ack")),
        (202, Some("fast")),
        "{}",
        a.body
    );
    let (durable_body, durable_ids) = batch(&[("d3", "purchase")]);
    let a = post(&url, KEY, &[], &durable_body);
    assert_eq!(
        (a.status, a.header("x-spoor-ack")),
        (202, Some("durable")),
        "{}",
        a.body
    );
    assert_eq!(
        stream.event_counts().await.get(&durable_ids[0]),
        Some(&1),
        "durable 202 before the secondary's PubAck"
    );
    stream
        .wait_for("fast events on the secondary", &fast_ids)
        .await;
    let on_secondary = labels("spoor_edge_events_published_total", "target=\"secondary\"");
    eventually("secondary counter", || async {
        (metric(&edge, &on_secondary) == 3.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            &edge,
            &labels("spoor_edge_events_published_total", "target=\"home\"")
        ),
        0.0
    );
    assert!(
        metric(
            &edge,
            &labels("spoor_edge_publish_failures_total", "target=\"home\"")
        ) >= 2.0
    );

    // Home hangs: a fast ack does not wait for it, a durable one does (up to
    // the handshake timeout) and then succeeds on the secondary.
    let (_hung, hung_addr) = hung_server();
    let edge = Edge::start(
        &config(hung_addr)
            .secondary(&secondary)
            .var("PUBLISH_TIMEOUT_MS", "1500"),
    )
    .unwrap();
    let url = format!("{}/v1/batch", edge.url());
    let (body, ids) = batch(&[("d4", "page_view")]);
    let started = Instant::now();
    let a = post(&url, KEY, &[], &body);
    assert_eq!(
        (a.status, a.header("x-spoor-ack")),
        (202, Some("fast")),
        "{}",
        a.body
    );
    assert!(
        ack_ms(&a) < 1_500,
        "a fast ack waited for the hung home region: {} ms",
        ack_ms(&a)
    );
    let (body, durable_ids) = batch(&[("d5", "page_view")]);
    let a = post(&url, KEY, &[("X-Spoor-Ack", "durable")], &body);
    assert_eq!(
        (a.status, a.header("x-spoor-ack")),
        (202, Some("durable")),
        "{}",
        a.body
    );
    assert!(
        ack_ms(&a) >= 1_500,
        "a durable ack cannot beat the home timeout: {} ms",
        ack_ms(&a)
    );
    assert_eq!(stream.event_counts().await.get(&durable_ids[0]), Some(&1));
    stream
        .wait_for("the fast event on the secondary", &ids)
        .await;
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spill_queue_carries_fast_acks_through_an_outage_with_the_same_msg_ids() {
    let nats = NatsServer::start().unwrap();
    Stream::connect(&nats).await;
    nats.stop();
    let edge = Edge::start_wrangler(
        &config_for(&nats)
            .var("PUBLISH_TIMEOUT_MS", "1000")
            .var("PUBLISH_ATTEMPTS", "2")
            .var("PUBLISH_RETRY_BASE_MS", "50")
            // Small enough that the big batch below must be split.
            .var("SPILL_MAX_BYTES", "6000")
            .var("SPILL_RETRY_DELAY_S", "1"),
    )
    .unwrap();
    let url = format!("{}/v1/batch", edge.url());

    let (small, small_ids) = batch(&[("d1", "page_view"), ("d1", "add_to_cart")]);
    // One device: one frame, with incompressible padding so it exceeds 6 KB.
    let big_events: Vec<Value> = (0..60)
        .map(|i| {
            let pad: String = uuid::Uuid::new_v4().simple().to_string().repeat(4);
            json!({"event": "page_view", "anonymous_id": "d2", "event_id": uuid(), "properties": {"i": i, "pad": pad}})
        })
        .collect();
    let big_ids: Vec<String> = big_events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let big = json!({ "batch": big_events }).to_string();
    for body in [&small, &big, &small] {
        let a = post(&url, KEY, &[], body);
        assert_eq!(
            (a.status, a.header("x-spoor-ack")),
            (202, Some("fast")),
            "{}",
            a.body
        );
    }
    // A durable ack in the same outage is refused, not spilled.
    let a = post(&url, KEY, &[("X-Spoor-Ack", "durable")], &small);
    assert_eq!(a.status, 503, "{}", a.body);

    let spilled = labels("spoor_edge_events_spilled_total", "");
    let spill_messages = labels("spoor_edge_spill_messages_total", "");
    let retries = labels("spoor_edge_replay_retries_total", "");
    eventually(
        "all fast-acked events spilled and a replay tried",
        || async {
            let m = metrics(&edge);
            (sample_value(&m, &spilled) == 64.0 && sample_value(&m, &retries) >= 1.0).then_some(())
        },
    )
    .await;
    let pieces = metric(&edge, &spill_messages);
    assert!(
        pieces >= 4.0,
        "the big frame was split: {pieces} queue messages\n{}",
        metrics(&edge)
    );
    assert_eq!(
        metric(&edge, &labels("spoor_edge_spill_failed_events_total", "")),
        0.0
    );

    nats.restart().unwrap();
    let stream = Stream::connect(&nats).await;
    let mut all: Vec<String> = small_ids.clone();
    all.extend(big_ids.iter().cloned());
    let counts = stream
        .wait_for("spilled events replayed into JetStream", &all)
        .await;
    let replayed = labels("spoor_edge_events_replayed_total", "");
    eventually("every spill message replayed", || async {
        (metric(&edge, &replayed) >= 64.0).then_some(())
    })
    .await;
    // Settle, then check nothing was stored twice: the small batch was spilled
    // twice under one Nats-Msg-Id and JetStream kept one copy.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let messages = stream.messages().await;
    let counts_after = stream.event_counts().await;
    assert_eq!(counts_after, counts);
    assert_eq!(counts_after.len(), 62, "{counts_after:?}");
    assert!(
        counts_after.values().all(|n| *n == 1),
        "an event stored twice: {counts_after:?}"
    );
    let small_msg_id = batch_id(
        PROJECT,
        partition_of("d1", PARTITIONS),
        &small_ids
            .iter()
            .map(|i| i.parse().unwrap())
            .collect::<Vec<_>>(),
    );
    assert!(
        messages
            .iter()
            .any(|m| m.msg_id == small_msg_id && m.event_ids == small_ids),
        "the replayed frame keeps the Nats-Msg-Id it was spilled with"
    );
    let ids: BTreeSet<&String> = messages.iter().map(|m| &m.msg_id).collect();
    assert_eq!(ids.len(), messages.len());
    // Queue messages: the small frame twice plus the pieces; stored: the
    // small frame once plus the pieces.
    assert_eq!(
        messages.len() as f64,
        pieces - 1.0,
        "one message for the small frame, one per piece"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after_per_write_key() {
    let nats = NatsServer::start().unwrap();
    let stream = Stream::connect(&nats).await;
    let edge = Edge::start(
        &config_for(&nats)
            // Slow refill, so a loaded box pausing between requests cannot
            // refill the bucket before the over-limit request.
            .var("RATE_LIMIT_EVENTS_PER_SEC", "2")
            .var("RATE_LIMIT_BURST", "10")
            .var(
                "RATE_LIMIT_OVERRIDES",
                json!({"wk_big": {"events_per_sec": 1000, "burst": 1000}}).to_string(),
            ),
    )
    .unwrap();
    let url = format!("{}/v1/batch", edge.url());
    let ten: Vec<(&str, &str)> = (0..10).map(|_| ("d1", "page_view")).collect();

    let (body, _) = batch(&ten);
    let a = post(&url, KEY, &[], &body);
    assert_eq!(a.status, 202, "{}", a.body);
    let six: Vec<(&str, &str)> = (0..6).map(|_| ("d1", "page_view")).collect();
    let (body, over_ids) = batch(&six);
    let a = post(&url, KEY, &[], &body);
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
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    assert!(
        a.json()["message"].as_str().unwrap().contains("2 events/s"),
        "{}",
        a.body
    );

    // Other keys have their own buckets; an override lifts the limit.
    let (body, _) = batch(&ten);
    assert_eq!(post(&url, "wk_blog", &[], &body).status, 202);
    let hundred: Vec<(&str, &str)> = (0..100).map(|_| ("d2", "page_view")).collect();
    let (body, _) = batch(&hundred);
    assert_eq!(post(&url, "wk_big", &[], &body).status, 202);

    // After Retry-After the same request passes.
    std::thread::sleep(Duration::from_secs(retry_after));
    let (body2, _) = batch(&[("d1", "page_view")]);
    let a = post(&url, KEY, &[], &body2);
    assert_eq!(a.status, 202, "{}", a.body);

    assert_eq!(
        metric(&edge, &labels("spoor_edge_rate_limited_requests_total", "")),
        1.0
    );
    assert_eq!(
        metric(&edge, &labels("spoor_edge_rate_limited_events_total", "")),
        6.0
    );
    assert_eq!(
        metric(
            &edge,
            &labels(
                "spoor_edge_requests_rejected_total",
                "reason=\"rate_limited\""
            )
        ),
        1.0
    );
    assert_eq!(
        metric(
            &edge,
            &labels("spoor_edge_events_accepted_total", "ack=\"fast\"")
        ),
        121.0
    );
    // Nothing of the refused request was published.
    let published = labels("spoor_edge_events_published_total", "target=\"home\"");
    eventually("accepted events published", || async {
        (metric(&edge, &published) == 121.0).then_some(())
    })
    .await;
    let counts = stream.event_counts().await;
    assert!(over_ids.iter().all(|id| !counts.contains_key(id)));
}
