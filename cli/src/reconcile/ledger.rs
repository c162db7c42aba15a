//! The accounting of `spoor reconcile`, pure: the window's frames (with
//! the dead letters and replays that explain some of them) become the
//! accepted events, each expected once in ClickHouse under its project and
//! its own `event_date` (the relay's rule); ClickHouse's row counts per id
//! then name the missing and the duplicated ones. No I/O here.

use std::collections::{BTreeMap, HashMap, HashSet};

use spoor_store::date::event_date;
use uuid::Uuid;

use super::{DuplicatedEvent, MissingEvent, UndecodableFrame};

/// Where an accepted event should be stored, and the first frame carrying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub project_id: String,
    pub event_date: u16,
    pub stream_seq: u64,
}

/// What the events stream says about the window.
#[derive(Debug, Default)]
pub struct Ledger {
    pub frames: u64,
    pub frames_decoded: u64,
    pub dead_lettered_frames: u64,
    pub dead_lettered_bytes: u64,
    pub dead_lettered_by_reason: BTreeMap<String, u64>,
    pub replayed_frames: u64,
    pub other_project_frames: u64,
    pub undecodable: Vec<UndecodableFrame>,
    pub accepted_events: u64,
    /// Every accepted event id, where it belongs and its first frame;
    /// without the dead-lettered ones.
    pub unique: HashMap<Uuid, Expected>,
    /// Ids of accepted events held by dead letters of rows (not expected in
    /// ClickHouse until replayed).
    pub dead_events: HashSet<Uuid>,
    pub dead_events_by_reason: BTreeMap<String, u64>,
}

impl Ledger {
    /// The ledger of the window's frames, `(stream seq, payload)` in
    /// stream order: a frame with a dead letter in `dead` (seq -> reason,
    /// bytes) counts as dead-lettered, one in `superseded` as replayed (its
    /// replay carries its events), one that does not decode (up to
    /// `max_frame_bytes` inflated) as undecodable; with `project`, frames
    /// of other projects are only counted.
    pub fn build<P: AsRef<[u8]>>(
        frames: impl IntoIterator<Item = (u64, P)>,
        superseded: &HashSet<u64>,
        dead: &HashMap<u64, (String, u64)>,
        project: Option<&str>,
        max_frame_bytes: usize,
    ) -> Ledger {
        let none = HashMap::new();
        Ledger::build_with_rows(frames, superseded, dead, &none, project, max_frame_bytes)
    }

    /// [`Ledger::build`], where `dead_events` (event id -> reason) are the
    /// events of dead letters of rows (`Spoor-Dead-Rows`: rows of a frame
    /// that decoded, the rest of which was inserted): such an event counts
    /// as dead-lettered, not as expected in ClickHouse.
    pub fn build_with_rows<P: AsRef<[u8]>>(
        frames: impl IntoIterator<Item = (u64, P)>,
        superseded: &HashSet<u64>,
        dead: &HashMap<u64, (String, u64)>,
        dead_events: &HashMap<Uuid, String>,
        project: Option<&str>,
        max_frame_bytes: usize,
    ) -> Ledger {
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
            let batches = match spoor_core::decode_message(payload.as_ref(), max_frame_bytes) {
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
                if project.is_some_and(|p| p != batch.project_id) {
                    ledger.other_project_frames += 1;
                    continue;
                }
                ledger.frames_decoded += 1;
                for event in batch.events {
                    ledger.accepted_events += 1;
                    if let Some(reason) = dead_events.get(&event.event_id) {
                        if ledger.dead_events.insert(event.event_id) {
                            *ledger
                                .dead_events_by_reason
                                .entry(reason.clone())
                                .or_default() += 1;
                        }
                        continue;
                    }
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
        ledger
    }

    /// The ids to ask ClickHouse about, grouped by (project, day): each
    /// query then reads one partition of one project's key range.
    pub fn by_partition(&self) -> BTreeMap<(&str, u16), Vec<Uuid>> {
        let mut groups: BTreeMap<(&str, u16), Vec<Uuid>> = BTreeMap::new();
        for (id, e) in &self.unique {
            groups
                .entry((e.project_id.as_str(), e.event_date))
                .or_default()
                .push(*id);
        }
        groups
    }
}

/// The accepted events ClickHouse does not store (`stored`: rows per id
/// found), in frame order.
pub fn missing(stored: &HashMap<Uuid, u64>, unique: &HashMap<Uuid, Expected>) -> Vec<MissingEvent> {
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
    missing
}

/// The ids ClickHouse stores more than once, sorted.
pub fn duplicated(
    stored: &HashMap<Uuid, u64>,
    unique: &HashMap<Uuid, Expected>,
) -> Vec<DuplicatedEvent> {
    let mut duplicated: Vec<DuplicatedEvent> = stored
        .iter()
        .filter(|(_, rows)| **rows > 1)
        .map(|(id, rows)| DuplicatedEvent {
            event_id: *id,
            project_id: unique
                .get(id)
                .map(|e| e.project_id.clone())
                .unwrap_or_default(),
            rows: *rows,
        })
        .collect();
    duplicated.sort();
    duplicated
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
