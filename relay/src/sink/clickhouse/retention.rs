//! Retention of the device tables (`events_by_device`, `device_users`): they
//! keep a few days while `events` keeps 90, enforced by dropping whole day
//! partitions, because ClickHouse 18.16 has no TTL and dropping a partition
//! is cheap and works the same on every release.
//!
//! [`drop_device_partitions_older_than`] is the one-shot; [`run`] repeats it
//! in the relay. It must never touch `events` or any table but the two
//! named in [`DEVICE_TABLES`], and never drop a partition holding a day
//! inside the retention window. Every relay of a region may run it at once:
//! dropping a partition that is already gone is a no-op.

use std::time::Duration;

use clickhouse::Client;
use serde::Deserialize;
use tokio::sync::watch;

use super::device::{DEVICE_TABLE, DEVICE_USERS_TABLE};
use super::row::event_date;
use super::{base_client, date_string, schema};
use crate::config::ClickHouseConfig;

/// The tables whose partitions retention drops. Never `events`.
pub const DEVICE_TABLES: &[&str] = &[DEVICE_TABLE, DEVICE_USERS_TABLE];
/// The default of `--device-retention-days`.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;
/// How often the relay's task runs: partitions are whole days, so hourly
/// keeps the overshoot under an hour past the day boundary.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3_600);
/// Longest time one listing or one drop may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

const MS_PER_DAY: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("device retention must keep at least 1 day (0 turns the relay's task off instead)")]
    ZeroDays,
    #[error(transparent)]
    InvalidDatabase(#[from] super::SinkError),
    #[error("listing the device tables' partitions failed: {0}")]
    List(#[source] clickhouse::error::Error),
    #[error("dropping partition {partition_id} of {table} failed: {source}")]
    Drop {
        table: &'static str,
        partition_id: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("{0} did not finish within {STATEMENT_TIMEOUT:?}")]
    Timeout(&'static str),
}

/// One dropped partition: a whole UTC day of one device table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPartition {
    pub table: &'static str,
    /// ClickHouse's partition id, `YYYYMMDD`.
    pub partition_id: String,
    /// The day, `YYYY-MM-DD`.
    pub day: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Partition {
    table: String,
    partition_id: String,
    /// Newest day in the partition (days since 1970-01-01); one day per
    /// partition with `PARTITION BY event_date`.
    max_day: u16,
}

/// The first day retention keeps: days before it are dropped. Every event
/// stays at least `days` × 24 h and is dropped within a day after that.
pub fn first_kept_day(days: u32, now_ms: i64) -> u16 {
    event_date(now_ms.saturating_sub(i64::from(days).saturating_mul(MS_PER_DAY)))
}

/// Drops every partition of the device tables whose newest day is before
/// [`first_kept_day`]`(days, now_ms)`, and returns what it dropped.
pub async fn drop_device_partitions_older_than(
    config: &ClickHouseConfig,
    days: u32,
    now_ms: i64,
) -> Result<Vec<DroppedPartition>, RetentionError> {
    if days == 0 {
        return Err(RetentionError::ZeroDays);
    }
    schema::check_identifier(&config.database)?;
    let client = base_client(config).with_database(&config.database);
    let keep_from = first_kept_day(days, now_ms);
    let mut dropped = Vec::new();
    for part in list_partitions(&client, &config.database).await? {
        let Some(&table) = DEVICE_TABLES.iter().find(|t| **t == part.table) else {
            continue;
        };
        // Ids come from system.parts; still, only a plain day id is dropped.
        if part.max_day >= keep_from || !part.partition_id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let drop = client
            .query(&format!("ALTER TABLE {table} DROP PARTITION ID ?"))
            .bind(part.partition_id.as_str())
            .execute();
        match tokio::time::timeout(STATEMENT_TIMEOUT, drop).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(RetentionError::Drop {
                    table,
                    partition_id: part.partition_id,
                    source,
                })
            }
            Err(_) => return Err(RetentionError::Timeout("dropping a device partition")),
        }
        dropped.push(DroppedPartition {
            table,
            day: date_string(part.max_day),
            partition_id: part.partition_id,
        });
    }
    Ok(dropped)
}

async fn list_partitions(
    client: &Client,
    database: &str,
) -> Result<Vec<Partition>, RetentionError> {
    let list = client
        .query(&format!(
            "SELECT table, partition_id, toUInt16(max(max_date)) AS max_day \
             FROM system.parts \
             WHERE database = ? AND table IN ('{DEVICE_TABLE}', '{DEVICE_USERS_TABLE}') AND active \
             GROUP BY table, partition_id ORDER BY table, partition_id"
        ))
        .bind(database)
        .fetch_all::<Partition>();
    match tokio::time::timeout(STATEMENT_TIMEOUT, list).await {
        Ok(r) => r.map_err(RetentionError::List),
        Err(_) => Err(RetentionError::Timeout("listing device partitions")),
    }
}

/// The relay's retention task: runs at once, then every `every`, until
/// `stop`. Failures are logged and retried at the next tick; retention is
/// housekeeping and never stops the relay.
pub async fn run(
    config: ClickHouseConfig,
    days: u32,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    if days == 0 {
        tracing::info!("device table retention is off (--device-retention-days 0)");
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = crate::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let pass = drop_device_partitions_older_than(&config, days, now_ms);
        let result = tokio::select! {
            () = crate::stopped(&mut stop) => return,
            r = pass => r,
        };
        match result {
            Ok(dropped) if dropped.is_empty() => {
                tracing::debug!(days, "device tables: no partition past retention");
            }
            Ok(dropped) => {
                for d in &dropped {
                    tracing::info!(table = d.table, day = %d.day, days, "dropped a device table partition past retention");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "device table retention failed; retrying at the next tick")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first_kept_day;

    #[test]
    fn keeps_whole_days_covering_the_window() {
        // 2024-03-08T10:00:00Z is day 19,790; 7 days back is 2024-03-01T10:00Z.
        let now = 1_709_892_000_000;
        assert_eq!(super::event_date(now), 19_790);
        assert_eq!(first_kept_day(7, now), 19_783);
        assert_eq!(first_kept_day(1, now), 19_789);
        // Clamped, never panics.
        assert_eq!(first_kept_day(u32::MAX, now), 0);
        assert_eq!(first_kept_day(7, i64::MIN), 0);
        assert_eq!(first_kept_day(1, i64::MAX), u16::MAX);
    }
}
