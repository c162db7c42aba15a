//! Partition leases: acquired, handed over, lost, and the dedup window of
//! an acquired partition rebuilt from the stream.

use std::time::Duration;

use crate::metrics::Metrics;

use super::{failed, InternalEvent, Stage};

/// This relay created a partition's lease.
pub struct PartitionAcquired {
    pub partition: u32,
    pub epoch: u64,
    pub owned: usize,
}

impl InternalEvent for PartitionAcquired {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            partition = self.partition,
            epoch = self.epoch,
            owned = self.owned,
            "partition acquired"
        );
        m.rebalances.get_or_create(&[("change", "acquired")]).inc();
        m.partitions_owned.set(self.owned as i64);
    }
}

/// This relay handed a partition over: it inserted and acked what it held
/// and deleted the lease.
pub struct PartitionReleased {
    pub partition: u32,
    pub owned: usize,
}

impl InternalEvent for PartitionReleased {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            partition = self.partition,
            owned = self.owned,
            "partition handed over"
        );
        m.rebalances.get_or_create(&[("change", "released")]).inc();
        m.partitions_owned.set(self.owned as i64);
    }
}

/// A lease ran out or went to another relay without being handed over.
pub struct LeaseLost {
    pub partition: u32,
    pub epoch: u64,
    /// `expired` (not renewed in time) or `taken` (the key's revision moved).
    pub why: &'static str,
    pub owned: usize,
}

impl InternalEvent for LeaseLost {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            stage = Stage::Lease.as_str(),
            error_type = self.why,
            partition = self.partition,
            epoch = self.epoch,
            "partition lease lost; its buffered rows are dropped unacked for the next owner"
        );
        m.error(Stage::Lease, self.why).inc();
        m.lease_losses.inc();
        m.partitions_owned.set(self.owned as i64);
    }
}

/// A lease operation failed (NATS unreachable or refused); the relay keeps
/// its leases until their validity runs out and tries again.
pub struct LeaseOpFailed<'a> {
    /// `renew`, `acquire`, `release`, `presence` or `list`.
    pub op: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for LeaseOpFailed<'_> {
    fn emit(self, m: &Metrics) {
        failed(
            m,
            Stage::Lease,
            self.op,
            self.error,
            "partition lease operation failed",
        );
    }
}

/// An acquired partition's dedup window was rebuilt from the stream.
pub struct WindowRebuilt {
    pub partition: u32,
    pub frames: u64,
    pub ids: u64,
    pub latency: Duration,
}

impl InternalEvent for WindowRebuilt {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            partition = self.partition,
            frames = self.frames,
            ids = self.ids,
            latency_ms = self.latency.as_millis() as u64,
            "partition dedup window rebuilt from the stream"
        );
        m.window_rebuilt_ids.inc_by(self.ids);
    }
}

/// Rebuilding an acquired partition's window failed; the partition is
/// released so that it (or another relay) tries again.
pub struct WindowRebuildFailed<'a> {
    pub partition: u32,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for WindowRebuildFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            stage = Stage::Lease.as_str(),
            error_type = "rebuild",
            partition = self.partition,
            error = %self.error,
            "could not rebuild the partition's dedup window; giving the partition up"
        );
        m.error(Stage::Lease, "rebuild").inc();
    }
}
