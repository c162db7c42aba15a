//! The relay's exactly-once layers against real nats-server and
//! clickhouse-server:
//!
//! - a redelivered frame whose rows a crashed relay already inserted (all or
//!   some of them) is checked against ClickHouse and not stored twice;
//! - the dedup window holds across relays and across restarts: a relay that
//!   takes a partition over rebuilds the partition's window from the frames
//!   its consumer delivered within the window, before its first pull.

use std::time::Duration;

use futures_util::StreamExt;
use spoor_relay::sink::clickhouse::ClickHouseSink;
use spoor_relay::source::nats as source;
use spoor_store::EventRow;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::NatsServer;

use crate::relay::{config, count, stats, Publisher, CONSUMER, STREAM};
use crate::support::{eventually, Relay};
use spoor_tests::fixtures::{batch, event, events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_crashed_relay_inserted_are_not_inserted_again_on_redelivery() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_redelivery");
    let mut cfg = config(&nats, ch.http_url(), &db);
    cfg.ack_wait = Duration::from_secs(2);
    spoor_relay::migrate(&cfg).await.unwrap();
    let publisher = Publisher::connect(&nats).await;
    // The partition consumer of the test subject, as the relay creates it.
    let consumer = source::ensure_partition_consumers(
        &publisher.js,
        STREAM,
        &cfg.consumer,
        cfg.partitions,
        cfg.ack_wait,
        cfg.max_ack_pending(),
    )
    .await
    .unwrap()
    .consumers
    .swap_remove(0);
    assert_eq!(consumer.cached_info().name, CONSUMER);

    // Two frames: the "crashed relay" stored all of the first and part of
    // the second (an insert spanning two days is two parts, and a crash can
    // fall between them) and acked neither.
    let mut second = events(10..16);
    for e in &mut second[3..] {
        e.ts_ms += 86_400_000; // the next UTC day
    }
    let frames = [batch("crash-a", events(1..6)), batch("crash-b", second)];
    for frame in &frames {
        publisher.publish_batch(frame).await;
    }
    let mut pulled = consumer
        .batch()
        .max_messages(2)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut held = Vec::new();
    while let Some(message) = pulled.next().await {
        held.push(message.unwrap());
    }
    assert_eq!(held.len(), 2, "the crashed relay held both frames");
    let sink = ClickHouseSink::new(&cfg.clickhouse, cfg.ack_wait);
    let mut stored: Vec<EventRow> = frames[0]
        .events
        .iter()
        .map(|e| EventRow::new(&frames[0], e.clone()))
        .collect();
    stored.extend(
        frames[1].events[..3]
            .iter()
            .map(|e| EventRow::new(&frames[1], e.clone())),
    );
    sink.insert(&stored).await.unwrap();
    assert_eq!(count(ch, &db).await, 8);
    drop(held); // crash: no ack, no nak

    // A relay takes over; JetStream redelivers both frames after ack_wait.
    let relay = Relay::start(cfg).await;
    eventually("redelivered frames acked", || async {
        let c = publisher.consumer().await;
        (c.num_ack_pending == 0 && c.num_pending == 0 && c.ack_floor.stream_sequence == 2)
            .then_some(())
    })
    .await;
    let stats = stats(ch, &db).await;
    assert_eq!(stats.trim(), "11\t11", "every event exactly once");
    assert_eq!(
        relay
            .metric("spoor_relay_events_deduped_by_layer_total{layer=\"stored\"}")
            .await,
        8.0
    );
    assert_eq!(relay.metric("spoor_relay_rows_inserted_total").await, 3.0);
    assert!(relay.metric("spoor_relay_presence_checks_total").await >= 1.0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_window_holds_across_relays_and_restarts() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_window");
    let cfg = config(&nats, ch.http_url(), &db);
    let publisher = Publisher::connect(&nats).await;

    // Relay A stores events 1-4.
    let a = Relay::start(cfg.clone()).await;
    publisher
        .publish_batch(&batch("claims-1", events(1..5)))
        .await;
    eventually("frame 1 stored", || async {
        (count(ch, &db).await == 4).then_some(())
    })
    .await;

    // Relay B joins while A runs, then A leaves and hands its partitions
    // over. B must drop 3 and 4, which only A saw: it read them back from
    // the partition's recent frames when it took the partition.
    let b = Relay::start(cfg.clone()).await;
    a.shutdown().await;
    publisher
        .publish_batch(&batch("claims-2", events(3..7)))
        .await;
    eventually("frame 2 acked", || async {
        let c = publisher.consumer().await;
        (c.ack_floor.stream_sequence == 2 && c.num_ack_pending == 0).then_some(())
    })
    .await;
    assert_eq!(count(ch, &db).await, 6);
    assert_eq!(
        b.metric("spoor_relay_events_deduped_by_layer_total{layer=\"window\"}")
            .await,
        2.0
    );
    b.shutdown().await;

    // No relay runs. A new one must rebuild the window from the frames both
    // earlier relays took before it pulls: 1 (A's) and 6 (B's) are copies.
    publisher
        .publish_batch(&batch("claims-3", vec![event(1), event(6), event(7)]))
        .await;
    let c = Relay::start(cfg).await;
    eventually("frame 3 acked", || async {
        let info = publisher.consumer().await;
        (info.ack_floor.stream_sequence == 3 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    let stats = stats(ch, &db).await;
    assert_eq!(stats.trim(), "7\t7");
    assert!(
        c.metric("spoor_relay_window_rebuilt_ids_total").await >= 6.0,
        "A's four ids and B's two were read back"
    );
    assert_eq!(
        c.metric("spoor_relay_events_deduped_by_layer_total{layer=\"window\"}")
            .await,
        2.0
    );
    c.shutdown().await;
}

/// Relays before partition ownership shared one consumer, `spoor-relay`.
/// A relay of this version started beside it must not deliver again what
/// that consumer took: it starts the partition consumers after its ack
/// floor and checks the frames it delivered above the floor in ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_the_single_shared_consumer_stores_nothing_twice() {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("relay_upgrade");
    let cfg = config(&nats, ch.http_url(), &db);
    spoor_relay::migrate(&cfg).await.unwrap();
    let publisher = Publisher::connect(&nats).await;
    let old = publisher
        .js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("spoor-relay".into()),
                ack_policy: AckPolicy::Explicit,
                filter_subject: spoor_core::contract::EVENTS_FILTER.into(),
                ..Default::default()
            },
            STREAM,
        )
        .await
        .unwrap();
    let frames: Vec<_> = (0..3u128)
        .map(|f| batch(&format!("old-{f}"), events(f * 10 + 1..f * 10 + 6)))
        .collect();
    for frame in &frames {
        publisher.publish_batch(frame).await;
    }
    // The old relay stored all three frames and acked the first and the
    // third; it died before acking the second.
    let mut pulled = old
        .batch()
        .max_messages(3)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut held = Vec::new();
    while let Some(message) = pulled.next().await {
        held.push(message.unwrap());
    }
    assert_eq!(held.len(), 3);
    let sink = ClickHouseSink::new(&cfg.clickhouse, cfg.ack_wait);
    let rows: Vec<EventRow> = frames
        .iter()
        .flat_map(|b| b.events.iter().map(|e| EventRow::new(b, e.clone())))
        .collect();
    sink.insert(&rows).await.unwrap();
    held[0].double_ack().await.unwrap();
    held[2].double_ack().await.unwrap();
    let info = publisher
        .js
        .get_stream(STREAM)
        .await
        .unwrap()
        .consumer_info("spoor-relay")
        .await
        .unwrap();
    assert_eq!(
        (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence
        ),
        (1, 3)
    );
    drop(held);
    // A new frame arrives, then the new relay starts.
    publisher
        .publish_batch(&batch("new-0", events(100..105)))
        .await;
    let relay = Relay::start(cfg).await;
    eventually("the new frame stored", || async {
        (count(ch, &db).await >= 20).then_some(())
    })
    .await;
    publisher.drained(4).await;
    let stats = stats(ch, &db).await;
    assert_eq!(stats.trim(), "20\t20", "every event exactly once");
    // Frames 2 and 3 came again (above the old floor) and were found stored.
    assert_eq!(
        relay
            .metric("spoor_relay_events_deduped_by_layer_total{layer=\"stored\"}")
            .await,
        10.0
    );
    assert_eq!(relay.metric("spoor_relay_rows_inserted_total").await, 5.0);
    relay.shutdown().await;
}
