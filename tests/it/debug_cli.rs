//! `spoor debug device` (the `spoor_cli::debug` library the binary runs)
//! against real nats-server, clickhouse-server and two relays:
//!
//! - a device's events come back once each, by time, with their path, from
//!   both relays' rings;
//! - with no relay answering, the same events come from the device table in
//!   ClickHouse, marked as such;
//! - `follow` sees an event sent after it started.

use crate::support::nats_endpoint;
use spoor_tests::nats::NatsRole;
use std::time::Duration;

use spoor_cli::debug::{self, DebugOptions, FROM_CLICKHOUSE};
use spoor_cli::ClickHouseOptions;
use spoor_core::debug::{DeviceQuery, EventState, Subject};
use spoor_core::{encode_batch, route, Event, WireBatch};
use spoor_relay::RelayConfig;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::NatsServer;

use crate::relay::{config, count, Publisher, STREAM};
use crate::support::{eventually, Relay};
use spoor_tests::fixtures::{batch, event};

const PARTITIONS: u32 = 8;
const DEVICE: &str = "cli-device-1";
const PROJECT: &str = "proj_it";

use crate::support::now_ms;

/// Events `range` of `DEVICE`, received now, event times a second apart.
fn device_batch(name: &str, range: std::ops::Range<u128>) -> WireBatch {
    let now = now_ms();
    let events: Vec<Event> = range
        .map(|n| {
            let mut e = event(1_000_000 + n);
            e.anonymous_id = DEVICE.to_string();
            e.ts_ms = now - 60_000 + n as i64 * 1_000;
            e
        })
        .collect();
    let mut b = batch(name, events);
    b.received_at_ms = now;
    b
}

async fn publish(p: &Publisher, b: &WireBatch) {
    let subject = route::subject("eu-west", route::partition_of(DEVICE, PARTITIONS));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", b.batch_id.as_str());
    p.js.publish_with_headers(subject, headers, encode_batch(b).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn relay_config(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> RelayConfig {
    let mut c = config(nats, ch.http_url(), db);
    c.fetch_max_messages = 1; // so the two relays share the frames
    c.partitions = PARTITIONS;
    c
}

fn options(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> DebugOptions {
    DebugOptions {
        nats: nats_endpoint(nats, NatsRole::Ops),
        stream: STREAM.into(),
        query: DeviceQuery::new(
            Subject::Device(DEVICE.into()),
            Some(PROJECT.into()),
            3_600_000,
            now_ms(),
            1_000,
        )
        .unwrap(),
        timeout: Duration::from_millis(700),
        clickhouse: Some(ClickHouseOptions {
            url: ch.http_url(),
            database: db.to_string(),
            user: None,
            password: None,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lookup_from_the_rings_then_from_clickhouse() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("debug_cli");
    let a = Relay::start(relay_config(&nats, ch, &db)).await;
    let b = Relay::start(relay_config(&nats, ch, &db)).await;
    let publisher = Publisher::connect(&nats).await;
    for (i, range) in [(0..5), (5..10), (10..15), (15..20)]
        .into_iter()
        .enumerate()
    {
        publish(&publisher, &device_batch(&format!("cli-{i}"), range)).await;
    }
    eventually("20 rows", || async {
        (count(ch, &db).await == 20).then_some(())
    })
    .await;

    // From the rings: both relays answer, every event once, by time, with
    // its path through the edge and a relay into ClickHouse.
    let result = eventually("every event inserted in the rings", || async {
        let r = debug::device(&options(&nats, ch, &db)).await.unwrap();
        let all_inserted = r.lookup.events.len() == 20
            && r.lookup
                .events
                .iter()
                .all(|e| matches!(e.path.state, EventState::Inserted { .. }));
        all_inserted.then_some(r)
    })
    .await;
    assert_eq!(result.lookup.relays.len(), 2, "{:?}", result.lookup.relays);
    assert_eq!(result.from_clickhouse, 0);
    let times: Vec<i64> = result.lookup.events.iter().map(|e| e.ts_ms).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "ordered by time");
    for e in &result.lookup.events {
        assert_ne!(e.relay, FROM_CLICKHOUSE);
        assert!(e.path.relay_received_at_ms.is_some());
        assert!(e.path.stream_seq > 0);
    }
    let text = debug::render(&result);
    assert!(text.contains("20 event(s)"), "{text}");

    // No relay left: the same events come from the device table.
    a.shutdown().await;
    b.shutdown().await;
    let result = debug::device(&options(&nats, ch, &db)).await.unwrap();
    assert!(result.lookup.relays.is_empty());
    assert_eq!(result.from_clickhouse, 20, "{:?}", result.clickhouse_note);
    assert_eq!(result.lookup.events.len(), 20);
    assert!(result
        .lookup
        .events
        .iter()
        .all(|e| e.relay == FROM_CLICKHOUSE
            && matches!(e.path.state, EventState::Inserted { at_ms: Some(_) })));
    let ids_ring: Vec<_> = times;
    let times_ch: Vec<i64> = result.lookup.events.iter().map(|e| e.ts_ms).collect();
    assert_eq!(ids_ring, times_ch, "the same events, in the same order");

    // Without a project the device table cannot be asked, and the answer says so.
    let mut opts = options(&nats, ch, &db);
    opts.query.project_id = None;
    let result = debug::device(&opts).await.unwrap();
    assert!(result.lookup.events.is_empty());
    assert!(result.clickhouse_note.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sees_an_event_sent_after_it_started() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("debug_follow");
    let relay = Relay::start(relay_config(&nats, ch, &db)).await;
    let publisher = Publisher::connect(&nats).await;
    publish(&publisher, &device_batch("before", 0..3)).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = options(&nats, ch, &db);
    let follower = tokio::spawn(async move {
        debug::follow(&opts, Duration::from_millis(300), |e| {
            tx.send(e.clone()).is_ok()
        })
        .await
    });
    // Whatever was there first, then the new event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = device_batch("after", 50..51);
    let late_id = late.events[0].event_id;
    publish(&publisher, &late).await;
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = rx.recv().await {
            if e.event_id == late_id {
                return e;
            }
        }
        panic!("follow ended without the new event");
    })
    .await
    .expect("follow did not report the event sent after it started");
    assert_eq!(seen.anonymous_id, DEVICE);
    drop(rx);
    follower.abort();
    relay.shutdown().await;
}
