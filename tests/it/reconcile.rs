//! `spoor reconcile` against a real nats-server and clickhouse-server: a
//! clean run with in-stream duplicates, a resent event, late events on an
//! earlier day and a dead letter balances exactly with the right numbers;
//! rows deleted in ClickHouse are named one by one and fail the check; a
//! project filter and a window that ends before the traffic narrow it.

use crate::support::nats_endpoint;
use spoor_cli::{reconcile, ClickHouseOptions, ReconcileOptions};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::NatsRole;
use spoor_tests::nats::NatsServer;
use time::OffsetDateTime;

use crate::dead_letters::{
    batch, config, count, event, events, id, query, Publisher, PROJECT, STREAM,
};
use crate::support::{eventually, Relay};

const DAY_MS: i64 = 86_400_000;

fn options(
    nats: &NatsServer,
    ch: &ClickHouseServer,
    db: &str,
    since: OffsetDateTime,
) -> ReconcileOptions {
    let mut opts = ReconcileOptions::new(
        nats_endpoint(nats, NatsRole::Ops),
        ClickHouseOptions {
            url: ch.http_url(),
            database: db.to_string(),
            user: None,
            password: None,
        },
        since,
    );
    opts.stream = STREAM.to_string();
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_balances_exactly_and_deleted_rows_are_named() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("reconcile");
    let relay = Relay::start(config(&nats, ch, &db)).await;
    let publisher = Publisher::connect(&nats).await;
    let since = OffsetDateTime::now_utc() - time::Duration::seconds(5);

    // 4 + 4 + 1 + 2 = 11 accepted events, 8 unique: 3 and 4 are in two
    // frames, 1 is resent alone. Two events are a day and 2 hours late,
    // so they belong in another partition than the frame's neighbours.
    publisher.publish_batch(&batch("a", events(1..5))).await;
    publisher.publish_batch(&batch("b", events(3..7))).await;
    publisher
        .publish_batch(&batch("resend", vec![event(1)]))
        .await;
    let late = (7..9)
        .map(|n| spoor_core::Event {
            ts_ms: crate::dead_letters::TS_MS - DAY_MS - 2 * 3_600_000 + n as i64,
            ..event(n)
        })
        .collect();
    publisher.publish_batch(&batch("late", late)).await;
    let last = publisher
        .publish("poison", b"certainly not a frame".to_vec())
        .await;
    publisher.drained(last).await;
    eventually("8 rows", || async {
        (count(ch, &db).await == 8).then_some(())
    })
    .await;

    let mut opts = options(&nats, ch, &db, since);
    opts.relays = vec![format!("http://{}", relay.addr)];
    let report = reconcile(&opts).await.unwrap();
    let text = report.render(20);
    assert!(report.is_exact(), "{text}");
    assert_eq!(report.frames, 5, "{text}");
    assert_eq!(report.frames_decoded, 4);
    assert_eq!(report.dead_lettered_frames, 1);
    assert_eq!(
        report.dead_lettered_bytes,
        b"certainly not a frame".len() as u64
    );
    assert_eq!(report.dead_lettered_by_reason.get("bad_magic"), Some(&1));
    assert_eq!(report.replayed_frames, 0);
    assert_eq!(report.accepted_events, 11);
    assert_eq!(report.unique_events, 8);
    assert_eq!(report.deduped, 3);
    assert_eq!(report.inserted, 8);
    assert_eq!(report.stored_rows, 8);
    assert!(
        report.missing.is_empty() && report.duplicated.is_empty() && report.undecodable.is_empty()
    );
    assert!(
        text.contains("events   accepted 11 = inserted 8 + deduped 3 + dead-lettered (1 frame(s), 21 bytes, events unknown)\n"),
        "{text}"
    );
    assert!(text.ends_with("result   EXACT\n"), "{text}");
    assert_eq!(report.relays.len(), 1);
    assert_eq!(report.relays[0].rows_inserted, 8.0);
    assert_eq!(report.relays[0].dead_lettered, 1.0);

    // A window that ends before the traffic sees none of it.
    let mut before = options(&nats, ch, &db, since - time::Duration::hours(1));
    before.until = Some(since);
    let empty = reconcile(&before).await.unwrap();
    assert_eq!((empty.frames, empty.accepted_events), (0, 0));
    assert!(empty.is_exact());

    // Another project's view holds none of these events.
    let mut other = options(&nats, ch, &db, since);
    other.project = Some("someone_else".into());
    let other = reconcile(&other).await.unwrap();
    assert_eq!((other.accepted_events, other.other_project_frames), (0, 4));
    let mut mine = options(&nats, ch, &db, since);
    mine.project = Some(PROJECT.into());
    assert_eq!(reconcile(&mine).await.unwrap().inserted, 8);

    // Lose a row on the frame's day and a late one on the earlier day.
    relay.shutdown().await;
    query(
        ch,
        &format!(
            "ALTER TABLE {db}.events DELETE WHERE event_id IN (toUUID('{}'), toUUID('{}'))",
            id(5),
            id(8)
        ),
    )
    .await;
    eventually("the delete mutation", || async {
        let pending = query(
            ch,
            &format!(
                "SELECT count() FROM system.mutations WHERE database = '{db}' AND is_done = 0"
            ),
        )
        .await;
        (pending.trim() == "0" && count(ch, &db).await == 6).then_some(())
    })
    .await;

    let report = reconcile(&options(&nats, ch, &db, since)).await.unwrap();
    let text = report.render(20);
    assert!(!report.is_exact(), "{text}");
    assert_eq!(
        (report.accepted_events, report.inserted, report.deduped),
        (11, 6, 3)
    );
    let missing: Vec<_> = report
        .missing
        .iter()
        .map(|m| (m.event_id, m.project_id.as_str(), m.event_date.as_str()))
        .collect();
    assert_eq!(
        missing,
        vec![
            (id(5), PROJECT, "2024-03-01"),
            (id(8), PROJECT, "2024-02-29"),
        ],
        "{text}"
    );
    assert!(
        text.contains(&id(5).to_string()) && text.contains(&id(8).to_string()),
        "{text}"
    );
    assert!(text.contains("+ MISSING 2"), "{text}");
    assert!(
        text.contains("result   GAP: 2 accepted event(s) missing from ClickHouse"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_named() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("reconcile_unreachable");
    let opts = ReconcileOptions::new(
        "nats://127.0.0.1:1",
        ClickHouseOptions {
            url: ch.http_url(),
            database: db.clone(),
            user: None,
            password: None,
        },
        OffsetDateTime::now_utc(),
    );
    // The fresh database has no events table yet: say so, not "0 events".
    let e = reconcile(&opts).await.unwrap_err().to_string();
    assert!(e.contains(&format!("no table {db}.events")), "{e}");
    query(
        ch,
        &format!("CREATE TABLE {db}.events (event_id UUID) ENGINE = Memory"),
    )
    .await;
    let e = reconcile(&opts).await.unwrap_err().to_string();
    assert!(e.contains("cannot reach NATS at nats://127.0.0.1:1"), "{e}");
    let mut no_ch = opts.clone();
    no_ch.clickhouse.url = "http://127.0.0.1:1".into();
    let e = reconcile(&no_ch).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot reach ClickHouse at http://127.0.0.1:1"),
        "{e}"
    );
}
