//! Partition ownership against a real nats-server and clickhouse-server,
//! with relays as processes (so they can be killed and frozen for real):
//!
//! - two relays split the partitions between them with no partition held
//!   twice and none left unowned, `spoor relays` shows it, and a killed
//!   relay's partitions move to the survivor within the lease, with every
//!   event stored once and the rollups equal to the raw table;
//! - a relay frozen past its lease (SIGSTOP) does not insert what it held
//!   when it wakes: the next owner stored it, once (fencing);
//! - copies of events in different frames, before and after a handover,
//!   are stored once, and the rollups equal the raw table.

use std::collections::BTreeSet;
use std::time::Duration;

use spoor_core::{encode_batch, route, WireBatch};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::fixtures::{batch, event};
use spoor_tests::nats::{NatsRole, NatsServer};
use spoor_tests::relay::{RelayProcess, RelayProcessConfig};

use crate::relay::{query, stats, Publisher};
use crate::support::{eventually_within, now_ms, sample_value};

const PARTITIONS: u32 = 16;

fn relay(nats: &NatsServer, ch: &ClickHouseServer, db: &str, extra: &[&str]) -> RelayProcess {
    let flush = if extra.contains(&"--flush-interval-ms") {
        &[][..]
    } else {
        &["--flush-interval-ms", "200"][..]
    };
    let mut args: Vec<String> = flush.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--lease-ttl-secs",
            "3",
            "--ack-wait-secs",
            "4",
            "--drain-timeout-secs",
            "10",
            "--retention-days",
            "0",
            "--rollup-retention-days",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    RelayProcess::start(RelayProcessConfig {
        nats_url: nats.url(),
        nats_ca: Some(nats.ca_pem_path().to_path_buf()),
        nats_nkey_file: Some(nats.seed_path(NatsRole::Relay)),
        clickhouse_url: ch.http_url(),
        database: db.to_string(),
        // The fixtures' project.
        projects: vec![batch("p", Vec::new()).project_id],
        args,
    })
    .unwrap()
}

/// One frame of `n` recent events from `device`, on its partition's subject.
async fn publish_device(p: &Publisher, name: &str, device: &str, first: u128, n: u128) -> u64 {
    let now = now_ms();
    let events = (first..first + n)
        .map(|i| {
            let mut e = event(i);
            e.anonymous_id = device.to_string();
            e.ts_ms = now - 60_000;
            e.client_ts_ms = Some(e.ts_ms);
            e
        })
        .collect();
    let mut b: WireBatch = batch(name, events);
    b.received_at_ms = now;
    let subject = route::subject("eu-west", route::partition_of(device, PARTITIONS));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", b.batch_id.as_str());
    let ack =
        p.js.publish_with_headers(subject, headers, encode_batch(&b).unwrap().into())
            .await
            .unwrap();
    ack.await.unwrap().sequence
}

/// `spoor relays`, as the ops role runs it.
async fn relays(nats: &NatsServer) -> spoor_cli::relays::RelaysReport {
    let client = nats.connect(NatsRole::Ops).await.unwrap();
    spoor_cli::relays::relays(&client, "SPOOR_EVENTS", "spoor-relay", PARTITIONS)
        .await
        .unwrap()
}

/// The relays' holdings when every partition is held exactly once by the
/// live relays, each holding its even share.
fn split_evenly(report: &spoor_cli::relays::RelaysReport, live: usize) -> bool {
    if report.relays.len() != live || !report.unowned().is_empty() {
        return false;
    }
    let mut seen = BTreeSet::new();
    for r in &report.relays {
        for p in &r.record.partitions {
            if !seen.insert(*p) {
                return false; // held twice
            }
        }
        if r.record.partitions.len() != (PARTITIONS as usize).div_ceil(live) {
            return false;
        }
    }
    seen.len() == PARTITIONS as usize
}

/// The events table and every rollup agree: `count()`, `uniqExact(event_id)`
/// and the minute, hour and day rollups' `countMerge(events)`.
async fn counts(ch: &ClickHouseServer, db: &str) -> String {
    let mut out = stats(ch, db).await.trim().to_string();
    for table in [
        "events_rollup_minute",
        "events_rollup_hour",
        "events_rollup_day",
    ] {
        let n = query(
            ch,
            format!("SELECT countMerge(events) FROM {db}.{table} FORMAT TabSeparated"),
        )
        .await;
        out.push('\t');
        out.push_str(n.trim());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_split_the_partitions_and_a_killed_ones_move_within_the_lease() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("ownership_split");
    let publisher = Publisher::connect(&nats).await;
    let wait = Duration::from_secs(30);

    let a = relay(&nats, ch, &db, &[]);
    let report = eventually_within("one relay holding every partition", wait, || async {
        let r = relays(&nats).await;
        split_evenly(&r, 1).then_some(r)
    })
    .await;
    assert_eq!(report.relays[0].record.partitions.len(), 16);

    // Traffic on every partition while a second relay joins.
    let devices: Vec<String> = (0..64).map(|d| format!("device-{d}")).collect();
    let mut sent = 0u128;
    let b = relay(&nats, ch, &db, &[]);
    for round in 0..10u128 {
        for (d, device) in devices.iter().enumerate() {
            let first = 1 + sent;
            publish_device(&publisher, &format!("r{round}-d{d}"), device, first, 3).await;
            sent += 3;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = eventually_within("two relays holding eight partitions each", wait, || async {
        let r = relays(&nats).await;
        split_evenly(&r, 2).then_some(r)
    })
    .await;
    let (a_metrics, b_metrics) = (a.metrics().unwrap(), b.metrics().unwrap());
    assert_eq!(
        sample_value(
            &a_metrics,
            r#"spoor_relay_rebalances_total{change="released"}"#
        ),
        8.0,
        "the first relay handed over half"
    );
    assert_eq!(
        sample_value(
            &b_metrics,
            r#"spoor_relay_rebalances_total{change="acquired"}"#
        ),
        8.0
    );
    assert_eq!(
        sample_value(&b_metrics, "spoor_relay_partitions_owned"),
        8.0
    );
    let text = spoor_cli::relays::render(&report, now_ms());
    assert!(
        text.contains("every one of 16 partitions is held"),
        "{text}"
    );

    // Kill the second: its partitions come back to the first within the
    // lease (3 s) plus a renewal round, and what it held unacked is
    // redelivered there and stored once.
    b.kill9();
    for (d, device) in devices.iter().enumerate() {
        publish_device(&publisher, &format!("after-d{d}"), device, 1 + sent, 3).await;
        sent += 3;
    }
    let killed_at = std::time::Instant::now();
    eventually_within("the survivor holding every partition", wait, || async {
        let r = relays(&nats).await;
        // The killed relay's presence key expires with its leases.
        (r.unowned().is_empty() && r.relays.iter().any(|x| x.record.partitions.len() == 16))
            .then_some(())
    })
    .await;
    let moved_in = killed_at.elapsed();
    assert!(
        moved_in < Duration::from_secs(12),
        "partitions moved in {moved_in:?}"
    );
    let want = format!("{sent}\t{sent}\t{sent}\t{sent}\t{sent}");
    eventually_within("every event stored once", wait, || async {
        (counts(ch, &db).await == want).then_some(())
    })
    .await;
    // Nothing more arrives later (a late insert would show here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(counts(ch, &db).await, want);
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_frozen_past_its_lease_does_not_insert_what_it_held() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("ownership_fence");
    let publisher = Publisher::connect(&nats).await;
    let wait = Duration::from_secs(30);

    // A buffers for 8 s before it inserts; freeze it while it holds a frame.
    let a = relay(&nats, ch, &db, &["--flush-interval-ms", "8000"]);
    eventually_within("the first relay holding every partition", wait, || async {
        split_evenly(&relays(&nats).await, 1).then_some(())
    })
    .await;
    publish_device(&publisher, "held", "frozen-device", 1, 5).await;
    eventually_within("the frame buffered", wait, || async {
        let m = a.metrics().ok()?;
        (sample_value(&m, "spoor_relay_buffer_rows") == 5.0).then_some(())
    })
    .await;
    a.freeze().unwrap();

    // B takes the partitions once A's leases expire, gets A's unacked frame
    // after ack_wait, and stores it.
    let b = relay(&nats, ch, &db, &[]);
    eventually_within("the frame stored by the second relay", wait, || async {
        (stats(ch, &db).await.trim() == "5\t5").then_some(())
    })
    .await;
    eventually_within("the second relay counting its insert", wait, || async {
        let m = b.metrics().ok()?;
        (sample_value(&m, "spoor_relay_rows_inserted_total") == 5.0).then_some(())
    })
    .await;

    // A wakes with its buffer due and its lease long gone: it must drop the
    // rows (fenced), not insert them.
    a.thaw().unwrap();
    eventually_within(
        "the woken relay to notice its lost leases",
        wait,
        || async {
            let m = a.metrics().ok()?;
            (sample_value(&m, "spoor_relay_lease_losses_total") >= 1.0
                && sample_value(&m, "spoor_relay_buffer_rows") == 0.0)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = a.metrics().unwrap();
    assert_eq!(sample_value(&m, "spoor_relay_rows_inserted_total"), 0.0);
    assert_eq!(counts(ch, &db).await, "5\t5\t5\t5\t5");
    b.stop();
    a.stop();
}

/// Copies of events in different frames (an SDK resend, a republish under
/// a new `Nats-Msg-Id` that JetStream cannot collapse), before and after
/// the partition changes hands, are stored once: the raw table and every
/// rollup count them once, without FINAL and without a merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_across_a_handover_leave_the_rollups_equal_to_the_raw_table() {
    use crate::relay::config;
    use crate::support::{eventually, Relay};
    use spoor_tests::fixtures::events;
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("ownership_copies");
    let cfg = config(&nats, ch.http_url(), &db);
    let publisher = Publisher::connect(&nats).await;
    let recent = |mut b: WireBatch| {
        let now = now_ms();
        b.received_at_ms = now;
        for e in &mut b.events {
            e.ts_ms = now - 120_000;
            e.client_ts_ms = Some(e.ts_ms);
        }
        b
    };

    let a = Relay::start(cfg.clone()).await;
    let first = recent(batch("first", events(1..11)));
    publisher.publish_batch(&first).await;
    // The same frame again under another message id, and a resend of some
    // of its events with new ones.
    publisher
        .publish("republished", encode_batch(&first).unwrap())
        .await;
    publisher
        .publish_batch(&recent(batch("resend-1", events(5..16))))
        .await;
    eventually("the first relay's rows", || async {
        (stats(ch, &db).await.trim() == "15\t15").then_some(())
    })
    .await;
    // The partition moves: a second relay starts, the first hands over.
    let b = Relay::start(cfg).await;
    a.shutdown().await;
    let last = publisher
        .publish_batch(&recent(batch("resend-2", events(1..21))))
        .await;
    publisher.drained(last).await;
    assert_eq!(counts(ch, &db).await, "20\t20\t20\t20\t20");
    assert_eq!(
        b.metric("spoor_relay_events_deduped_by_layer_total{layer=\"window\"}")
            .await,
        15.0,
        "the new owner knew the first owner's events from the stream"
    );
    b.shutdown().await;
}

/// The lease task renews from a thread and a connection of its own: with
/// the runtime that started it blocked for three lease TTLs (as a relay's
/// runtime is when its pullers' decoding takes all the CPU it is given),
/// the lease is still held under the same epoch, still valid, was renewed
/// meanwhile, and was never reported lost. Had the task shared that
/// runtime, the key would have expired on the server and the lease been
/// lost.
#[tokio::test(flavor = "current_thread")]
async fn leases_are_renewed_while_the_relays_runtime_is_blocked() {
    use spoor_relay::ownership::leases::{open_bucket, run_apart, Leases, Progress};
    use spoor_relay::ownership::{Fence, LeaseTiming, Ownership};
    use spoor_tests::nats::NatsRole;
    use std::sync::Arc;

    let nats = NatsServer::start().unwrap();
    let endpoint = crate::support::nats_endpoint(&nats, NatsRole::Relay);
    let client = endpoint.connect("test", None).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let ttl = Duration::from_secs(2);
    let stream = "SPOOR_EVENTS";
    let (kv, ttl) = open_bucket(&js, stream, ttl, 1).await.unwrap();
    let fence = Fence::default();
    let (tx, mut changes) = tokio::sync::mpsc::channel(16);
    let (_released_tx, released) = tokio::sync::mpsc::channel(16);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let leases = tokio::spawn(run_apart(
        endpoint,
        spoor_core::contract::leases_bucket(stream),
        {
            let fence = fence.clone();
            move |kv| {
                Leases::new(
                    kv,
                    "relay-blocked".into(),
                    1,
                    LeaseTiming { ttl },
                    fence,
                    Arc::new(Progress::default()),
                    Arc::new(spoor_relay::metrics::Metrics::new()),
                )
            }
        },
        tx,
        released,
        stop,
    ));
    let acquired = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("the lease task acquired nothing within 10 s")
        .unwrap();
    let Ownership::Acquired { partition, epoch } = acquired else {
        panic!("expected the partition to be acquired first, got {acquired:?}");
    };

    // Block the only thread of this runtime, which spawned the task.
    std::thread::sleep(3 * ttl);

    assert!(
        fence.valid(partition, epoch, tokio::time::Instant::now()),
        "the lease lapsed while the runtime was blocked: {:?}",
        fence.get(partition)
    );
    let entry = kv
        .entry(spoor_core::contract::lease_key(partition))
        .await
        .unwrap()
        .expect("the lease key is gone from the bucket");
    assert!(
        entry.revision > epoch,
        "the lease was not renewed while the runtime was blocked (revision {} = epoch {epoch})",
        entry.revision
    );
    assert!(
        matches!(
            changes.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty)
        ),
        "the lease task reported a change while the runtime was blocked"
    );

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), leases)
        .await
        .expect("the lease task did not stop within 10 s")
        .unwrap()
        .unwrap();
    assert!(
        kv.get(spoor_core::contract::lease_key(partition))
            .await
            .unwrap()
            .is_none(),
        "the lease was not deleted at stop"
    );
}
