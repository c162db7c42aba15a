//! The dedup window and the presence check.

use std::time::Duration;

use crate::metrics::Metrics;

use super::InternalEvent;

/// Duplicates dropped, by the layer that caught them: `own` (this relay
/// buffered or stored the id under its lease), `window` (the id was in the
/// partition's stream window loaded when the lease was acquired), or
/// `stored` (ClickHouse already holds it: a redelivery or a retried insert).
pub struct DuplicatesDropped {
    pub layer: &'static str,
    pub count: usize,
}

impl InternalEvent for DuplicatesDropped {
    fn emit(self, m: &Metrics) {
        if self.count > 0 {
            tracing::debug!(layer = self.layer, count = self.count, "duplicates dropped");
            m.events_deduped.inc_by(self.count as u64);
            m.deduped_by_layer
                .get_or_create(&[("layer", self.layer)])
                .inc_by(self.count as u64);
        }
    }
}

/// ClickHouse was asked which buffered ids it already holds.
pub struct PresenceChecked {
    pub asked: usize,
    pub stored: usize,
    pub latency: Duration,
}

impl InternalEvent for PresenceChecked {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            asked = self.asked,
            stored = self.stored,
            latency_ms = self.latency.as_millis() as u64,
            "checked ClickHouse for already stored rows"
        );
        m.presence_checks.inc();
        m.presence_checked_ids.inc_by(self.asked as u64);
    }
}
