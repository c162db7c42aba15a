//! The device tables (`events_by_device`, `device_users`) against a real
//! clickhouse-server (18.16): rows a real relay inserts into `events` reach
//! them through the views and come back from `device_events` by device and
//! by user, ordered by time; unknown ids give an empty answer; hostile ids
//! are rejected or bound, never spliced; device retention drops only old
//! day partitions, and only of the device tables (the other families:
//! `retention.rs`); the schema applies twice.

use std::time::Duration;

use spoor_core::WireBatch;
use spoor_relay::sink::clickhouse::ClickHouseSink;
use spoor_store::date::date_string;
use spoor_store::device::{
    device_events, lookup_client, DeviceQuery, DeviceQueryError, DeviceRow, IdProblem, Who,
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
/// the relay's consumption.
pub(crate) async fn insert(cfg: &ClickHouseConfig, events: Vec<spoor_core::Event>) {
    let wire: WireBatch = batch("direct", Vec::new());
    let rows: Vec<EventRow> = events
        .into_iter()
        .map(|e| EventRow::new(&wire, e))
        .collect();
    ClickHouseSink::new(cfg, Duration::from_secs(60))
        .insert(&rows)
        .await
        .unwrap();
}

async fn lookup(
    client: &clickhouse::Client,
    who: Who<'_>,
    since_ms: i64,
    until_ms: i64,
) -> Vec<DeviceRow> {
    device_events(
        client,
        &DeviceQuery::new("proj_it", who, since_ms, until_ms),
    )
    .await
    .unwrap_or_else(|e| panic!("lookup of {who:?}: {e}"))
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
    // out of time order across two frames, one of them across midnight.
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
    publisher.publish_batch(&first).await;
    let second = batch(
        "device-frame-2",
        vec![a[2].clone(), a[3].clone(), b.clone()],
    );
    let last = publisher.publish_batch(&second).await;
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
    let window = (midnight - 3 * HOUR, midnight + HOUR);

    let dev_a = lookup(&client, Who::Device("dev-a"), window.0, window.1).await;
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
    assert_eq!(row.received_at_ms, TS_MS + 100);
    assert_eq!(row.batch_id, "device-frame-1");
    assert_eq!(row.project_id, "proj_it");
    assert_eq!(date_string(row.event_date), "2024-03-02");
    assert!(
        row.inserted_at > 1_600_000_000,
        "inserted_at is the insert time: {}",
        row.inserted_at
    );
    assert_eq!(dev_a[0].batch_id, "device-frame-1");
    assert_eq!(dev_a[1].batch_id, "device-frame-2");

    // A wider window finds the event from five days earlier, first.
    let wide = lookup(&client, Who::Device("dev-a"), midnight - 6 * DAY, window.1).await;
    assert_eq!(ids(&wide), vec![id(4), id(1), id(3), id(2)]);

    // The limit keeps the latest events, still oldest first.
    let latest_two = device_events(
        &client,
        &DeviceQuery {
            limit: 2,
            ..DeviceQuery::new("proj_it", Who::Device("dev-a"), window.0, window.1)
        },
    )
    .await
    .unwrap();
    assert_eq!(ids(&latest_two), vec![id(3), id(2)]);

    // By user: every event of the devices user-1 was seen on in the window,
    // including dev-a's anonymous event before login; not user-2's device.
    let user = lookup(&client, Who::User("user-1"), window.0, window.1).await;
    assert_eq!(ids(&user), vec![id(1), id(5), id(3), id(2)]);
    assert!(user.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    let other = lookup(&client, Who::User("user-2"), window.0, window.1).await;
    assert_eq!(ids(&other), vec![id(6)]);

    // Unknown ids, another project, or a window with nothing: empty, no error.
    assert!(lookup(&client, Who::Device("dev-zzz"), window.0, window.1)
        .await
        .is_empty());
    assert!(lookup(&client, Who::User("nobody"), window.0, window.1)
        .await
        .is_empty());
    assert!(lookup(&client, Who::Device("dev-a"), 0, 1_000)
        .await
        .is_empty());
    let other_project = device_events(
        &client,
        &DeviceQuery::new("proj_other", Who::Device("dev-a"), window.0, window.1),
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
    let rows = lookup(&client, Who::Device("dev-d"), TS_MS - HOUR, TS_MS + HOUR).await;
    assert_eq!(ids(&rows), vec![id(1), id(2)]);
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
            lookup(&client, Who::Device(hostile), since, until)
                .await
                .is_empty(),
            "{hostile:?} found something"
        );
        assert!(
            lookup(&client, Who::User(hostile), since, until)
                .await
                .is_empty(),
            "user {hostile:?} found something"
        );
    }
    // Ids with quotes and backslashes round-trip exactly when they are real.
    assert_eq!(
        ids(&lookup(&client, Who::Device(weird), since, until).await),
        vec![id(2)]
    );
    assert_eq!(
        ids(&lookup(&client, Who::User(r"o'brien\"), since, until).await),
        vec![id(2)]
    );

    // Control characters, empty and oversized ids never reach the server.
    let long = "a".repeat(10_000);
    for (who, problem) in [
        (Who::Device("victim\n"), IdProblem::ControlCharacters),
        (Who::Device("vic\0tim"), IdProblem::ControlCharacters),
        (Who::User("\u{1b}[31m"), IdProblem::ControlCharacters),
        (Who::Device(""), IdProblem::Empty),
        (Who::Device(&long), IdProblem::TooLong(10_000)),
        (Who::User(&long), IdProblem::TooLong(10_000)),
    ] {
        match device_events(&client, &DeviceQuery::new("proj_it", who, since, until)).await {
            Err(e @ DeviceQueryError::InvalidId { reason, .. }) => {
                assert_eq!(reason, problem, "{who:?}");
                assert!(e.is_bad_input());
            }
            other => panic!("{who:?} was not rejected: {other:?}"),
        }
    }

    // Nothing broke: every table and row is still there, lookups still work.
    assert_eq!(rows_in(ch, &db, "events").await, 2);
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 2);
    assert_eq!(rows_in(ch, &db, "device_users").await, 2);
    assert_eq!(
        ids(&lookup(&client, Who::Device("victim"), since, until).await),
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
    let hurried = DeviceQuery {
        timeout: Duration::from_millis(300),
        ..DeviceQuery::new("proj_it", Who::Device("d"), TS_MS - HOUR, TS_MS)
    };
    match device_events(&slow, &hurried).await {
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
    let q = DeviceQuery::new("proj_it", Who::Device("d"), TS_MS - HOUR, TS_MS);
    match device_events(&gone, &q).await {
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
    let rows = lookup(&client, Who::Device("dev-r"), now - 20 * DAY, now).await;
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
         events_rollup_minute_mv\tMaterializedView\n"
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
