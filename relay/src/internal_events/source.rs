//! Pulling, decoding and dead-lettering frames.

use crate::metrics::Metrics;

use super::{failed, InternalEvent, Stage};

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

/// A pull request failed.
pub struct FetchFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for FetchFailed<'_> {
    fn emit(self, m: &Metrics) {
        failed(
            m,
            Stage::Fetch,
            "fetch",
            self.error,
            "JetStream fetch failed",
        );
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

/// Stream info was polled: how full the events stream is.
pub struct StreamFullnessPolled<'a> {
    pub stream: &'a str,
    pub usage: spoor_core::fullness::StreamUsage,
    /// The health threshold, for the log line when it is crossed.
    pub degraded_at: f64,
}

impl InternalEvent for StreamFullnessPolled<'_> {
    fn emit(self, m: &Metrics) {
        let ratio = self.usage.ratio();
        if ratio >= self.degraded_at {
            tracing::warn!(
                stream = self.stream,
                fullness = ratio,
                bytes = self.usage.bytes,
                max_bytes = self.usage.max_bytes,
                messages = self.usage.messages,
                max_msgs = self.usage.max_msgs,
                degraded_at = self.degraded_at,
                "events stream filling up: at 1 it refuses new frames"
            );
        } else {
            tracing::trace!(stream = self.stream, fullness = ratio, "stream info polled");
        }
        for (limit, value) in [
            ("bytes", self.usage.bytes_ratio()),
            ("messages", self.usage.msgs_ratio()),
        ] {
            match value {
                Some(v) => {
                    m.stream_fullness_ratio
                        .get_or_create(&[("limit", limit)])
                        .set(v);
                }
                None => {
                    m.stream_fullness_ratio.remove(&[("limit", limit)]);
                }
            }
        }
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
