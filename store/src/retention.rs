//! Retention: how long each family of tables keeps its rows, enforced by
//! dropping whole partitions that lie entirely before a cutoff day.
//!
//! | family  | tables                                        | partition | flag (default)                  |
//! |---------|-----------------------------------------------|-----------|---------------------------------|
//! | raw     | `events`                                      | UTC day   | `--retention-days` (90)         |
//! | device  | `events_by_device`, `device_users`, and the identity tables `identity_links`, `user_traits`, `group_traits` | UTC day | `--device-retention-days` (7) |
//! | rollups | `events_rollup_minute`, `_hour`, `_day`       | month     | `--rollup-retention-days` (400) |
//!
//! 0 days turns a family's retention off (kept forever). Rollups summarize
//! raw events, so when both are on the rollups must keep at least as long
//! ([`Retention::validate`]; the relay refuses to start otherwise).
//!
//! **One path on every ClickHouse release: partition drops.** ClickHouse
//! 18.16 has no TTL; TTL exists from 19.6 on, but it is not used even there:
//! dropping a partition is a cheap metadata operation that removes exactly
//! the expired days at once, where a TTL deletes rows through merges at a
//! time of the server's choosing; the retention periods stay relay flags
//! instead of being baked into each table's DDL; and the one path that runs
//! is the one the tests exercise against a real 18.16 server. So no
//! `SELECT version()` gate is needed.
//!
//! How a pass works ([`drop_expired_partitions`]; the relay's retention
//! task repeats it every [`RETENTION_INTERVAL`]): list the active parts of the retained tables of this database in
//! `system.parts`, grouped by partition; parse each partition's value
//! ([`parse_partition`]: a day `2024-03-01`, printed with or without quotes
//! depending on the release, or a month `202403`), check it against the
//! partition id ClickHouse derived from it; and drop it with `ALTER TABLE t
//! DROP PARTITION <literal>`, the literal rendered from the parsed value
//! ([`PartitionKey::literal`]), never from the listed text. A partition is
//! dropped only when its last possible day is before the family's first
//! kept day ([`first_kept_day`], [`PartitionKey::expired`]) and the newest
//! `max_date` of its parts agrees: a day partition once that day is past
//! the cutoff, a month partition once its whole month is. Anything that
//! does not parse, or disagrees, is left alone and logged.
//!
//! It must never touch a table outside [`RETAINED_TABLES`], nor drop a
//! partition that may hold a day inside its family's window. Every relay of
//! a region may run it at once: dropping a partition that is already gone
//! is a no-op. ClickHouse refuses to drop a partition larger than its
//! `max_partition_size_to_drop` (50 GB by default, on 18.16 as now): that
//! drop fails at every tick, logged, without holding back the others.

use std::fmt;
use std::time::Duration;

use clickhouse::Client;
use serde::Deserialize;

use crate::date::{date_string, event_date, MS_PER_DAY, UNIX_EPOCH_JULIAN_DAY};
use crate::schema::{
    self, SchemaError, DEVICE_TABLE, DEVICE_USERS_TABLE, EVENTS_TABLE, GROUP_TRAITS_TABLE,
    IDENTITY_LINKS_TABLE, ROLLUP_DAY_TABLE, ROLLUP_HOUR_TABLE, ROLLUP_MINUTE_TABLE,
    USER_TRAITS_TABLE,
};
pub use crate::schema::{DEVICE_TABLES, ROLLUP_TABLES};
use crate::ClickHouseConfig;

/// Every table retention may drop partitions of, with how it is
/// partitioned. No other table is ever touched.
pub const RETAINED_TABLES: &[RetainedTable] = &[
    RetainedTable {
        name: EVENTS_TABLE,
        family: Family::Raw,
        granularity: Granularity::Day,
    },
    RetainedTable {
        name: DEVICE_TABLE,
        family: Family::Device,
        granularity: Granularity::Day,
    },
    RetainedTable {
        name: DEVICE_USERS_TABLE,
        family: Family::Device,
        granularity: Granularity::Day,
    },
    RetainedTable {
        name: IDENTITY_LINKS_TABLE,
        family: Family::Device,
        granularity: Granularity::Day,
    },
    RetainedTable {
        name: USER_TRAITS_TABLE,
        family: Family::Device,
        granularity: Granularity::Day,
    },
    RetainedTable {
        name: GROUP_TRAITS_TABLE,
        family: Family::Device,
        granularity: Granularity::Day,
    },
    RetainedTable {
        name: ROLLUP_MINUTE_TABLE,
        family: Family::Rollup,
        granularity: Granularity::Month,
    },
    RetainedTable {
        name: ROLLUP_HOUR_TABLE,
        family: Family::Rollup,
        granularity: Granularity::Month,
    },
    RetainedTable {
        name: ROLLUP_DAY_TABLE,
        family: Family::Rollup,
        granularity: Granularity::Month,
    },
];

/// The default of `--retention-days` (raw `events`).
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
/// The default of `--device-retention-days`.
pub const DEFAULT_DEVICE_RETENTION_DAYS: u32 = 7;
/// The default of `--rollup-retention-days`.
pub const DEFAULT_ROLLUP_RETENTION_DAYS: u32 = 400;
/// How often the relay's task runs: partitions are whole days or months,
/// so hourly keeps the overshoot under an hour past the day boundary.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3_600);
/// Longest time one listing or one drop may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Which retention period applies to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `events`: `--retention-days`.
    Raw,
    /// The device tables: `--device-retention-days`.
    Device,
    /// The rollups: `--rollup-retention-days`.
    Rollup,
}

/// What one partition of a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// `PARTITION BY event_date`.
    Day,
    /// `PARTITION BY toYYYYMM(event_date)`.
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedTable {
    pub name: &'static str,
    pub family: Family,
    pub granularity: Granularity,
}

/// Days each family keeps; 0 keeps that family forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw_days: u32,
    pub device_days: u32,
    pub rollup_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_days: DEFAULT_RETENTION_DAYS,
            device_days: DEFAULT_DEVICE_RETENTION_DAYS,
            rollup_days: DEFAULT_ROLLUP_RETENTION_DAYS,
        }
    }
}

/// A retention configuration the relay refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "--rollup-retention-days ({rollup_days}) must be at least --retention-days ({raw_days}): \
         rollups summarize raw events and must outlive them (0 turns either off)"
    )]
    RollupsShorterThanRaw { raw_days: u32, rollup_days: u32 },
}

impl Retention {
    /// Rollups must keep at least as long as raw events when both are on.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.raw_days > 0 && self.rollup_days > 0 && self.rollup_days < self.raw_days {
            return Err(PolicyError::RollupsShorterThanRaw {
                raw_days: self.raw_days,
                rollup_days: self.rollup_days,
            });
        }
        Ok(())
    }

    /// The family's days; 0 is off.
    pub fn days(&self, family: Family) -> u32 {
        match family {
            Family::Raw => self.raw_days,
            Family::Device => self.device_days,
            Family::Rollup => self.rollup_days,
        }
    }

    /// True when every family is kept forever.
    pub fn is_off(&self) -> bool {
        self.raw_days == 0 && self.device_days == 0 && self.rollup_days == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("device retention must keep at least 1 day (0 turns the relay's task off instead)")]
    ZeroDays,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    InvalidDatabase(#[from] SchemaError),
    #[error("listing the retained tables' partitions failed: {0}")]
    List(#[source] clickhouse::error::Error),
    #[error("dropping partition {partition} of {table} failed: {source}")]
    Drop {
        table: &'static str,
        partition: PartitionKey,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("{0} did not finish within {STATEMENT_TIMEOUT:?}")]
    Timeout(String),
}

/// One partition's value, parsed: a UTC day (days since 1970-01-01) or a
/// calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartitionKey {
    Day(u16),
    Month { year: u16, month: u8 },
}

impl PartitionKey {
    /// The first day the partition can hold (days since 1970-01-01).
    pub fn first_day(&self) -> i32 {
        match *self {
            PartitionKey::Day(day) => i32::from(day),
            PartitionKey::Month { year, month } => month_start(i32::from(year), month),
        }
    }

    /// The last day the partition can hold (days since 1970-01-01).
    pub fn last_day(&self) -> i32 {
        match *self {
            PartitionKey::Day(day) => i32::from(day),
            PartitionKey::Month { year, month } => {
                let (y, m) = if month == 12 {
                    (i32::from(year) + 1, 1)
                } else {
                    (i32::from(year), month + 1)
                };
                month_start(y, m) - 1
            }
        }
    }

    /// True when every day the partition can hold is before `first_kept_day`.
    pub fn expired(&self, first_kept_day: u16) -> bool {
        self.last_day() < i32::from(first_kept_day)
    }

    /// The `DROP PARTITION` literal, rendered from the parsed value:
    /// `'2024-03-01'` or `202403`.
    pub fn literal(&self) -> String {
        match *self {
            PartitionKey::Day(day) => format!("'{}'", date_string(day)),
            PartitionKey::Month { year, month } => format!("{year:04}{month:02}"),
        }
    }

    /// The id ClickHouse derives from the value: `20240301` or `202403`.
    fn partition_id(&self) -> String {
        match *self {
            PartitionKey::Day(day) => date_string(day).replace('-', ""),
            PartitionKey::Month { year, month } => format!("{year:04}{month:02}"),
        }
    }
}

/// `2024-03-01` for a day, `2024-03` for a month.
impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PartitionKey::Day(day) => f.write_str(&date_string(day)),
            PartitionKey::Month { year, month } => write!(f, "{year:04}-{month:02}"),
        }
    }
}

/// Days since 1970-01-01 of the first of a month (1 ≤ month ≤ 12).
fn month_start(year: i32, month: u8) -> i32 {
    time::Month::try_from(month)
        .ok()
        .and_then(|m| time::Date::from_calendar_date(year, m, 1).ok())
        .map_or(0, |d| d.to_julian_day() - UNIX_EPOCH_JULIAN_DAY)
}

/// Parses `system.parts.partition` of a table of the given granularity,
/// and accepts it only if `partition_id` is the id ClickHouse derives from
/// that value. Days are `2024-03-01` (18.16) or `'2024-03-01'` (releases
/// that quote it), within ClickHouse's `Date` range; months are `202403`.
/// Anything else (tuples, hashes, stray characters) is `None`.
pub fn parse_partition(
    granularity: Granularity,
    partition: &str,
    partition_id: &str,
) -> Option<PartitionKey> {
    let key = match granularity {
        Granularity::Day => {
            let text = partition
                .strip_prefix('\'')
                .and_then(|p| p.strip_suffix('\''))
                .unwrap_or(partition);
            let b = text.as_bytes();
            let digits_at = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
            if b.len() != 10
                || b[4] != b'-'
                || b[7] != b'-'
                || !digits_at(0..4)
                || !digits_at(5..7)
                || !digits_at(8..10)
            {
                return None;
            }
            let year: i32 = text[0..4].parse().ok()?;
            let month = time::Month::try_from(text[5..7].parse::<u8>().ok()?).ok()?;
            let date =
                time::Date::from_calendar_date(year, month, text[8..10].parse().ok()?).ok()?;
            PartitionKey::Day(u16::try_from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY).ok()?)
        }
        Granularity::Month => {
            if partition.len() != 6 || !partition.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let year: u16 = partition[0..4].parse().ok()?;
            let month: u8 = partition[4..6].parse().ok()?;
            // toYYYYMM of a Date: 1970-01 to 2149-06.
            if !(1..=12).contains(&month) || !(1970..=2149).contains(&year) {
                return None;
            }
            PartitionKey::Month { year, month }
        }
    };
    (key.partition_id() == partition_id).then_some(key)
}

/// The first day retention keeps: days before it are dropped. Every event
/// stays at least `days` × 24 h and is dropped within a day after that (a
/// month, for month partitions).
pub fn first_kept_day(days: u32, now_ms: i64) -> u16 {
    event_date(now_ms.saturating_sub(i64::from(days).saturating_mul(MS_PER_DAY)))
}

/// One dropped partition of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPartition {
    pub table: &'static str,
    pub partition: PartitionKey,
    /// The family's days that made it expire.
    pub days: u32,
}

/// What one pass did: every partition dropped, and every drop that failed
/// (one failure does not stop the others, so an oversized partition of one
/// table does not hold back the rest).
#[derive(Debug, Default)]
pub struct Pass {
    pub dropped: Vec<DroppedPartition>,
    pub failures: Vec<RetentionError>,
    /// Partitions whose listing did not add up, left alone.
    pub left_alone: Vec<LeftAlone>,
}

/// A partition retention did not touch because what ClickHouse listed for
/// it did not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftAlone {
    pub table: &'static str,
    /// The partition value as listed, with its id or max date.
    pub partition: String,
    /// Why, in a few words.
    pub why: &'static str,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ListedPartition {
    table: String,
    partition: String,
    partition_id: String,
    /// Newest day in the partition's active parts (days since 1970-01-01).
    max_day: u16,
}

/// One retention pass: drops every partition of the retained tables whose
/// family is on and that lies entirely before that family's
/// [`first_kept_day`]`(days, now_ms)`.
pub async fn drop_expired_partitions(
    config: &ClickHouseConfig,
    retention: &Retention,
    now_ms: i64,
) -> Result<Pass, RetentionError> {
    retention.validate()?;
    schema::check_identifier(&config.database)?;
    let tables: Vec<&RetainedTable> = RETAINED_TABLES
        .iter()
        .filter(|t| retention.days(t.family) > 0)
        .collect();
    let mut pass = Pass::default();
    if tables.is_empty() {
        return Ok(pass);
    }
    let client = config.client();
    for listed in list_partitions(&client, &config.database, &tables).await? {
        let Some(table) = tables.iter().find(|t| t.name == listed.table) else {
            continue;
        };
        let days = retention.days(table.family);
        let keep_from = first_kept_day(days, now_ms);
        let Some(key) = parse_partition(table.granularity, &listed.partition, &listed.partition_id)
        else {
            pass.left_alone.push(LeftAlone {
                table: table.name,
                partition: format!("{} (id {})", listed.partition, listed.partition_id),
                why: "unexpected partition value",
            });
            continue;
        };
        if !key.expired(keep_from) {
            continue;
        }
        if i32::from(listed.max_day) > key.last_day() {
            pass.left_alone.push(LeftAlone {
                table: table.name,
                partition: format!("{key} (max_date {})", date_string(listed.max_day)),
                why: "max_date disagrees with the partition value",
            });
            continue;
        }
        match drop_partition(&client, table.name, key).await {
            Ok(()) => pass.dropped.push(DroppedPartition {
                table: table.name,
                partition: key,
                days,
            }),
            Err(e) => pass.failures.push(e),
        }
    }
    Ok(pass)
}

/// Drops the device tables' day partitions older than `days` (the device
/// family alone; `days` 0 is refused rather than read as "drop all").
pub async fn drop_device_partitions_older_than(
    config: &ClickHouseConfig,
    days: u32,
    now_ms: i64,
) -> Result<Vec<DroppedPartition>, RetentionError> {
    if days == 0 {
        return Err(RetentionError::ZeroDays);
    }
    let retention = Retention {
        raw_days: 0,
        device_days: days,
        rollup_days: 0,
    };
    let mut pass = drop_expired_partitions(config, &retention, now_ms).await?;
    if pass.failures.is_empty() {
        Ok(pass.dropped)
    } else {
        Err(pass.failures.swap_remove(0))
    }
}

/// `ALTER TABLE <table> DROP PARTITION <literal>`. `table` is one of
/// [`RETAINED_TABLES`]; the literal is rendered from the parsed value,
/// digits and dashes only.
pub fn drop_partition_sql(table: &str, key: PartitionKey) -> String {
    format!("ALTER TABLE {table} DROP PARTITION {}", key.literal())
}

/// The listing of a pass, with one `?` for the database: per active
/// partition of `tables`, `table`, `partition` (the value as the server
/// prints it), `partition_id` and `max_day` (the newest `max_date`, days
/// since 1970-01-01).
pub fn partitions_sql(tables: &[&RetainedTable]) -> String {
    // Table names are this module's constants, quoted as string literals.
    let names = tables
        .iter()
        .map(|t| format!("'{}'", t.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT table, partition, partition_id, toUInt16(max(max_date)) AS max_day \
         FROM system.parts \
         WHERE database = ? AND table IN ({names}) AND active \
         GROUP BY table, partition, partition_id ORDER BY table, partition_id"
    )
}

async fn drop_partition(
    client: &Client,
    table: &'static str,
    key: PartitionKey,
) -> Result<(), RetentionError> {
    let sql = drop_partition_sql(table, key);
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.query(&sql).execute()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(RetentionError::Drop {
            table,
            partition: key,
            source,
        }),
        Err(_) => Err(RetentionError::Timeout(format!(
            "dropping partition {key} of {table}"
        ))),
    }
}

async fn list_partitions(
    client: &Client,
    database: &str,
    tables: &[&RetainedTable],
) -> Result<Vec<ListedPartition>, RetentionError> {
    let list = client
        .query(&partitions_sql(tables))
        .bind(database)
        .fetch_all::<ListedPartition>();
    match tokio::time::timeout(STATEMENT_TIMEOUT, list).await {
        Ok(r) => r.map_err(RetentionError::List),
        Err(_) => Err(RetentionError::Timeout(
            "listing the retained tables' partitions".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-03-08T10:00:00Z is day 19,790.
    const NOW: i64 = 1_709_892_000_000;

    fn day(s: &str) -> u16 {
        match parse_partition(Granularity::Day, s, &s.replace('-', "")) {
            Some(PartitionKey::Day(d)) => d,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn month(year: u16, month: u8) -> PartitionKey {
        PartitionKey::Month { year, month }
    }

    #[test]
    fn keeps_whole_days_covering_the_window() {
        assert_eq!(super::event_date(NOW), 19_790);
        assert_eq!(first_kept_day(7, NOW), 19_783);
        assert_eq!(first_kept_day(1, NOW), 19_789);
        assert_eq!(date_string(first_kept_day(90, NOW)), "2023-12-09");
        // Clamped, never panics.
        assert_eq!(first_kept_day(u32::MAX, NOW), 0);
        assert_eq!(first_kept_day(7, i64::MIN), 0);
        assert_eq!(first_kept_day(1, i64::MAX), u16::MAX);
    }

    #[test]
    fn day_partitions_expire_strictly_before_the_first_kept_day() {
        let keep_from = first_kept_day(10, NOW);
        assert_eq!(date_string(keep_from), "2024-02-27");
        assert!(PartitionKey::Day(day("2024-02-26")).expired(keep_from));
        assert!(!PartitionKey::Day(day("2024-02-27")).expired(keep_from));
        assert!(!PartitionKey::Day(day("2024-03-08")).expired(keep_from));
        assert!(PartitionKey::Day(0).expired(1));
        assert!(!PartitionKey::Day(0).expired(0));
    }

    #[test]
    fn month_partitions_expire_only_when_the_whole_month_is_past() {
        // 45 days before 2024-03-08T10:00Z is 2024-01-23.
        let keep_from = first_kept_day(45, NOW);
        assert_eq!(date_string(keep_from), "2024-01-23");
        assert!(month(2023, 12).expired(keep_from));
        assert!(month(2023, 11).expired(keep_from));
        // The month holding the cutoff is kept, though its first days are older.
        assert!(!month(2024, 1).expired(keep_from));
        assert!(!month(2024, 3).expired(keep_from));
        // Cutoff on the 1st: the month before goes, that month stays.
        let first_of_feb = day("2024-02-01");
        assert!(month(2024, 1).expired(first_of_feb));
        assert!(!month(2024, 2).expired(first_of_feb));
        // Cutoff on the last day of a month: that month stays.
        assert!(!month(2024, 2).expired(day("2024-02-29")));
        assert!(month(2024, 2).expired(day("2024-03-01")));
    }

    #[test]
    fn months_span_their_calendar_days() {
        assert_eq!(month(2024, 2).first_day(), i32::from(day("2024-02-01")));
        assert_eq!(month(2024, 2).last_day(), i32::from(day("2024-02-29")));
        assert_eq!(month(2023, 2).last_day(), i32::from(day("2023-02-28")));
        assert_eq!(month(2023, 12).last_day(), i32::from(day("2023-12-31")));
        assert_eq!(month(1970, 1).first_day(), 0);
        // The last month a Date can reach ends past u16 days; no overflow.
        assert_eq!(month(2149, 6).last_day(), 65_535 + 24);
        assert_eq!(PartitionKey::Day(19_790).last_day(), 19_790);
    }

    #[test]
    fn partition_values_parse_only_when_plain_and_consistent() {
        use Granularity::{Day, Month};
        let d = Some(PartitionKey::Day(19_783));
        assert_eq!(parse_partition(Day, "2024-03-01", "20240301"), d);
        assert_eq!(parse_partition(Day, "'2024-03-01'", "20240301"), d);
        assert_eq!(
            parse_partition(Day, "1970-01-01", "19700101"),
            Some(PartitionKey::Day(0))
        );
        assert_eq!(
            parse_partition(Day, "2149-06-06", "21490606"),
            Some(PartitionKey::Day(u16::MAX))
        );
        assert_eq!(
            parse_partition(Month, "202403", "202403"),
            Some(month(2024, 3))
        );
        for (g, value, id) in [
            // The id must be the one derived from the value.
            (Day, "2024-03-01", "20240302"),
            (Month, "202403", "202404"),
            // Not a day, or not in Date's range.
            (Day, "2024-02-30", "20240230"),
            (Day, "2024-13-01", "20241301"),
            (Day, "1969-12-31", "19691231"),
            (Day, "2149-06-07", "21490607"),
            (Day, "2024-3-01", "2024301"),
            (Day, "+024-03-01", "+0240301"),
            (Day, "'2024-03-01", "20240301"),
            (Day, "2024-03-01'; DROP TABLE events; --", "20240301"),
            (Day, "19783", "19783"),
            (Day, "", ""),
            // Not a month.
            (Month, "202413", "202413"),
            (Month, "202400", "202400"),
            (Month, "196912", "196912"),
            (Month, "2024031", "2024031"),
            (Month, "2024-03", "202403"),
            (Month, "'202403'", "202403"),
            (Month, "20240301", "20240301"),
            (Month, "tuple()", "all"),
            (Month, "(202403, 1)", "202403-1"),
            (Month, "+20403", "+20403"),
            // A day table's value in a month table, and the reverse.
            (Month, "2024-03-01", "20240301"),
            (Day, "202403", "202403"),
        ] {
            assert_eq!(
                parse_partition(g, value, id),
                None,
                "{g:?} {value:?} {id:?}"
            );
        }
    }

    #[test]
    fn literals_are_rendered_from_the_parsed_value() {
        assert_eq!(PartitionKey::Day(19_783).literal(), "'2024-03-01'");
        assert_eq!(PartitionKey::Day(19_783).to_string(), "2024-03-01");
        assert_eq!(month(2024, 3).literal(), "202403");
        assert_eq!(month(2024, 3).to_string(), "2024-03");
        assert_eq!(month(1970, 1).literal(), "197001");
    }

    #[test]
    fn rollups_must_outlive_raw_events_when_both_are_on() {
        let ok = |raw_days, rollup_days| {
            Retention {
                raw_days,
                device_days: 7,
                rollup_days,
            }
            .validate()
        };
        assert_eq!(Retention::default().validate(), Ok(()));
        assert_eq!(ok(90, 90), Ok(()));
        assert_eq!(ok(0, 30), Ok(()));
        assert_eq!(ok(90, 0), Ok(()));
        assert_eq!(ok(0, 0), Ok(()));
        let err = ok(90, 30).unwrap_err();
        assert_eq!(
            err,
            PolicyError::RollupsShorterThanRaw {
                raw_days: 90,
                rollup_days: 30
            }
        );
        assert!(
            err.to_string().contains("--rollup-retention-days (30)"),
            "{err}"
        );
        assert!(err.to_string().contains("--retention-days (90)"), "{err}");
        assert_eq!(
            Retention::default(),
            Retention {
                raw_days: 90,
                device_days: 7,
                rollup_days: 400
            }
        );
        assert!(Retention {
            raw_days: 0,
            device_days: 0,
            rollup_days: 0
        }
        .is_off());
    }

    /// The granularity each table is listed with is the one its schema
    /// file declares.
    #[test]
    fn retained_tables_match_their_schema() {
        let all_sql: String = schema::SCHEMA_FILES
            .iter()
            .flat_map(|(_, sql)| schema::split_statements(sql))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(";");
        for t in RETAINED_TABLES {
            let create = format!("CREATE TABLE IF NOT EXISTS {}", t.name);
            let at = all_sql
                .find(&create)
                .unwrap_or_else(|| panic!("{} not in the schema", t.name));
            let rest = &all_sql[at..];
            let statement = &rest[..rest.find(';').unwrap_or(rest.len())];
            let expected = match t.granularity {
                Granularity::Day => "PARTITION BY event_date ORDER BY",
                Granularity::Month => "PARTITION BY toYYYYMM(event_date) ORDER BY",
            };
            assert!(statement.contains(expected), "{}: {statement}", t.name);
        }
        let count = |f| RETAINED_TABLES.iter().filter(|t| t.family == f).count();
        assert_eq!(
            (
                count(Family::Raw),
                count(Family::Device),
                count(Family::Rollup)
            ),
            (1, 5, 3)
        );
    }
}
