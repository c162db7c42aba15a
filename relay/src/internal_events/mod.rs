//! Named things that happen inside the relay. Each event writes its tracing
//! line and bumps its metrics in one `emit`, so a log line never exists
//! without its count and the other way round (Vector's `internal_events`).
//!
//! Events carry only what they report; they must not make decisions or do
//! I/O. Every failure names its [`Stage`] and an `error_type`, in its log
//! line and in `spoor_relay_errors_total{stage, error_type}`. One file per
//! part of the relay: `source`, `ownership`, `dedup`, `sink`, `refused`, `debug`,
//! `retention`.

use crate::metrics::Metrics;

mod debug;
mod dedup;
mod ownership;
mod refused;
mod retention;
mod sink;
mod source;

pub use debug::*;
pub use dedup::*;
pub use ownership::*;
pub use refused::*;
pub use retention::*;
pub use sink::*;
pub use source::*;

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
    /// Partition leases: renewing, acquiring, releasing, and rebuilding a
    /// partition's dedup window.
    Lease,
    /// Checking what a decoded frame may insert (its project).
    Validate,
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
            Stage::Lease => "lease",
            Stage::Validate => "validate",
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

/// The common form of a failure with nothing to report but its error: one
/// warning carrying `stage` and `error_type`, and one count in
/// `spoor_relay_errors_total` under the same labels.
fn failed(
    m: &Metrics,
    stage: Stage,
    error_type: &'static str,
    error: &dyn std::fmt::Display,
    what: &str,
) {
    tracing::warn!(stage = stage.as_str(), error_type, error = %error, "{what}");
    m.error(stage, error_type).inc();
}
