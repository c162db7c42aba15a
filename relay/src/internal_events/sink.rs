//! Buffering, inserting and acknowledging.

use std::time::Duration;

use crate::batcher::FlushReason;
use crate::metrics::Metrics;

use super::{failed, InternalEvent, Stage};

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

/// The pipeline loop finished a piece of work: `stage` is `receive` (one
/// fetched message), `decode` (its frame decode, part of `receive`),
/// `insert` (one insert attempt) or `acknowledge` (what follows a
/// successful insert).
pub struct PipelineStageTimed {
    pub stage: &'static str,
    pub elapsed: Duration,
}

impl InternalEvent for PipelineStageTimed {
    fn emit(self, m: &Metrics) {
        m.pipeline_seconds
            .get_or_create(&[("stage", self.stage)])
            .inc_by(self.elapsed.as_secs_f64());
    }
}

/// An insert attempt failed (or the dead letters of the rows it refused
/// could not be stored); the buffer is kept and retried.
pub struct InsertFailed<'a> {
    /// `clickhouse`, or `dead_letter` when the refused rows' dead letters
    /// failed.
    pub error_type: &'static str,
    pub error: &'a dyn std::error::Error,
    pub rows: usize,
    pub attempt: u32,
    pub retry_in: Duration,
}

impl InternalEvent for InsertFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = self.error_type,
            stage = Stage::Insert.as_str(),
            rows = self.rows,
            attempt = self.attempt,
            retry_in_ms = self.retry_in.as_millis() as u64,
            error = %self.error,
            "ClickHouse insert failed; keeping the buffer and retrying (fetching paused)"
        );
        m.error(Stage::Insert, self.error_type).inc();
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
        let what = match self.kind {
            "progress" => {
                "progress acks failed; messages may be redelivered to another relay mid-insert"
            }
            _ => "NAKs failed; messages return after ack_wait",
        };
        failed(m, Stage::Ack, self.kind, self.error, what);
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

/// The task inserting a batch ended without an outcome (it panicked): its
/// messages are redelivered after `ack_wait`.
pub struct FlushTaskFailed<'a> {
    pub rows: usize,
    pub messages: usize,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for FlushTaskFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.error(Stage::Insert, "flush_task").inc();
        tracing::error!(
            error_type = "flush_task",
            stage = Stage::Insert.as_str(),
            rows = self.rows,
            messages = self.messages,
            error = %self.error,
            "the insert task failed; its messages will be redelivered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_time_adds_up_by_stage() {
        let m = Metrics::new();
        for (stage, ms) in [("insert", 1_500), ("receive", 250), ("insert", 500)] {
            PipelineStageTimed {
                stage,
                elapsed: Duration::from_millis(ms),
            }
            .emit(&m);
        }
        let page = spoor_core::prometheus::Metrics::parse(&m.encode()).unwrap();
        let seconds = |stage: &str| {
            page.get(&format!(
                "spoor_relay_pipeline_seconds_total{{stage=\"{stage}\"}}"
            ))
        };
        assert_eq!(seconds("insert"), Some(2.0));
        assert_eq!(seconds("receive"), Some(0.25));
        assert_eq!(seconds("acknowledge"), None);
    }
}
