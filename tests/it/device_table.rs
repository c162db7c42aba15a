//! The device tables (`events_by_device`, `device_users`) against a real
//! clickhouse-server (18.16): rows a real relay inserts into `events` reach
//! them through the views and come back from `device_events` by device and
//! by user, ordered by time; the window is on the edge's receive time, not
//! the event time; unknown ids give an empty answer; hostile ids are
//! rejected or bound, never spliced; device retention drops only old day
//! partitions, and only of the device tables (the other families:
//! `retention.rs`); the schema applies twice.

use std::time::Duration;

use spoor_core::debug::{DeviceQuery, QueryError, Subject};
use spoor_relay::sink::clickhouse::ClickHouseSink;
use spoor_store::date::date_string;
use spoor_store::device::{
    device_events, lookup_client, DeviceQueryError, DeviceRow, DEFAULT_TIMEOUT,
};
use spoor_store::retention::{drop_device_partitions_older_than, first_kept_day, RetentionError};
use spoor_store::{schema, ClickHouseConfig, EventRow};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::NatsServer;

use crate::relay::{config, query, Publisher};
use crate::support::{eventually, Relay};
use spoor_tests::fixtures::{batch, event, id, TS_MS};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

pub(crate) fn ch_config(ch: &ClickHouseServer, db: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: ch.http_url(),
        database: db.to_string(),
        user: None,
        password: None,
    }
}

pub(crate) async fn rows_in(ch: &ClickHouseServer, db: &str, table: &str) -> u64 {
    query(ch, format!("SELECT count() FROM {db}.{table}"))
        .await
        .trim()
        .parse()
        .unwrap()
}

/// An event of `device` (and `user`, if any) at `ts_ms`.
pub(crate) fn device_event(n: u128, device: &str, user: &str, ts_ms: i64) -> spoor_core::Event {
    let mut e = event(n);
    e.anonymous_id = device.into();
    e.user_id = user.into();
    e.ts_ms = ts_ms;
    e.client_ts_ms = Some(ts_ms - 40);
    e.event = format!("step_{n}");
    e
}

/// Inserts events straight through the relay's own sink (one INSERT into
/// `events`, as the relay makes), for tests that are about the tables, not
/// the relay's consumption. Each event is received 100 ms after its event
/// time, as one sent as it happens.
pub(crate) async fn insert(cfg: &ClickHouseConfig, events: Vec<spoor_core::Event>) {
    let received = events.into_iter().map(|e| {
        let at = e.ts_ms + 100;
        (e, at)
    });
    insert_received(cfg, received.collect()).await;
}

/// [`insert`] with each event's edge receive time given.
pub(crate) async fn insert_received(cfg: &ClickHouseConfig, events: Vec<(spoor_core::Event, i64)>) {
    let rows: Vec<EventRow> = events
        .into_iter()
        .map(|(e, received_at_ms)| {
            let mut wire = batch("direct", Vec::new());
            wire.received_at_ms = received_at_ms;
            EventRow::new(&wire, e)
        })
        .collect();
    ClickHouseSink::new(cfg, Duration::from_secs(60))
        .insert(&rows)
        .await
        .unwrap();
}

fn dev(id: &str) -> Subject {
    Subject::Device(id.into())
}

fn user(id: &str) -> Subject {
    Subject::User(id.into())
}

/// `subject`'s events in `proj_it` received in `[since_ms, until_ms)`.
fn received(subject: Subject, since_ms: i64, until_ms: i64) -> DeviceQuery {
    DeviceQuery {
        subject,
        project_id: Some("proj_it".into()),
        since_ms,
        until_ms,
        limit: 1_000,
    }
}

async fn lookup(
    client: &clickhouse::Client,
    subject: Subject,
    since_ms: i64,
    until_ms: i64,
) -> Vec<DeviceRow> {
    let query = received(subject, since_ms, until_ms);
    device_events(client, &query, DEFAULT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("lookup of {:?}: {e}", query.subject))
}

fn ids(rows: &[DeviceRow]) -> Vec<uuid::Uuid> {
    rows.iter().map(|r| r.event_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_rows_come_back_by_device_and_by_user_in_time_order() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_lookup");
    let mut cfg = config(&nats, ch.http_url(), &db);
    // The events are from 2024: the relay's retention would drop them.
    cfg.device_retention_days = 0;
    let relay = Relay::start(cfg).await;
    let publisher = Publisher::connect(&nats).await;

    // Device A: anonymous at first, then user-1 logs in; its events arrive
    // out of time order across three frames, one of them across midnight,
    // each received just after its newest event (one five days earlier).
    let midnight = 1_709_337_600_000; // 2024-03-02T00:00:00Z
    let a = [
        device_event(1, "dev-a", "", midnight - 2 * HOUR),
        device_event(2, "dev-a", "user-1", midnight + 10 * 60_000),
        device_event(3, "dev-a", "user-1", midnight - 30 * 60_000),
        device_event(4, "dev-a", "", midnight - 5 * DAY),
    ];
    // Device B: user-1 again (a second device); device C: someone else.
    let b = device_event(5, "dev-b", "user-1", midnight - HOUR);
    let c = device_event(6, "dev-c", "user-2", midnight - HOUR);
    let mut first = batch(
        "device-frame-1",
        vec![a[0].clone(), a[1].clone(), c.clone()],
    );
    first.sent_at_ms = Some(midnight + 11 * 60_000);
    first.received_at_ms = midnight + 11 * 60_000 + 100;
    publisher.publish_batch(&first).await;
    let mut second = batch("device-frame-2", vec![a[2].clone(), b.clone()]);
    second.received_at_ms = midnight - 30 * 60_000 + 100;
    publisher.publish_batch(&second).await;
    let mut third = batch("device-frame-3", vec![a[3].clone()]);
    third.received_at_ms = midnight - 5 * DAY + 100;
    let last = publisher.publish_batch(&third).await;
    publisher.drained(last).await;

    // The views filled both tables from the relay's inserts into `events`.
    assert_eq!(rows_in(ch, &db, "events").await, 6);
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 6);
    assert_eq!(
        rows_in(ch, &db, "device_users").await,
        4,
        "one row per event with a user_id"
    );

    let client = lookup_client(&ch_config(ch, &db));
    // Received in these four hours: frames 1 and 2, not frame 3.
    let window = (midnight - 3 * HOUR, midnight + HOUR);

    let dev_a = lookup(&client, dev("dev-a"), window.0, window.1).await;
    assert_eq!(
        ids(&dev_a),
        vec![id(1), id(3), id(2)],
        "by time, oldest first"
    );
    let row = &dev_a[2];
    assert_eq!(
        (
            row.anonymous_id.as_str(),
            row.user_id.as_str(),
            row.event.as_str()
        ),
        ("dev-a", "user-1", "step_2")
    );
    assert_eq!(row.ts_ms, midnight + 10 * 60_000);
    assert_eq!(row.client_ts_ms, Some(midnight + 10 * 60_000 - 40));
    assert_eq!(row.sent_at_ms, Some(midnight + 11 * 60_000));
    assert_eq!(row.received_at_ms, midnight + 11 * 60_000 + 100);
    assert_eq!(&*row.batch_id, "device-frame-1");
    assert_eq!(&*row.project_id, "proj_it");
    assert_eq!(date_string(row.event_date), "2024-03-02");
    assert!(
        row.inserted_at > 1_600_000_000,
        "inserted_at is the insert time: {}",
        row.inserted_at
    );
    assert_eq!(&*dev_a[0].batch_id, "device-frame-1");
    assert_eq!(&*dev_a[1].batch_id, "device-frame-2");

    // A wider window finds the event received five days earlier, first.
    let wide = lookup(&client, dev("dev-a"), midnight - 6 * DAY, window.1).await;
    assert_eq!(ids(&wide), vec![id(4), id(1), id(3), id(2)]);

    // The limit keeps the latest events, still oldest first.
    let latest_two = device_events(
        &client,
        &DeviceQuery {
            limit: 2,
            ..received(dev("dev-a"), window.0, window.1)
        },
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(ids(&latest_two), vec![id(3), id(2)]);

    // By user: every event of the devices user-1 was seen on received in
    // the window, including dev-a's anonymous event before login; not
    // user-2's device.
    let by_user = lookup(&client, user("user-1"), window.0, window.1).await;
    assert_eq!(ids(&by_user), vec![id(1), id(5), id(3), id(2)]);
    assert!(by_user.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    let other = lookup(&client, user("user-2"), window.0, window.1).await;
    assert_eq!(ids(&other), vec![id(6)]);

    // Unknown ids, another project, or a window with nothing: empty, no error.
    assert!(lookup(&client, dev("dev-zzz"), window.0, window.1)
        .await
        .is_empty());
    assert!(lookup(&client, user("nobody"), window.0, window.1)
        .await
        .is_empty());
    assert!(lookup(&client, dev("dev-a"), 0, 1_000).await.is_empty());
    let other_project = device_events(
        &client,
        &DeviceQuery {
            project_id: Some("proj_other".into()),
            ..received(dev("dev-a"), window.0, window.1)
        },
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    assert!(other_project.is_empty());

    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_that_reaches_events_is_shown_once() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_dup");
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    let e = device_event(1, "dev-d", "", TS_MS);
    // Two inserts of one event, as after a lost insert response.
    insert(&cfg, vec![e.clone()]).await;
    insert(&cfg, vec![e, device_event(2, "dev-d", "", TS_MS + 1)]).await;
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 3);
    let client = lookup_client(&cfg);
    let rows = lookup(&client, dev("dev-d"), TS_MS - HOUR, TS_MS + HOUR).await;
    assert_eq!(ids(&rows), vec![id(1), id(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_on_the_receive_time_not_the_event_time() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_clock");
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    let now = TS_MS;
    // The window: the hour received up to `now`.
    let (since, until) = (now - HOUR, now + 1);
    let limits = spoor_core::Limits::default();
    insert_received(
        &cfg,
        vec![
            // An offline phone's event from two days ago, sent now: the
            // only one with the user's id.
            (
                device_event(1, "dev-late", "user-late", now - 2 * DAY),
                now - 1_000,
            ),
            // Sent as it happened, inside the window.
            (
                device_event(2, "dev-late", "", now - 10 * 60_000),
                now - 10 * 60_000 + 100,
            ),
            // Inside the window by event time, but sent three hours later:
            // not received in it.
            (
                device_event(3, "dev-late", "", now - 30 * 60_000),
                now + 3 * HOUR,
            ),
            // Received in the window, at the edge's limits: a clock just
            // under 30 days behind, one just under a day ahead.
            (
                device_event(
                    4,
                    "dev-late",
                    "",
                    now - 30 * 60_000 - limits.max_past_ms + 60_000,
                ),
                now - 30 * 60_000,
            ),
            (
                device_event(
                    5,
                    "dev-late",
                    "",
                    now - 20 * 60_000 + limits.max_future_ms - 60_000,
                ),
                now - 20 * 60_000,
            ),
            // Received just before the window, and at its (exclusive) end.
            (
                device_event(6, "dev-late", "", now - HOUR - 1),
                now - HOUR - 1,
            ),
            (device_event(7, "dev-late", "", now), now + 1),
        ],
    )
    .await;
    let client = lookup_client(&cfg);

    // What arrived in the window, oldest event time first: the late event
    // (event time outside the window) is in, event 3 (event time inside,
    // received after) is not.
    let rows = lookup(&client, dev("dev-late"), since, until).await;
    assert_eq!(ids(&rows), vec![id(4), id(1), id(2), id(5)]);
    assert!(rows
        .iter()
        .all(|r| r.received_at_ms >= since && r.received_at_ms < until));
    // By user: the device the user was seen on (two days before by event
    // time, received now), with every event of it received in the window.
    let by_user = lookup(&client, user("user-late"), since, until).await;
    assert_eq!(ids(&by_user), vec![id(4), id(1), id(2), id(5)]);
    // Event 3 is found by when it arrived; event 6 at the window's start.
    assert_eq!(
        ids(&lookup(&client, dev("dev-late"), now + 2 * HOUR, now + 4 * HOUR).await),
        vec![id(3)]
    );
    assert_eq!(
        ids(&lookup(&client, dev("dev-late"), now - HOUR - 1, now - HOUR).await),
        vec![id(6)]
    );
    assert_eq!(
        ids(&lookup(&client, dev("dev-late"), now + 1, now + 2).await),
        vec![id(7)]
    );
    // A window around event 1's event time finds nothing: nothing of the
    // device was received then.
    assert!(lookup(
        &client,
        dev("dev-late"),
        now - 2 * DAY - HOUR,
        now - 2 * DAY + HOUR
    )
    .await
    .is_empty());

    // The tables are keyed by project: a lookup without one is refused.
    let anywhere = DeviceQuery {
        project_id: None,
        ..received(dev("dev-late"), since, until)
    };
    match device_events(&client, &anywhere, DEFAULT_TIMEOUT).await {
        Err(e @ DeviceQueryError::NoProject) => assert!(e.is_bad_input()),
        other => panic!("a lookup without a project was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_are_rejected_or_bound_never_spliced() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_hostile");
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    let weird = r#"it's a \"device\' -- ; `x`"#;
    insert(
        &cfg,
        vec![
            device_event(1, "victim", "user-v", TS_MS),
            device_event(2, weird, r"o'brien\", TS_MS + 1),
        ],
    )
    .await;
    let client = lookup_client(&cfg);
    let (since, until) = (TS_MS - HOUR, TS_MS + HOUR);

    // Injection attempts are just ids that match nothing.
    for hostile in [
        "victim' OR '1'='1",
        "x' OR anonymous_id != '",
        "victim' --",
        r"victim\",
        r"victim\'",
        "' UNION ALL SELECT * FROM events --",
        "?",
        "victim'; DROP TABLE events_by_device; --",
    ] {
        assert!(
            lookup(&client, dev(hostile), since, until).await.is_empty(),
            "{hostile:?} found something"
        );
        assert!(
            lookup(&client, user(hostile), since, until)
                .await
                .is_empty(),
            "user {hostile:?} found something"
        );
    }
    // Ids with quotes and backslashes round-trip exactly when they are real.
    assert_eq!(
        ids(&lookup(&client, dev(weird), since, until).await),
        vec![id(2)]
    );
    assert_eq!(
        ids(&lookup(&client, user(r"o'brien\"), since, until).await),
        vec![id(2)]
    );

    // Control characters, empty and oversized ids never reach the server.
    let long = "a".repeat(10_000);
    for (who, problem) in [
        (dev("victim\n"), QueryError::IdControlChar { at: 6 }),
        (dev("vic\0tim"), QueryError::IdControlChar { at: 3 }),
        (user("\u{1b}[31m"), QueryError::IdControlChar { at: 0 }),
        (dev(""), QueryError::EmptyId),
        (dev(&long), QueryError::IdTooLong { len: 10_000 }),
        (user(&long), QueryError::IdTooLong { len: 10_000 }),
    ] {
        let query = received(who, since, until);
        match device_events(&client, &query, DEFAULT_TIMEOUT).await {
            Err(e @ DeviceQueryError::Invalid(_)) => {
                assert!(
                    matches!(&e, DeviceQueryError::Invalid(p) if *p == problem),
                    "{:?}: {e:?}",
                    query.subject
                );
                assert!(e.is_bad_input());
            }
            other => panic!("{:?} was not rejected: {other:?}", query.subject),
        }
    }

    // Nothing broke: every table and row is still there, lookups still work.
    assert_eq!(rows_in(ch, &db, "events").await, 2);
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 2);
    assert_eq!(rows_in(ch, &db, "device_users").await, 2);
    assert_eq!(
        ids(&lookup(&client, dev("victim"), since, until).await),
        vec![id(1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_missing_server_is_an_error_not_a_panic() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_timeout");
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    // A server that accepts and never answers: the lookup's own timeout
    // must end it (a real server may answer before any timer can fire).
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let slow = lookup_client(&ClickHouseConfig {
        url: format!("http://{}", hung.local_addr().unwrap()),
        ..cfg.clone()
    });
    let hurried = Duration::from_millis(300);
    let q = received(dev("d"), TS_MS - HOUR, TS_MS);
    match device_events(&slow, &q, hurried).await {
        Err(e @ DeviceQueryError::Timeout(_)) => {
            assert!(!e.is_bad_input());
            assert!(e.to_string().contains("within 300ms"), "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(hung);
    // Nothing listens on the discard port.
    let gone = lookup_client(&ClickHouseConfig {
        url: "http://127.0.0.1:9".into(),
        ..cfg
    });
    match device_events(&gone, &q, DEFAULT_TIMEOUT).await {
        Err(e @ DeviceQueryError::Query(_)) => assert!(!e.is_bad_input()),
        other => panic!("expected a query error, got {other:?}"),
    }
}

pub(crate) async fn days_in(ch: &ClickHouseServer, db: &str, table: &str) -> Vec<String> {
    query(
        ch,
        format!("SELECT DISTINCT toString(event_date) AS day FROM {db}.{table} ORDER BY day"),
    )
    .await
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_only_old_device_partitions() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_retention");
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    // "Now" is 2024-03-08T10:00Z; events on ten consecutive days before it,
    // two inserts per day so a partition has several parts.
    let now = 1_709_892_000_000;
    for round in 0..2u128 {
        let events = (0..10u128)
            .map(|d| {
                let n = round * 100 + d;
                device_event(n, "dev-r", "user-r", now - (d as i64) * DAY - HOUR)
            })
            .collect();
        insert(&cfg, events).await;
    }
    let all_days = days_in(ch, &db, "events_by_device").await;
    assert_eq!(all_days.len(), 10, "{all_days:?}");

    let dropped = drop_device_partitions_older_than(&cfg, 7, now)
        .await
        .unwrap();
    let first_kept = date_string(first_kept_day(7, now));
    assert_eq!(first_kept, "2024-03-01");
    let kept: Vec<String> = all_days
        .iter()
        .filter(|d| **d >= first_kept)
        .cloned()
        .collect();
    assert_eq!(
        kept,
        [
            "2024-03-01",
            "2024-03-02",
            "2024-03-03",
            "2024-03-04",
            "2024-03-05",
            "2024-03-06",
            "2024-03-07",
            "2024-03-08"
        ]
    );
    // Two tables, two old days each.
    let mut gone: Vec<(&str, String)> = dropped
        .iter()
        .map(|d| (d.table, d.partition.to_string()))
        .collect();
    gone.sort();
    assert_eq!(
        gone,
        [
            ("device_users", "2024-02-28".to_string()),
            ("device_users", "2024-02-29".to_string()),
            ("events_by_device", "2024-02-28".to_string()),
            ("events_by_device", "2024-02-29".to_string()),
        ]
    );
    assert_eq!(days_in(ch, &db, "events_by_device").await, kept);
    assert_eq!(days_in(ch, &db, "device_users").await, kept);
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 16);
    // `events` keeps everything.
    assert_eq!(days_in(ch, &db, "events").await, all_days);
    assert_eq!(rows_in(ch, &db, "events").await, 20);
    // Lookups still answer from what is kept.
    let client = lookup_client(&cfg);
    let rows = lookup(&client, dev("dev-r"), now - 20 * DAY, now).await;
    assert_eq!(rows.len(), 16);

    // A second pass (another relay, the next tick) finds nothing to drop.
    assert!(drop_device_partitions_older_than(&cfg, 7, now)
        .await
        .unwrap()
        .is_empty());
    // A shorter retention drops more; 0 days is refused, not "drop all".
    assert_eq!(
        drop_device_partitions_older_than(&cfg, 2, now)
            .await
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        days_in(ch, &db, "events_by_device").await,
        ["2024-03-06", "2024-03-07", "2024-03-08"]
    );
    assert!(matches!(
        drop_device_partitions_older_than(&cfg, 0, now).await,
        Err(RetentionError::ZeroDays)
    ));
    assert_eq!(rows_in(ch, &db, "events").await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_retention_with_its_flag() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_retention_relay");
    let mut cfg = config(&nats, ch.http_url(), &db);
    cfg.device_retention_days = 3;
    schema::apply(&cfg.clickhouse).await.unwrap();
    let now_ms = crate::support::now_ms();
    insert(
        &cfg.clickhouse,
        vec![
            device_event(1, "dev-old", "u", now_ms - 10 * DAY),
            device_event(2, "dev-new", "u", now_ms - HOUR),
        ],
    )
    .await;
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 2);

    let relay = Relay::start(cfg).await;
    eventually("the relay to drop the old device partition", || async {
        (rows_in(ch, &db, "events_by_device").await == 1
            && rows_in(ch, &db, "device_users").await == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        query(
            ch,
            format!("SELECT anonymous_id FROM {db}.events_by_device")
        )
        .await
        .trim(),
        "dev-new"
    );
    assert_eq!(rows_in(ch, &db, "events").await, 2);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_applies_twice_and_creates_the_views() {
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("device_schema");
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    schema::apply(&cfg).await.unwrap();
    let tables = query(
        ch,
        format!("SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name"),
    )
    .await;
    assert_eq!(
        tables,
        "device_users\tMergeTree\n\
         device_users_mv\tMaterializedView\n\
         events\tReplacingMergeTree\n\
         events_by_device\tReplacingMergeTree\n\
         events_by_device_mv\tMaterializedView\n\
         events_rollup_day\tAggregatingMergeTree\n\
         events_rollup_day_mv\tMaterializedView\n\
         events_rollup_hour\tAggregatingMergeTree\n\
         events_rollup_hour_mv\tMaterializedView\n\
         events_rollup_minute\tAggregatingMergeTree\n\
         events_rollup_minute_mv\tMaterializedView\n\
         group_traits\tAggregatingMergeTree\n\
         group_traits_mv\tMaterializedView\n\
         identity_aliases_mv\tMaterializedView\n\
         identity_links\tAggregatingMergeTree\n\
         identity_links_mv\tMaterializedView\n\
         user_traits\tAggregatingMergeTree\n\
         user_traits_mv\tMaterializedView\n"
    );
    // Laid out for point lookups: (project, device, time, id), by day.
    let create = query(ch, format!("SHOW CREATE TABLE {db}.events_by_device")).await;
    assert!(
        create.contains(
            "PARTITION BY event_date ORDER BY (project_id, anonymous_id, ts_ms, event_id)"
        ),
        "{create}"
    );
    let create = query(ch, format!("SHOW CREATE TABLE {db}.device_users")).await;
    assert!(
        create.contains("PARTITION BY event_date ORDER BY (project_id, user_id, ts_ms)"),
        "{create}"
    );
}
