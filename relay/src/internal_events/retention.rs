//! Retention passes and partition drops.

use crate::metrics::Metrics;

use super::{failed, InternalEvent, Stage};

/// A retention family is off (its flag is 0).
pub struct RetentionOff {
    pub family: &'static str,
    pub flag: &'static str,
}

impl InternalEvent for RetentionOff {
    fn emit(self, _: &Metrics) {
        tracing::info!(
            family = self.family,
            flag = self.flag,
            "table retention is off (flag 0)"
        );
    }
}

/// A retention pass listed the partitions and acted on them.
pub struct RetentionPassed {
    pub dropped: usize,
}

impl InternalEvent for RetentionPassed {
    fn emit(self, m: &Metrics) {
        if self.dropped == 0 {
            tracing::debug!("retention: no partition past its window");
        }
        m.retention_passes.inc();
    }
}

/// A partition past its table's retention was dropped.
pub struct PartitionDropped<'a> {
    pub table: &'static str,
    pub partition: &'a dyn std::fmt::Display,
    pub days: u32,
}

impl InternalEvent for PartitionDropped<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            table = self.table,
            partition = %self.partition,
            days = self.days,
            "dropped a partition past retention"
        );
        m.retention_partitions_dropped
            .get_or_create(&[("table", self.table)])
            .inc();
    }
}

/// Retention left a partition alone because what ClickHouse listed did not
/// add up (an unexpected value, or a max date past the value's days).
pub struct PartitionLeftAlone<'a> {
    pub table: &'static str,
    pub partition: &'a str,
    pub why: &'static str,
}

impl InternalEvent for PartitionLeftAlone<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = "unexpected_partition",
            stage = Stage::Retention.as_str(),
            table = self.table,
            partition = self.partition,
            why = self.why,
            "retention left a partition alone"
        );
        m.error(Stage::Retention, "unexpected_partition").inc();
    }
}

/// A retention pass, or one partition drop in it, failed; retried at the
/// next tick.
pub struct RetentionFailed<'a> {
    /// `pass` (listing failed) or `drop` (one partition).
    pub kind: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for RetentionFailed<'_> {
    fn emit(self, m: &Metrics) {
        let what = "retention failed; retrying at the next tick";
        failed(m, Stage::Retention, self.kind, self.error, what);
    }
}
