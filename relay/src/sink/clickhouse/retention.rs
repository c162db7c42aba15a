//! The relay's retention task: one pass of
//! `spoor_store::retention::drop_expired_partitions` at start and then
//! every [`RETENTION_INTERVAL`], reporting what each pass dropped, left
//! alone or failed to drop as internal events (logs and
//! `spoor_relay_retention_*` / `spoor_relay_errors_total{stage="retention"}`). The policy (which tables, how long, which partitions may go)
//! is the store's; this module only schedules it and reports.

use std::sync::Arc;
use std::time::Duration;

pub use spoor_store::retention::RETENTION_INTERVAL;
use spoor_store::retention::{drop_expired_partitions, Family, Retention};
use tokio::sync::watch;

use crate::config::ClickHouseConfig;
use crate::internal_events::{
    InternalEvent, PartitionDropped, PartitionLeftAlone, RetentionFailed, RetentionOff,
    RetentionPassed,
};
use crate::metrics::Metrics;

/// The relay's retention task: runs at once, then every `every`, until
/// `stop`. Failures are reported (`internal_events`) and retried at the
/// next tick; retention is housekeeping and never stops the relay.
/// `retention` was validated at the relay's start.
pub async fn run(
    config: ClickHouseConfig,
    retention: Retention,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    for (family, name, flag) in [
        (Family::Raw, "raw", "--retention-days"),
        (Family::Device, "device", "--device-retention-days"),
        (Family::Rollup, "rollup", "--rollup-retention-days"),
    ] {
        if retention.days(family) == 0 {
            RetentionOff { family: name, flag }.emit(&metrics);
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
                for d in &pass.dropped {
                    PartitionDropped {
                        table: d.table,
                        partition: &d.partition,
                        days: d.days,
                    }
                    .emit(&metrics);
                }
                for l in &pass.left_alone {
                    PartitionLeftAlone {
                        table: l.table,
                        partition: &l.partition,
                        why: l.why,
                    }
                    .emit(&metrics);
                }
                for e in &pass.failures {
                    RetentionFailed {
                        kind: "drop",
                        error: e,
                    }
                    .emit(&metrics);
                }
                RetentionPassed {
                    dropped: pass.dropped.len(),
                }
                .emit(&metrics);
            }
            Err(e) => RetentionFailed {
                kind: "pass",
                error: &e,
            }
            .emit(&metrics),
        }
    }
}
