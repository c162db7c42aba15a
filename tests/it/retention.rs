//! Retention of raw events, the device and identity tables and the rollups against a
//! real clickhouse-server (18.16, so partition drops; no TTL): rows go in
//! through the relay's sink so the views fill the device tables and the
//! rollups, then one pass runs with given days and a fixed "today". Raw and
//! device tables lose exactly the days before their cutoff; rollups lose a
//! month only when all of it is before theirs; 0 turns a family off; rollups
//! shorter than raw events are refused by the pass, by `run` and by the
//! binary; and a real relay applies its flags.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spoor_relay::RelayError;
use spoor_store::date::{date_string, event_date};
use spoor_store::retention::{
    drop_expired_partitions, first_kept_day, Family, PolicyError, Retention, RetentionError,
    RETAINED_TABLES, ROLLUP_TABLES,
};
use spoor_store::schema::IDENTITY_TABLES;
use spoor_store::{schema, ClickHouseConfig};
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::nats::NatsServer;
use spoor_tests::relay::RelayProcess;
use time::macros::date;

use crate::device_table::{ch_config, days_in, device_event, insert, rows_in};
use crate::relay::{config, query};
use crate::support::{eventually, Relay};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// "Today" for every pass with a fixed clock: 2024-03-08T10:00:00Z.
const NOW: i64 = 1_709_892_000_000;

/// Raw events keep 10 days (first kept 2024-02-27), the device tables 3
/// (2024-03-05), the rollups 45 (2024-01-23, so months up to 2023-12 go).
const POLICY: Retention = Retention {
    raw_days: 10,
    device_days: 3,
    rollup_days: 45,
};

/// The days with events, each on one side of a cutoff.
const DAYS: [time::Date; 10] = [
    date!(2023 - 11 - 20), // rollups: a month wholly past
    date!(2023 - 12 - 31), // rollups: the last day of the last month wholly past
    date!(2024 - 01 - 01), // rollups: first day of the month holding the cutoff
    date!(2024 - 01 - 22), // rollups: the day before the cutoff, same month
    date!(2024 - 01 - 23), // rollups: the cutoff day
    date!(2024 - 02 - 26), // raw: the last day dropped
    date!(2024 - 02 - 27), // raw: the first day kept
    date!(2024 - 03 - 04), // device: the last day dropped
    date!(2024 - 03 - 05), // device: the first day kept
    date!(2024 - 03 - 08), // today
];

fn tables() -> impl Iterator<Item = &'static str> {
    ["events", "events_by_device", "device_users"]
        .into_iter()
        .chain(IDENTITY_TABLES.iter().copied())
        .chain(ROLLUP_TABLES.iter().copied())
}

/// 12:00 UTC of `day`, in ms.
fn noon(day: time::Date) -> i64 {
    i64::from(day.to_julian_day() - 2_440_588) * DAY + 12 * HOUR
}

fn days_from(from: &str) -> Vec<String> {
    DAYS.iter()
        .map(ToString::to_string)
        .filter(|d| d.as_str() >= from)
        .collect()
}

/// A fresh database with the schema and two events (two inserts, so two
/// parts per partition) on each of [`DAYS`].
async fn seeded(ch: &ClickHouseServer, name: &str) -> (ClickHouseConfig, String) {
    let db = ch.fresh_database(name);
    let cfg = ch_config(ch, &db);
    schema::apply(&cfg).await.unwrap();
    for round in 0..2u128 {
        let events = DAYS
            .iter()
            .zip(0u128..)
            .map(|(day, i)| {
                // The first round identifies, the second joins a group, so
                // every day has rows in each identity table too.
                let mut e = device_event(round * 100 + i, "dev-ret", "user-ret", noon(*day));
                (e.event, e.properties) = match round {
                    0 => ("identify".into(), format!(r#"{{"plan":"p{i}"}}"#)),
                    _ => (
                        "group".into(),
                        format!(
                            r#"{{"$segment":{{"type":"group","groupId":"g","traits":{{"n":{i}}}}}}}"#
                        ),
                    ),
                };
                e
            })
            .collect();
        insert(&cfg, events).await;
    }
    for table in tables() {
        assert_eq!(days_in(ch, &db, table).await, days_from(""), "{table}");
    }
    (cfg, db)
}

/// Every table's days, in [`tables`] order.
async fn snapshot(ch: &ClickHouseServer, db: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut all = Vec::new();
    for table in tables() {
        all.push((table, days_in(ch, db, table).await));
    }
    all
}

/// The rollups' total event count (two per day they hold).
async fn rollup_events(ch: &ClickHouseServer, db: &str, table: &str) -> u64 {
    query(ch, format!("SELECT countMerge(events) FROM {db}.{table}"))
        .await
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_days_of_raw_and_device_tables_and_whole_old_months_of_rollups() {
    let ch = ClickHouseServer::shared();
    let (cfg, db) = seeded(ch, "retention_all").await;
    assert_eq!(date_string(first_kept_day(10, NOW)), "2024-02-27");
    assert_eq!(date_string(first_kept_day(3, NOW)), "2024-03-05");
    assert_eq!(date_string(first_kept_day(45, NOW)), "2024-01-23");

    let pass = drop_expired_partitions(&cfg, &POLICY, NOW).await.unwrap();
    assert!(pass.failures.is_empty(), "{:?}", pass.failures);

    // Raw: exactly the days before 2024-02-27 are gone.
    assert_eq!(days_in(ch, &db, "events").await, days_from("2024-02-27"));
    assert_eq!(rows_in(ch, &db, "events").await, 8);
    // Device tables: as before, days before 2024-03-05.
    for table in ["events_by_device", "device_users"]
        .into_iter()
        .chain(IDENTITY_TABLES.iter().copied())
    {
        assert_eq!(
            days_in(ch, &db, table).await,
            days_from("2024-03-05"),
            "{table}"
        );
    }
    // Rollups: 2023-11 and 2023-12 are gone; January 2024 holds the cutoff
    // and is kept whole, days before the cutoff included, and so the
    // rollups still answer for days the raw table no longer has.
    for table in ROLLUP_TABLES {
        assert_eq!(
            days_in(ch, &db, table).await,
            days_from("2024-01-01"),
            "{table}"
        );
        assert_eq!(rollup_events(ch, &db, table).await, 16, "{table}");
    }

    let mut dropped: Vec<(&str, String)> = pass
        .dropped
        .iter()
        .map(|d| (d.table, d.partition.to_string()))
        .collect();
    dropped.sort();
    let mut expected: Vec<(&str, String)> = Vec::new();
    for day in DAYS.iter().map(ToString::to_string) {
        if day.as_str() < "2024-02-27" {
            expected.push(("events", day.clone()));
        }
        if day.as_str() < "2024-03-05" {
            expected.push(("events_by_device", day.clone()));
            expected.push(("device_users", day.clone()));
            for table in IDENTITY_TABLES {
                expected.push((table, day.clone()));
            }
        }
    }
    for table in ROLLUP_TABLES {
        expected.push((table, "2023-11".into()));
        expected.push((table, "2023-12".into()));
    }
    expected.sort();
    assert_eq!(dropped, expected);
    assert!(pass
        .dropped
        .iter()
        .all(|d| d.days == POLICY.days(family_of(d.table))));

    // A second pass (another relay, the next tick) finds nothing to drop.
    let again = drop_expired_partitions(&cfg, &POLICY, NOW).await.unwrap();
    assert!(
        again.dropped.is_empty() && again.failures.is_empty(),
        "{again:?}"
    );
}

fn family_of(table: &str) -> Family {
    RETAINED_TABLES
        .iter()
        .find(|t| t.name == table)
        .unwrap()
        .family
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_days_turns_a_family_off_and_short_rollups_are_refused() {
    let ch = ClickHouseServer::shared();
    let (cfg, db) = seeded(ch, "retention_off").await;
    let all_days = days_from("");

    // Rollups shorter than raw events: refused before anything is dropped.
    let bad = Retention {
        raw_days: 90,
        device_days: 7,
        rollup_days: 30,
    };
    match drop_expired_partitions(&cfg, &bad, NOW).await {
        Err(RetentionError::Policy(PolicyError::RollupsShorterThanRaw {
            raw_days: 90,
            rollup_days: 30,
        })) => {}
        other => panic!("expected a policy error, got {other:?}"),
    }
    for (table, days) in snapshot(ch, &db).await {
        assert_eq!(days, all_days, "{table}");
    }

    // Raw off: `events` keeps everything, the others are trimmed.
    let raw_off = Retention {
        raw_days: 0,
        ..POLICY
    };
    let pass = drop_expired_partitions(&cfg, &raw_off, NOW).await.unwrap();
    assert!(pass.dropped.iter().all(|d| d.table != "events"));
    assert_eq!(days_in(ch, &db, "events").await, all_days);
    assert_eq!(rows_in(ch, &db, "events").await, 20);
    assert_eq!(
        days_in(ch, &db, "device_users").await,
        days_from("2024-03-05")
    );
    for table in ROLLUP_TABLES {
        assert_eq!(
            days_in(ch, &db, table).await,
            days_from("2024-01-01"),
            "{table}"
        );
    }

    // Device tables and rollups off, raw on (1 day): only `events` moves.
    let raw_only = Retention {
        raw_days: 1,
        device_days: 0,
        rollup_days: 0,
    };
    let before = snapshot(ch, &db).await;
    let pass = drop_expired_partitions(&cfg, &raw_only, NOW).await.unwrap();
    assert!(pass.dropped.iter().all(|d| d.table == "events"));
    assert_eq!(pass.dropped.len(), 9);
    assert_eq!(days_in(ch, &db, "events").await, ["2024-03-08"]);
    // Every other table is as it was.
    for ((table, now), (_, then)) in snapshot(ch, &db).await.into_iter().zip(before) {
        if table != "events" {
            assert_eq!(now, then, "{table}");
        }
    }

    // Everything off: nothing to do, and not even a listing.
    let off = Retention {
        raw_days: 0,
        device_days: 0,
        rollup_days: 0,
    };
    let before = snapshot(ch, &db).await;
    let pass = drop_expired_partitions(&cfg, &off, NOW).await.unwrap();
    assert!(pass.dropped.is_empty() && pass.failures.is_empty());
    assert_eq!(snapshot(ch, &db).await, before);

    // Rollups on with raw events kept forever is allowed, and so are equal
    // periods.
    let equal = Retention {
        raw_days: 45,
        device_days: 3,
        rollup_days: 45,
    };
    drop_expired_partitions(&cfg, &equal, NOW).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_rollups_shorter_than_raw_events() {
    // In process: `run` returns the error before connecting to anything.
    let mut cfg = spoor_relay::RelayConfig::new(
        "nats://127.0.0.1:1",
        ClickHouseConfig {
            url: "http://127.0.0.1:1".into(),
            database: "unused".into(),
            user: None,
            password: None,
        },
    );
    cfg.retention_days = 90;
    cfg.rollup_retention_days = 30;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        spoor_relay::run(cfg, listener, std::future::pending()),
    )
    .await
    .expect("run must refuse at once");
    match result {
        Err(e @ RelayError::Config(_)) => {
            assert!(
                e.to_string().contains("--rollup-retention-days (30)"),
                "{e}"
            )
        }
        other => panic!("expected a config error, got {other:?}"),
    }

    // The binary: exits non-zero with the same message.
    let binary = RelayProcess::binary().unwrap();
    let mut cmd = Command::new(&binary);
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        "nats://127.0.0.1:1",
    ])
    .args(["--retention-days", "90", "--rollup-retention-days", "30"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = spoor_tests::tools::spawn_tied(cmd, nix::sys::signal::Signal::SIGKILL).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("spoor-relay kept running with rollups shorter than raw events");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("--rollup-retention-days (30) must be at least --retention-days (90)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_raw_and_rollup_retention_with_its_flags() {
    let nats = NatsServer::start().unwrap();
    let ch = ClickHouseServer::shared();
    let db = ch.fresh_database("retention_relay");
    let mut cfg = config(&nats, ch.http_url(), &db);
    cfg.retention_days = 30;
    cfg.rollup_retention_days = 60;
    cfg.device_retention_days = 0;
    schema::apply(&cfg.clickhouse).await.unwrap();
    let now_ms = crate::support::now_ms();
    // Whatever today is: 200 days back is a month wholly before the rollup
    // cutoff (60 days); 45 days back is past the raw cutoff but its month
    // ends after the rollup cutoff; an hour back is kept everywhere.
    let (ancient, old, recent) = (now_ms - 200 * DAY, now_ms - 45 * DAY, now_ms - HOUR);
    insert(
        &cfg.clickhouse,
        vec![
            device_event(1, "dev-a", "u", ancient),
            device_event(2, "dev-b", "u", old),
            device_event(3, "dev-c", "u", recent),
        ],
    )
    .await;
    assert_eq!(rows_in(ch, &db, "events").await, 3);

    let relay = Relay::start(cfg).await;
    let day = |ms| date_string(event_date(ms));
    let mut kept_by_rollups = vec![day(old), day(recent)];
    kept_by_rollups.dedup();
    eventually(
        "the relay to drop expired raw and rollup partitions",
        || async {
            let mut ok = days_in(ch, &db, "events").await == [day(recent)];
            for table in ROLLUP_TABLES {
                ok &= days_in(ch, &db, table).await == kept_by_rollups;
            }
            ok.then_some(())
        },
    )
    .await;
    // Device retention is off here: the device tables keep all three days.
    assert_eq!(rows_in(ch, &db, "events_by_device").await, 3);
    // Every drop is counted by table, and nothing failed: two days of
    // `events`, the ancient month of each rollup.
    let dropped = |table: &str| {
        format!("spoor_relay_retention_partitions_dropped_total{{table=\"{table}\"}}")
    };
    eventually("retention's metrics", || async {
        (relay.metric("spoor_relay_retention_passes_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(relay.metric(&dropped("events")).await, 2.0);
    for table in ROLLUP_TABLES {
        assert_eq!(relay.metric(&dropped(table)).await, 1.0, "{table}");
    }
    assert_eq!(relay.metric(&dropped("events_by_device")).await, 0.0);
    for kind in ["pass", "drop", "unexpected_partition"] {
        let sample =
            format!("spoor_relay_errors_total{{stage=\"retention\",error_type=\"{kind}\"}}");
        assert_eq!(relay.metric(&sample).await, 0.0, "{sample}");
    }
    relay.shutdown().await;
}
