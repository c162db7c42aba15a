//! The relay's retention task: one pass of
//! `spoor_store::retention::drop_expired_partitions` at start and then
//! every [`RETENTION_INTERVAL`], logging what each pass dropped or failed
//! to drop. The policy (which tables, how long, which partitions may go)
//! is the store's; this module only schedules it and reports.

use std::time::Duration;

pub use spoor_store::retention::RETENTION_INTERVAL;
use spoor_store::retention::{drop_expired_partitions, Family, Retention};
use tokio::sync::watch;

use crate::config::ClickHouseConfig;

/// The relay's retention task: runs at once, then every `every`, until
/// `stop`. Failures are logged and retried at the next tick; retention is
/// housekeeping and never stops the relay. `retention` was validated at the
/// relay's start.
pub async fn run(
    config: ClickHouseConfig,
    retention: Retention,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    for (family, flag) in [
        (Family::Raw, "--retention-days"),
        (Family::Device, "--device-retention-days"),
        (Family::Rollup, "--rollup-retention-days"),
    ] {
        if retention.days(family) == 0 {
            tracing::info!("{family:?} table retention is off ({flag} 0)");
        }
    }
    if retention.is_off() {
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
        let pass = drop_expired_partitions(&config, &retention, now_ms);
        let result = tokio::select! {
            () = crate::stopped(&mut stop) => return,
            r = pass => r,
        };
        match result {
            Ok(pass) => {
                if pass.dropped.is_empty() && pass.failures.is_empty() {
                    tracing::debug!("retention: no partition past its window");
                }
                for d in &pass.dropped {
                    tracing::info!(table = d.table, partition = %d.partition, days = d.days, "dropped a partition past retention");
                }
                for e in &pass.failures {
                    tracing::warn!(error = %e, "retention: a partition drop failed; retrying at the next tick");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention pass failed; retrying at the next tick")
            }
        }
    }
}
