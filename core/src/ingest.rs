//! The ingest path, as one pure function: from an HTTP request's body and
//! metadata to per-event receipts and the encoded frames to publish.
//!
//! `ingest` decides everything the edge answers: whole-request failures
//! (`RequestError`, with their HTTP status) and, for a valid request, which
//! events are accepted and why the others were rejected. A bad event never
//! costs the good events of the same batch. This module does no I/O and reads
//! no clock: the edge passes the time, geo data and limits in.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::codec::encode_batch_ref;
use crate::enrich::{truncate_ip, truncate_utf8, Device, Geo};
use crate::event::{BatchRef, CampaignRef, ContextRef, EventRef};
use crate::limits::Limits;
use crate::route;
use crate::timestamp::{corrected_time, parse_json_timestamp};
use crate::validate::{self, Invalid};

/// Which endpoint received the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/batch`: `{"sent_at": ..., "batch": [event, ...]}`.
    Batch,
    /// `POST /v1/track`: one event object, optionally with its own `sent_at`.
    Track,
}

/// What the edge knows about a request besides its body.
#[derive(Debug, Clone)]
pub struct RequestMeta<'a> {
    pub project_id: &'a str,
    pub region: &'a str,
    pub partitions: u32,
    pub received_at_ms: i64,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub user_agent: &'a str,
    pub ip: &'a str,
    pub geo: Geo,
}

/// A whole-request failure. Nothing of such a request is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Content-Type {0:?} is not supported; send application/json (or text/plain from sendBeacon)")]
    UnsupportedMediaType(String),
    #[error("Content-Encoding {0:?} is not supported; send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("{what} exceeds the limit of {limit}")]
    TooLarge { what: String, limit: usize },
    #[error("gzip body could not be decompressed: {0}")]
    InvalidGzip(String),
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{0}")]
    InvalidBody(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::UnsupportedMediaType(_) | RequestError::UnsupportedEncoding(_) => 415,
            RequestError::TooLarge { .. } => 413,
            RequestError::InvalidGzip(_)
            | RequestError::InvalidJson { .. }
            | RequestError::InvalidBody(_) => 400,
            RequestError::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
            RequestError::UnsupportedEncoding(_) => "unsupported_encoding",
            RequestError::TooLarge { .. } => "payload_too_large",
            RequestError::InvalidGzip(_) => "invalid_gzip",
            RequestError::InvalidJson { .. } => "invalid_json",
            RequestError::InvalidBody(_) => "invalid_body",
            RequestError::Internal(_) => "internal",
        }
    }
}

/// The JSON body of every error response: `{"error": code, "message": text}`.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

/// The per-request answer the client gets with a 202.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
    /// Events whose id an earlier event of the same request already has:
    /// the first copy is kept (accepted, or rejected on its own), these are
    /// not stored again and count neither as accepted nor as rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<Duplicate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One rejected event: its index in the request, its id if it had a readable
/// one, a stable reason code and a sentence saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub reason: String,
    pub message: String,
}

/// An event of a request whose id an earlier event of that request has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub index: usize,
    pub event_id: String,
    /// The index of the accepted event with the same id.
    pub duplicate_of: usize,
}

/// One frame to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub subject: String,
    /// `Nats-Msg-Id`; equal to the frame's `batch_id`.
    pub msg_id: String,
    pub frame: Vec<u8>,
    pub events: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub receipt: Receipt,
    pub messages: Vec<Outbound>,
    /// Distinct names of the accepted events (for critical-event acks).
    pub event_names: BTreeSet<String>,
}

/// Validates and enriches a request and encodes its accepted events, one
/// frame per partition.
///
/// A batch's envelope is read by `split::split_batch`, a byte scanner
/// that finds the events' texts without tokenizing them (the per-event
/// parse that follows validates every event's syntax). Anything it does
/// not expect, and any rejected event whose text is not valid JSON, sends
/// the request down the reference path instead (`ingest_reference`: the
/// envelope as serde raw values), which decides every error. The tests
/// hold the two to the same answer for any body.
pub fn ingest(
    endpoint: Endpoint,
    body: &[u8],
    meta: &RequestMeta<'_>,
    limits: &Limits,
) -> Result<Ingested, RequestError> {
    ingest_with(endpoint, body, meta, limits, true)
}

/// `ingest` through the reference path only (for the tests that hold the
/// fast path to it).
#[doc(hidden)]
pub fn ingest_reference(
    endpoint: Endpoint,
    body: &[u8],
    meta: &RequestMeta<'_>,
    limits: &Limits,
) -> Result<Ingested, RequestError> {
    ingest_with(endpoint, body, meta, limits, false)
}

fn ingest_with(
    endpoint: Endpoint,
    body: &[u8],
    meta: &RequestMeta<'_>,
    limits: &Limits,
    fast: bool,
) -> Result<Ingested, RequestError> {
    check_content_type(meta.content_type)?;
    let body = decode_body(meta.content_encoding, body, limits)?;
    if fast && endpoint == Endpoint::Batch {
        if let Some((sent_at, events)) = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| split::split_batch(text, limits))
        {
            if let Some(decided) = build(sent_at, &events, meta, limits, true) {
                return decided;
            }
        }
    }
    reference(endpoint, &body, meta, limits)
}

fn reference(
    endpoint: Endpoint,
    body: &[u8],
    meta: &RequestMeta<'_>,
    limits: &Limits,
) -> Result<Ingested, RequestError> {
    let (sent_at_raw, events) = parse_envelope(endpoint, body, limits)?;
    let events: Vec<&str> = events.iter().map(|r| r.get()).collect();
    match build(sent_at_raw, &events, meta, limits, false) {
        Some(decided) => decided,
        None => Err(RequestError::Internal(
            "the reference path left a request undecided".into(),
        )),
    }
}

/// Validates the events (their JSON texts) and encodes the accepted ones.
/// With `strict`, a rejected event whose text is not valid JSON answers
/// `None`: the whole body is then invalid JSON, which the reference path
/// reports as such.
fn build(
    sent_at_raw: Option<&RawValue>,
    events: &[&str],
    meta: &RequestMeta<'_>,
    limits: &Limits,
    strict: bool,
) -> Option<Result<Ingested, RequestError>> {
    let mut receipt = Receipt::default();
    let sent_at_ms = match sent_at_raw {
        None => None,
        Some(raw) => match parse_json_timestamp(raw) {
            Ok(ms) => Some(ms),
            Err(e) => {
                receipt
                    .warnings
                    .push(format!("sent_at ignored, no clock-skew correction: {e}"));
                None
            }
        },
    };

    let mut assembly = Assembly::new(meta);
    for (index, raw) in events.iter().enumerate() {
        match parse_event(raw, meta, sent_at_ms, limits) {
            Ok(ev) => assembly.accept(index, ev, 0),
            Err(inv) => {
                if strict && serde_json::from_str::<serde::de::IgnoredAny>(raw).is_err() {
                    return None;
                }
                assembly.reject(Rejection {
                    index,
                    event_id: probe_event_id(raw),
                    reason: inv.reason.to_string(),
                    message: inv.message,
                })
            }
        }
    }
    assembly.receipt.warnings = receipt.warnings;
    Some(assembly.finish(meta, sent_at_ms))
}

/// A request's accepted events on their way into frames: one frame per
/// partition and device (the request's own User-Agent is device 0; a
/// Segment event may name its own), with the request's receipt.
pub(crate) struct Assembly<'a> {
    pub(crate) receipt: Receipt,
    by_frame: BTreeMap<(u32, usize), Vec<EventRef<'a>>>,
    devices: Vec<Device>,
    event_names: BTreeSet<String>,
    // The accepted ids of this request (client or derived) and where each
    // first came: a second event with one of them is a duplicate.
    first_of: HashMap<Uuid, usize>,
    partitions: u32,
}

impl<'a> Assembly<'a> {
    pub(crate) fn new(meta: &RequestMeta<'_>) -> Self {
        Assembly {
            receipt: Receipt::default(),
            by_frame: BTreeMap::new(),
            devices: vec![Device::from_user_agent(meta.user_agent)],
            event_names: BTreeSet::new(),
            first_of: HashMap::new(),
            partitions: meta.partitions,
        }
    }

    /// The index of `device` among this request's devices, added if new.
    pub(crate) fn device(&mut self, device: Device) -> usize {
        match self.devices.iter().position(|d| *d == device) {
            Some(i) => i,
            None => {
                self.devices.push(device);
                self.devices.len() - 1
            }
        }
    }

    /// Accepts the event at `index`, or lists it as a duplicate of an
    /// earlier event of the request with the same id.
    pub(crate) fn accept(&mut self, index: usize, ev: EventRef<'a>, device: usize) {
        if let Some(&duplicate_of) = self.first_of.get(&ev.event_id) {
            self.receipt.duplicates.push(Duplicate {
                index,
                event_id: ev.event_id.to_string(),
                duplicate_of,
            });
            return;
        }
        self.first_of.insert(ev.event_id, index);
        if !self.event_names.contains(ev.event.as_ref()) {
            self.event_names.insert(ev.event.to_string());
        }
        let p = route::partition_of(ev.device_key(), self.partitions);
        self.by_frame.entry((p, device)).or_default().push(ev);
        self.receipt.accepted += 1;
    }

    pub(crate) fn reject(&mut self, rejection: Rejection) {
        self.receipt.rejected.push(rejection);
    }

    /// Encodes the accepted events, one frame per partition and device.
    pub(crate) fn finish(
        self,
        meta: &RequestMeta<'_>,
        sent_at_ms: Option<i64>,
    ) -> Result<Ingested, RequestError> {
        let ip_prefix = truncate_ip(meta.ip);
        let mut messages = Vec::with_capacity(self.by_frame.len());
        for ((partition, device), events) in self.by_frame {
            let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
            let batch_id = route::batch_id(meta.project_id, partition, &ids);
            let batch = BatchRef {
                batch_id: &batch_id,
                project_id: meta.project_id,
                region: meta.region,
                received_at_ms: meta.received_at_ms,
                sent_at_ms,
                geo: &meta.geo,
                device: &self.devices[device],
                ip_prefix: &ip_prefix,
                events: &events,
            };
            let frame =
                encode_batch_ref(&batch).map_err(|e| RequestError::Internal(e.to_string()))?;
            messages.push(Outbound {
                subject: route::subject(meta.region, partition),
                msg_id: batch_id,
                frame,
                events: events.len(),
            });
        }
        Ok(Ingested {
            receipt: self.receipt,
            messages,
            event_names: self.event_names,
        })
    }
}

pub(crate) fn check_content_type(ct: Option<&str>) -> Result<(), RequestError> {
    let ct = ct.unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(RequestError::UnsupportedMediaType(ct.to_string())),
    }
}

/// Undoes `Content-Encoding`, enforcing the body limit on the decompressed size
/// without ever inflating more than one byte past it.
pub(crate) fn decode_body<'b>(
    encoding: Option<&str>,
    body: &'b [u8],
    limits: &Limits,
) -> Result<Cow<'b, [u8]>, RequestError> {
    let too_large = || RequestError::TooLarge {
        what: "request body (after decompression)".into(),
        limit: limits.max_body_bytes,
    };
    let enc = encoding.unwrap_or("").trim().to_ascii_lowercase();
    match enc.as_str() {
        "" | "identity" => {
            if body.len() > limits.max_body_bytes {
                return Err(too_large());
            }
            Ok(Cow::Borrowed(body))
        }
        "gzip" | "x-gzip" => {
            let mut out =
                Vec::with_capacity(body.len().saturating_mul(4).min(limits.max_body_bytes));
            flate2::read::MultiGzDecoder::new(body)
                .take(limits.max_body_bytes as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| RequestError::InvalidGzip(e.to_string()))?;
            if out.len() > limits.max_body_bytes {
                return Err(too_large());
            }
            Ok(Cow::Owned(out))
        }
        _ => Err(RequestError::UnsupportedEncoding(enc)),
    }
}

#[derive(Deserialize)]
struct BatchEnvelope<'a> {
    #[serde(borrow, default)]
    sent_at: Option<&'a RawValue>,
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct TrackEnvelope<'a> {
    #[serde(borrow, default)]
    sent_at: Option<&'a RawValue>,
}

type Envelope<'a> = (Option<&'a RawValue>, Vec<&'a RawValue>);

pub(crate) fn json_error(e: serde_json::Error) -> RequestError {
    RequestError::InvalidJson {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

fn parse_envelope<'a>(
    endpoint: Endpoint,
    body: &'a [u8],
    limits: &Limits,
) -> Result<Envelope<'a>, RequestError> {
    let text = std::str::from_utf8(body).map_err(|e| RequestError::InvalidJson {
        line: 0,
        column: 0,
        message: format!(
            "body is not UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        ),
    })?;
    match endpoint {
        Endpoint::Batch => {
            let trimmed = text.trim_start();
            if !trimmed.starts_with('{') {
                // Catch the wrong shape before serde reports a type error.
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(json_error)?;
                return Err(RequestError::InvalidBody(
                    "a batch body is a JSON object: {\"sent_at\": ..., \"batch\": [events]}".into(),
                ));
            }
            let env: BatchEnvelope<'a> = serde_json::from_str(text).map_err(|e| {
                if e.is_data() {
                    RequestError::InvalidBody(format!("`batch` must be an array of events: {e}"))
                } else {
                    json_error(e)
                }
            })?;
            let batch = env.batch.ok_or_else(|| {
                RequestError::InvalidBody("missing `batch`: the array of events".into())
            })?;
            if batch.len() > limits.max_batch_events {
                return Err(RequestError::TooLarge {
                    what: format!("batch of {} events", batch.len()),
                    limit: limits.max_batch_events,
                });
            }
            Ok((env.sent_at, batch))
        }
        Endpoint::Track => {
            let raw: &'a RawValue = serde_json::from_str(text).map_err(json_error)?;
            if !raw.get().trim_start().starts_with('{') {
                return Err(RequestError::InvalidBody(
                    "a track body is one JSON event object".into(),
                ));
            }
            let env: TrackEnvelope<'a> =
                serde_json::from_str(raw.get()).unwrap_or(TrackEnvelope { sent_at: None });
            Ok((env.sent_at, vec![raw]))
        }
    }
}

/// A string or a number (ids are sometimes numeric in SDKs); numbers keep
/// their JSON text. Read by hand rather than as an untagged enum, which
/// would buffer every id into an intermediate value first.
struct IdValue<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for IdValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = IdValue<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(IdValue(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(IdValue(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(IdValue(Cow::Owned(s)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(IdValue(Cow::Owned(n.to_string())))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(IdValue(Cow::Owned(n.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
                serde_json::Number::from_f64(n)
                    .map(|n| IdValue(Cow::Owned(n.to_string())))
                    .ok_or_else(|| E::custom("a non-finite number"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_id: Option<IdValue<'a>>,
    #[serde(borrow, default)]
    anonymous_id: Option<IdValue<'a>>,
    #[serde(borrow, default)]
    session_id: Option<IdValue<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<RawContext<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawContext<'a> {
    #[serde(borrow)]
    page: Option<RawPage<'a>>,
    #[serde(borrow)]
    app: Option<RawNamed<'a>>,
    #[serde(borrow)]
    library: Option<RawNamed<'a>>,
    #[serde(borrow)]
    locale: Option<Cow<'a, str>>,
    screen: Option<RawScreen>,
    #[serde(borrow)]
    campaign: Option<RawCampaign<'a>>,
}

/// `context.campaign`: Segment's names (`name` is `utm_campaign`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCampaign<'a> {
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    medium: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    term: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPage<'a> {
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    referrer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawNamed<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    version: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawScreen {
    width: Option<u32>,
    height: Option<u32>,
}

pub(crate) fn parse_event<'a>(
    text: &'a str,
    meta: &RequestMeta<'_>,
    sent_at_ms: Option<i64>,
    limits: &Limits,
) -> Result<EventRef<'a>, Invalid> {
    if text.len() > limits.max_event_bytes {
        return Err(Invalid::new(
            "event_too_large",
            format!(
                "event is {} bytes; the limit is {}",
                text.len(),
                limits.max_event_bytes
            ),
        ));
    }
    if !text.trim_start().starts_with('{') {
        return Err(Invalid::new(
            "invalid_event",
            "each event must be a JSON object",
        ));
    }
    let ev: RawEvent<'a> = serde_json::from_str(text).map_err(|e| {
        Invalid::new(
            "invalid_event",
            format!("event does not match the schema: {e}"),
        )
    })?;

    let name = ev.event.unwrap_or_default();
    validate::check_event_name(&name, limits)?;

    let (event_id, event_id_derived) = match ev.event_id.as_deref() {
        Some(s) => match Uuid::try_parse(s) {
            Ok(id) => (id, false),
            Err(_) => {
                return Err(Invalid::new(
                    "invalid_event_id",
                    format!("`event_id` {:?} is not a UUID", truncated(s, 64)),
                ))
            }
        },
        None => (
            route::derived_event_id(meta.project_id, text.as_bytes()),
            true,
        ),
    };

    let user_id = ev.user_id.map(|v| v.0).unwrap_or_default();
    let anonymous_id = ev.anonymous_id.map(|v| v.0).unwrap_or_default();
    let session_id = ev.session_id.map(|v| v.0).unwrap_or_default();
    if user_id.is_empty() && anonymous_id.is_empty() {
        return Err(Invalid::new(
            "missing_identity",
            "an event needs a non-empty `user_id` or `anonymous_id` (or both)",
        ));
    }
    validate::check_id("user_id", &user_id, limits)?;
    validate::check_id("anonymous_id", &anonymous_id, limits)?;
    validate::check_id("session_id", &session_id, limits)?;

    let client_ts_ms = match ev.timestamp {
        None => None,
        Some(raw) => Some(
            parse_json_timestamp(raw)
                .map_err(|e| Invalid::new("invalid_timestamp", format!("`timestamp` {e}")))?,
        ),
    };
    let ts_ms = corrected_time(client_ts_ms, sent_at_ms, meta.received_at_ms);
    let now = meta.received_at_ms;
    if ts_ms > now.saturating_add(limits.max_future_ms)
        || ts_ms < now.saturating_sub(limits.max_past_ms)
    {
        return Err(Invalid::new(
            "timestamp_out_of_range",
            format!(
                "event time {} (after clock-skew correction) is outside the accepted window of {} h in the past to {} h in the future",
                crate::timestamp::format_rfc3339_ms(ts_ms),
                limits.max_past_ms / 3_600_000,
                limits.max_future_ms / 3_600_000
            ),
        ));
    }

    let properties = match ev.properties {
        None => Cow::Borrowed("{}"),
        Some(raw) if raw.get() == "null" => Cow::Borrowed("{}"),
        Some(raw) => validate::check_properties(raw.get(), limits)?,
    };

    let context = build_context(ev.context.unwrap_or_default(), limits)?;
    Ok(EventRef {
        event_id,
        event_id_derived,
        event: name,
        user_id,
        anonymous_id,
        session_id,
        client_ts_ms,
        ts_ms,
        properties,
        context,
    })
}

fn build_context<'a>(raw: RawContext<'a>, limits: &Limits) -> Result<ContextRef<'a>, Invalid> {
    let page = raw.page.unwrap_or_default();
    let app = raw.app.unwrap_or_default();
    let lib = raw.library.unwrap_or_default();
    let screen = raw.screen.unwrap_or_default();
    let campaign = raw.campaign.unwrap_or_default();
    let take = |field: &str, v: Option<Cow<'a, str>>| -> Result<Cow<'a, str>, Invalid> {
        let s = v.unwrap_or_default();
        validate::check_string(field, &s, limits)?;
        Ok(s)
    };
    let page_url = take("context.page.url", page.url)?;
    let mut campaign = CampaignRef {
        source: take("context.campaign.source", campaign.source)?,
        medium: take("context.campaign.medium", campaign.medium)?,
        name: take("context.campaign.name", campaign.name)?,
        term: take("context.campaign.term", campaign.term)?,
        content: take("context.campaign.content", campaign.content)?,
    };
    // No campaign from the client: the page URL's `utm_*` parameters, each
    // no longer than the URL itself, which passed the same check.
    if campaign.is_empty() {
        if let Some(from_url) = crate::campaign::from_url(&page_url) {
            campaign = from_url;
        }
    }
    Ok(ContextRef {
        page_url,
        page_path: take("context.page.path", page.path)?,
        page_referrer: take("context.page.referrer", page.referrer)?,
        page_title: take("context.page.title", page.title)?,
        app_name: take("context.app.name", app.name)?,
        app_version: take("context.app.version", app.version)?,
        library_name: take("context.library.name", lib.name)?,
        library_version: take("context.library.version", lib.version)?,
        locale: take("context.locale", raw.locale)?,
        screen_width: screen.width.unwrap_or(0),
        screen_height: screen.height.unwrap_or(0),
        campaign,
    })
}

/// The `event_id` of an event that failed validation, when one can be read,
/// so the client can match the rejection to its own record.
fn probe_event_id(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        event_id: Option<&'a RawValue>,
    }
    let p: Probe<'_> = serde_json::from_str(raw).ok()?;
    let s: String = serde_json::from_str(p.event_id?.get()).ok()?;
    let mut s = s;
    truncate_utf8(&mut s, 64);
    Some(s)
}

fn truncated(s: &str, max: usize) -> String {
    let mut s = s.to_string();
    truncate_utf8(&mut s, max);
    s
}

mod split;

#[cfg(test)]
mod tests;

/// The ingest path cut into its stages, so benches can time each one (the
/// criterion bench natively, `edge/bench` as wasm under V8). Not an API:
/// `ingest` is the only way the edge runs them.
#[doc(hidden)]
pub mod stages {
    use super::*;

    /// Content checks, decompression and the envelope: the events' texts,
    /// as `ingest` reads them (the byte scanner).
    pub fn envelope(body: &[u8], meta: &RequestMeta<'_>, limits: &Limits) -> usize {
        check_content_type(meta.content_type).unwrap();
        let body = decode_body(meta.content_encoding, body, limits).unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        split::split_batch(text, limits).unwrap().1.len()
    }

    /// The envelope through the reference path (serde raw values).
    pub fn envelope_reference(body: &[u8], limits: &Limits) -> usize {
        let (_, events) = parse_envelope(Endpoint::Batch, body, limits).unwrap();
        events.len()
    }

    /// The envelope, then each event read into its raw fields (no rules).
    pub fn parse(body: &[u8], limits: &Limits) -> usize {
        let (_, events) = parse_envelope(Endpoint::Batch, body, limits).unwrap();
        events
            .iter()
            .filter(|raw| serde_json::from_str::<RawEvent<'_>>(raw.get()).is_ok())
            .count()
    }

    /// The envelope and every event parsed and validated (borrowing).
    pub fn validate(body: &[u8], meta: &RequestMeta<'_>, limits: &Limits) -> usize {
        let (_, events) = parse_envelope(Endpoint::Batch, body, limits).unwrap();
        events
            .iter()
            .filter_map(|raw| parse_event(raw.get(), meta, None, limits).ok())
            .count()
    }

    /// The accepted events of a body, owned (to build bench inputs).
    pub fn events(body: &[u8], meta: &RequestMeta<'_>, limits: &Limits) -> Vec<crate::Event> {
        let (_, events) = parse_envelope(Endpoint::Batch, body, limits).unwrap();
        events
            .iter()
            .filter_map(|raw| parse_event(raw.get(), meta, None, limits).ok())
            .map(|e| e.to_event())
            .collect()
    }

    /// The request's enrichment: device from the User-Agent, IP prefix.
    pub fn enrich(meta: &RequestMeta<'_>) -> (Device, String) {
        (
            Device::from_user_agent(meta.user_agent),
            truncate_ip(meta.ip),
        )
    }

    /// A batch's CBOR body, uncompressed.
    pub fn cbor(batch: &crate::WireBatch) -> Vec<u8> {
        let mut out = Vec::new();
        batch.with_ref(|b| crate::codec::write_cbor(&mut out, b));
        out
    }

    /// LZ4 of a CBOR body.
    pub fn lz4(cbor: &[u8]) -> Vec<u8> {
        lz4_flex::block::compress(cbor)
    }

    /// The receipt's JSON text.
    pub fn receipt_json(receipt: &Receipt) -> String {
        serde_json::to_string(receipt).unwrap()
    }
}
