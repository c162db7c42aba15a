//! The device debug lookup's contract: what a debug engineer asks ("this
//! device's, or this user's, events over the last hour"), what each relay's
//! debug ring answers, and the pure merge of those answers into one list.
//!
//! Shared by the relays (which answer and gather), the `spoor` CLI and any
//! later aggregator, so the request is validated in one place and every
//! caller merges answers the same way. Like the rest of core it does no I/O
//! and reads no clock: `now_ms` comes in as an argument.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest device or user id a query may carry, in bytes: the edge's own
/// limit on `anonymous_id`/`user_id` (README: "≤ 256 bytes").
pub const MAX_ID_BYTES: usize = 256;
/// Longest project id a query may carry, in bytes.
pub const MAX_PROJECT_BYTES: usize = 128;
/// Widest window a ring lookup may ask for: a day. The ring keeps an hour
/// by default; a wider window is accepted (a relay configured with a longer
/// ring can answer it) but not an unbounded one. What the relays, their
/// HTTP endpoint and `spoor debug device` accept ([`DeviceQuery::validate`]).
pub const MAX_WINDOW_MS: i64 = 24 * 3_600_000;
/// Widest window a read of the device tables in ClickHouse may ask for:
/// the `events` table's 90 days (the device tables keep fewer, so a longer
/// window would only read nothing). Checked with
/// [`DeviceQuery::validate_within`] by `spoor_store::device`.
pub const MAX_TABLE_WINDOW_MS: i64 = 90 * 86_400_000;
/// Default window when the caller names none.
pub const DEFAULT_WINDOW_MS: i64 = 3_600_000;
/// Most events one lookup returns.
pub const MAX_LIMIT: usize = 10_000;
/// Default number of events returned.
pub const DEFAULT_LIMIT: usize = 2_000;

/// Whose events a lookup asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "id")]
pub enum Subject {
    /// A device key: the `anonymous_id`, or the `user_id` of events that
    /// carry no `anonymous_id` (the key events are routed by).
    Device(String),
    /// Every device a `user_id` was seen on, with all their events.
    User(String),
}

impl Subject {
    pub fn id(&self) -> &str {
        match self {
            Subject::Device(id) | Subject::User(id) => id,
        }
    }
}

/// One validated lookup. Build it with [`DeviceQuery::new`] (or
/// [`DeviceQuery::from_http`]); a relay re-validates what it receives over
/// NATS with [`DeviceQuery::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceQuery {
    pub subject: Subject,
    /// Only events of this project; `None` means every project.
    pub project_id: Option<String>,
    /// Window on the edge's `received_at_ms`, inclusive start, exclusive end:
    /// what arrived in it, late events a client queued and sent now
    /// included. The one clock of the lookup: the rings hold events by it
    /// and the device tables in ClickHouse are read on it too
    /// (`spoor_store::device` says how).
    pub since_ms: i64,
    pub until_ms: i64,
    /// Most events in the merged answer.
    pub limit: usize,
}

/// Why a query was refused; every variant is the caller's to fix (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the id is empty")]
    EmptyId,
    #[error("the id is {len} bytes; ids are at most {MAX_ID_BYTES} bytes")]
    IdTooLong { len: usize },
    #[error("the id contains a control character (at byte {at}); ids are printable text")]
    IdControlChar { at: usize },
    #[error("the id is not valid percent-encoded UTF-8")]
    IdEncoding,
    #[error("the project id is {len} bytes; project ids are at most {MAX_PROJECT_BYTES} bytes")]
    ProjectTooLong { len: usize },
    #[error("the project id contains a control character or is empty")]
    ProjectInvalid,
    #[error("`{0}` is not a duration like 90s, 15m, 1h or 3600000ms")]
    BadDuration(String),
    #[error("the window is empty or reversed (since {since_ms} >= until {until_ms})")]
    EmptyWindow { since_ms: i64, until_ms: i64 },
    #[error(
        "the window is {ms} ms wide; at most {max_ms} ms ({}h) may be asked for",
        .max_ms / 3_600_000
    )]
    WindowTooWide { ms: i64, max_ms: i64 },
    #[error("`{0}` is not a limit between 1 and {MAX_LIMIT}")]
    BadLimit(String),
    #[error("unknown query parameter `{0}`; use last, project, user_id, limit")]
    UnknownParameter(String),
    #[error("give a device id in the path or a user_id parameter, not both")]
    DeviceAndUser,
}

impl QueryError {
    /// A stable machine-readable label (JSON `error` field, metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::EmptyId => "empty_id",
            QueryError::IdTooLong { .. } => "id_too_long",
            QueryError::IdControlChar { .. } => "id_control_char",
            QueryError::IdEncoding => "id_encoding",
            QueryError::ProjectTooLong { .. } | QueryError::ProjectInvalid => "invalid_project",
            QueryError::BadDuration(_) => "invalid_duration",
            QueryError::EmptyWindow { .. } => "empty_window",
            QueryError::WindowTooWide { .. } => "window_too_wide",
            QueryError::BadLimit(_) => "invalid_limit",
            QueryError::UnknownParameter(_) => "unknown_parameter",
            QueryError::DeviceAndUser => "device_and_user",
        }
    }
}

/// Checks an id: non-empty, at most [`MAX_ID_BYTES`], no control characters.
pub fn check_id(id: &str) -> Result<(), QueryError> {
    if id.is_empty() {
        return Err(QueryError::EmptyId);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(QueryError::IdTooLong { len: id.len() });
    }
    if let Some((at, _)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(QueryError::IdControlChar { at });
    }
    Ok(())
}

fn check_project(project: &str) -> Result<(), QueryError> {
    if project.len() > MAX_PROJECT_BYTES {
        return Err(QueryError::ProjectTooLong { len: project.len() });
    }
    if project.is_empty() || project.chars().any(char::is_control) {
        return Err(QueryError::ProjectInvalid);
    }
    Ok(())
}

impl DeviceQuery {
    /// The last `last_ms` up to `now_ms`, validated.
    pub fn new(
        subject: Subject,
        project_id: Option<String>,
        last_ms: i64,
        now_ms: i64,
        limit: usize,
    ) -> Result<DeviceQuery, QueryError> {
        let q = DeviceQuery {
            subject,
            project_id,
            since_ms: now_ms.saturating_sub(last_ms),
            until_ms: now_ms.saturating_add(1),
            limit,
        };
        q.validate()?;
        Ok(q)
    }

    /// Checks every field, the window against the rings' [`MAX_WINDOW_MS`];
    /// a relay calls it on every query it receives.
    pub fn validate(&self) -> Result<(), QueryError> {
        self.validate_within(MAX_WINDOW_MS)
    }

    /// [`DeviceQuery::validate`] with another cap on the window's width
    /// (a read of the device tables takes [`MAX_TABLE_WINDOW_MS`]).
    pub fn validate_within(&self, max_window_ms: i64) -> Result<(), QueryError> {
        check_id(self.subject.id())?;
        if let Some(p) = &self.project_id {
            check_project(p)?;
        }
        if self.since_ms >= self.until_ms {
            return Err(QueryError::EmptyWindow {
                since_ms: self.since_ms,
                until_ms: self.until_ms,
            });
        }
        let width = self.until_ms.saturating_sub(self.since_ms);
        // One millisecond of slack: `new` makes the end exclusive.
        if width > max_window_ms.saturating_add(1) {
            return Err(QueryError::WindowTooWide {
                ms: width,
                max_ms: max_window_ms,
            });
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(QueryError::BadLimit(self.limit.to_string()));
        }
        Ok(())
    }

    /// A query from an HTTP request: `path_id` is the percent-encoded
    /// segment after `/debug/device/` (empty when absent) and `query` the
    /// raw query string (`last=1h&project=p&user_id=u&limit=100`).
    pub fn from_http(path_id: &str, query: &str, now_ms: i64) -> Result<DeviceQuery, QueryError> {
        let device = if path_id.is_empty() {
            None
        } else {
            Some(percent_decode(path_id)?)
        };
        let (mut last_ms, mut project, mut user, mut limit) =
            (DEFAULT_WINDOW_MS, None, None, DEFAULT_LIMIT);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match key {
                "last" => last_ms = parse_duration_ms(&value)?,
                "project" => project = Some(value),
                "user_id" => user = Some(value),
                "limit" => {
                    limit = value
                        .parse()
                        .map_err(|_| QueryError::BadLimit(truncated(&value)))?
                }
                other => {
                    return Err(QueryError::UnknownParameter(truncated(
                        &percent_decode(other).unwrap_or_default(),
                    )))
                }
            }
        }
        let subject = match (device, user) {
            (Some(_), Some(_)) => return Err(QueryError::DeviceAndUser),
            (Some(d), None) => Subject::Device(d),
            (None, Some(u)) => Subject::User(u),
            (None, None) => return Err(QueryError::EmptyId),
        };
        DeviceQuery::new(subject, project, last_ms, now_ms, limit)
    }
}

/// At most 64 bytes of a caller's text, for an error message.
fn truncated(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

/// `90s`, `15m`, `1h`, `2d`, `500ms` → milliseconds (positive, at most
/// [`MAX_WINDOW_MS`] is checked by the query, not here).
pub fn parse_duration_ms(s: &str) -> Result<i64, QueryError> {
    let bad = || QueryError::BadDuration(truncated(s));
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(bad()),
    }
}

/// Decodes `%XX` escapes and `+` (as a space) into UTF-8 text.
pub fn percent_decode(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(QueryError::IdEncoding)?;
                let hex = std::str::from_utf8(hex).map_err(|_| QueryError::IdEncoding)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| QueryError::IdEncoding)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::IdEncoding)
}

/// Where an event is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum EventState {
    /// Decoded and buffered by a relay, not yet confirmed in ClickHouse.
    Pending,
    /// In ClickHouse. `at_ms` is the relay's clock when the insert returned;
    /// `None` when the relay knows it only from the durable consumer's ack
    /// floor (an event replayed at start: acked means inserted).
    Inserted { at_ms: Option<i64> },
}

impl EventState {
    /// Higher is further along; the merge keeps the highest.
    pub fn rank(self) -> u8 {
        match self {
            EventState::Pending => 0,
            EventState::Inserted { at_ms: None } => 1,
            EventState::Inserted { at_ms: Some(_) } => 2,
        }
    }
}

/// The path one event took, each step's time in epoch ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPath {
    /// The client's own `timestamp`, when it sent one.
    pub client_ts_ms: Option<i64>,
    /// The edge's clock when the request arrived.
    pub edge_received_at_ms: i64,
    /// When JetStream stored the frame.
    pub stream_at_ms: i64,
    /// The frame's sequence in the events stream.
    pub stream_seq: u64,
    /// The relay's clock when it decoded the frame; `None` when the event
    /// was rebuilt from the stream at the relay's start.
    pub relay_received_at_ms: Option<i64>,
    #[serde(flatten)]
    pub state: EventState,
}

/// One event as the ring holds it, with its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub event_id: Uuid,
    pub event: String,
    pub project_id: String,
    pub anonymous_id: String,
    pub user_id: String,
    pub session_id: String,
    /// Event time after skew correction.
    pub ts_ms: i64,
    /// The property bag as the client's JSON text.
    pub properties: String,
    pub path: EventPath,
    /// The relay instance whose ring answered with this copy.
    pub relay: String,
}

/// A frame on the device's partition that could not be decoded: its events
/// are unknown, so it "may hold your events". Nothing is invented for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadFrame {
    pub subject: String,
    pub stream_seq: u64,
    /// `DecodeError::kind()`, e.g. `bad_magic`.
    pub reason: String,
    /// When JetStream stored the frame.
    pub stream_at_ms: i64,
}

/// What one relay's ring covers, so a requester can tell "nothing
/// happened" from "the ring does not reach back that far".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingCoverage {
    /// Stream time of the oldest event held, if any.
    pub oldest_stream_ms: Option<i64>,
    pub events_held: u64,
    /// True while the relay is still rebuilding its ring from the stream.
    pub rehydrating: bool,
}

/// One relay's answer, possibly in several parts (NATS caps a message's
/// size). A relay with nothing answers anyway, with empty lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayAnswer {
    /// The relay instance id.
    pub relay: String,
    /// 0-based part number; `last` marks the final one.
    pub part: u32,
    pub last: bool,
    pub events: Vec<DeviceEvent>,
    pub dead_frames: Vec<DeadFrame>,
    pub coverage: RingCoverage,
    /// The relay refused the query (it should not happen: the requester
    /// validates first) or failed to answer.
    pub error: Option<String>,
}

/// A merged lookup: what the requester hands to a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLookup {
    pub query: DeviceQuery,
    /// Relays that answered completely (every part), sorted.
    pub relays: Vec<String>,
    /// Relays from which only some parts arrived before the deadline.
    pub partial_relays: Vec<String>,
    /// Relays that answered with an error, with it.
    pub errors: Vec<(String, String)>,
    /// One entry per event id, by time then event id.
    pub events: Vec<DeviceEvent>,
    /// More events matched than `query.limit`; the newest were kept.
    pub truncated: bool,
    /// Undecodable frames on the partitions of the devices looked up.
    pub dead_frames: Vec<DeadFrame>,
    /// Each answering relay's coverage.
    pub coverage: Vec<(String, RingCoverage)>,
}

impl DeviceLookup {
    /// The part of the query's window the answering rings do not hold, as a
    /// query of its own (same subject, project and limit) for the device
    /// tables: from the query's start up to the earliest receive time every
    /// answering ring covers, or the whole window when no relay answered.
    /// `None` when the rings hold all of it.
    ///
    /// A ring holds events by stream time, which is never before the
    /// edge's receive time: a ring whose oldest event was stored at `S`
    /// holds every event received from `S` on, so the rest of the window
    /// ends at `S`. A ring still rebuilding, or holding nothing, covers
    /// nothing for sure; the widest gap among the rings decides.
    pub fn not_in_rings(&self) -> Option<DeviceQuery> {
        let q = &self.query;
        let reach = if self.relays.is_empty() {
            q.until_ms
        } else {
            self.coverage
                .iter()
                .map(|(_, c)| match (c.rehydrating, c.oldest_stream_ms) {
                    (false, Some(oldest)) => oldest,
                    _ => q.until_ms,
                })
                .max()?
        };
        let until_ms = reach.min(q.until_ms);
        (until_ms > q.since_ms).then(|| DeviceQuery {
            until_ms,
            ..q.clone()
        })
    }
}

/// Which of two copies of one event to keep: the most advanced state, then
/// the one a relay saw live (it knows more of the path), then the lowest
/// relay id so the choice is deterministic.
fn better(a: &DeviceEvent, b: &DeviceEvent) -> bool {
    let key = |e: &DeviceEvent| {
        (
            e.path.state.rank(),
            e.path.relay_received_at_ms.is_some(),
            std::cmp::Reverse(e.relay.clone()),
        )
    };
    key(a) > key(b)
}

/// Merges relays' answers: one entry per event id (the most advanced copy),
/// ordered by event time then event id; at most `query.limit` events, the
/// newest kept; dead frames once each, by stream sequence.
pub fn merge(query: DeviceQuery, answers: impl IntoIterator<Item = RelayAnswer>) -> DeviceLookup {
    let mut by_id: HashMap<Uuid, DeviceEvent> = HashMap::new();
    let mut dead: HashMap<(String, u64), DeadFrame> = HashMap::new();
    let mut complete = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    let mut coverage: HashMap<String, RingCoverage> = HashMap::new();
    for answer in answers {
        seen.insert(answer.relay.clone());
        if answer.last {
            complete.insert(answer.relay.clone());
        }
        if let Some(error) = answer.error {
            errors.push((answer.relay.clone(), error));
        }
        if answer.part == 0 {
            coverage.insert(answer.relay.clone(), answer.coverage);
        }
        for event in answer.events {
            match by_id.entry(event.event_id) {
                Entry::Vacant(v) => {
                    v.insert(event);
                }
                Entry::Occupied(mut o) => {
                    if better(&event, o.get()) {
                        o.insert(event);
                    }
                }
            }
        }
        for frame in answer.dead_frames {
            dead.entry((frame.subject.clone(), frame.stream_seq))
                .or_insert(frame);
        }
    }
    let mut events: Vec<DeviceEvent> = by_id.into_values().collect();
    events.sort_by_key(|e| (e.ts_ms, e.event_id));
    let truncated = events.len() > query.limit;
    if truncated {
        events.drain(..events.len() - query.limit);
    }
    let mut dead_frames: Vec<DeadFrame> = dead.into_values().collect();
    dead_frames.sort_by_key(|f| (f.stream_at_ms, f.stream_seq));
    errors.sort();
    let mut coverage: Vec<(String, RingCoverage)> = coverage.into_iter().collect();
    coverage.sort_by(|a, b| a.0.cmp(&b.0));
    DeviceLookup {
        query,
        partial_relays: seen.difference(&complete).cloned().collect(),
        relays: complete.into_iter().collect(),
        errors,
        events,
        truncated,
        dead_frames,
        coverage,
    }
}

/// The partition token of an events subject (`spoor.events.<region>.<p>`).
pub fn subject_partition(subject: &str) -> Option<u32> {
    subject.rsplit('.').next().and_then(|p| p.parse().ok())
}

#[cfg(test)]
mod tests;
