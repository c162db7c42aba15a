//! Segment's HTTP Tracking API, read and translated into Spoor events, so
//! analytics.js, analytics-node, analytics-kotlin, analytics-swift and
//! RudderStack SDKs can post to the edge unchanged.
//!
//! `Call::for_request` decides whether a request speaks Segment's protocol,
//! `read` undoes the body's encoding and reads its envelope (the write key
//! may be inside), and `ingest` turns every message into the JSON text of a
//! Spoor event and runs it through the same validation, enrichment and
//! framing as Spoor's own events (`ingest::parse_event`, `ingest::Assembly`).
//! A bad message is rejected on its own; the others of its batch are kept.
//! Like the rest of core this module does no I/O and reads no clock.
//!
//! The mapping, in short: `messageId` is the event id (a UUID as is, any
//! other id through a stable hash); `page` is `page_view` and `screen` is
//! `screen_view` (with `name` and `category` in the properties); `identify`,
//! `group` and `alias` are events of those names whose `traits`, `groupId`
//! and `previousId` travel in the reserved property `$segment`, with the
//! message's `type`, its `messageId`, the context Spoor has no column for
//! and its `integrations`. Event time follows Segment's rule: `timestamp`
//! when given, else `receivedAt - (sentAt - originalTimestamp)`.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::enrich::{truncate_ip, truncate_utf8, Device};
use crate::ingest::{
    check_content_type, decode_body, json_error, parse_event, Assembly, Ingested, Receipt,
    Rejection, RequestError, RequestMeta,
};
use crate::limits::Limits;
use crate::route;
use crate::timestamp::{corrected_time, parse_rfc3339_ms};
use crate::validate::Invalid;

/// Segment's limit on one request body, after decompression.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Segment's limit on one message's JSON text.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// The property a Segment message's own fields travel in.
pub const SEGMENT_PROPERTY: &str = "$segment";

/// The call a Segment request makes, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
    /// Many messages, each naming its own `type`.
    Batch,
}

impl Call {
    /// The call of a Segment path: `/v1/track` … `/v1/batch`, the one-letter
    /// paths of analytics.js (`/v1/t` … `/v1/b`), and the same one-letter
    /// paths at the root (`/t` … `/b`), which the SDKs post to when their
    /// `apiHost` names a host without `/v1` (analytics-kotlin and
    /// analytics-swift post `https://{apiHost}/b`).
    pub fn from_path(path: &str) -> Option<Call> {
        let (v1, name) = match path.strip_prefix("/v1/") {
            Some(name) => (true, name),
            None => (false, path.strip_prefix('/')?),
        };
        Some(match name {
            "t" => Call::Track,
            "i" => Call::Identify,
            "p" => Call::Page,
            "s" => Call::Screen,
            "g" => Call::Group,
            "a" => Call::Alias,
            "b" => Call::Batch,
            "track" if v1 => Call::Track,
            "identify" if v1 => Call::Identify,
            "page" if v1 => Call::Page,
            "screen" if v1 => Call::Screen,
            "group" if v1 => Call::Group,
            "alias" if v1 => Call::Alias,
            "batch" if v1 => Call::Batch,
            _ => return None,
        })
    }

    /// The Segment call a request makes, or `None` when it is not one.
    ///
    /// `/v1/batch` and `/v1/track` are Spoor's own endpoints too. A request
    /// there is Spoor's when it carries Spoor's key header
    /// (`X-Spoor-Write-Key` or `Authorization: Bearer`), and Segment's when
    /// it authenticates the way Segment's SDKs do: HTTP Basic auth, or
    /// `writeKey` in the body (no key header at all). Every other Segment
    /// path is Segment's whatever its headers.
    pub fn for_request(
        path: &str,
        x_write_key: Option<&str>,
        authorization: Option<&str>,
    ) -> Option<Call> {
        let call = Call::from_path(path)?;
        if path == "/v1/batch" || path == "/v1/track" {
            let spoor_header = x_write_key.is_some_and(|k| !k.trim().is_empty())
                || authorization.is_some_and(|a| {
                    a.trim()
                        .split_once(' ')
                        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                });
            if spoor_header {
                return None;
            }
        }
        Some(call)
    }

    /// The message type this path implies (`None` for a batch, whose
    /// messages name theirs).
    fn message_type(self) -> Option<&'static str> {
        match self {
            Call::Track => Some("track"),
            Call::Identify => Some("identify"),
            Call::Page => Some("page"),
            Call::Screen => Some("screen"),
            Call::Group => Some("group"),
            Call::Alias => Some("alias"),
            Call::Batch => None,
        }
    }
}

/// Spoor's limits with Segment's sizes: 500 KB per request and 32 KB per
/// message, and no count of messages beyond what fits.
pub fn limits(base: &Limits) -> Limits {
    Limits {
        max_body_bytes: MAX_BATCH_BYTES,
        max_event_bytes: MAX_MESSAGE_BYTES,
        max_batch_events: usize::MAX,
        ..base.clone()
    }
}

/// The HTTP status of a refused Segment request: 400 for anything the
/// client sent (Segment's SDKs drop a batch on 400 and retry anything else,
/// so a body that can never succeed must not be answered 413 or 415), 500
/// for Spoor's own failures.
pub fn status(err: &RequestError) -> u16 {
    match err {
        RequestError::Internal(_) => 500,
        _ => 400,
    }
}

/// The body of a 200: Segment's `{"success": true}`, with Spoor's receipt
/// (accepted count, rejections with reasons, duplicates, warnings) beside
/// it, which Segment's SDKs ignore and a person debugging can read.
pub fn success_body(receipt: &Receipt) -> String {
    let mut body = match serde_json::to_value(receipt) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    body.insert("success".into(), Value::Bool(true));
    Value::Object(body).to_string()
}

/// A Segment request's body, read: the write key it carries, the
/// batch-level fields and the messages' JSON texts.
#[derive(Debug, Clone)]
pub struct SegmentRequest {
    call: Call,
    /// `writeKey` from the body, when it has a non-empty one.
    pub write_key: Option<String>,
    sent_at: Option<Value>,
    context: Map<String, Value>,
    integrations: Map<String, Value>,
    messages: Vec<String>,
}

impl SegmentRequest {
    /// How many messages the request holds (what the rate limiter counts
    /// when the request is refused before `ingest`).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[derive(Deserialize)]
struct BatchTop<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
}

#[derive(Deserialize)]
struct SingleTop {
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
}

/// Checks the content type, undoes gzip (Segment's 500 KB counted after
/// it) and reads the envelope. Errors are whole-request failures.
pub fn read(
    call: Call,
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<SegmentRequest, RequestError> {
    check_content_type(content_type)?;
    let limits = limits(&Limits::default());
    let body = decode_body(content_encoding, body, &limits)?;
    let text = std::str::from_utf8(&body).map_err(|e| RequestError::InvalidJson {
        line: 0,
        column: 0,
        message: format!(
            "body is not UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        ),
    })?;
    let whole: &RawValue = serde_json::from_str(text).map_err(json_error)?;
    if !whole.get().trim_start().starts_with('{') {
        return Err(RequestError::InvalidBody(
            "a Segment body is a JSON object: one message, or {\"batch\": [messages]}".into(),
        ));
    }
    let shape = |e: serde_json::Error| RequestError::InvalidBody(format!("{e}"));
    match call {
        Call::Batch => {
            let top: BatchTop<'_> = serde_json::from_str(whole.get()).map_err(shape)?;
            let batch = top.batch.ok_or_else(|| {
                RequestError::InvalidBody("missing `batch`: the array of messages".into())
            })?;
            Ok(SegmentRequest {
                call,
                write_key: key_of(top.write_key),
                sent_at: top.sent_at,
                context: object_or_empty(top.context, "context")?,
                integrations: object_or_empty(top.integrations, "integrations")?,
                messages: batch.iter().map(|m| m.get().to_string()).collect(),
            })
        }
        _ => {
            let top: SingleTop = serde_json::from_str(whole.get()).map_err(shape)?;
            Ok(SegmentRequest {
                call,
                write_key: key_of(top.write_key),
                sent_at: top.sent_at,
                context: Map::new(),
                integrations: Map::new(),
                messages: vec![whole.get().to_string()],
            })
        }
    }
}

fn key_of(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

fn object_or_empty(v: Option<Value>, what: &str) -> Result<Map<String, Value>, RequestError> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(RequestError::InvalidBody(format!(
            "the batch's `{what}` must be a JSON object"
        ))),
    }
}

/// Validates, translates and encodes a Segment request's messages: each
/// accepted, rejected with its reason, or listed as a duplicate, as for
/// Spoor's own batches. `limits` are Spoor's; Segment's sizes replace its
/// own (see `limits`).
pub fn ingest(
    req: &SegmentRequest,
    meta: &RequestMeta<'_>,
    limits: &Limits,
) -> Result<Ingested, RequestError> {
    let mut warnings = Vec::new();
    let batch_sent_at = match &req.sent_at {
        None | Some(Value::Null) => None,
        Some(v) => match time_of(v) {
            Ok(ms) => Some(ms),
            Err(e) => {
                warnings.push(format!("sentAt ignored, no clock-skew correction: {e}"));
                None
            }
        },
    };
    // The translated event is bigger than the message (the batch's
    // context merged in, `$segment`); the message itself was held to
    // 32 KB, so the translation is held only to the request's size.
    let inner = Limits {
        max_event_bytes: MAX_BATCH_BYTES.max(limits.max_event_bytes),
        ..limits.clone()
    };
    let translated: Vec<Result<Translated, Invalid>> = req
        .messages
        .iter()
        .map(|m| translate(m, req, batch_sent_at, meta))
        .collect();
    let mut assembly = Assembly::new(meta);
    for (index, (t, raw)) in translated.iter().zip(&req.messages).enumerate() {
        let outcome = t.as_ref().map_err(Clone::clone).and_then(|t| {
            let mut ev = parse_event(&t.json, meta, None, &inner)?;
            ev.event_id_derived = t.id_derived;
            ev.client_ts_ms = t.client_ts_ms;
            Ok((ev, t.device.clone()))
        });
        match outcome {
            Ok((ev, device)) => {
                let d = device.map_or(0, |d| assembly.device(d));
                assembly.accept(index, ev, d);
            }
            Err(inv) => assembly.reject(Rejection {
                index,
                event_id: message_id_of(raw),
                reason: inv.reason.to_string(),
                message: inv.message,
            }),
        }
    }
    assembly.receipt.warnings = warnings;
    assembly.finish(meta, batch_sent_at)
}

/// One message as the JSON text of a Spoor event, and what that text
/// cannot say.
struct Translated {
    json: String,
    id_derived: bool,
    client_ts_ms: Option<i64>,
    /// The device the message's context describes, when it describes one.
    device: Option<Device>,
}

fn translate(
    raw: &str,
    req: &SegmentRequest,
    batch_sent_at: Option<i64>,
    meta: &RequestMeta<'_>,
) -> Result<Translated, Invalid> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(Invalid::new(
            "event_too_large",
            format!(
                "message is {} bytes; Segment's limit is {MAX_MESSAGE_BYTES}",
                raw.len()
            ),
        ));
    }
    let mut msg = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(Invalid::new(
                "invalid_event",
                "each message must be a JSON object",
            ))
        }
    };

    let kind =
        match req.call.message_type() {
            Some(t) => t.to_string(),
            None => match msg.get("type") {
                Some(Value::String(t)) => t.to_ascii_lowercase(),
                _ => return Err(Invalid::new(
                    "invalid_type",
                    "a batch message needs `type`: track, identify, page, screen, group or alias",
                )),
            },
        };
    let name = match kind.as_str() {
        "track" => match msg.get("event") {
            Some(Value::String(e)) => e.clone(),
            _ => {
                return Err(Invalid::new(
                    "invalid_event_name",
                    "a track message needs `event`, the event's name as a string",
                ))
            }
        },
        "page" => "page_view".into(),
        "screen" => "screen_view".into(),
        "identify" | "group" | "alias" => kind.clone(),
        other => {
            return Err(Invalid::new(
                "invalid_type",
                format!(
                    "`type` {:?} is not one of track, identify, page, screen, group, alias",
                    short(other)
                ),
            ))
        }
    };

    let mut event = Map::new();
    event.insert("event".into(), Value::String(name));

    // Ids: strings or numbers; null and "" mean absent.
    for (from, to) in [("userId", "user_id"), ("anonymousId", "anonymous_id")] {
        match msg.get(from) {
            None | Some(Value::Null) => {}
            Some(v @ (Value::String(_) | Value::Number(_))) => {
                event.insert(to.into(), v.clone());
            }
            Some(_) => {
                return Err(Invalid::new(
                    "invalid_identity",
                    format!("`{from}` must be a string or a number"),
                ))
            }
        }
    }

    // messageId: a UUID is the event id; any other id maps to one through
    // a stable hash (a resend gets the same id); none, the message's text.
    let message_id = match msg.get("messageId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let (event_id, id_derived) = match &message_id {
        Some(id) => match Uuid::try_parse(id) {
            Ok(u) => (u, false),
            Err(_) => (
                route::derived_event_id(meta.project_id, format!("messageId:{id}").as_bytes()),
                false,
            ),
        },
        None => (
            route::derived_event_id(meta.project_id, raw.as_bytes()),
            true,
        ),
    };
    event.insert("event_id".into(), Value::String(event_id.to_string()));

    // Segment's clock rule.
    let time = |key: &str| -> Result<Option<i64>, Invalid> {
        match msg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => time_of(v)
                .map(Some)
                .map_err(|e| Invalid::new("invalid_timestamp", format!("`{key}` {e}"))),
        }
    };
    let timestamp = time("timestamp")?;
    let original = time("originalTimestamp")?;
    let sent_at = match msg.get("sentAt") {
        Some(v) if !v.is_null() => time_of(v).ok().or(batch_sent_at),
        _ => batch_sent_at,
    };
    let ts_ms = event_time(timestamp, original, sent_at, meta.received_at_ms);
    event.insert("timestamp".into(), Value::from(ts_ms));

    // Context: the batch's, overlaid by the message's own keys.
    let mut context = req.context.clone();
    match msg.remove("context") {
        None | Some(Value::Null) => {}
        Some(Value::Object(own)) => context.extend(own),
        Some(_) => {
            return Err(Invalid::new(
                "invalid_context",
                "`context` must be a JSON object",
            ))
        }
    }
    let (spoor_context, device) = map_context(&mut context);
    event.insert("context".into(), Value::Object(spoor_context));

    // Properties, and the message's own fields under `$segment`.
    let mut properties = match kind.as_str() {
        "track" | "page" | "screen" => match msg.remove("properties") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => {
                return Err(Invalid::new(
                    "invalid_properties",
                    "`properties` must be a JSON object",
                ))
            }
        },
        _ => Map::new(),
    };
    if kind == "page" || kind == "screen" {
        for key in ["name", "category"] {
            if let Some(v @ Value::String(_)) = msg.get(key) {
                properties.entry(key).or_insert_with(|| v.clone());
            }
        }
    }
    let mut segment = Map::new();
    segment.insert("type".into(), Value::String(kind.clone()));
    if let Some(id) = &message_id {
        segment.insert("messageId".into(), Value::String(id.clone()));
    }
    match kind.as_str() {
        "identify" | "group" => {
            // Always written (`{}` when absent), so the first `"traits":`
            // of the text is never one inside the context.
            let traits = msg
                .remove("traits")
                .filter(|t| !t.is_null())
                .unwrap_or_else(|| Value::Object(Map::new()));
            if !traits.is_object() {
                return Err(Invalid::new(
                    "invalid_traits",
                    "`traits` must be a JSON object",
                ));
            }
            segment.insert("traits".into(), traits);
        }
        _ => {}
    }
    let required = match kind.as_str() {
        "group" => Some(("groupId", "missing_group_id")),
        "alias" => Some(("previousId", "missing_previous_id")),
        _ => None,
    };
    if let Some((field, reason)) = required {
        match msg.remove(field) {
            Some(v @ Value::String(_)) if v.as_str() != Some("") => {
                segment.insert(field.into(), v);
            }
            Some(v @ Value::Number(_)) => {
                segment.insert(field.into(), v);
            }
            _ => {
                return Err(Invalid::new(
                    reason,
                    format!("a {kind} message needs `{field}`, a non-empty string or a number"),
                ))
            }
        }
    }
    if !context.is_empty() {
        segment.insert("context".into(), Value::Object(context));
    }
    let mut integrations = req.integrations.clone();
    if let Some(Value::Object(own)) = msg.remove("integrations") {
        integrations.extend(own);
    }
    if !integrations.is_empty() {
        segment.insert("integrations".into(), Value::Object(integrations));
    }
    properties.remove(SEGMENT_PROPERTY);

    Ok(Translated {
        json: event_json(event, &segment, &properties),
        id_derived,
        client_ts_ms: original.or(timestamp),
        device,
    })
}

/// The keys of `$segment` in the order they are written: the identity
/// fields before `context` and `integrations`, whose contents are the
/// client's. ClickHouse 18.16 reads JSON only with its flat extractors
/// (`visitParamExtract*`), which take the first `"key":` anywhere in the
/// text; written in this order, the first `"traits":`, `"groupId":` and
/// `"previousId":` of an identify, group or alias event's `properties` are
/// `$segment`'s own (nothing before them can hold an unescaped key), which
/// the identity views (`deploy/clickhouse/004_identity.sql`) rely on.
pub const SEGMENT_KEY_ORDER: [&str; 7] = [
    "type",
    "messageId",
    "groupId",
    "previousId",
    "traits",
    "context",
    "integrations",
];

/// The event's JSON text with `properties` written as `{"$segment": {..},
/// ..}`: `$segment` first, its keys in [`SEGMENT_KEY_ORDER`], then the
/// message's own properties. serde_json's maps sort their keys, so the
/// text is written here rather than left to the map.
fn event_json(
    mut event: Map<String, Value>,
    segment: &Map<String, Value>,
    properties: &Map<String, Value>,
) -> String {
    event.remove("properties");
    let mut text = Value::Object(event).to_string();
    // An object's text ends in `}`; `event` always holds `event`, so the
    // properties follow a comma.
    text.pop();
    text.push_str(",\"properties\":{");
    text.push_str(&Value::String(SEGMENT_PROPERTY.into()).to_string());
    text.push_str(":{");
    let mut first = true;
    for key in SEGMENT_KEY_ORDER {
        if let Some(value) = segment.get(key) {
            if !first {
                text.push(',');
            }
            first = false;
            text.push_str(&Value::String(key.into()).to_string());
            text.push(':');
            text.push_str(&value.to_string());
        }
    }
    text.push('}');
    for (key, value) in properties {
        text.push(',');
        text.push_str(&Value::String(key.clone()).to_string());
        text.push(':');
        text.push_str(&value.to_string());
    }
    text.push_str("}}");
    text
}

/// Segment's event time: `timestamp` when the message has one, else
/// `receivedAt - (sentAt - originalTimestamp)` (the client's clock offset
/// cancels out), else `originalTimestamp` as is, else the receive time.
pub fn event_time(
    timestamp: Option<i64>,
    original_timestamp: Option<i64>,
    sent_at: Option<i64>,
    received_at_ms: i64,
) -> i64 {
    match timestamp {
        Some(t) => t,
        None => corrected_time(original_timestamp, sent_at, received_at_ms),
    }
}

/// An ISO 8601 / RFC 3339 string (what every Segment SDK sends) or epoch
/// milliseconds.
fn time_of(v: &Value) -> Result<i64, String> {
    match v {
        Value::String(s) => parse_rfc3339_ms(s),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| "epoch milliseconds must be a whole number".to_string()),
        _ => Err("must be an ISO 8601 string or epoch milliseconds".into()),
    }
}

/// Moves what Spoor has columns for out of Segment's `context` into a
/// Spoor context (`page`, `app`, `library`, `campaign`, `locale`, `screen`)
/// and a device (from `os` and `device`, else from `userAgent`); what stays
/// in `context` (a campaign's keys other than `source`, `medium`, `name`,
/// `term` and `content`, say) is kept in `$segment.context`. `ip` stays only as its /24 or
/// /48 prefix: the full address is never stored.
fn map_context(ctx: &mut Map<String, Value>) -> (Map<String, Value>, Option<Device>) {
    let mut out = Map::new();
    for (key, fields) in [
        ("page", &["url", "path", "referrer", "title"][..]),
        ("app", &["name", "version"][..]),
        ("library", &["name", "version"][..]),
        (
            "campaign",
            &["source", "medium", "name", "term", "content"][..],
        ),
    ] {
        let Some(Value::Object(obj)) = ctx.get_mut(key) else {
            continue;
        };
        let mut mapped = Map::new();
        for &f in fields {
            let text = match obj.get(f) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            obj.remove(f);
            mapped.insert(f.into(), Value::String(text));
        }
        if obj.is_empty() {
            ctx.remove(key);
        }
        out.insert(key.into(), Value::Object(mapped));
    }
    if let Some(Value::String(_)) = ctx.get("locale") {
        if let Some(locale) = ctx.remove("locale") {
            out.insert("locale".into(), locale);
        }
    }
    if let Some(Value::Object(obj)) = ctx.get_mut("screen") {
        let mut mapped = Map::new();
        for f in ["width", "height"] {
            if let Some(n) = obj
                .get(f)
                .and_then(Value::as_u64)
                .filter(|n| *n <= u64::from(u32::MAX))
            {
                obj.remove(f);
                mapped.insert(f.into(), Value::from(n));
            }
        }
        if obj.is_empty() {
            ctx.remove("screen");
        }
        out.insert("screen".into(), Value::Object(mapped));
    }
    if let Some(Value::String(ip)) = ctx.get("ip") {
        let prefix = truncate_ip(ip);
        ctx.insert("ip".into(), Value::String(prefix));
    }
    // A mobile SDK's own description of the device beats its HTTP
    // client's User-Agent (Android's `Dalvik/…` says nothing of phone or
    // tablet); a browser's context has no `os` or `device`.
    let described = device_of(ctx);
    let device = match ctx.remove("userAgent") {
        Some(Value::String(ua)) if !ua.trim().is_empty() => {
            described.or_else(|| Some(Device::from_user_agent(&ua)))
        }
        Some(other) if !other.is_null() => {
            // Not a string: kept as it came.
            ctx.insert("userAgent".into(), other);
            described
        }
        _ => described,
    };
    (out, device)
}

/// The device a mobile SDK's `context.os` and `context.device` describe.
fn device_of(ctx: &Map<String, Value>) -> Option<Device> {
    let text = |obj: &str, f: &str| -> String {
        let mut s = match ctx.get(obj).and_then(|o| o.get(f)) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        truncate_utf8(&mut s, 128);
        s
    };
    let os = text("os", "name");
    let kind = text("device", "type").to_ascii_lowercase();
    if os.is_empty() && kind.is_empty() {
        return None;
    }
    let os_lower = os.to_ascii_lowercase();
    let device_type = match kind.as_str() {
        "tablet" | "ipad" => "tablet",
        "ios" | "android" | "mobile" | "phone" => "mobile",
        "tv" | "tvos" | "androidtv" => "tv",
        "desktop" | "macos" | "windows" | "linux" => "desktop",
        _ if os_lower.contains("ios") || os_lower.contains("android") => "mobile",
        _ => "unknown",
    };
    Some(Device {
        os,
        os_version: text("os", "version"),
        device_type: device_type.into(),
        ..Device::default()
    })
}

/// A rejected message's `messageId`, when it has one, for the receipt.
fn message_id_of(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "messageId", default)]
        message_id: Option<Value>,
    }
    let p: Probe = serde_json::from_str(raw).ok()?;
    match p.message_id? {
        Value::String(s) if !s.is_empty() => Some(short(&s)),
        _ => None,
    }
}

fn short(s: &str) -> String {
    let mut s = s.to_string();
    truncate_utf8(&mut s, 64);
    s
}

#[cfg(test)]
mod tests;
