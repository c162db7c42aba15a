//! The dedup window, the claims stream and the presence check.

use std::time::Duration;

use crate::metrics::Metrics;

use super::{failed, InternalEvent, Stage};

/// Duplicates dropped, by the layer that caught them: `own` (this relay
/// buffered or stored the id), `claim` (another relay announced it), or
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

/// At start, the claims stream was replayed into the dedup window.
pub struct ClaimsReplayed<'a> {
    pub ids: usize,
    pub instance: &'a str,
}

impl InternalEvent for ClaimsReplayed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            ids = self.ids,
            instance = self.instance,
            "dedup window rebuilt from the claims stream"
        );
        m.claims_received.inc_by(self.ids as u64);
    }
}

/// Ids claimed by other relays arrived.
pub struct ClaimsReceived {
    pub ids: usize,
}

impl InternalEvent for ClaimsReceived {
    fn emit(self, m: &Metrics) {
        tracing::trace!(ids = self.ids, "claims received");
        m.claims_received.inc_by(self.ids as u64);
    }
}

/// This relay announced ids it buffered.
pub struct ClaimsPublished<'a> {
    pub ids: usize,
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl InternalEvent for ClaimsPublished<'_> {
    fn emit(self, m: &Metrics) {
        match self.error {
            None => {
                m.claims_published.inc_by(self.ids as u64);
            }
            Some(error) => {
                tracing::warn!(
                    error_type = "publish",
                    stage = Stage::Claim.as_str(),
                    ids = self.ids,
                    %error,
                    "could not announce buffered ids; other relays may store a copy"
                );
                m.error(Stage::Claim, "publish").inc();
            }
        }
    }
}

/// Following the claims stream failed; the relay keeps its own window and
/// keeps following.
pub struct ClaimsFollowFailed<'a> {
    /// `follow` (the subscription errored) or `undecodable` (a claim
    /// message could not be read).
    pub kind: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ClaimsFollowFailed<'_> {
    fn emit(self, m: &Metrics) {
        let what = "claims stream: continuing without this input";
        failed(m, Stage::Claim, self.kind, self.error, what);
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
