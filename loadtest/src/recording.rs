//! The recording: real traffic saved as JSON lines, for `spoor-loadtest
//! replay`. One optional first line describes the recording; every other
//! line is one request, with its arrival offset, project, headers and body:
//!
//! ```text
//! {"spoor_recording":1,"source":"nats stream SPOOR_EVENTS","since":"…","until":"…","requests":2,"events":3}
//! {"offset_ms":0,"project":"shop","received_at_ms":1795341600000,"headers":{"content-type":"application/json"},"body":{"batch":[{"event":"page_view","event_id":"…","anonymous_id":"d1","timestamp":1795341599000}]}}
//! ```
//!
//! A recording never holds a secret: no write key (the line names the
//! project; replay takes `--write-key` or a keys file), no `Authorization`
//! or cookie header, no `writeKey` in a body. Reading one rejects any line
//! that does. Everything here is pure (no I/O, no clock, no randomness),
//! and reading never panics on any input (it is fuzzed:
//! `fuzz/fuzz_targets/recording_lines.rs`). This file depends only on
//! serde, serde_json, uuid and spoor-core, because the fuzz target compiles
//! it by path.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use spoor_core::event::WireBatch;
use uuid::Uuid;

/// The recording format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Headers that carry credentials: never written, refused when read.
pub const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "x-spoor-write-key",
];
/// Headers the sending client sets itself; a recording may hold them (a
/// tap sees them) but replay does not repeat them.
pub const TRANSPORT_HEADERS: [&str; 5] = [
    "connection",
    "content-encoding",
    "content-length",
    "host",
    "transfer-encoding",
];
/// Most events one rebuilt request carries (the edge's batch limit).
pub const MAX_EVENTS_PER_REQUEST: usize = 500;
/// Most bad lines a reader lists; the count stays exact.
pub const BAD_LINES_KEPT: usize = 20;

/// The first line: where the recording came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingHeader {
    /// The format version ([`FORMAT_VERSION`]).
    pub spoor_recording: u32,
    /// What was recorded, e.g. `nats stream SPOOR_EVENTS`.
    #[serde(default)]
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default)]
    pub requests: usize,
    #[serde(default)]
    pub events: usize,
}

/// One recorded request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    /// Milliseconds after the recording's first request.
    pub offset_ms: u64,
    /// The project its write key mapped to; replay looks its key up.
    pub project: String,
    /// The edge's clock when the request arrived, when known (stream
    /// recordings know it); `--shift-time` moves event times relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_ms: Option<i64>,
    /// Header names in lower case; never a secret.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The `/v1/batch` body: `{"batch": [...]}`, optionally `sent_at`.
    pub body: Value,
    /// The 1-based line it was read from (0 for requests built in memory).
    #[serde(skip)]
    pub line: usize,
}

/// A recording as read: its header, if any, and its requests in offset
/// order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    pub header: Option<RecordingHeader>,
    pub requests: Vec<RecordedRequest>,
}

impl Recording {
    pub fn events(&self) -> usize {
        self.requests.iter().map(|r| batch_len(&r.body)).sum()
    }
}

/// A line that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// The bad lines of a recording: the first [`BAD_LINES_KEPT`] and how many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadLines {
    pub count: usize,
    pub first: Vec<BadLine>,
}

impl BadLines {
    /// Counts a bad line, keeping it for the report while there is room.
    pub fn push_line(&mut self, line: usize, reason: String) {
        self.count += 1;
        if self.first.len() < BAD_LINES_KEPT {
            self.first.push(BadLine { line, reason });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl fmt::Display for BadLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bad line(s) in the recording", self.count)?;
        for b in &self.first {
            write!(f, "\n  {b}")?;
        }
        if self.count > self.first.len() {
            write!(f, "\n  … and {} more", self.count - self.first.len())?;
        }
        Ok(())
    }
}

/// Reads a recording. Good lines are kept even when others are bad (the
/// caller decides whether to go on); blank lines are skipped. Requests are
/// sorted by offset, stably.
pub fn parse(text: &str) -> (Recording, BadLines) {
    let mut recording = Recording::default();
    let mut bad = BadLines::default();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let is_first = std::mem::replace(&mut first, false);
        match parse_line(raw, line) {
            Ok(Line::Header(h)) if is_first => recording.header = Some(h),
            Ok(Line::Header(_)) => bad.push_line(
                line,
                "a recording header (`spoor_recording`) may only be the first line".into(),
            ),
            Ok(Line::Request(r)) => recording.requests.push(*r),
            Err(reason) => bad.push_line(line, reason),
        }
    }
    recording.requests.sort_by_key(|r| r.offset_ms);
    (recording, bad)
}

enum Line {
    Header(RecordingHeader),
    Request(Box<RecordedRequest>),
}

fn parse_line(raw: &str, line: usize) -> Result<Line, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| json_error("not JSON", &e))?;
    let Some(object) = value.as_object() else {
        return Err("a line must be a JSON object (a recorded request)".into());
    };
    if object.contains_key("spoor_recording") {
        let header: RecordingHeader =
            serde_json::from_value(value).map_err(|e| json_error("not a recording header", &e))?;
        if header.spoor_recording != FORMAT_VERSION {
            return Err(format!(
                "recording format version {} is not one this spoor-loadtest reads ({FORMAT_VERSION})",
                header.spoor_recording
            ));
        }
        return Ok(Line::Header(header));
    }
    let mut request: RecordedRequest =
        serde_json::from_value(value).map_err(|e| json_error("not a recorded request", &e))?;
    request.line = line;
    check_request(&mut request)?;
    Ok(Line::Request(Box::new(request)))
}

/// serde_json's message without its position: the line is one JSON value,
/// so its "line 1" would mislead; the column is kept.
fn json_error(what: &str, e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    if e.line() > 0 {
        format!("{what}: {message} (column {})", e.column())
    } else {
        format!("{what}: {message}")
    }
}

fn check_request(r: &mut RecordedRequest) -> Result<(), String> {
    if r.project.trim().is_empty() {
        return Err("`project` is empty".into());
    }
    let mut headers = BTreeMap::new();
    for (name, value) in std::mem::take(&mut r.headers) {
        let lower = name.to_ascii_lowercase();
        if !is_token(&lower) {
            return Err(format!(
                "header name {name:?} is not a valid HTTP header name"
            ));
        }
        if SECRET_HEADERS.contains(&lower.as_str()) {
            return Err(format!(
                "header {lower} is a secret, and a recording never carries one (replay takes --write-key or --write-keys-file)"
            ));
        }
        if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
            return Err(format!("header {lower}'s value is not printable ASCII"));
        }
        headers.insert(lower, value);
    }
    r.headers = headers;
    let Some(body) = r.body.as_object() else {
        return Err("`body` must be a JSON object ({\"batch\": [...]})".into());
    };
    if body.contains_key("writeKey") || body.contains_key("write_key") {
        return Err(
            "the body carries a write key, and a recording never carries one (replay takes --write-key or --write-keys-file)"
                .into(),
        );
    }
    if let Some(sent_at) = body.get("sent_at") {
        timestamp_ms(sent_at).map_err(|e| format!("body.sent_at {e}"))?;
    }
    let Some(batch) = body.get("batch").and_then(Value::as_array) else {
        return Err("`body.batch` must be an array of events".into());
    };
    for (index, event) in batch.iter().enumerate() {
        let Some(event) = event.as_object() else {
            return Err(format!("event {index} of body.batch is not a JSON object"));
        };
        match event.get("event_id") {
            None | Some(Value::String(_)) => {}
            Some(_) => return Err(format!("event {index}'s event_id is not a string")),
        }
        if let Some(ts) = event.get("timestamp") {
            timestamp_ms(ts).map_err(|e| format!("event {index}'s timestamp {e}"))?;
        }
    }
    Ok(())
}

/// RFC 7230's token characters.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An event time as the edge reads it: epoch milliseconds or RFC 3339.
pub fn timestamp_ms(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| "is not a whole number of epoch milliseconds".to_string()),
        Value::String(s) => spoor_core::timestamp::parse_rfc3339_ms(s)
            .map_err(|e| format!("is neither epoch milliseconds nor RFC 3339: {e}")),
        _ => Err("is neither epoch milliseconds nor an RFC 3339 string".into()),
    }
}

fn batch_len(body: &Value) -> usize {
    body.get("batch")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// One message read from the events stream: when JetStream stored it and
/// the frames it held.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub published_ms: i64,
    pub batches: Vec<WireBatch>,
}

/// Rebuilds requests from the frames of the events stream, in the order
/// they were stored. The edge splits a request into one frame per
/// partition and may coalesce frames of several requests into one message;
/// frames with the same project, region, arrival time, `sent_at`, IP prefix,
/// geo and device came from one request and are joined again (up to
/// [`MAX_EVENTS_PER_REQUEST`] events, and never twice the same event id:
/// a copy starts another request). A request's offset is its first frame's
/// publish time after the first message's.
pub fn requests_from_stream(messages: &[StreamMessage]) -> Vec<RecordedRequest> {
    struct Group {
        offset_ms: u64,
        project: String,
        received_at_ms: i64,
        ids: std::collections::HashSet<Uuid>,
        events: Vec<Value>,
    }
    let Some(start) = messages.iter().map(|m| m.published_ms).min() else {
        return Vec::new();
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    for m in messages {
        for b in &m.batches {
            let key = format!(
                "{}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{}\u{0}{:?}\u{0}{:?}",
                b.project_id,
                b.region,
                b.received_at_ms,
                b.sent_at_ms,
                b.ip_prefix,
                b.geo,
                b.device
            );
            let fits = open.get(&key).is_some_and(|&g| {
                let g = &groups[g];
                g.events.len() + b.events.len() <= MAX_EVENTS_PER_REQUEST
                    && b.events.iter().all(|e| !g.ids.contains(&e.event_id))
            });
            if !fits {
                groups.push(Group {
                    offset_ms: u64::try_from(m.published_ms.saturating_sub(start)).unwrap_or(0),
                    project: b.project_id.clone(),
                    received_at_ms: b.received_at_ms,
                    ids: Default::default(),
                    events: Vec::new(),
                });
                open.insert(key.clone(), groups.len() - 1);
            }
            let g = &mut groups[open[&key]];
            for e in &b.events {
                g.ids.insert(e.event_id);
                g.events.push(event_json(e));
            }
        }
    }
    let mut requests: Vec<RecordedRequest> = groups
        .into_iter()
        .map(|g| RecordedRequest {
            offset_ms: g.offset_ms,
            project: g.project,
            received_at_ms: Some(g.received_at_ms),
            headers: [("content-type".to_string(), "application/json".to_string())].into(),
            body: serde_json::json!({ "batch": g.events }),
            line: 0,
        })
        .collect();
    requests.sort_by_key(|r| r.offset_ms);
    requests
}

/// An accepted event as a client would send it. Its `timestamp` is the
/// stored event time and the body gets no `sent_at`, so the edge takes the
/// time as it is (no skew correction): a replay stores the same times
/// unless `--shift-time` moves them. The id is always written, derived ids
/// too, so a replay with the same ids is a resend.
pub fn event_json(e: &spoor_core::event::Event) -> Value {
    let mut o = Map::new();
    o.insert("event".into(), e.event.clone().into());
    o.insert("event_id".into(), e.event_id.to_string().into());
    for (k, v) in [
        ("user_id", &e.user_id),
        ("anonymous_id", &e.anonymous_id),
        ("session_id", &e.session_id),
    ] {
        if !v.is_empty() {
            o.insert(k.into(), v.clone().into());
        }
    }
    o.insert("timestamp".into(), e.ts_ms.into());
    match serde_json::from_str::<Value>(&e.properties) {
        Ok(Value::Object(p)) if p.is_empty() => {}
        Ok(p @ Value::Object(_)) => {
            o.insert("properties".into(), p);
        }
        // The edge stores only objects; anything else is left out rather
        // than sent as a value the edge would reject.
        _ => {}
    }
    let c = &e.context;
    let mut context = Map::new();
    let mut part = |name: &str, fields: &[(&str, &str)]| {
        let m: Map<String, Value> = fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
            .collect();
        if !m.is_empty() {
            context.insert(name.to_string(), Value::Object(m));
        }
    };
    part(
        "page",
        &[
            ("url", &c.page_url),
            ("path", &c.page_path),
            ("referrer", &c.page_referrer),
            ("title", &c.page_title),
        ],
    );
    part("app", &[("name", &c.app_name), ("version", &c.app_version)]);
    part(
        "library",
        &[("name", &c.library_name), ("version", &c.library_version)],
    );
    // Sent as `context.campaign` even when it came from the page URL: the
    // edge takes a sent campaign as is, so the replay stores the same.
    let k = &c.campaign;
    part(
        "campaign",
        &[
            ("source", &k.source),
            ("medium", &k.medium),
            ("name", &k.name),
            ("term", &k.term),
            ("content", &k.content),
        ],
    );
    if !c.locale.is_empty() {
        context.insert("locale".into(), c.locale.clone().into());
    }
    if c.screen_width != 0 || c.screen_height != 0 {
        context.insert(
            "screen".into(),
            serde_json::json!({"width": c.screen_width, "height": c.screen_height}),
        );
    }
    if !context.is_empty() {
        o.insert("context".into(), Value::Object(context));
    }
    Value::Object(o)
}

/// What a replay changes in each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// Every event id is replaced by a fresh one (the same fresh id for
    /// every copy of one original, so resends in the recording stay
    /// resends).
    Fresh,
    /// Ids are sent as recorded: the pipeline must store nothing twice.
    Keep,
}

/// Fresh ids by original id (or, for an event without one, by its text).
pub type IdMap = HashMap<String, Uuid>;

/// The body to send for `request`, and the event ids the edge must accept.
/// `shift_ms` is added to every event `timestamp` and to `sent_at` (as
/// epoch milliseconds); `fresh` mints an id when `ids` is `Fresh`.
pub fn rewrite(
    request: &RecordedRequest,
    ids: Ids,
    map: &mut IdMap,
    fresh: &mut dyn FnMut() -> Uuid,
    shift_ms: Option<i64>,
) -> Result<(Value, Vec<Uuid>), String> {
    let mut body = request.body.clone();
    let Some(object) = body.as_object_mut() else {
        return Err("`body` is not a JSON object".into());
    };
    if let (Some(shift), Some(sent_at)) = (shift_ms, object.get_mut("sent_at")) {
        let ms = timestamp_ms(sent_at).map_err(|e| format!("body.sent_at {e}"))?;
        *sent_at = ms.saturating_add(shift).into();
    }
    let Some(batch) = object.get_mut("batch").and_then(Value::as_array_mut) else {
        return Err("`body.batch` is not an array".into());
    };
    let mut accepted = Vec::with_capacity(batch.len());
    for (index, event) in batch.iter_mut().enumerate() {
        let text = event.to_string();
        let Some(event) = event.as_object_mut() else {
            return Err(format!("event {index} is not a JSON object"));
        };
        let id = match (ids, event.get("event_id").and_then(Value::as_str)) {
            (Ids::Fresh, original) => {
                let key = original.map_or(text, str::to_string);
                let id = *map.entry(key).or_insert_with(&mut *fresh);
                event.insert("event_id".into(), id.to_string().into());
                id
            }
            (Ids::Keep, Some(original)) => Uuid::try_parse(original).map_err(|_| {
                format!("event {index}'s event_id {original:?} is not a UUID; --keep-ids needs one per event to check dedup (or use --fresh-ids)")
            })?,
            (Ids::Keep, None) => {
                return Err(format!(
                    "event {index} has no event_id; --keep-ids needs one per event to check dedup (or use --fresh-ids)"
                ))
            }
        };
        accepted.push(id);
        if let (Some(shift), Some(ts)) = (shift_ms, event.get_mut("timestamp")) {
            let ms = timestamp_ms(ts).map_err(|e| format!("event {index}'s timestamp {e}"))?;
            *ts = ms.saturating_add(shift).into();
        }
    }
    Ok((body, accepted))
}

/// When the request arrived on the recording's clock: the edge's receive
/// time when recorded, else its newest event time (so `--shift-time`
/// moves that event to the moment of sending).
pub fn arrival_ms(request: &RecordedRequest) -> Option<i64> {
    request.received_at_ms.or_else(|| {
        request
            .body
            .get("batch")?
            .as_array()?
            .iter()
            .filter_map(|e| timestamp_ms(e.get("timestamp")?).ok())
            .max()
    })
}

/// One line of the file.
pub fn to_line(value: &impl Serialize) -> Result<String, serde_json::Error> {
    serde_json::to_string(value)
}

#[cfg(test)]
mod tests;
