//! `spoor reconcile`: proves, for a time window, that every event the edge
//! accepted is accounted for:
//!
//! ```text
//! accepted events = inserted + deduped + missing        (missing must be 0)
//! frames in window = decoded + dead-lettered + replayed  (+ undecodable, must be 0)
//! ```
//!
//! The events stream is the ledger: limits retention keeps every frame for
//! its `max_age` whether acked or not. Frames stored in the window are read
//! with an ephemeral ordered consumer and decoded; their events are the
//! accepted events (with duplicates), the rest of the unique ids are
//! in-stream duplicates (`deduped`). A frame with a dead letter in
//! `SPOOR_DEAD` is dead-lettered (its events are unknown: frames and bytes
//! are reported); the events of a dead letter of rows (`Spoor-Dead-Rows`:
//! rows of a decoded frame the relay would not insert) are known and count
//! as dead-lettered events, the rest of their frame as usual; a frame that a replay supersedes (`Spoor-Replay-Of-Stream-Seq`)
//! is counted as replayed, its replay carries its events. ClickHouse is then
//! asked which unique ids it stores and how often, pruned by project and by
//! each event's own `event_date` (the relay's rule), in chunks.
//!
//! It never writes anywhere and never touches the relays' durable consumer.
//!
//! Layout: [`ledger`] holds the pure accounting (frames to expected events,
//! stored counts to missing and duplicated ids, dates) and is unit-tested
//! without servers; `render` turns a report into words; `io` does every
//! read (the streams through NATS, ClickHouse over HTTP, relays'
//! `/metrics`, parsed with `spoor_core::prometheus`).

use std::collections::BTreeMap;

use async_nats::jetstream;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::clickhouse::{ClickHouse, ClickHouseError};
use crate::connect::{self, ClickHouseOptions, NatsEndpoint, NatsUnreachable};
use crate::window::format_time;
use spoor_runtime::stream_read::ReadError;

mod io;
pub mod ledger;
mod render;

pub use io::parse_relay_counters;
pub use ledger::date_text;
use ledger::Ledger;

#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// NATS and the ops role's credentials.
    pub nats: NatsEndpoint,
    /// The events stream (`SPOOR_EVENTS`).
    pub stream: String,
    pub clickhouse: ClickHouseOptions,
    /// Frames stored by JetStream at or after this instant...
    pub since: OffsetDateTime,
    /// ...and before this one (None: up to the stream's end at the start).
    pub until: Option<OffsetDateTime>,
    /// Only this project's events (dead-lettered frames cannot be attributed
    /// to a project and are always counted).
    pub project: Option<String>,
    /// Largest uncompressed frame to inflate; frames over it without a dead
    /// letter are reported as undecodable.
    pub max_frame_bytes: usize,
    /// Relay base URLs whose `/metrics` counters to show alongside.
    pub relays: Vec<String>,
}

impl ReconcileOptions {
    pub fn new(
        nats: impl Into<NatsEndpoint>,
        clickhouse: ClickHouseOptions,
        since: OffsetDateTime,
    ) -> ReconcileOptions {
        ReconcileOptions {
            nats: nats.into(),
            stream: spoor_core::contract::DEFAULT_EVENTS_STREAM.to_string(),
            clickhouse,
            since,
            until: None,
            project: None,
            max_frame_bytes: 64 * 1024 * 1024,
            relays: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Nats(#[from] NatsUnreachable),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("cannot read relay metrics from {url}: {message}")]
    RelayMetrics { url: String, message: String },
}

/// An accepted event that is not in ClickHouse.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingEvent {
    pub event_id: Uuid,
    pub project_id: String,
    /// `YYYY-MM-DD`, the partition it belongs in.
    pub event_date: String,
    /// The first frame that carried it.
    pub stream_seq: u64,
}

/// An event id stored in more than one row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct DuplicatedEvent {
    pub event_id: Uuid,
    pub project_id: String,
    pub rows: u64,
}

/// A frame that does not decode and has no dead letter.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UndecodableFrame {
    pub stream_seq: u64,
    pub reason: &'static str,
    pub detail: String,
}

/// A relay's counters since its process started (not windowed).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelayCounters {
    pub url: String,
    pub messages_received: f64,
    pub events_received: f64,
    pub events_deduped: f64,
    pub rows_inserted: f64,
    pub dead_lettered: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReconcileReport {
    pub stream: String,
    pub since: String,
    pub until: String,
    pub project: Option<String>,
    /// Frames stored in the window (all projects).
    pub frames: u64,
    /// Frames decoded (of the project, when one is given).
    pub frames_decoded: u64,
    pub dead_lettered_frames: u64,
    pub dead_lettered_bytes: u64,
    /// Dead-lettered frames by reason.
    pub dead_lettered_by_reason: BTreeMap<String, u64>,
    /// Frames superseded by a replay of their dead letter.
    pub replayed_frames: u64,
    /// Frames of other projects (with `project` set).
    pub other_project_frames: u64,
    pub undecodable: Vec<UndecodableFrame>,
    /// Events in decoded frames, duplicates included.
    pub accepted_events: u64,
    /// Unique events held by dead letters of rows (an unknown project, rows
    /// ClickHouse refused), not expected in ClickHouse until replayed.
    pub dead_lettered_events: u64,
    pub dead_lettered_events_by_reason: BTreeMap<String, u64>,
    pub unique_events: u64,
    /// In-stream duplicates: `accepted_events - unique_events -
    /// dead_lettered_events`.
    pub deduped: u64,
    /// Unique ids found in ClickHouse.
    pub inserted: u64,
    /// Rows ClickHouse holds for those ids (`count()`; equals `inserted`,
    /// i.e. `uniqExact(event_id)`, when nothing is stored twice).
    pub stored_rows: u64,
    pub missing: Vec<MissingEvent>,
    pub duplicated: Vec<DuplicatedEvent>,
    pub relays: Vec<RelayCounters>,
}

pub async fn reconcile(opts: &ReconcileOptions) -> Result<ReconcileReport, ReconcileError> {
    let until = opts.until.unwrap_or_else(OffsetDateTime::now_utc);
    let clickhouse = ClickHouse::new(&opts.clickhouse);
    // Fail on an unreachable ClickHouse before the (longer) stream read.
    clickhouse.check_events_table().await?;
    let client = connect::nats(&opts.nats).await?;
    let js = jetstream::new(client);

    let dead = io::dead_letters_of(&js, &opts.stream, opts.since, opts.max_frame_bytes).await?;
    let (frames, superseded) = io::read_frames(&js, opts, until).await?;
    let ledger = Ledger::build_with_rows(
        frames,
        &superseded,
        &dead.frames,
        &dead.events,
        opts.project.as_deref(),
        opts.max_frame_bytes,
    );
    let stored = io::stored_counts(&clickhouse, &ledger).await?;
    let missing = ledger::missing(&stored, &ledger.unique);
    let duplicated = ledger::duplicated(&stored, &ledger.unique);
    let mut relays = Vec::with_capacity(opts.relays.len());
    for url in &opts.relays {
        relays.push(io::relay_counters(url).await?);
    }
    let unique_events = ledger.unique.len() as u64;
    Ok(ReconcileReport {
        stream: opts.stream.clone(),
        since: format_time(opts.since),
        until: format_time(until),
        project: opts.project.clone(),
        frames: ledger.frames,
        frames_decoded: ledger.frames_decoded,
        dead_lettered_frames: ledger.dead_lettered_frames,
        dead_lettered_bytes: ledger.dead_lettered_bytes,
        dead_lettered_by_reason: ledger.dead_lettered_by_reason,
        replayed_frames: ledger.replayed_frames,
        other_project_frames: ledger.other_project_frames,
        undecodable: ledger.undecodable,
        accepted_events: ledger.accepted_events,
        dead_lettered_events: ledger.dead_events.len() as u64,
        dead_lettered_events_by_reason: ledger.dead_events_by_reason,
        unique_events,
        deduped: ledger.accepted_events - unique_events - ledger.dead_events.len() as u64,
        inserted: stored.len() as u64,
        stored_rows: stored.values().sum(),
        missing,
        duplicated,
        relays,
    })
}

#[cfg(test)]
mod tests;
