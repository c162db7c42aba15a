//! The device debug ring against real nats-server and clickhouse-server,
//! with two relays: a lookup gathers every relay's ring over NATS and
//! merges (one entry per event, by time, with paths); a relay killed with
//! `kill -9` rebuilds its ring from the stream; the ring keeps to its
//! budget; an unknown device is an empty answer; hostile ids get a 400;
//! undecodable frames on the device's partition are listed.

use spoor_tests::nats::NatsRole;
use std::collections::BTreeSet;
use std::time::Duration;

use spoor_core::debug::{DeviceLookup, DeviceQuery, EventState, Subject};
use spoor_core::{encode_batch, route, Event, WireBatch};
use spoor_relay::RelayConfig;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::NatsServer;
use spoor_tests::relay::{RelayProcess, RelayProcessConfig};

use crate::relay::{config, count, Publisher, STREAM};
use crate::support::{eventually, sample_value, Relay};
use spoor_tests::fixtures::{batch, event, id};

const PARTITIONS: u32 = 16;

use crate::support::now_ms;

/// Events `range` of `device`, received by the edge now, event times one
/// millisecond apart in reverse arrival order (so time order is checked,
/// not arrival order).
fn device_batch(name: &str, device: &str, user: &str, range: std::ops::Range<u128>) -> WireBatch {
    let now = now_ms();
    let events: Vec<Event> = range
        .map(|n| {
            let mut e = event(n);
            e.anonymous_id = device.to_string();
            e.user_id = user.to_string();
            e.ts_ms = now - 1_000_000 + (10_000 - n as i64);
            e.client_ts_ms = Some(e.ts_ms - 3);
            e
        })
        .collect();
    let mut b = batch(name, events);
    b.received_at_ms = now;
    b
}

/// Publishes on the device's own partition subject, as the edge would.
async fn publish_to_partition(p: &Publisher, b: &WireBatch, device: &str) -> u64 {
    let subject = route::subject("eu-west", route::partition_of(device, PARTITIONS));
    publish_raw(p, &subject, &b.batch_id, encode_batch(b).unwrap()).await
}

async fn publish_raw(p: &Publisher, subject: &str, msg_id: &str, frame: Vec<u8>) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let ack =
        p.js.publish_with_headers(subject.to_string(), headers, frame.into())
            .await
            .unwrap();
    ack.await.unwrap().sequence
}

fn relay_config(nats: &NatsServer, ch: &ClickHouseServer, db: &str) -> RelayConfig {
    let mut c = config(nats, ch.http_url(), db);
    // One frame per pull, so two relays share a run of frames.
    c.fetch_max_messages = 1;
    c.partitions = PARTITIONS;
    c.debug_timeout = Duration::from_millis(700);
    c
}

async fn http_get(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        match ureq::get(&url).timeout(Duration::from_secs(10)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    })
    .await
    .unwrap()
}

async fn lookup_http(base: &str, path_and_query: &str) -> DeviceLookup {
    let (status, body) = http_get(format!("{base}{path_and_query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn assert_ordered_once(lookup: &DeviceLookup) {
    let ids: BTreeSet<_> = lookup.events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), lookup.events.len(), "an event came back twice");
    assert!(
        lookup
            .events
            .windows(2)
            .all(|w| (w[0].ts_ms, w[0].event_id) < (w[1].ts_ms, w[1].event_id)),
        "events out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_merge_across_two_relays_with_paths() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("debug_merge");
    let publisher = Publisher::connect(&nats).await;
    // dev-w lives on partition 10: a relay holding all 16 hands the upper
    // half (8-15) to a second one when it joins.
    assert_eq!(route::partition_of("dev-w", PARTITIONS), 10);

    // 40 frames of 3 events for one device (120 events, spread over both
    // relays: the first 20 frames before its partition moves, the rest
    // after), one frame for a second device of the same user, noise.
    let a = Relay::start(relay_config(&nats, ch, &db)).await;
    for f in 0..20u128 {
        let b = device_batch(&format!("dev-w-{f}"), "dev-w", "u-7", f * 3..f * 3 + 3);
        publish_to_partition(&publisher, &b, "dev-w").await;
    }
    let b = Relay::start(relay_config(&nats, ch, &db)).await;
    eventually("the second relay holding half the partitions", || async {
        (b.metric("spoor_relay_partitions_owned").await == 8.0
            && a.metric("spoor_relay_partitions_owned").await == 8.0)
            .then_some(())
    })
    .await;
    for f in 20..40u128 {
        let b = device_batch(&format!("dev-w-{f}"), "dev-w", "u-7", f * 3..f * 3 + 3);
        publish_to_partition(&publisher, &b, "dev-w").await;
    }
    let phone = device_batch("dev-y-0", "dev-y", "u-7", 500..502);
    publish_to_partition(&publisher, &phone, "dev-y").await;
    let noise = device_batch("noise", "dev-z", "", 600..610);
    let last = publish_to_partition(&publisher, &noise, "dev-z").await;
    publisher.drained(last).await;
    assert_eq!(count(ch, &db).await, 132);

    // Both rings hold part of dev-w's events.
    let held = |metrics: f64| metrics > 0.0;
    assert!(held(a.metric("spoor_relay_ring_events").await));
    assert!(held(b.metric("spoor_relay_ring_events").await));

    // The inserted marks reach the rings right after the ack; wait for them.
    let base = format!("http://{}", a.addr);
    let lookup = eventually("every dev-w event marked inserted", || async {
        let l = lookup_http(&base, "/debug/device/dev-w?last=1h").await;
        l.events
            .iter()
            .all(|e| matches!(e.path.state, EventState::Inserted { at_ms: Some(_) }))
            .then_some(l)
    })
    .await;
    assert_eq!(lookup.relays.len(), 2, "{:?}", lookup.relays);
    assert!(lookup.partial_relays.is_empty() && lookup.errors.is_empty());
    assert_eq!(lookup.events.len(), 120);
    assert_ordered_once(&lookup);
    let holders: BTreeSet<_> = lookup.events.iter().map(|e| e.relay.as_str()).collect();
    assert_eq!(holders.len(), 2, "dev-w's events were all on one relay");
    let expected: BTreeSet<_> = (0..120).map(id).collect();
    let got: BTreeSet<_> = lookup.events.iter().map(|e| e.event_id).collect();
    assert_eq!(got, expected);
    for e in &lookup.events {
        let p = &e.path;
        assert_eq!(p.client_ts_ms, Some(e.ts_ms - 3));
        let relay_at = p.relay_received_at_ms.expect("seen live");
        let EventState::Inserted {
            at_ms: Some(inserted),
        } = p.state
        else {
            unreachable!()
        };
        assert!(p.edge_received_at_ms <= p.stream_at_ms + 1_000);
        assert!(p.stream_at_ms <= relay_at + 1_000 && relay_at <= inserted);
        assert!(p.stream_seq >= 1);
        assert_eq!(e.anonymous_id, "dev-w");
        assert_eq!(e.project_id, "proj_it");
    }

    // By user: both of u-7's devices. Limit keeps the newest.
    let by_user = lookup_http(&base, "/debug/device?user_id=u-7&limit=500").await;
    assert_eq!(by_user.events.len(), 122);
    assert_ordered_once(&by_user);
    let limited = lookup_http(&base, "/debug/device/dev-w?limit=10").await;
    assert_eq!(limited.events.len(), 10);
    assert!(limited.truncated);
    assert_eq!(limited.events, lookup.events[110..].to_vec());

    // The library call the CLI uses gives the same answer over NATS.
    let client = nats.connect(NatsRole::Admin).await.unwrap();
    let query = DeviceQuery::new(
        Subject::Device("dev-w".into()),
        Some("proj_it".into()),
        3_600_000,
        now_ms(),
        5_000,
    )
    .unwrap();
    let direct = spoor_runtime::debug::lookup(&client, STREAM, &query, Duration::from_millis(700))
        .await
        .unwrap();
    // Knowing there are two relays, a caller need not wait out the timeout.
    let started = std::time::Instant::now();
    let quick = spoor_runtime::debug::lookup_expecting(
        &client,
        STREAM,
        &query,
        Duration::from_secs(20),
        Some(2),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(quick.events, direct.events);
    assert_eq!(direct.relays, lookup.relays);
    assert_eq!(direct.events, lookup.events);
    // Another project sees nothing of it.
    let other = lookup_http(&base, "/debug/device/dev-w?project=elsewhere").await;
    assert!(other.events.is_empty());

    assert!(
        a.metric("spoor_relay_debug_queries_total{outcome=\"ok\"}")
            .await
            >= 1.0
    );
    assert!(
        b.metric("spoor_relay_debug_queries_total{outcome=\"ok\"}")
            .await
            >= 1.0
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_devices_hostile_ids_and_dead_frames() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("debug_input");
    let a = Relay::start(relay_config(&nats, ch, &db)).await;
    let b = Relay::start(relay_config(&nats, ch, &db)).await;
    let base = format!("http://{}", b.addr);
    let publisher = Publisher::connect(&nats).await;

    // Unknown device: 200, empty, both relays answered.
    let empty = lookup_http(&base, "/debug/device/never-seen?last=15m").await;
    assert!(empty.events.is_empty() && empty.dead_frames.is_empty());
    assert_eq!(empty.relays.len(), 2);

    // Hostile or oversized ids, bad windows: 400 with a JSON error.
    let long = "a".repeat(300);
    let cases = [
        (format!("/debug/device/{long}"), "id_too_long"),
        ("/debug/device/%00evil".to_string(), "id_control_char"),
        ("/debug/device/line%0Abreak".to_string(), "id_control_char"),
        ("/debug/device/%FF%FE".to_string(), "id_encoding"),
        ("/debug/device/".to_string(), "empty_id"),
        ("/debug/device/d?last=30d".to_string(), "window_too_wide"),
        ("/debug/device/d?last=soon".to_string(), "invalid_duration"),
        (
            "/debug/device/d?limit=99999999".to_string(),
            "invalid_limit",
        ),
        (
            "/debug/device/d?drop=table".to_string(),
            "unknown_parameter",
        ),
        (format!("/debug/device?user_id={long}"), "id_too_long"),
    ];
    for (path, kind) in cases {
        let (status, body) = http_get(format!("{base}{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], kind, "{path}: {body}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(
        b.metric("spoor_relay_debug_lookups_total{outcome=\"id_too_long\"}")
            .await
            >= 2.0
    );

    // A hostile query straight over NATS is refused by each relay, which
    // still answers (with the error) so the requester can count it.
    let client = nats.connect(NatsRole::Admin).await.unwrap();
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let bad = serde_json::json!({"subject": {"by": "device", "id": "x\u{0}"}, "project_id": null,
        "since_ms": 0, "until_ms": 1, "limit": 10});
    client
        .publish_with_reply(
            spoor_core::contract::debug_subject(STREAM),
            inbox,
            bad.to_string().into(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let m = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut replies),
        )
        .await
        .unwrap()
        .unwrap();
        let answer: spoor_core::debug::RelayAnswer = serde_json::from_slice(&m.payload).unwrap();
        assert!(answer.error.unwrap().contains("control character"));
        assert!(answer.events.is_empty());
    }

    // Undecodable frames: one on dev-dead's partition, one elsewhere.
    let p = route::partition_of("dev-dead", PARTITIONS);
    let elsewhere = (p + 1) % PARTITIONS;
    let s1 = publish_raw(
        &publisher,
        &route::subject("eu-west", p),
        "junk-1",
        b"not a frame".to_vec(),
    )
    .await;
    let s2 = publish_raw(
        &publisher,
        &route::subject("eu-west", elsewhere),
        "junk-2",
        b"SPR\x01junk".to_vec(),
    )
    .await;
    let ok = device_batch("dev-dead-ok", "dev-dead", "", 700..702);
    let s3 = publish_to_partition(&publisher, &ok, "dev-dead").await;
    publisher.drained(s1.max(s2).max(s3)).await;
    let lookup = eventually("the dead frame in the lookup", || async {
        let l = lookup_http(&base, "/debug/device/dev-dead").await;
        (!l.dead_frames.is_empty() && l.events.len() == 2).then_some(l)
    })
    .await;
    assert_eq!(lookup.dead_frames.len(), 1, "{:?}", lookup.dead_frames);
    let dead = &lookup.dead_frames[0];
    assert_eq!(dead.stream_seq, s1);
    assert_eq!(dead.subject, route::subject("eu-west", p));
    assert!(!dead.reason.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_keeps_to_its_budget() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("debug_budget");
    let mut c = relay_config(&nats, ch, &db);
    c.ring.max_bytes = 64 << 10;
    c.ring.max_events_per_device = 20;
    let relay = Relay::start(c).await;
    let publisher = Publisher::connect(&nats).await;
    let mut last = 0;
    // One chatty device (100 events) and 60 devices of 10 events, each
    // with a 500-byte property bag: about 400 KB against a 64 KiB budget.
    let props = format!(r#"{{"pad":"{}"}}"#, "x".repeat(480));
    for f in 0..61u128 {
        let device = if f == 0 {
            "chatty".to_string()
        } else {
            format!("dev-{f}")
        };
        let n = if f == 0 { 100 } else { 10 };
        let mut b = device_batch(&format!("budget-{f}"), &device, "", f * 1000..f * 1000 + n);
        for e in &mut b.events {
            e.properties = props.clone();
        }
        last = publish_to_partition(&publisher, &b, &device).await;
    }
    publisher.drained(last).await;
    let metrics = eventually("the ring to settle", || async {
        let (_, body) = relay.get("/metrics").await;
        (sample_value(&body, "spoor_relay_ring_evictions_total{reason=\"bytes\"}") > 0.0)
            .then_some(body)
    })
    .await;
    let bytes = sample_value(&metrics, "spoor_relay_ring_bytes");
    let events = sample_value(&metrics, "spoor_relay_ring_events");
    let cap = sample_value(
        &metrics,
        "spoor_relay_ring_evictions_total{reason=\"device_cap\"}",
    );
    let by_bytes = sample_value(
        &metrics,
        "spoor_relay_ring_evictions_total{reason=\"bytes\"}",
    );
    assert!(
        bytes > 0.0 && bytes <= (64 << 10) as f64,
        "ring_bytes {bytes}"
    );
    assert!(events > 0.0 && events < 700.0, "ring_events {events}");
    assert_eq!(cap, 80.0, "chatty keeps its newest 20");
    assert_eq!(events + cap + by_bytes, 700.0);
    assert!(sample_value(&metrics, "spoor_relay_ring_devices") >= 1.0);
    // What is left is the newest: the last device is fully there.
    let base = format!("http://{}", relay.addr);
    let last_device = lookup_http(&base, "/debug/device/dev-60").await;
    assert_eq!(last_device.events.len(), 10);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_rebuilds_its_ring_from_the_stream() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("debug_rehydrate");
    let args: Vec<String> = [
        "--flush-interval-ms",
        "200",
        "--ack-wait-secs",
        "5",
        "--partitions",
        "16",
        "--debug-timeout-ms",
        "700",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let process_config = RelayProcessConfig {
        nats_url: nats.url(),
        nats_ca: Some(nats.ca_pem_path().to_path_buf()),
        nats_nkey_file: Some(nats.seed_path(NatsRole::Relay)),
        clickhouse_url: ch.http_url(),
        database: db.clone(),
        // The fixtures' project, which every frame here carries.
        projects: vec![spoor_tests::fixtures::batch("p", vec![]).project_id],
        args,
    };
    let r1 = RelayProcess::start(process_config.clone()).unwrap();
    let r2 = RelayProcess::start(process_config).unwrap();
    let publisher = Publisher::connect(&nats).await;
    let mut last = 0;
    for f in 0..30u128 {
        let b = device_batch(&format!("rh-{f}"), "dev-r", "", f * 2..f * 2 + 2);
        last = publish_to_partition(&publisher, &b, "dev-r").await;
    }
    // And an undecodable frame on dev-r's partition.
    let junk_subject = route::subject("eu-west", route::partition_of("dev-r", PARTITIONS));
    let junk = publish_raw(&publisher, &junk_subject, "rh-junk", b"junk".to_vec()).await;
    publisher.drained(junk.max(last)).await;
    let before = lookup_http(&r1.url(), "/debug/device/dev-r").await;
    assert_eq!(before.events.len(), 60);
    assert_eq!(before.dead_frames.len(), 1);
    assert_eq!(before.relays.len(), 2);

    // kill -9 the first relay and bring it back; then take the second away
    // so every answer must come from the rebuilt ring.
    r1.kill9();
    r1.restart().unwrap();
    r2.kill9();
    let after = eventually("the restarted relay's ring to answer", || async {
        let l = lookup_http(&r1.url(), "/debug/device/dev-r").await;
        (l.events.len() == 60 && !l.coverage.iter().any(|(_, c)| c.rehydrating)).then_some(l)
    })
    .await;
    assert_eq!(after.relays.len(), 1, "{:?}", after.relays);
    // The dead frame was found again on replay.
    assert_eq!(after.dead_frames.len(), 1);
    assert_eq!(after.dead_frames[0].stream_seq, junk);
    assert!(
        !before.relays.contains(&after.relays[0]),
        "a new instance id"
    );
    assert_ordered_once(&after);
    let ids: BTreeSet<_> = after.events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, before.events.iter().map(|e| e.event_id).collect());
    for e in &after.events {
        // Every frame was acked before the restart: inserted, per the ack floor.
        assert_eq!(e.path.state, EventState::Inserted { at_ms: None }, "{e:?}");
        assert_eq!(e.path.relay_received_at_ms, None);
    }
    let metrics = r1.metrics().unwrap();
    assert_eq!(
        sample_value(&metrics, "spoor_relay_ring_rehydrated_events_total"),
        60.0
    );

    // A new event after the restart is seen live and inserted.
    let fresh = device_batch("rh-new", "dev-r", "", 900..901);
    let seq = publish_to_partition(&publisher, &fresh, "dev-r").await;
    publisher.drained(seq).await;
    let latest = eventually("the new event inserted", || async {
        let l = lookup_http(&r1.url(), "/debug/device/dev-r").await;
        let inserted = l.events.iter().any(|e| {
            e.event_id == id(900) && matches!(e.path.state, EventState::Inserted { at_ms: Some(_) })
        });
        inserted.then_some(l)
    })
    .await;
    assert_eq!(latest.events.len(), 61);
    assert_eq!(count(ch, &db).await, 61);
    r1.stop();
}
