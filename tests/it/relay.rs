//! spoor-relay against a real nats-server and a real clickhouse-server:
//! every column lands as the edge sent it (from whole frames and from
//! frames dedup thinned), duplicates across frames become one row, a corrupt frame is counted and taken off the stream without
//! blocking its neighbours, nothing is acked before ClickHouse has the rows
//! (including across a ClickHouse outage), shutdown drains the buffer, and
//! `/healthz` and `/metrics` answer.
//!
//! Frames are built with `spoor_core::encode_batch` and published with
//! async-nats, as the edge would publish them (one `Nats-Msg-Id` per batch).

use crate::support::nats_endpoint;
use spoor_tests::nats::NatsRole;
use std::time::Duration;

use async_nats::jetstream;
use spoor_core::{encode_batch, Campaign, Context, Device, Event, Geo, WireBatch};
use spoor_relay::{ClickHouseConfig, RelayConfig};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::fixtures::{batch, event, events, id, TS_MS};
use spoor_tests::nats::NatsServer;
use uuid::Uuid;

use crate::support::{eventually, eventually_within, sample_value, Relay};

pub(crate) const STREAM: &str = "SPOOR_EVENTS";
/// The consumer of SUBJECT's partition (0).
pub(crate) const CONSUMER: &str = "spoor-relay-p0";
pub(crate) const SUBJECT: &str = "spoor.events.eu-west.0";

pub(crate) fn config(nats: &NatsServer, clickhouse_url: String, database: &str) -> RelayConfig {
    let mut config = RelayConfig::new(
        nats_endpoint(nats, NatsRole::Relay),
        ClickHouseConfig {
            url: clickhouse_url,
            database: database.to_string(),
            user: None,
            password: None,
        },
    );
    config.batch.flush_interval_ms = 200;
    config.lag_poll_interval = Duration::from_millis(200);
    config.max_retry_backoff = Duration::from_millis(500);
    // Leases renew every second, so partitions move within seconds.
    config.lease_ttl = Duration::from_secs(3);
    // Test events are from 2024 (TS_MS): the relay's retention would drop
    // them from `events` and the rollups. Tests of retention turn it on.
    config.retention_days = 0;
    config.rollup_retention_days = 0;
    config
}

/// Runs a query through the harness's blocking client.
pub(crate) async fn query(ch: &ClickHouseServer, sql: String) -> String {
    tokio::task::block_in_place(|| ch.query(&sql).unwrap_or_else(|e| panic!("{e:#}")))
}

/// `count()` and `uniqExact(event_id)` of the events table, tab-separated.
pub(crate) async fn stats(ch: &ClickHouseServer, db: &str) -> String {
    query(
        ch,
        format!("SELECT count(), uniqExact(event_id) FROM {db}.events FORMAT TabSeparated"),
    )
    .await
}

pub(crate) async fn count(ch: &ClickHouseServer, db: &str) -> u64 {
    query(ch, format!("SELECT count() FROM {db}.events"))
        .await
        .trim()
        .parse()
        .unwrap()
}

pub(crate) struct Publisher {
    pub(crate) js: jetstream::Context,
}

impl Publisher {
    pub(crate) async fn connect(nats: &NatsServer) -> Publisher {
        let client = nats.connect(NatsRole::Admin).await.unwrap();
        Publisher {
            js: jetstream::new(client),
        }
    }

    /// Publishes one frame with `Nats-Msg-Id` = `msg_id` and waits for its PubAck.
    pub(crate) async fn publish(&self, msg_id: &str, frame: Vec<u8>) -> u64 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let ack = self
            .js
            .publish_with_headers(SUBJECT, headers, frame.into())
            .await
            .unwrap();
        let ack = ack.await.unwrap();
        assert!(
            !ack.duplicate,
            "{msg_id} was dropped as a JetStream duplicate"
        );
        ack.sequence
    }

    pub(crate) async fn publish_batch(&self, batch: &WireBatch) -> u64 {
        self.publish(&batch.batch_id, encode_batch(batch).unwrap())
            .await
    }

    pub(crate) async fn consumer(&self) -> jetstream::consumer::Info {
        let stream = self.js.get_stream(STREAM).await.unwrap();
        stream.consumer_info(CONSUMER).await.unwrap()
    }

    /// Waits until the relays have acked everything up to `last_seq`, on
    /// every partition's consumer.
    pub(crate) async fn drained(&self, last_seq: u64) {
        eventually("the partition consumers to ack everything", || async {
            let mut stream = self.js.get_stream(STREAM).await.unwrap();
            if stream.info().await.unwrap().state.last_sequence < last_seq {
                return None;
            }
            for p in 0..spoor_core::contract::DEFAULT_PARTITIONS {
                let name = spoor_core::contract::partition_consumer("spoor-relay", p);
                let c = stream.consumer_info(name).await.ok()?;
                if c.num_pending != 0 || c.num_ack_pending != 0 {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_with_every_column_and_endpoints_answer() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_columns");
    let relay = Relay::start(config(&nats, ch.http_url(), &db)).await;
    let publisher = Publisher::connect(&nats).await;

    let full = Event {
        event_id: Uuid::parse_str("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap(),
        event_id_derived: true,
        event: "page_view".into(),
        user_id: "user-1".into(),
        anonymous_id: "anon-1".into(),
        session_id: "sess-1".into(),
        client_ts_ms: Some(TS_MS - 89),
        ts_ms: TS_MS,
        properties: r#"{"plan":"pro","n":3,"tags":["a","b"]}"#.into(),
        context: Context {
            page_url: "https://shop.example/cart?x=1".into(),
            page_path: "/cart".into(),
            page_referrer: "https://search.example/".into(),
            page_title: "Cart – Shop".into(),
            app_name: "shop".into(),
            app_version: "2.3.4".into(),
            library_name: "spoor-js".into(),
            library_version: "0.1.0".into(),
            locale: "de-DE".into(),
            screen_width: 1920,
            screen_height: 1080,
            campaign: Campaign {
                source: "newsletter".into(),
                medium: "email".into(),
                name: "winter".into(),
                term: "boots".into(),
                content: "hero".into(),
            },
        },
    };
    let mut sparse = event(2);
    sparse.user_id = "user-2".into();
    let wire = WireBatch {
        batch_id: "batch-full".into(),
        project_id: "proj_it".into(),
        region: "eu-west".into(),
        received_at_ms: TS_MS + 111,
        sent_at_ms: Some(TS_MS + 50),
        geo: Geo {
            country: "DE".into(),
            region: "BE".into(),
            city: "Berlin".into(),
            timezone: "Europe/Berlin".into(),
            continent: "EU".into(),
            colo: "FRA".into(),
            asn: 3320,
        },
        device: Device {
            browser: "Chrome".into(),
            browser_version: "122.0.0.0".into(),
            os: "Mac OSX".into(),
            os_version: "10.15.7".into(),
            device_type: "desktop".into(),
            is_bot: false,
        },
        ip_prefix: "203.0.113.0".into(),
        events: vec![full, sparse],
    };
    publisher.publish_batch(&wire).await;

    eventually("2 rows", || async {
        (count(ch, &db).await == 2).then_some(())
    })
    .await;

    let columns = [
        ("project_id", "proj_it"),
        ("event_date", "2024-03-01"),
        ("event_time", "2024-03-01 12:34:56"),
        ("ts_ms", "1709296496789"),
        ("event_id", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
        ("event_id_derived", "1"),
        ("event", "page_view"),
        ("user_id", "user-1"),
        ("anonymous_id", "anon-1"),
        ("session_id", "sess-1"),
        ("client_ts_ms", "1709296496700"),
        ("sent_at_ms", "1709296496839"),
        ("received_at_ms", "1709296496900"),
        ("properties", r#"{"plan":"pro","n":3,"tags":["a","b"]}"#),
        ("page_url", "https://shop.example/cart?x=1"),
        ("page_path", "/cart"),
        ("page_referrer", "https://search.example/"),
        ("page_title", "Cart – Shop"),
        ("app_name", "shop"),
        ("app_version", "2.3.4"),
        ("library_name", "spoor-js"),
        ("library_version", "0.1.0"),
        ("locale", "de-DE"),
        ("screen_width", "1920"),
        ("screen_height", "1080"),
        ("country", "DE"),
        ("region", "BE"),
        ("city", "Berlin"),
        ("timezone", "Europe/Berlin"),
        ("continent", "EU"),
        ("colo", "FRA"),
        ("asn", "3320"),
        ("browser", "Chrome"),
        ("browser_version", "122.0.0.0"),
        ("os", "Mac OSX"),
        ("os_version", "10.15.7"),
        ("device_type", "desktop"),
        ("is_bot", "0"),
        ("ip_prefix", "203.0.113.0"),
        ("edge_region", "eu-west"),
        ("batch_id", "batch-full"),
        ("utm_source", "newsletter"),
        ("utm_medium", "email"),
        ("utm_campaign", "winter"),
        ("utm_term", "boots"),
        ("utm_content", "hero"),
    ];
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    // Every column but inserted_at is filled by the relay: the list above must
    // be the table's full column list.
    let table_columns = query(
        ch,
        format!("SELECT name FROM system.columns WHERE database = '{db}' AND table = 'events' AND name != 'inserted_at'"),
    )
    .await;
    let mut expected_names: Vec<&str> = names.clone();
    expected_names.sort_unstable();
    let mut got_names: Vec<&str> = table_columns.lines().collect();
    got_names.sort_unstable();
    assert_eq!(
        got_names, expected_names,
        "test's column list is out of date with the schema"
    );

    let row = query(
        ch,
        format!(
            "SELECT {} FROM {db}.events WHERE event = 'page_view' FORMAT TabSeparated",
            names.join(", ")
        ),
    )
    .await;
    let values: Vec<&str> = row.trim_end_matches('\n').split('\t').collect();
    assert_eq!(values.len(), columns.len(), "{row}");
    for ((column, expected), got) in columns.iter().zip(&values) {
        assert_eq!(got, expected, "column {column}");
    }

    // The sparse event: absent optionals are NULL, batch-level fields copied.
    let sparse = query(
        ch,
        format!(
            "SELECT client_ts_ms, sent_at_ms, user_id, country, ip_prefix, batch_id, \
             inserted_at > toDateTime('2020-01-01 00:00:00'), \
             concat(utm_source, utm_medium, utm_campaign, utm_term, utm_content) \
             FROM {db}.events WHERE event = 'click' FORMAT TabSeparated"
        ),
    )
    .await;
    // No campaign: the utm_* columns are empty.
    assert_eq!(
        sparse.trim_end_matches('\n'),
        "\\N\t1709296496839\tuser-2\tDE\t203.0.113.0\tbatch-full\t1\t"
    );

    // Acked after the insert.
    eventually("message acked", || async {
        let c = publisher.consumer().await;
        (c.num_ack_pending == 0 && c.ack_floor.stream_sequence == 1).then_some(())
    })
    .await;

    let (status, body) = relay.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(relay.get("/nope").await.0, 404);
    let (status, metrics) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    for (sample, value) in [
        ("spoor_relay_messages_received_total", 1.0),
        ("spoor_relay_frames_decoded_total", 1.0),
        ("spoor_relay_events_received_total", 2.0),
        ("spoor_relay_rows_inserted_total", 2.0),
        ("spoor_relay_messages_acked_total", 1.0),
        ("spoor_relay_events_deduped_total", 0.0),
        (
            r#"spoor_relay_errors_total{stage="insert",error_type="clickhouse"}"#,
            0.0,
        ),
        ("spoor_relay_insert_batch_rows_count", 1.0),
        ("spoor_relay_insert_batch_rows_sum", 2.0),
        ("spoor_relay_insert_duration_seconds_count", 1.0),
        ("spoor_relay_buffer_rows", 0.0),
    ] {
        assert_eq!(
            sample_value(&metrics, sample),
            value,
            "{sample} in\n{metrics}"
        );
    }
    for name in [
        "# TYPE spoor_relay_errors counter",
        "spoor_relay_consumer_lag_messages",
        "spoor_relay_buffer_bytes",
        "spoor_relay_insert_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_id_in_two_frames_is_one_row() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_dedup");
    let relay = Relay::start(config(&nats, ch.http_url(), &db)).await;
    let publisher = Publisher::connect(&nats).await;

    // Different batch ids, so JetStream's Nats-Msg-Id window keeps both
    // frames; event 5 is in both (an SDK retry the edge saw as a new request).
    publisher
        .publish_batch(&batch("frame-a", events(1..6)))
        .await;
    publisher
        .publish_batch(&batch("frame-b", events(5..9)))
        .await;
    // A later frame that duplicates an id already inserted.
    eventually("first rows", || async {
        (count(ch, &db).await == 8).then_some(())
    })
    .await;
    publisher
        .publish_batch(&batch("frame-c", vec![event(1), event(100)]))
        .await;

    eventually("frame-c acked", || async {
        let c = publisher.consumer().await;
        (c.ack_floor.stream_sequence == 3 && c.num_ack_pending == 0).then_some(())
    })
    .await;
    let stats = stats(ch, &db).await;
    assert_eq!(stats.trim(), "9\t9");
    // The surviving copy of event 5 is the first one.
    let batch_of_5 = query(
        ch,
        format!(
            "SELECT batch_id FROM {db}.events WHERE event_id = '{}'",
            id(5)
        ),
    )
    .await;
    assert_eq!(batch_of_5.trim(), "frame-a");
    assert_eq!(relay.metric("spoor_relay_events_deduped_total").await, 2.0);
    assert_eq!(
        relay.metric("spoor_relay_events_received_total").await,
        11.0
    );
    assert_eq!(relay.metric("spoor_relay_rows_inserted_total").await, 9.0);
    assert_eq!(relay.metric("spoor_relay_messages_acked_total").await, 3.0);
    relay.shutdown().await;
}

/// The relay sends the pullers' RowBinary: a frame whose rows all stay as
/// its compressed block, the rows of a frame dedup thinned compressed
/// anew. Both land value for value as `EventRow::new` makes them, read
/// back through the crate's own RowBinary reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_and_thinned_frames_land_value_for_value() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_encoded");
    let cfg = config(&nats, ch.http_url(), &db);
    let relay = Relay::start(cfg.clone()).await;
    let publisher = Publisher::connect(&nats).await;

    // Strings past 127 bytes (two-byte lengths), text beyond ASCII, both
    // nullables set and unset, a campaign on some rows.
    let rich = |n: u128| {
        let mut e = event(n);
        e.user_id = format!("user-ü-{n}");
        e.session_id = "s".repeat(130 + n as usize);
        e.client_ts_ms = (n % 2 == 0).then_some(TS_MS - n as i64);
        e.properties = format!("{{\"note\":\"{}\",\"n\":{n}}}", "é".repeat(100));
        e.context.page_title = "Caisse — Boutique".into();
        if n % 3 == 0 {
            e.context.campaign = Campaign {
                source: "newsletter".into(),
                medium: "email".into(),
                name: format!("winter-{n}"),
                term: String::new(),
                content: "c".repeat(200),
            };
        }
        e
    };
    let mut whole = batch("frame-whole", (1..6).map(rich).collect());
    whole.sent_at_ms = Some(TS_MS + 40);
    whole.device.is_bot = true;
    whole.geo.asn = u32::MAX;
    // Events 4 and 5 again: this frame's other rows are compressed anew.
    let thinned = batch("frame-thinned", (4..10).map(rich).collect());
    publisher.publish_batch(&whole).await;
    publisher.publish_batch(&thinned).await;
    eventually("9 rows", || async {
        (count(ch, &db).await == 9).then_some(())
    })
    .await;

    let mut want: Vec<spoor_store::EventRow> = whole
        .events
        .iter()
        .map(|e| spoor_store::EventRow::new(&whole, e.clone()))
        .chain(
            thinned.events[2..]
                .iter()
                .map(|e| spoor_store::EventRow::new(&thinned, e.clone())),
        )
        .collect();
    want.sort_by_key(|r| r.event_id);
    let got: Vec<spoor_store::EventRow> = cfg
        .clickhouse
        .client()
        .query(&format!(
            "SELECT {} FROM events ORDER BY event_id",
            spoor_store::EVENT_COLUMNS.join(",")
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(relay.metric("spoor_relay_events_deduped_total").await, 2.0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_frames_flush_by_row_bound_and_all_get_acked() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_many");
    let mut config = config(&nats, ch.http_url(), &db);
    config.batch.max_rows = 1_000;
    config.batch.max_messages = 1_000;
    // Only the row bound may trigger these flushes.
    config.batch.flush_interval_ms = 60_000;
    let relay = Relay::start(config).await;
    let publisher = Publisher::connect(&nats).await;

    for f in 0..60u128 {
        publisher
            .publish_batch(&batch(
                &format!("many-{f}"),
                events(f * 1_000..f * 1_000 + 100),
            ))
            .await;
    }
    eventually("6000 rows", || async {
        (count(ch, &db).await == 6_000).then_some(())
    })
    .await;
    eventually("all acked", || async {
        let c = publisher.consumer().await;
        (c.num_ack_pending == 0 && c.ack_floor.stream_sequence == 60).then_some(())
    })
    .await;
    let inserts = relay.metric("spoor_relay_insert_batch_rows_count").await;
    assert!(
        inserts >= 6.0,
        "{inserts} inserts for 6000 rows at 1000 per batch"
    );
    // The bound holds within one frame: no insert above 1024 rows.
    let within = relay
        .metric(r#"spoor_relay_insert_batch_rows_bucket{le="1024.0"}"#)
        .await;
    assert_eq!(within, inserts);
    assert_eq!(relay.metric("spoor_relay_messages_acked_total").await, 60.0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_frames_are_counted_and_taken_off_while_neighbours_land() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_corrupt");
    let relay = Relay::start(config(&nats, ch.http_url(), &db)).await;
    let publisher = Publisher::connect(&nats).await;

    publisher
        .publish_batch(&batch("good-1", events(1..4)))
        .await;
    publisher
        .publish("garbage", b"this is not a spoor frame".to_vec())
        .await;
    let mut truncated = encode_batch(&batch("cut", events(10..20))).unwrap();
    truncated.truncate(truncated.len() / 2);
    publisher.publish("truncated", truncated).await;
    publisher.publish("short", b"SPR".to_vec()).await;
    publisher
        .publish_batch(&batch("good-2", events(4..6)))
        .await;

    eventually("good rows", || async {
        (count(ch, &db).await == 5).then_some(())
    })
    .await;
    eventually("all 5 messages off the consumer", || async {
        let c = publisher.consumer().await;
        (c.num_pending == 0 && c.num_ack_pending == 0 && c.ack_floor.stream_sequence == 5)
            .then_some(())
    })
    .await;
    let m = relay.get("/metrics").await.1;
    assert_eq!(
        sample_value(
            &m,
            r#"spoor_relay_errors_total{stage="decode",error_type="bad_magic"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample_value(
            &m,
            r#"spoor_relay_errors_total{stage="decode",error_type="incomplete"}"#
        ),
        1.0,
        "{m}"
    );
    // A frame cut in half fails inside the LZ4 body.
    let body_errors = sample_value(
        &m,
        r#"spoor_relay_errors_total{stage="decode",error_type="decompress"}"#,
    ) + sample_value(
        &m,
        r#"spoor_relay_errors_total{stage="decode",error_type="length_mismatch"}"#,
    );
    assert_eq!(body_errors, 1.0, "{m}");
    assert_eq!(sample_value(&m, "spoor_relay_messages_received_total"), 5.0);
    assert_eq!(sample_value(&m, "spoor_relay_frames_decoded_total"), 2.0);
    assert_eq!(sample_value(&m, "spoor_relay_messages_acked_total"), 5.0);
    // Terminated, not redelivered: nothing comes back after ack_wait either.
    assert_eq!(publisher.consumer().await.num_redelivered, 0);
    relay.shutdown().await;
}

/// Every row repeats its frame's request-level fields, so a small frame of
/// many events with a long request field would encode to hundreds of MB:
/// it goes to the dead letters as `too_large` and its neighbours land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_whose_rows_would_be_huge_is_dead_lettered_as_too_large() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_huge_rows");
    let relay = Relay::start(config(&nats, ch.http_url(), &db)).await;
    let publisher = Publisher::connect(&nats).await;

    // About 0.3 MB of frame: a 200 KB city once, 2,000 small events; as
    // rows, 2,000 copies of the city (400 MB, over 16 x the 8 MiB default
    // --max-frame-bytes).
    let mut huge = batch("huge", events(100..2_100));
    huge.geo.city = "x".repeat(200_000);
    publisher
        .publish_batch(&batch("good-1", events(1..4)))
        .await;
    publisher.publish_batch(&huge).await;
    publisher
        .publish_batch(&batch("good-2", events(4..6)))
        .await;

    eventually("all 3 messages off the consumer", || async {
        let c = publisher.consumer().await;
        (c.num_pending == 0 && c.num_ack_pending == 0 && c.ack_floor.stream_sequence == 3)
            .then_some(())
    })
    .await;
    assert_eq!(count(ch, &db).await, 5);
    let m = relay.get("/metrics").await.1;
    assert_eq!(
        sample_value(
            &m,
            r#"spoor_relay_errors_total{stage="decode",error_type="too_large"}"#
        ),
        1.0,
        "{m}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acked_until_clickhouse_has_the_rows() {
    let nats = NatsServer::start().unwrap();
    // A private server this test may stop and restart.
    let ch = &tokio::task::block_in_place(ClickHouseServer::start).unwrap();
    let db = "relay_outage";
    let relay = Relay::start(config(&nats, ch.http_url(), db)).await;
    let publisher = Publisher::connect(&nats).await;

    tokio::task::block_in_place(|| ch.stop());
    for n in 0..4u128 {
        publisher
            .publish_batch(&batch(&format!("outage-{n}"), events(n * 10..n * 10 + 3)))
            .await;
    }

    // Delivered to the relay, buffered, retried, never acked.
    eventually("insert failures", || async {
        (relay
            .metric(r#"spoor_relay_errors_total{stage="insert",error_type="clickhouse"}"#)
            .await
            >= 3.0)
            .then_some(())
    })
    .await;
    let c = publisher.consumer().await;
    let held = c.num_ack_pending;
    assert!(held >= 1, "{c:?}");
    assert_eq!(c.num_pending, 4 - held as u64, "{c:?}");
    assert_eq!(c.ack_floor.stream_sequence, 0, "{c:?}");
    assert_eq!(relay.metric("spoor_relay_messages_acked_total").await, 0.0);
    assert_eq!(relay.metric("spoor_relay_rows_inserted_total").await, 0.0);
    assert_eq!(
        relay.metric("spoor_relay_buffer_messages").await,
        held as f64
    );
    assert_eq!(
        relay.metric("spoor_relay_buffer_rows").await,
        3.0 * held as f64
    );
    let (status, body) = relay.get("/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ClickHouse insert failed"), "{body}");

    // While inserts fail the relay does not fetch: once the partitions'
    // pull requests in flight when the first insert failed have ended
    // (`MAX_FETCH_WAIT`, 1 s), a message published stays with JetStream,
    // not in the relay's memory.
    tokio::time::sleep(spoor_relay::source::nats::MAX_FETCH_WAIT + Duration::from_millis(500))
        .await;
    publisher
        .publish_batch(&batch("during-outage", events(100..102)))
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let c = publisher.consumer().await;
    assert_eq!(
        (c.num_pending, c.num_ack_pending),
        (5 - held as u64, held),
        "{c:?}"
    );
    // The lag gauge, polled from consumer info, sees what waits in the stream.
    eventually("lag gauge", || async {
        let lag = relay.metric("spoor_relay_consumer_lag_messages").await;
        (lag == (5 - held) as f64).then_some(())
    })
    .await;

    tokio::task::block_in_place(|| ch.restart()).unwrap();
    eventually("rows after recovery", || async {
        (count(ch, db).await == 14).then_some(())
    })
    .await;
    eventually("all acked", || async {
        let c = publisher.consumer().await;
        (c.num_ack_pending == 0 && c.num_pending == 0 && c.ack_floor.stream_sequence == 5)
            .then_some(())
    })
    .await;
    let stats = stats(ch, db).await;
    assert_eq!(stats.trim(), "14\t14");
    assert_eq!(relay.metric("spoor_relay_messages_acked_total").await, 5.0);
    eventually("healthy again", || async {
        (relay.get("/healthz").await.0 == 200).then_some(())
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_relaying_across_a_nats_restart() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_nats_restart");
    let mut config = config(&nats, ch.http_url(), &db);
    // An ack that does not reach the consumer (acks are at most once) is
    // made good by redelivery after ack_wait; keep that within the wait.
    config.ack_wait = Duration::from_secs(10);
    let relay = Relay::start(config).await;
    let publisher = Publisher::connect(&nats).await;
    publisher
        .publish_batch(&batch("before", events(1..4)))
        .await;
    eventually("rows before", || async {
        (count(ch, &db).await == 3).then_some(())
    })
    .await;

    tokio::task::block_in_place(|| nats.restart()).unwrap();
    // The durable consumer and the stream survive in the store; both
    // clients reconnect by themselves.
    publisher.publish_batch(&batch("after", events(4..6))).await;
    // With TLS first and nkeys, the relay's reconnect (async-nats backs off
    // while the server is down) and the consumer's recovery took from 1 s
    // to about 30 s on this 2-core machine: wait up to 90 s, for the rows
    // and for the ack.
    let after_restart = Duration::from_secs(90);
    eventually_within("rows after", after_restart, || async {
        (count(ch, &db).await == 5).then_some(())
    })
    .await;
    eventually_within("acked after", after_restart, || async {
        let c = publisher.consumer().await;
        (c.num_ack_pending == 0 && c.ack_floor.stream_sequence == 2).then_some(())
    })
    .await;
    // Stored once, whatever was redelivered.
    assert_eq!(count(ch, &db).await, 5);
    eventually("healthy", || async {
        (relay.get("/healthz").await.0 == 200).then_some(())
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_buffer_and_acks() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_drain");
    let mut config = config(&nats, ch.http_url(), &db);
    // Nothing would flush for a minute: only shutdown can write these rows.
    config.batch.flush_interval_ms = 60_000;
    let relay = Relay::start(config).await;
    let publisher = Publisher::connect(&nats).await;

    for n in 0..3u128 {
        publisher
            .publish_batch(&batch(&format!("drain-{n}"), events(n * 10..n * 10 + 4)))
            .await;
    }
    eventually("3 messages buffered", || async {
        (relay.metric("spoor_relay_buffer_messages").await == 3.0).then_some(())
    })
    .await;
    assert_eq!(count(ch, &db).await, 0, "flushed before the interval");
    assert_eq!(publisher.consumer().await.num_ack_pending, 3);

    relay.shutdown().await;

    assert_eq!(count(ch, &db).await, 12);
    let c = publisher.consumer().await;
    assert_eq!(
        (c.num_ack_pending, c.ack_floor.stream_sequence),
        (0, 3),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_idempotent_and_migrate_applies_everything() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    // A database that does not exist yet: migrate creates it.
    let db = format!("relay_migrate_{}", std::process::id());
    let config = config(&nats, ch.http_url(), &db);
    spoor_relay::migrate(&config).await.unwrap();
    spoor_relay::migrate(&config).await.unwrap();
    let tables = query(
        ch,
        format!("SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name"),
    )
    .await;
    assert_eq!(
        tables.trim(),
        "device_users\ndevice_users_mv\nevents\nevents_by_device\nevents_by_device_mv\n\
         events_rollup_day\nevents_rollup_day_mv\nevents_rollup_hour\nevents_rollup_hour_mv\n\
         events_rollup_minute\nevents_rollup_minute_mv\ngroup_traits\ngroup_traits_mv\n\
         identity_aliases_mv\nidentity_links\nidentity_links_mv\nuser_traits\nuser_traits_mv"
    );

    // A stream that drifted from the embedded definition is put back.
    let client = nats.connect(NatsRole::Admin).await.unwrap();
    let js = jetstream::new(client);
    let mut drifted = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    drifted.max_age = Duration::from_secs(3_600);
    drifted.description = Some("edited by hand".into());
    js.update_stream(&drifted).await.unwrap();
    // Two relays starting on the same consumer also converge.
    let a = Relay::start(config.clone()).await;
    let b = Relay::start(config.clone()).await;
    let info = js.get_stream(STREAM).await.unwrap().cached_info().clone();
    assert_eq!(info.config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_ne!(info.config.description.as_deref(), Some("edited by hand"));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600));
    assert_eq!(info.config.subjects, vec!["spoor.events.>".to_string()]);
    a.shutdown().await;
    b.shutdown().await;
    query(ch, format!("DROP DATABASE {db}")).await;
}

/// A partition puller held up longer than async-nats's own timer on a pull
/// request (its expiry plus 5 s, after which the client drops what the
/// request still buffers) still hands over every message of the request,
/// each on its first delivery: none is left for `ack_wait` to bring back
/// a minute later. (The loop holds a puller up this way whenever an insert
/// is slow: the puller waits for the lookahead budget.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_held_up_past_the_pull_timer_hands_over_every_message() {
    use spoor_relay::source::nats::{
        ensure_partition_consumers, pull_partition, Lookahead, Pull, StreamLimits,
    };
    const FRAMES: usize = 40;
    let nats = NatsServer::start().unwrap();
    let client = nats.connect(NatsRole::Admin).await.unwrap();
    let js = jetstream::new(client.clone());
    spoor_relay::source::streams::ensure_all(&js, STREAM, 1, &StreamLimits::default())
        .await
        .unwrap();
    let consumers = ensure_partition_consumers(
        &js,
        STREAM,
        "spoor-relay",
        1,
        Duration::from_secs(120),
        10_000,
    )
    .await
    .unwrap();
    let publisher = Publisher::connect(&nats).await;
    for i in 0..FRAMES {
        publisher
            .publish_batch(&batch(
                &format!("held-{i}"),
                events(i as u128 * 10..i as u128 * 10 + 10),
            ))
            .await;
    }

    // A budget of one frame's rows and a channel of one: the puller decodes
    // one message, then waits on us for each of the others.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let (_paused_tx, paused) = tokio::sync::watch::channel(false);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let puller = tokio::spawn(pull_partition(Pull {
        client: client.clone(),
        consumer: consumers.consumers[0].clone(),
        partition: 0,
        epoch: 1,
        max_messages: FRAMES,
        lookahead: Lookahead::new(10, 1 << 20),
        tx,
        paused,
        stop,
        failed: |e: &dyn std::fmt::Display| panic!("a pull failed: {e}"),
    }));

    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing pulled within 10 s")
        .unwrap();
    // Held up past the request's 1 s expiry plus async-nats's 5 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Only the messages are kept: dropping the rest gives the budget back.
    let message_of = |fetched: spoor_relay::source::nats::Fetched| fetched.message;
    let mut got = vec![message_of(first)];
    while got.len() < FRAMES {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(fetched)) => got.push(message_of(fetched)),
            _ => break,
        }
    }
    let _ = stop_tx.send(true);
    let delivered: Vec<i64> = got.iter().map(|m| m.info().unwrap().delivered).collect();
    assert_eq!(
        got.len(),
        FRAMES,
        "{} of {FRAMES} messages handed over; the rest were dropped with the pull request",
        got.len()
    );
    assert!(
        delivered.iter().all(|&d| d == 1),
        "redelivered messages among them: {delivered:?}"
    );
    for message in &got {
        message.ack().await.unwrap();
    }
    drop(got);
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_secs(10), puller).await;
}
