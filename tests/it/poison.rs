//! Rows the relay must not insert, against a real nats-server and
//! clickhouse-server (Debian's 18.16): a row ClickHouse refuses is isolated
//! and dead-lettered with the server's error while the rows around it are
//! stored exactly once and later frames flow; frames of an unknown or empty
//! project are dead-lettered and never reach `events`, while the good
//! frames of the same message are stored; both kinds replay with `spoor
//! dead-letters replay` once the cause is fixed; and an outage still waits
//! and retries without dead-lettering anything.
//!
//! The server refuses a row of valid type through a `MATERIALIZED` column
//! computing `throwIf(event = 'poison')` (18.16 has no `ADD CONSTRAINT`;
//! like a constraint, a materialized column is computed before anything is
//! written, so the refused insert stores nothing).

use std::collections::BTreeSet;

use spoor_cli::dead_letters::{self, DeadLetter, ReplayOptions, Selector};
use spoor_core::codec::encode_bundle;
use spoor_core::contract::DEAD_STREAM;
use spoor_core::{encode_batch, Event, WireBatch};
use spoor_relay::config::Projects;
use spoor_relay::RelayConfig;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::{NatsRole, NatsServer};

use crate::relay::{Publisher, STREAM, SUBJECT};
use crate::support::{eventually, nats_endpoint, Relay};
use spoor_tests::fixtures::{event, events};

const PROJECT: &str = "proj_poison";
const REJECTED: &str = "rejected_by_clickhouse";
const UNKNOWN: &str = "unknown_project";

fn config(nats: &NatsServer, ch: &ClickHouseServer, db: &str, projects: &[&str]) -> RelayConfig {
    let mut config = crate::relay::config(nats, ch.http_url(), db);
    config.projects = Projects::Only(projects.iter().map(|p| p.to_string()).collect());
    config
}

fn batch(batch_id: &str, project: &str, events: Vec<Event>) -> WireBatch {
    WireBatch {
        project_id: project.into(),
        ..spoor_tests::fixtures::batch(batch_id, events)
    }
}

fn poison(n: u128) -> Event {
    Event {
        event: "poison".into(),
        ..event(n)
    }
}

async fn query(ch: &ClickHouseServer, sql: String) -> String {
    crate::relay::query(ch, sql).await
}

/// `count()` and `uniqExact(event_id)` of `events` for `where_`.
async fn stats(ch: &ClickHouseServer, db: &str, where_: &str) -> String {
    query(
        ch,
        format!("SELECT count(), uniqExact(event_id) FROM {db}.events WHERE {where_} FORMAT TabSeparated"),
    )
    .await
    .trim()
    .to_string()
}

async fn letters(nats: &NatsServer) -> Vec<DeadLetter> {
    dead_letters::list(&nats_endpoint(nats, NatsRole::Ops), None)
        .await
        .unwrap()
}

async fn replay(nats: &NatsServer, selectors: Vec<Selector>) -> Vec<dead_letters::Replayed> {
    dead_letters::replay(&ReplayOptions {
        nats: nats_endpoint(nats, NatsRole::Ops),
        selectors,
        dry_run: false,
    })
    .await
    .unwrap()
}

/// `spoor reconcile` over the last hour: exact, with its counts.
async fn reconcile(
    nats: &NatsServer,
    ch: &ClickHouseServer,
    db: &str,
) -> spoor_cli::ReconcileReport {
    let report = spoor_cli::reconcile(&spoor_cli::ReconcileOptions::new(
        nats_endpoint(nats, NatsRole::Ops),
        spoor_cli::ClickHouseOptions {
            url: ch.http_url(),
            database: db.to_string(),
            user: None,
            password: None,
        },
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    ))
    .await
    .unwrap();
    assert!(report.is_exact(), "{}", report.render(20));
    report
}

fn decoded(letter: &DeadLetter) -> Vec<WireBatch> {
    spoor_core::decode_message(&letter.payload, 1 << 20).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_clickhouse_refuses_is_dead_lettered_and_its_neighbours_stored_once() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("poison_rows");
    let relay = Relay::start(config(&nats, ch, &db, &[PROJECT])).await;
    let publisher = Publisher::connect(&nats).await;
    query(
        ch,
        format!(
            "ALTER TABLE {db}.events ADD COLUMN poison_check UInt8 \
             MATERIALIZED throwIf(event = 'poison')"
        ),
    )
    .await;

    // One frame of 40 rows, two of them refused; another frame in the same
    // buffer, all good.
    let mut mixed = events(1..41);
    mixed[3] = poison(4);
    mixed[29] = poison(30);
    let refused = vec![mixed[3].clone(), mixed[29].clone()];
    let mixed = batch("mixed", PROJECT, mixed);
    let mixed_seq = publisher.publish_batch(&mixed).await;
    let last = publisher
        .publish_batch(&batch("clean", PROJECT, events(100..110)))
        .await;
    publisher.drained(last).await;
    assert_eq!(stats(ch, &db, "1").await, "48\t48");
    assert_eq!(stats(ch, &db, "event = 'poison'").await, "0\t0");

    // The refused rows, re-encoded as a frame of their own message.
    let dead = letters(&nats).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let letter = &dead[0];
    assert_eq!(letter.reason, REJECTED);
    assert_eq!(letter.rows, Some(2));
    assert!(
        letter.detail.starts_with("Code: 395") && letter.detail.contains("throwIf"),
        "{letter:?}"
    );
    assert_eq!(letter.original_subject, SUBJECT);
    assert_eq!(letter.original_stream, STREAM);
    assert_eq!(letter.original_stream_seq, Some(mixed_seq));
    assert_eq!(letter.original_msg_id, "mixed");
    assert_eq!(
        decoded(letter),
        vec![WireBatch {
            events: refused,
            ..mixed.clone()
        }]
    );
    let raw = publisher
        .js
        .get_stream(DEAD_STREAM)
        .await
        .unwrap()
        .get_raw_message(letter.seq)
        .await
        .unwrap();
    assert_eq!(raw.subject.as_str(), format!("spoor.dead.{REJECTED}"));

    let c = publisher.consumer().await;
    assert_eq!((c.num_ack_pending, c.num_redelivered), (0, 0), "{c:?}");
    for (sample, value) in [
        ("spoor_relay_rows_rejected_total", 2.0),
        (
            r#"spoor_relay_rows_dead_lettered_total{reason="rejected_by_clickhouse"}"#,
            2.0,
        ),
        (
            r#"spoor_relay_dead_lettered_total{reason="rejected_by_clickhouse"}"#,
            1.0,
        ),
        (
            r#"spoor_relay_errors_total{stage="insert",error_type="rows_rejected"}"#,
            1.0,
        ),
        (
            r#"spoor_relay_errors_total{stage="insert",error_type="clickhouse"}"#,
            0.0,
        ),
        ("spoor_relay_rows_inserted_total", 48.0),
        ("spoor_relay_messages_acked_total", 2.0),
    ] {
        assert_eq!(relay.metric(sample).await, value, "{sample}");
    }
    // Bounded: two bad rows in 50 cost at most 1 + 2·2·⌈log2 50⌉ inserts.
    let inserts = relay.metric("spoor_relay_isolation_inserts_total").await;
    assert!((3.0..=25.0).contains(&inserts), "{inserts} inserts");

    // Not stalled: later frames, poison or not, flow.
    let later = batch("later", PROJECT, vec![event(200), poison(201), event(202)]);
    let last = publisher.publish_batch(&later).await;
    publisher.drained(last).await;
    assert_eq!(stats(ch, &db, "1").await, "50\t50");
    let dead = letters(&nats).await;
    assert_eq!(dead.len(), 2, "{dead:#?}");
    // Reconcile knows the refused events: dead-lettered, not missing.
    let report = reconcile(&nats, ch, &db).await;
    assert_eq!(
        (
            report.accepted_events,
            report.inserted,
            report.dead_lettered_events,
            report.dead_lettered_frames
        ),
        (53, 50, 3, 0),
        "{}",
        report.render(20)
    );

    // The fix, then the replay: within the dedup window, yet every refused
    // event is stored once, and the dead letters are gone.
    query(
        ch,
        format!("ALTER TABLE {db}.events DROP COLUMN poison_check"),
    )
    .await;
    let replayed = replay(&nats, vec![Selector::Reason(REJECTED.into())]).await;
    assert_eq!(replayed.len(), 2);
    publisher
        .drained(replayed.iter().filter_map(|r| r.stream_seq).max().unwrap())
        .await;
    assert_eq!(stats(ch, &db, "1").await, "53\t53");
    assert_eq!(stats(ch, &db, "event = 'poison'").await, "3\t3");
    assert!(letters(&nats).await.is_empty());
    let report = reconcile(&nats, ch, &db).await;
    assert_eq!(
        (report.inserted, report.dead_lettered_events, report.deduped),
        (53, 0, 3),
        "{}",
        report.render(20)
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_empty_projects_are_dead_lettered_and_never_stored() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("poison_projects");
    let relay = Relay::start(config(&nats, ch, &db, &[PROJECT, "other_ok"])).await;
    let publisher = Publisher::connect(&nats).await;

    // One message, as an edge link coalesces them: two good frames, one of
    // a project the relay does not serve, one with an empty project id.
    let good = batch("good", PROJECT, events(1..4));
    let good_too = batch("good-too", "other_ok", events(4..6));
    let intruder = batch("intruder", "intruder", events(10..13));
    let nameless = batch("nameless", "", events(20..22));
    let frames: Vec<Vec<u8>> = [&good, &intruder, &good_too, &nameless]
        .iter()
        .map(|b| encode_batch(b).unwrap())
        .collect();
    let bundle_seq = publisher.publish("bundle", encode_bundle(&frames)).await;
    // And a message that is all intruder.
    let lone = batch("lone", "intruder", events(30..31));
    let last = publisher.publish_batch(&lone).await;
    publisher.drained(last).await;

    assert_eq!(stats(ch, &db, "1").await, "5\t5");
    let projects = query(
        ch,
        format!(
            "SELECT DISTINCT project_id FROM {db}.events ORDER BY project_id FORMAT TabSeparated"
        ),
    )
    .await;
    assert_eq!(projects, format!("other_ok\n{PROJECT}\n"));

    let dead = letters(&nats).await;
    assert_eq!(dead.len(), 3, "{dead:#?}");
    assert!(dead.iter().all(|l| l.reason == UNKNOWN), "{dead:#?}");
    let of = |msg_id: &str, batch_id: &str| -> DeadLetter {
        dead.iter()
            .find(|l| l.original_msg_id == msg_id && decoded(l)[0].batch_id == batch_id)
            .unwrap_or_else(|| panic!("no dead letter of {batch_id}: {dead:#?}"))
            .clone()
    };
    let intruder_letter = of("bundle", "intruder");
    assert_eq!(decoded(&intruder_letter), vec![intruder.clone()]);
    assert_eq!(intruder_letter.rows, Some(3));
    assert_eq!(intruder_letter.original_stream_seq, Some(bundle_seq));
    assert!(
        intruder_letter.detail.contains("\"intruder\"")
            && intruder_letter.detail.contains("--projects"),
        "{intruder_letter:?}"
    );
    let nameless_letter = of("bundle", "nameless");
    assert_eq!(decoded(&nameless_letter), vec![nameless]);
    assert!(
        nameless_letter.detail.contains("empty"),
        "{nameless_letter:?}"
    );
    let lone_letter = of("lone", "lone");
    assert_eq!(decoded(&lone_letter), vec![lone]);
    assert_eq!(lone_letter.original_stream_seq, Some(last));

    let c = publisher.consumer().await;
    assert_eq!((c.num_ack_pending, c.num_redelivered), (0, 0), "{c:?}");
    assert_eq!(
        relay
            .metric(r#"spoor_relay_errors_total{stage="validate",error_type="unknown_project"}"#)
            .await,
        3.0
    );
    assert_eq!(
        relay
            .metric(r#"spoor_relay_rows_dead_lettered_total{reason="unknown_project"}"#)
            .await,
        6.0
    );
    assert_eq!(relay.metric("spoor_relay_messages_acked_total").await, 2.0);
    let report = reconcile(&nats, ch, &db).await;
    assert_eq!(
        (
            report.accepted_events,
            report.inserted,
            report.dead_lettered_events
        ),
        (11, 5, 6),
        "{}",
        report.render(20)
    );

    // The fix: a relay that serves the intruder's project. Its dead letters
    // replay; the nameless one stays.
    relay.shutdown().await;
    let relay = Relay::start(config(&nats, ch, &db, &[PROJECT, "other_ok", "intruder"])).await;
    let replayed = replay(
        &nats,
        vec![
            Selector::Seq(intruder_letter.seq),
            Selector::Seq(lone_letter.seq),
        ],
    )
    .await;
    assert_eq!(replayed.len(), 2);
    publisher
        .drained(replayed.iter().filter_map(|r| r.stream_seq).max().unwrap())
        .await;
    assert_eq!(stats(ch, &db, "project_id = 'intruder'").await, "4\t4");
    assert_eq!(stats(ch, &db, "project_id = ''").await, "0\t0");
    let left = letters(&nats).await;
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(decoded(&left[0])[0].batch_id, "nameless");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_waits_and_retries_and_dead_letters_nothing() {
    let nats = NatsServer::start().unwrap();
    // A private server this test may stop and restart.
    let ch = &tokio::task::block_in_place(ClickHouseServer::start).unwrap();
    let db = "poison_outage";
    let relay = Relay::start(config(&nats, ch, db, &[PROJECT])).await;
    let publisher = Publisher::connect(&nats).await;

    tokio::task::block_in_place(|| ch.stop());
    let mut last = 0;
    for n in 0..3u128 {
        last = publisher
            .publish_batch(&batch(
                &format!("outage-{n}"),
                PROJECT,
                events(n * 10..n * 10 + 4),
            ))
            .await;
    }
    eventually("insert failures", || async {
        (relay
            .metric(r#"spoor_relay_errors_total{stage="insert",error_type="clickhouse"}"#)
            .await
            >= 3.0)
            .then_some(())
    })
    .await;
    let c = publisher.consumer().await;
    assert!(c.num_ack_pending >= 1, "{c:?}");
    assert_eq!(c.ack_floor.stream_sequence, 0, "{c:?}");
    assert!(letters(&nats).await.is_empty());
    assert_eq!(relay.metric("spoor_relay_rows_rejected_total").await, 0.0);

    tokio::task::block_in_place(|| ch.restart()).unwrap();
    publisher.drained(last).await;
    assert_eq!(stats(ch, db, "1").await, "12\t12");
    assert!(letters(&nats).await.is_empty());
    assert_eq!(relay.metric("spoor_relay_rows_rejected_total").await, 0.0);
    assert_eq!(
        relay.metric("spoor_relay_isolation_inserts_total").await,
        0.0
    );
    let projects: BTreeSet<String> = query(
        ch,
        format!("SELECT DISTINCT project_id FROM {db}.events FORMAT TabSeparated"),
    )
    .await
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(projects, [PROJECT.to_string()].into());
    relay.shutdown().await;
}
