//! Rows the relay will not insert: projects it does not serve, rows
//! ClickHouse refuses, and their dead letters.

use crate::metrics::Metrics;

use super::{InternalEvent, Stage};

/// Frames of a decoded message name a project the relay does not serve
/// (an empty id, or one not in `--projects`); they go to the dead letters.
pub struct ProjectRefused<'a> {
    pub project: &'a str,
    pub frames: usize,
    pub events: usize,
    pub subject: &'a str,
    pub stream_sequence: Option<u64>,
}

impl InternalEvent for ProjectRefused<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = "unknown_project",
            stage = Stage::Validate.as_str(),
            project = self.project,
            frames = self.frames,
            events = self.events,
            subject = self.subject,
            stream_sequence = self.stream_sequence,
            "frames of a project this relay does not serve; moving them to the dead-letter stream"
        );
        m.error(Stage::Validate, "unknown_project").inc();
    }
}

/// An insert was refused for what some rows hold, and bisection found them;
/// the other rows are stored.
pub struct RowsRefused<'a> {
    /// Rows in the insert.
    pub rows: usize,
    pub refused: usize,
    /// Inserts the isolation took (1 is the first, refused one).
    pub inserts: u32,
    /// The server's text for the first refused row.
    pub error: &'a str,
}

impl InternalEvent for RowsRefused<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = "rows_rejected",
            stage = Stage::Insert.as_str(),
            rows = self.rows,
            refused = self.refused,
            inserts = self.inserts,
            error = self.error,
            "ClickHouse refused rows; inserted the others, moving the refused ones to the dead-letter stream"
        );
        m.error(Stage::Insert, "rows_rejected").inc();
        m.rows_rejected.inc_by(self.refused as u64);
        m.isolation_inserts.inc_by(u64::from(self.inserts));
    }
}

/// A dead letter of rows was stored (PubAck received); its original is
/// acked with its other rows.
pub struct RowsDeadLettered {
    pub reason: &'static str,
    pub rows: usize,
    pub stream_sequence: Option<u64>,
    pub dead_sequence: u64,
    /// JetStream had it already (dead-lettered again after a redelivery).
    pub duplicate: bool,
}

impl InternalEvent for RowsDeadLettered {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            error_type = self.reason,
            stage = Stage::DeadLetter.as_str(),
            rows = self.rows,
            stream_sequence = self.stream_sequence,
            dead_sequence = self.dead_sequence,
            duplicate = self.duplicate,
            "rows moved to the dead-letter stream"
        );
        m.dead_lettered
            .get_or_create(&[("reason", self.reason)])
            .inc();
        m.rows_dead_lettered
            .get_or_create(&[("reason", self.reason)])
            .inc_by(self.rows as u64);
    }
}
