//! Record and replay for load testers (`spoor-loadtest record`, `replay`)
//! on the real parts: the edge's WASM build in workerd, nats-server with
//! JetStream, a relay in this process and clickhouse-server.
//!
//! - Traffic sent through the pipeline is recorded from the events stream
//!   (as the ops role, through an ephemeral consumer), replayed at 10× with
//!   fresh ids and shifted times, and the replay's counts match the
//!   original's: every recorded event accepted again, stored once under its
//!   new id, arrivals kept (scaled).
//! - Replayed with the recorded ids, every event is accepted by the edge
//!   and still stored only once.
//! - A recording with bad lines is refused with each line's number and
//!   reason, and nothing is sent; with `--skip-bad-lines` the good lines
//!   are sent.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use spoor_loadtest::recording;
use spoor_loadtest::{RecordConfig, ReplayOptions, RunOptions};
use spoor_relay::RelayConfig;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::metrics;
use spoor_tests::nats::{NatsRole, NatsServer};
use time::OffsetDateTime;

use crate::support::{eventually, nats_endpoint, Relay};

const WRITE_KEY: &str = "wk_replay_secret";
const PROJECT: &str = "replay";

fn edge_config(nats: &NatsServer) -> EdgeConfig {
    EdgeConfig::for_nats(nats)
        .var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string())
        .var("REGION", "replay-region")
        .var("PARTITIONS", "4")
}

fn relay_config(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> RelayConfig {
    crate::support::project_relay_config(nats, ch, db, PROJECT)
}

fn edge_metric(edge: &Edge, name: &str) -> f64 {
    let url = edge.url();
    tokio::task::block_in_place(|| metrics::sum(&metrics::fetch(&url).unwrap(), name))
}

/// (count(), uniqExact(event_id)) of the project's stored events.
fn stored(ch: &ClickHouseServer, db: &str) -> (u64, u64) {
    let sql = format!(
        "SELECT count(), uniqExact(event_id) FROM {db}.events \
         WHERE project_id = '{PROJECT}' FORMAT TSV"
    );
    let row = tokio::task::block_in_place(|| ch.query(&sql).unwrap());
    let n: Vec<u64> = row.split_whitespace().map(|n| n.parse().unwrap()).collect();
    (n[0], n[1])
}

fn replay_options(edge: &Edge, file: &std::path::Path) -> ReplayOptions {
    ReplayOptions {
        file: file.to_path_buf(),
        target: edge.url(),
        speed: 10.0,
        write_key: Some(WRITE_KEY.into()),
        concurrency: 8,
        verify_timeout_secs: 60,
        ..ReplayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_stream_replays_at_ten_times_speed_with_matching_counts() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("replay");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let edge = Edge::start(&edge_config(&nats)).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The original traffic, paced so that arrivals spread over seconds,
    // with resent batches among it.
    let since = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let mut opts = RunOptions {
        edge_url: edge.url(),
        write_key: WRITE_KEY.into(),
        project: PROJECT.into(),
        concurrency: 4,
        rate: 400.0,
        clickhouse_url: Some(ch.http_url()),
        clickhouse_db: db.clone(),
        verify_timeout_secs: 60,
        ..Default::default()
    };
    opts.traffic.events = 1_200;
    opts.traffic.users = 40;
    opts.traffic.batch_size = 20;
    opts.traffic.resend_ratio = 0.1;
    opts.traffic.seed = 15;
    let original = spoor_loadtest::run(&opts).await.unwrap();
    assert!(original.ok, "{:#?}", original.mismatches);
    let unique = original.unique_valid as u64;
    assert_eq!(stored(ch, &db), (unique, unique));

    // Record it from the stream, as the ops role.
    let recorded = spoor_loadtest::record(&RecordConfig {
        nats: nats_endpoint(&nats, NatsRole::Ops),
        stream: spoor_core::contract::DEFAULT_EVENTS_STREAM.into(),
        since: Some(since),
        until: None,
        project: Some(PROJECT.into()),
        max_frame_bytes: 8 << 20,
    })
    .await
    .unwrap();
    eprintln!("{recorded}");
    assert_eq!(recorded.undecodable, 0, "{recorded}");
    let ids: HashSet<String> = recorded
        .requests
        .iter()
        .flat_map(|r| r.body["batch"].as_array().unwrap())
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len() as u64,
        unique,
        "the recording holds every stored event"
    );
    let events = recorded.header.events;
    assert!(events as u64 >= unique);
    let span_ms = recorded.requests.last().unwrap().offset_ms;
    assert!(
        span_ms >= 1_000,
        "paced traffic spans seconds, recorded {span_ms} ms"
    );
    let file = dir.path().join("traffic.jsonl");
    recorded.write(&file).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(WRITE_KEY),
        "a recording never holds the write key"
    );
    assert_eq!(text.lines().count(), recorded.requests.len() + 1);

    // Replayed at 10x with fresh ids and times moved to now: everything is
    // accepted again and stored once more, under new ids.
    let mut fresh = replay_options(&edge, &file);
    fresh.fresh_ids = true;
    fresh.shift_time = true;
    fresh.clickhouse_url = Some(ch.http_url());
    fresh.clickhouse_db = db.clone();
    let summary = spoor_loadtest::replay(&fresh).await.unwrap();
    eprintln!("{summary}");
    assert!(summary.ok, "{summary}");
    assert_eq!(summary.requests, recorded.requests.len());
    assert_eq!(summary.failed_requests, 0);
    assert_eq!((summary.accepted, summary.rejected), (events, 0));
    assert_eq!(summary.unique_valid as u64, unique);
    assert_eq!(
        (summary.stored, summary.stored_unique),
        (Some(unique), Some(unique))
    );
    // Arrivals are kept, scaled: the last request was not due before a
    // tenth of the recorded span.
    assert!(
        summary.send_secs >= span_ms as f64 / 10.0 / 1000.0 - 0.005,
        "sent in {} s, recorded span {span_ms} ms",
        summary.send_secs
    );
    let replay = summary.replay.as_ref().unwrap();
    assert_eq!((replay.ids, replay.speed), ("fresh", 10.0));
    assert_eq!(stored(ch, &db), (2 * unique, 2 * unique));

    // Replayed with the recorded ids: the edge accepts every event, and
    // once the edge has published them and the relay has caught up,
    // nothing more is stored. (The rebuilt requests give the edge the
    // original frames again, so JetStream's duplicate window drops most of
    // them; whatever passes it the relay drops.)
    let inserted_before = relay.metric("spoor_relay_rows_inserted_total").await;
    let published_before = edge_metric(&edge, "spoor_edge_events_published_total");
    let mut keep = replay_options(&edge, &file);
    keep.keep_ids = true;
    keep.clickhouse_url = Some(ch.http_url());
    keep.clickhouse_db = db.clone();
    let summary = spoor_loadtest::replay(&keep).await.unwrap();
    eprintln!("{summary}");
    assert!(summary.ok, "{summary}");
    assert_eq!((summary.accepted, summary.rejected), (events, 0));
    assert_eq!(
        (summary.stored, summary.stored_unique),
        (Some(unique), Some(unique))
    );
    eventually("the edge to publish the replayed events", || async {
        let published = edge_metric(&edge, "spoor_edge_events_published_total");
        (published >= published_before + events as f64).then_some(())
    })
    .await;
    // Past a few of the relay's lag polls (200 ms), nothing is waiting in
    // JetStream, unacked or buffered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eventually("the relay to catch up", || async {
        let (status, body) = relay.get("/metrics").await;
        assert_eq!(status, 200);
        let waiting: f64 = [
            "spoor_relay_consumer_lag_messages",
            "spoor_relay_consumer_ack_pending_messages",
            "spoor_relay_buffer_rows",
        ]
        .iter()
        .map(|name| metrics::sum(&body, name))
        .sum();
        (waiting == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        relay.metric("spoor_relay_rows_inserted_total").await,
        inserted_before
    );
    assert_eq!(stored(ch, &db), (2 * unique, 2 * unique));
    let received = relay.metric("spoor_relay_events_received_total").await;
    let deduped = relay.metric("spoor_relay_events_deduped_total").await;
    assert_eq!(
        received - deduped,
        (2 * unique) as f64,
        "received {received}, deduped {deduped}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_with_bad_lines_is_refused_by_line_number_and_nothing_sent() {
    // No NATS: a fast ack answers before publishing, which is all this
    // test looks at.
    let edge = Edge::start(
        &EdgeConfig::default().var("WRITE_KEYS", json!({ WRITE_KEY: PROJECT }).to_string()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = crate::support::now_ms();
    let good = |offset: u64, n: u128| {
        let r = recording::RecordedRequest {
            offset_ms: offset,
            project: PROJECT.into(),
            received_at_ms: Some(now),
            headers: [("content-type".to_string(), "application/json".to_string())].into(),
            body: json!({"batch": [{"event": "page_view", "anonymous_id": "d1",
                "event_id": uuid::Uuid::from_u128(n).to_string(), "timestamp": now}]}),
            line: 0,
        };
        recording::to_line(&r).unwrap()
    };
    let lines = [
        good(0, 1),
        "{\"offset_ms\": 5, \"project\": \"replay\", \"body\": {\"batch\": [".to_string(),
        good(10, 2),
        json!({"offset_ms": 20, "project": PROJECT, "headers": {"Authorization": "Basic d2s6"},
               "body": {"batch": []}})
        .to_string(),
    ];
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let accepted = || edge_metric(&edge, "spoor_edge_events_accepted_total");

    let mut opts = replay_options(&edge, &file);
    opts.fresh_ids = true;
    let err = spoor_loadtest::replay(&opts).await.unwrap_err().to_string();
    assert!(err.contains("2 bad line(s) in the recording"), "{err}");
    assert!(err.contains("\n  line 2: not JSON: "), "{err}");
    assert!(
        err.contains("\n  line 4: header authorization is a secret"),
        "{err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");
    assert_eq!(accepted(), 0.0, "a refused recording sends nothing");

    // Told to skip them, the good lines are replayed.
    opts.skip_bad_lines = true;
    let summary = spoor_loadtest::replay(&opts).await.unwrap();
    assert!(summary.ok, "{summary}");
    assert_eq!((summary.requests, summary.accepted), (2, 2));
    assert_eq!(summary.replay.as_ref().unwrap().skipped_lines, 2);
    assert_eq!(accepted(), 2.0);
}
