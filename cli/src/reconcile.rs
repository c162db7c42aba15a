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
//! are reported); a frame that a replay supersedes (`Spoor-Replay-Of-Stream-Seq`)
//! is counted as replayed, its replay carries its events. ClickHouse is then
//! asked which unique ids it stores and how often, pruned by project and by
//! each event's own `event_date` (the relay's rule), in chunks.
//!
//! It never writes anywhere and never touches the relays' durable consumer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;
use spoor_core::contract::{dead_letter_header as header, DEAD_STREAM};
use spoor_store::date::event_date;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::clickhouse::{quote, ClickHouse, ClickHouseError};
use crate::connect::{self, ClickHouseOptions, NatsEndpoint, NatsUnreachable};
use crate::stream_read::{self, ReadError};
use crate::window::format_time;

/// Ids per ClickHouse query: about 40 bytes each keeps a query well under
/// the 256 KiB `max_query_size` default.
const IDS_PER_QUERY: usize = 2_000;

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
    pub unique_events: u64,
    /// In-stream duplicates: `accepted_events - unique_events`.
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

impl ReconcileReport {
    /// Every accepted event is stored exactly once or deduped, and every
    /// frame decoded, was dead-lettered, or was replayed.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.undecodable.is_empty()
    }

    /// The gaps in words, one per line; empty when exact.
    pub fn gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        if !self.missing.is_empty() {
            gaps.push(format!(
                "{} accepted event(s) missing from ClickHouse",
                self.missing.len()
            ));
        }
        if !self.duplicated.is_empty() {
            let extra: u64 = self.duplicated.iter().map(|d| d.rows - 1).sum();
            gaps.push(format!(
                "{} event id(s) stored more than once ({extra} extra row(s))",
                self.duplicated.len()
            ));
        }
        if !self.undecodable.is_empty() {
            gaps.push(format!(
                "{} undecodable frame(s) without a dead letter",
                self.undecodable.len()
            ));
        }
        gaps
    }

    /// The human report; lists at most `list_limit` ids per kind.
    pub fn render(&self, list_limit: usize) -> String {
        let mut o = String::new();
        let project = self.project.as_deref().unwrap_or("all projects");
        o.push_str(&format!(
            "window   {} .. {}  stream {}  ({project})\n",
            self.since, self.until, self.stream
        ));
        o.push_str(&format!(
            "frames   {} in window = {} decoded + {} dead-lettered + {} replayed",
            self.frames, self.frames_decoded, self.dead_lettered_frames, self.replayed_frames
        ));
        if self.other_project_frames > 0 {
            o.push_str(&format!(" + {} other projects", self.other_project_frames));
        }
        if !self.undecodable.is_empty() {
            o.push_str(&format!(" + {} UNDECODABLE", self.undecodable.len()));
        }
        o.push('\n');
        o.push_str(&format!(
            "events   accepted {} = inserted {} + deduped {} + dead-lettered ({} frame(s), {} bytes, events unknown)",
            self.accepted_events,
            self.inserted,
            self.deduped,
            self.dead_lettered_frames,
            self.dead_lettered_bytes
        ));
        if !self.missing.is_empty() {
            o.push_str(&format!(" + MISSING {}", self.missing.len()));
        }
        o.push('\n');
        if !self.dead_lettered_by_reason.is_empty() {
            let reasons: Vec<String> = self
                .dead_lettered_by_reason
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            o.push_str(&format!("dead     {}\n", reasons.join(" ")));
        }
        o.push_str(&format!(
            "stored   count() {} rows, uniqExact(event_id) {} for the window's {} unique ids\n",
            self.stored_rows, self.inserted, self.unique_events
        ));
        for r in &self.relays {
            o.push_str(&format!(
                "relay    {} (counters since process start, not windowed): received {} frames / {} events, deduped {}, inserted {}, dead-lettered {}\n",
                r.url, r.messages_received, r.events_received, r.events_deduped, r.rows_inserted, r.dead_lettered
            ));
        }
        if !self.missing.is_empty() {
            o.push_str(&format!(
                "missing  {} event(s){}:\n",
                self.missing.len(),
                limit_note(self.missing.len(), list_limit)
            ));
            for m in self.missing.iter().take(list_limit) {
                o.push_str(&format!(
                    "  {}  project {}  date {}  frame seq {}\n",
                    m.event_id, m.project_id, m.event_date, m.stream_seq
                ));
            }
        }
        if !self.duplicated.is_empty() {
            o.push_str(&format!(
                "duplicated {} id(s){}:\n",
                self.duplicated.len(),
                limit_note(self.duplicated.len(), list_limit)
            ));
            for d in self.duplicated.iter().take(list_limit) {
                o.push_str(&format!(
                    "  {}  project {}  {} rows\n",
                    d.event_id, d.project_id, d.rows
                ));
            }
        }
        for u in self.undecodable.iter().take(list_limit) {
            o.push_str(&format!(
                "undecodable frame seq {} ({}): {} and no dead letter\n",
                u.stream_seq, u.reason, u.detail
            ));
        }
        match self.gaps().as_slice() {
            [] => o.push_str("result   EXACT\n"),
            gaps => o.push_str(&format!("result   GAP: {}\n", gaps.join("; "))),
        }
        o
    }
}

fn limit_note(len: usize, limit: usize) -> String {
    if len > limit {
        format!(" (first {limit})")
    } else {
        String::new()
    }
}

/// Where an accepted event should be stored, and the first frame carrying it.
struct Expected {
    project_id: String,
    event_date: u16,
    stream_seq: u64,
}

/// What the events stream says about the window.
#[derive(Default)]
struct Ledger {
    frames: u64,
    frames_decoded: u64,
    dead_lettered_frames: u64,
    dead_lettered_bytes: u64,
    dead_lettered_by_reason: BTreeMap<String, u64>,
    replayed_frames: u64,
    other_project_frames: u64,
    undecodable: Vec<UndecodableFrame>,
    accepted_events: u64,
    unique: HashMap<Uuid, Expected>,
}

pub async fn reconcile(opts: &ReconcileOptions) -> Result<ReconcileReport, ReconcileError> {
    let until = opts.until.unwrap_or_else(OffsetDateTime::now_utc);
    let clickhouse = ClickHouse::new(&opts.clickhouse);
    // Fail on an unreachable ClickHouse before the (longer) stream read.
    clickhouse.check_events_table().await?;
    let client = connect::nats(&opts.nats).await?;
    let js = jetstream::new(client);

    let dead = dead_letters_of(&js, &opts.stream, opts.since).await?;
    let ledger = read_ledger(&js, opts, until, &dead).await?;
    let (stored, missing) = stored_counts(&clickhouse, &ledger.unique).await?;

    let mut duplicated: Vec<DuplicatedEvent> = stored
        .iter()
        .filter(|(_, rows)| **rows > 1)
        .map(|(id, rows)| DuplicatedEvent {
            event_id: *id,
            project_id: ledger
                .unique
                .get(id)
                .map(|e| e.project_id.clone())
                .unwrap_or_default(),
            rows: *rows,
        })
        .collect();
    duplicated.sort();
    let mut relays = Vec::with_capacity(opts.relays.len());
    for url in &opts.relays {
        relays.push(relay_counters(url).await?);
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
        unique_events,
        deduped: ledger.accepted_events - unique_events,
        inserted: stored.len() as u64,
        stored_rows: stored.values().sum(),
        missing,
        duplicated,
        relays,
    })
}

/// Dead letters of `stream`'s frames, by original sequence: (reason, bytes).
/// A frame is dead-lettered after it was stored, so reading from `since` on
/// finds every dead letter of a frame stored in the window.
async fn dead_letters_of(
    js: &jetstream::Context,
    stream: &str,
    since: OffsetDateTime,
) -> Result<HashMap<u64, (String, u64)>, ReconcileError> {
    let mut dead = HashMap::new();
    let read = stream_read::read(js, DEAD_STREAM, Some(since), None, |m| {
        let of_stream = m
            .header(header::ORIGINAL_STREAM)
            .is_none_or(|s| s == stream);
        let seq = m
            .header(header::ORIGINAL_STREAM_SEQ)
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let (true, Some(seq)) = (of_stream, seq) {
            let reason = m.header(header::REASON).unwrap_or("unknown").to_string();
            dead.insert(seq, (reason, m.payload.len() as u64));
        }
    })
    .await;
    match read {
        Ok(()) => Ok(dead),
        // No relay with dead-letter support has run: there are none.
        Err(ReadError::NotFound { .. }) => Ok(dead),
        Err(e) => Err(e.into()),
    }
}

async fn read_ledger(
    js: &jetstream::Context,
    opts: &ReconcileOptions,
    until: OffsetDateTime,
    dead: &HashMap<u64, (String, u64)>,
) -> Result<Ledger, ReconcileError> {
    // Two passes over the window: replays may come after the frames they
    // supersede, so collect the superseded sequences first. The first pass
    // carries payloads too; keeping them avoids a second read.
    let mut frames = Vec::new();
    let mut superseded = HashSet::new();
    stream_read::read(js, &opts.stream, Some(opts.since), Some(until), |m| {
        if let Some(seq) = m
            .header(header::REPLAY_OF_STREAM_SEQ)
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            superseded.insert(seq);
        }
        frames.push((m.seq, m.payload));
    })
    .await?;

    let mut ledger = Ledger::default();
    for (seq, payload) in frames {
        ledger.frames += 1;
        if let Some((reason, bytes)) = dead.get(&seq) {
            ledger.dead_lettered_frames += 1;
            ledger.dead_lettered_bytes += bytes;
            *ledger
                .dead_lettered_by_reason
                .entry(reason.clone())
                .or_default() += 1;
            continue;
        }
        if superseded.contains(&seq) {
            ledger.replayed_frames += 1;
            continue;
        }
        // A message is one frame or a bundle of frames (one per request an
        // edge link coalesced); each frame is counted on its own.
        let batches = match spoor_core::decode_message(&payload, opts.max_frame_bytes) {
            Ok(batches) => batches,
            Err(e) => {
                ledger.undecodable.push(UndecodableFrame {
                    stream_seq: seq,
                    reason: e.kind(),
                    detail: e.to_string(),
                });
                continue;
            }
        };
        for batch in batches {
            if opts
                .project
                .as_ref()
                .is_some_and(|p| *p != batch.project_id)
            {
                ledger.other_project_frames += 1;
                continue;
            }
            ledger.frames_decoded += 1;
            for event in batch.events {
                ledger.accepted_events += 1;
                ledger
                    .unique
                    .entry(event.event_id)
                    .or_insert_with(|| Expected {
                        project_id: batch.project_id.clone(),
                        event_date: event_date(event.ts_ms),
                        stream_seq: seq,
                    });
            }
        }
    }
    Ok(ledger)
}

/// Rows per stored id (only ids found), and the accepted ids not found.
async fn stored_counts(
    clickhouse: &ClickHouse,
    unique: &HashMap<Uuid, Expected>,
) -> Result<(HashMap<Uuid, u64>, Vec<MissingEvent>), ReconcileError> {
    // Group by (project, day): each query then reads one partition of one
    // project's key range.
    let mut groups: BTreeMap<(&str, u16), Vec<Uuid>> = BTreeMap::new();
    for (id, e) in unique {
        groups
            .entry((e.project_id.as_str(), e.event_date))
            .or_default()
            .push(*id);
    }
    let mut stored = HashMap::with_capacity(unique.len());
    for ((project, day), ids) in &groups {
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|id| format!("'{id}'")).collect();
            let sql = format!(
                "SELECT toString(event_id), count() FROM events \
                 WHERE project_id = {} AND event_date = toDate({}) AND event_id IN ({}) \
                 GROUP BY event_id FORMAT TabSeparated",
                quote(project),
                quote(&date_text(*day)),
                list.join(",")
            );
            let answer = clickhouse.query(&sql).await?;
            for line in answer.lines().filter(|l| !l.is_empty()) {
                let (id, rows) = line
                    .split_once('\t')
                    .ok_or_else(|| ClickHouseError::Parse(line.to_string()))?;
                let id: Uuid = id
                    .parse()
                    .map_err(|_| ClickHouseError::Parse(line.to_string()))?;
                let rows: u64 = rows
                    .trim()
                    .parse()
                    .map_err(|_| ClickHouseError::Parse(line.to_string()))?;
                stored.insert(id, rows);
            }
        }
    }
    let mut missing: Vec<MissingEvent> = unique
        .iter()
        .filter(|(id, _)| !stored.contains_key(id))
        .map(|(id, e)| MissingEvent {
            event_id: *id,
            project_id: e.project_id.clone(),
            event_date: date_text(e.event_date),
            stream_seq: e.stream_seq,
        })
        .collect();
    missing.sort_by_key(|m| (m.stream_seq, m.event_id));
    Ok((stored, missing))
}

/// A ClickHouse `Date` (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn date_text(days: u16) -> String {
    let date = time::Date::from_calendar_date(1970, time::Month::January, 1)
        .ok()
        .and_then(|epoch| epoch.checked_add(time::Duration::days(i64::from(days))));
    match date {
        Some(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        None => "1970-01-01".to_string(),
    }
}

async fn relay_counters(base: &str) -> Result<RelayCounters, ReconcileError> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let fail = |message: String| ReconcileError::RelayMetrics {
        url: url.clone(),
        message,
    };
    let body = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| fail(e.to_string()))?
        .get(&url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?
        .text()
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(parse_relay_counters(base, &body))
}

/// The relay counters out of a Prometheus text page (absent ones are 0).
pub fn parse_relay_counters(url: &str, metrics: &str) -> RelayCounters {
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let rest = if rest.starts_with('{') {
                    &rest[rest.find('}')? + 1..]
                } else {
                    rest
                };
                rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
            })
            .sum()
    };
    RelayCounters {
        url: url.to_string(),
        messages_received: sum("spoor_relay_messages_received_total"),
        events_received: sum("spoor_relay_events_received_total"),
        events_deduped: sum("spoor_relay_events_deduped_total"),
        rows_inserted: sum("spoor_relay_rows_inserted_total"),
        dead_lettered: sum("spoor_relay_dead_lettered_total"),
    }
}

#[cfg(test)]
mod tests;
