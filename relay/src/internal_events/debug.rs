//! The debug ring and debug queries.

use std::time::Duration;

use crate::metrics::Metrics;

use super::{failed, InternalEvent, Stage};

/// The debug ring's size after a round of updates, with the evictions the
/// round caused (deltas).
pub struct RingChanged {
    pub events: u64,
    pub bytes: usize,
    pub devices: usize,
    pub evicted: crate::ring::Evictions,
}

impl InternalEvent for RingChanged {
    fn emit(self, m: &Metrics) {
        m.ring_events
            .set(i64::try_from(self.events).unwrap_or(i64::MAX));
        m.ring_bytes
            .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        m.ring_devices
            .set(i64::try_from(self.devices).unwrap_or(i64::MAX));
        for (reason, n) in [
            ("age", self.evicted.age),
            ("bytes", self.evicted.bytes),
            ("device_cap", self.evicted.device_cap),
        ] {
            if n > 0 {
                tracing::trace!(reason, events = n, "debug ring evicted events");
                m.ring_evictions
                    .get_or_create(&[("reason", reason)])
                    .inc_by(n);
            }
        }
    }
}

/// The ring's update channel was full, so updates for `events` events were
/// dropped rather than make the insert path wait (the ring is a debugging
/// aid; relaying comes first).
pub struct RingUpdatesDropped {
    pub events: usize,
}

impl InternalEvent for RingUpdatesDropped {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            error_type = "ring_full",
            stage = Stage::Ring.as_str(),
            events = self.events,
            "debug ring update dropped; its channel is full"
        );
        m.ring_updates_dropped.inc_by(self.events as u64);
    }
}

/// The ring was rebuilt from the events stream at start.
pub struct RingRehydrated {
    pub frames: u64,
    pub events: u64,
    pub dead_frames: u64,
    pub ack_floor: u64,
    pub latency: Duration,
}

impl InternalEvent for RingRehydrated {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            frames = self.frames,
            events = self.events,
            dead_frames = self.dead_frames,
            ack_floor = self.ack_floor,
            latency_ms = self.latency.as_millis() as u64,
            "debug ring rebuilt from the events stream"
        );
        m.ring_rehydrated_events.inc_by(self.events);
    }
}

/// Rebuilding the ring failed; the ring holds only what arrives from now on.
pub struct RingRehydrationFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for RingRehydrationFailed<'_> {
    fn emit(self, m: &Metrics) {
        let what = "cannot rebuild the debug ring from the stream; it holds only new events";
        failed(m, Stage::Ring, "rehydration", self.error, what);
    }
}

/// Replaying the stream into the debug ring hit an error and goes on.
pub struct RingReplayFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for RingReplayFailed<'_> {
    fn emit(self, m: &Metrics) {
        let what = "debug ring replay error; continuing";
        failed(m, Stage::Ring, "replay", self.error, what);
    }
}

/// This relay answered a debug lookup from its ring (over NATS).
pub struct DebugQueryAnswered {
    /// `ok` or the `QueryError::kind()` it was refused with.
    pub outcome: &'static str,
    pub events: usize,
    pub latency: Duration,
}

impl InternalEvent for DebugQueryAnswered {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            outcome = self.outcome,
            events = self.events,
            latency_us = self.latency.as_micros() as u64,
            "debug ring query answered"
        );
        m.debug_queries
            .get_or_create(&[("outcome", self.outcome)])
            .inc();
    }
}

/// A region-wide debug lookup was served over HTTP.
pub struct DebugLookupServed {
    /// `ok`, a `QueryError::kind()`, or `unavailable`.
    pub outcome: &'static str,
    pub relays: usize,
    pub events: usize,
    pub latency: Duration,
}

impl InternalEvent for DebugLookupServed {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            outcome = self.outcome,
            relays = self.relays,
            events = self.events,
            latency_ms = self.latency.as_millis() as u64,
            "debug lookup served over HTTP"
        );
        m.debug_lookups
            .get_or_create(&[("outcome", self.outcome)])
            .inc();
    }
}

/// A debug query could not be subscribed to or answered.
pub struct DebugFailed<'a> {
    /// `subscribe` (this relay's ring will not answer), `encode` or
    /// `publish` (one answer lost; the requester sees this relay missing).
    pub kind: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for DebugFailed<'_> {
    fn emit(self, m: &Metrics) {
        if self.kind != "subscribe" {
            return failed(
                m,
                Stage::Debug,
                self.kind,
                self.error,
                "cannot answer a debug query",
            );
        }
        tracing::error!(
            stage = Stage::Debug.as_str(),
            error_type = self.kind,
            error = %self.error,
            "cannot subscribe to debug queries; this relay's ring will not answer"
        );
        m.error(Stage::Debug, self.kind).inc();
    }
}
