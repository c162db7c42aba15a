//! Named things that happen inside the relay. Each event writes its tracing
//! line and bumps its metrics in one `emit`, so a log line never exists
//! without its count and the other way round (Vector's `internal_events`).
//!
//! Events carry only what they report; they must not make decisions or do
//! I/O.

use std::time::Duration;

use crate::batcher::FlushReason;
use crate::metrics::Metrics;

/// Where in the relay something failed: the `stage` of every warning and
/// of `spoor_relay_errors_total`, one vocabulary for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Pulling messages from JetStream.
    Fetch,
    /// Decoding a frame.
    Decode,
    /// Moving an undecodable frame to the dead-letter stream.
    DeadLetter,
    /// Announcing or following the claims stream.
    Claim,
    /// Inserting rows into ClickHouse (including the presence check).
    Insert,
    /// Acking, progress-acking or NAKing messages.
    Ack,
    /// The debug ring: rebuilding it from the stream.
    Ring,
    /// Debug queries over NATS: subscribing and answering.
    Debug,
    /// Dropping partitions past retention.
    Retention,
    /// Draining the buffer on shutdown.
    Shutdown,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::DeadLetter => "dead_letter",
            Stage::Claim => "claim",
            Stage::Insert => "insert",
            Stage::Ack => "ack",
            Stage::Ring => "ring",
            Stage::Debug => "debug",
            Stage::Retention => "retention",
            Stage::Shutdown => "shutdown",
        }
    }
}

/// Something worth logging and counting.
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// A pull request returned messages.
pub struct MessagesReceived {
    pub count: usize,
}

impl InternalEvent for MessagesReceived {
    fn emit(self, m: &Metrics) {
        tracing::trace!(count = self.count, "messages received");
        m.messages_received.inc_by(self.count as u64);
    }
}

/// A frame decoded into a batch of `events` events.
pub struct FrameDecoded<'a> {
    pub batch_id: &'a str,
    pub events: usize,
}

impl InternalEvent for FrameDecoded<'_> {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            batch_id = self.batch_id,
            events = self.events,
            "frame decoded"
        );
        m.frames_decoded.inc();
        m.events_received.inc_by(self.events as u64);
    }
}

/// A frame could not be decoded and was taken off the stream.
pub struct FrameDecodeFailed<'a> {
    pub kind: &'static str,
    pub error: &'a dyn std::error::Error,
    pub subject: &'a str,
    pub stream_sequence: Option<u64>,
    pub bytes: usize,
}

impl InternalEvent for FrameDecodeFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = self.kind,
            stage = Stage::Decode.as_str(),
            subject = self.subject,
            stream_sequence = self.stream_sequence,
            bytes = self.bytes,
            error = %self.error,
            "frame failed to decode; moving it to the dead-letter stream"
        );
        m.error(Stage::Decode, self.kind).inc();
    }
}

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

/// An insert succeeded.
pub struct EventsInserted {
    pub rows: usize,
    pub bytes: usize,
    pub latency: Duration,
    pub reason: FlushReason,
    pub attempts: u32,
}

impl InternalEvent for EventsInserted {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            rows = self.rows,
            bytes = self.bytes,
            latency_ms = self.latency.as_millis() as u64,
            reason = self.reason.as_str(),
            attempts = self.attempts,
            "rows inserted"
        );
        m.rows_inserted.inc_by(self.rows as u64);
        m.insert_duration_seconds
            .observe(self.latency.as_secs_f64());
        m.insert_batch_rows.observe(self.rows as f64);
    }
}

/// An insert attempt failed; the buffer is kept and retried.
pub struct InsertFailed<'a> {
    pub error: &'a dyn std::error::Error,
    pub rows: usize,
    pub attempt: u32,
    pub retry_in: Duration,
}

impl InternalEvent for InsertFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = "clickhouse",
            stage = Stage::Insert.as_str(),
            rows = self.rows,
            attempt = self.attempt,
            retry_in_ms = self.retry_in.as_millis() as u64,
            error = %self.error,
            "ClickHouse insert failed; keeping the buffer and retrying (fetching paused)"
        );
        m.error(Stage::Insert, "clickhouse").inc();
    }
}

/// Messages were acknowledged (their acks flushed to the server).
pub struct MessagesAcked {
    pub count: usize,
}

impl InternalEvent for MessagesAcked {
    fn emit(self, m: &Metrics) {
        tracing::trace!(count = self.count, "messages acked");
        m.messages_acked.inc_by(self.count as u64);
    }
}

/// Acks could not be sent or flushed; JetStream will redeliver those
/// messages and dedup (or the table's ReplacingMergeTree) absorbs the copy.
pub struct AckFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub count: usize,
}

impl InternalEvent for AckFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = "ack",
            stage = Stage::Ack.as_str(),
            count = self.count,
            error = %self.error,
            "acks not confirmed; the messages will be redelivered"
        );
        m.error(Stage::Ack, "ack").inc();
    }
}

/// A pull request failed.
pub struct FetchFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for FetchFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = "fetch",
            stage = Stage::Fetch.as_str(),
            error = %self.error,
            "JetStream fetch failed"
        );
        m.error(Stage::Fetch, "fetch").inc();
    }
}

/// Consumer info was polled.
pub struct ConsumerLagPolled {
    pub pending: u64,
    pub ack_pending: usize,
}

impl InternalEvent for ConsumerLagPolled {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            pending = self.pending,
            ack_pending = self.ack_pending,
            "consumer info polled"
        );
        m.consumer_lag_messages
            .set(i64::try_from(self.pending).unwrap_or(i64::MAX));
        m.consumer_ack_pending_messages
            .set(i64::try_from(self.ack_pending).unwrap_or(i64::MAX));
    }
}

/// The buffer's size changed.
pub struct BufferChanged {
    pub rows: usize,
    pub bytes: usize,
    pub messages: usize,
}

impl InternalEvent for BufferChanged {
    fn emit(self, m: &Metrics) {
        m.buffer_rows.set(self.rows as i64);
        m.buffer_bytes.set(self.bytes as i64);
        m.buffer_messages.set(self.messages as i64);
    }
}

/// Shutdown drain gave up with rows still buffered.
pub struct DrainAbandoned {
    pub rows: usize,
    pub messages: usize,
}

impl InternalEvent for DrainAbandoned {
    fn emit(self, m: &Metrics) {
        m.error(Stage::Shutdown, "drain_timeout").inc();
        tracing::error!(
            error_type = "drain_timeout",
            stage = Stage::Shutdown.as_str(),
            rows = self.rows,
            messages = self.messages,
            "drain timed out; leaving messages unacked for redelivery"
        );
    }
}

/// A frame was stored in the dead-letter stream and acked off the main one.
pub struct FrameDeadLettered {
    pub reason: &'static str,
    pub stream_sequence: Option<u64>,
    pub dead_sequence: u64,
    /// JetStream had it already (a redelivery after a crash before the ack).
    pub duplicate: bool,
}

impl InternalEvent for FrameDeadLettered {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = self.reason,
            stage = Stage::DeadLetter.as_str(),
            stream_sequence = self.stream_sequence,
            dead_sequence = self.dead_sequence,
            duplicate = self.duplicate,
            "frame moved to the dead-letter stream"
        );
        m.dead_lettered
            .get_or_create(&[("reason", self.reason)])
            .inc();
    }
}

/// Dead-lettering a frame failed; it stays unacked and comes back.
pub struct DeadLetterFailed<'a> {
    pub reason: &'static str,
    pub stream_sequence: Option<u64>,
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for DeadLetterFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            error_type = "publish",
            stage = Stage::DeadLetter.as_str(),
            reason = self.reason,
            stream_sequence = self.stream_sequence,
            error = %self.error,
            "dead-lettering failed; the frame stays unacked and will be redelivered"
        );
        m.error(Stage::DeadLetter, "publish").inc();
    }
}

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
        tracing::warn!(
            error_type = "rehydration",
            stage = Stage::Ring.as_str(),
            error = %self.error,
            "cannot rebuild the debug ring from the stream; it holds only new events"
        );
        m.error(Stage::Ring, "rehydration").inc();
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

/// A JetStream message could not be progress-acked or NAKed. Progress acks
/// keep JetStream from redelivering during a long insert; a lost NAK only
/// delays redelivery until `ack_wait`.
pub struct AckSignalFailed<'a> {
    /// `progress` or `nak`.
    pub kind: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for AckSignalFailed<'_> {
    fn emit(self, m: &Metrics) {
        let consequence = match self.kind {
            "progress" => "messages may be redelivered to another relay mid-insert",
            _ => "messages return after ack_wait",
        };
        tracing::warn!(
            error_type = self.kind,
            stage = Stage::Ack.as_str(),
            error = %self.error,
            consequence,
            "acknowledgement signal failed"
        );
        m.error(Stage::Ack, self.kind).inc();
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
        tracing::warn!(
            error_type = self.kind,
            stage = Stage::Claim.as_str(),
            error = %self.error,
            "claims stream: continuing without this input"
        );
        m.error(Stage::Claim, self.kind).inc();
    }
}

/// Replaying the stream into the debug ring hit an error and goes on.
pub struct RingReplayFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for RingReplayFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = "replay",
            stage = Stage::Ring.as_str(),
            error = %self.error,
            "debug ring replay error; continuing"
        );
        m.error(Stage::Ring, "replay").inc();
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
        if self.kind == "subscribe" {
            tracing::error!(
                error_type = self.kind,
                stage = Stage::Debug.as_str(),
                error = %self.error,
                "cannot subscribe to debug queries; this relay's ring will not answer"
            );
        } else {
            tracing::warn!(
                error_type = self.kind,
                stage = Stage::Debug.as_str(),
                error = %self.error,
                "cannot answer a debug query"
            );
        }
        m.error(Stage::Debug, self.kind).inc();
    }
}

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
        tracing::warn!(
            error_type = self.kind,
            stage = Stage::Retention.as_str(),
            error = %self.error,
            "retention failed; retrying at the next tick"
        );
        m.error(Stage::Retention, self.kind).inc();
    }
}
