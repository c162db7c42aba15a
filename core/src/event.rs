//! The validated event model: what the edge forwards and the relay stores.
//! These types are the contract between edge and relay; they travel as CBOR
//! inside a `codec` frame. They hold no behaviour beyond construction.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::enrich::{Device, Geo};

/// One published message: the accepted events of one request that share a
/// partition, plus what the edge learnt about the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireBatch {
    /// Deterministic id of this message, also sent as `Nats-Msg-Id`: a hash of
    /// the project, partition and the event ids, so a retried or resent
    /// request publishes the same id and JetStream drops the copy.
    pub batch_id: String,
    pub project_id: String,
    /// Edge region that accepted the request.
    pub region: String,
    /// Edge clock when the request arrived, epoch ms.
    pub received_at_ms: i64,
    /// The client's `sent_at`, epoch ms, when it sent a valid one.
    pub sent_at_ms: Option<i64>,
    pub geo: Geo,
    pub device: Device,
    /// The client IP truncated to its /24 (IPv4) or /48 (IPv6) network; the
    /// full address is never forwarded.
    pub ip_prefix: String,
    pub events: Vec<Event>,
}

/// One accepted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: Uuid,
    /// True when the client sent no `event_id` and the edge derived one from
    /// the event's content (see `ingest`).
    pub event_id_derived: bool,
    pub event: String,
    /// Empty when absent; at least one of `user_id`/`anonymous_id` is set.
    pub user_id: String,
    pub anonymous_id: String,
    pub session_id: String,
    /// The client's own `timestamp`, epoch ms, when it sent one.
    pub client_ts_ms: Option<i64>,
    /// Event time after clock-skew correction, epoch ms. Partitions by day.
    pub ts_ms: i64,
    /// The property bag as compact JSON text (always an object).
    pub properties: String,
    pub context: Context,
}

impl Event {
    /// The device key the event is routed by: the anonymous id, else the user id.
    pub fn device_key(&self) -> &str {
        if self.anonymous_id.is_empty() {
            &self.user_id
        } else {
            &self.anonymous_id
        }
    }
}

/// The optional client context, flattened. Empty strings and zeros mean absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub page_url: String,
    pub page_path: String,
    pub page_referrer: String,
    pub page_title: String,
    pub app_name: String,
    pub app_version: String,
    pub library_name: String,
    pub library_version: String,
    pub locale: String,
    pub screen_width: u32,
    pub screen_height: u32,
    /// The campaign that brought the visitor (the page URL's `utm_*`
    /// parameters, or Segment's `context.campaign`). Written only when
    /// some field is set, so frames without a campaign stay as small as
    /// before, and frames written before it existed decode with it empty.
    #[serde(default, skip_serializing_if = "Campaign::is_empty")]
    pub campaign: Campaign,
}

/// A campaign's five `utm_*` fields. Empty strings mean absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Campaign {
    /// `utm_source`.
    pub source: String,
    /// `utm_medium`.
    pub medium: String,
    /// `utm_campaign` (Segment's `context.campaign.name`).
    pub name: String,
    /// `utm_term`.
    pub term: String,
    /// `utm_content`.
    pub content: String,
}

impl Campaign {
    pub fn is_empty(&self) -> bool {
        self.as_ref().is_empty()
    }

    /// This campaign, borrowed.
    pub fn as_ref(&self) -> CampaignRef<'_> {
        CampaignRef {
            source: Cow::Borrowed(&self.source),
            medium: Cow::Borrowed(&self.medium),
            name: Cow::Borrowed(&self.name),
            term: Cow::Borrowed(&self.term),
            content: Cow::Borrowed(&self.content),
        }
    }
}

/// `Campaign`, borrowing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignRef<'a> {
    pub source: Cow<'a, str>,
    pub medium: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub term: Cow<'a, str>,
    pub content: Cow<'a, str>,
}

impl CampaignRef<'_> {
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
            && self.medium.is_empty()
            && self.name.is_empty()
            && self.term.is_empty()
            && self.content.is_empty()
    }

    pub fn to_campaign(&self) -> Campaign {
        Campaign {
            source: self.source.to_string(),
            medium: self.medium.to_string(),
            name: self.name.to_string(),
            term: self.term.to_string(),
            content: self.content.to_string(),
        }
    }
}

impl WireBatch {
    /// Runs `f` on this batch borrowed as a `BatchRef` (what the CBOR
    /// writer reads).
    pub fn with_ref<R>(&self, f: impl FnOnce(&BatchRef<'_>) -> R) -> R {
        let events: Vec<EventRef<'_>> = self.events.iter().map(Event::as_ref).collect();
        f(&BatchRef {
            batch_id: &self.batch_id,
            project_id: &self.project_id,
            region: &self.region,
            received_at_ms: self.received_at_ms,
            sent_at_ms: self.sent_at_ms,
            geo: &self.geo,
            device: &self.device,
            ip_prefix: &self.ip_prefix,
            events: &events,
        })
    }
}

/// A batch as the edge encodes it, borrowing everything: the same fields,
/// in the same order, as `WireBatch`, which `codec` writes as the same
/// CBOR (a test holds the two encodings byte-equal).
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    pub batch_id: &'a str,
    pub project_id: &'a str,
    pub region: &'a str,
    pub received_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub geo: &'a Geo,
    pub device: &'a Device,
    pub ip_prefix: &'a str,
    pub events: &'a [EventRef<'a>],
}

/// An accepted event whose strings borrow the request body where the
/// client's JSON needed no unescaping: `Event`, without a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef<'a> {
    pub event_id: Uuid,
    pub event_id_derived: bool,
    pub event: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub anonymous_id: Cow<'a, str>,
    pub session_id: Cow<'a, str>,
    pub client_ts_ms: Option<i64>,
    pub ts_ms: i64,
    pub properties: Cow<'a, str>,
    pub context: ContextRef<'a>,
}

/// `Context`, borrowing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextRef<'a> {
    pub page_url: Cow<'a, str>,
    pub page_path: Cow<'a, str>,
    pub page_referrer: Cow<'a, str>,
    pub page_title: Cow<'a, str>,
    pub app_name: Cow<'a, str>,
    pub app_version: Cow<'a, str>,
    pub library_name: Cow<'a, str>,
    pub library_version: Cow<'a, str>,
    pub locale: Cow<'a, str>,
    pub screen_width: u32,
    pub screen_height: u32,
    pub campaign: CampaignRef<'a>,
}

impl EventRef<'_> {
    /// The device key the event is routed by, as `Event::device_key`.
    pub fn device_key(&self) -> &str {
        if self.anonymous_id.is_empty() {
            &self.user_id
        } else {
            &self.anonymous_id
        }
    }

    pub fn to_event(&self) -> Event {
        let c = &self.context;
        Event {
            event_id: self.event_id,
            event_id_derived: self.event_id_derived,
            event: self.event.to_string(),
            user_id: self.user_id.to_string(),
            anonymous_id: self.anonymous_id.to_string(),
            session_id: self.session_id.to_string(),
            client_ts_ms: self.client_ts_ms,
            ts_ms: self.ts_ms,
            properties: self.properties.to_string(),
            context: Context {
                page_url: c.page_url.to_string(),
                page_path: c.page_path.to_string(),
                page_referrer: c.page_referrer.to_string(),
                page_title: c.page_title.to_string(),
                app_name: c.app_name.to_string(),
                app_version: c.app_version.to_string(),
                library_name: c.library_name.to_string(),
                library_version: c.library_version.to_string(),
                locale: c.locale.to_string(),
                screen_width: c.screen_width,
                screen_height: c.screen_height,
                campaign: c.campaign.to_campaign(),
            },
        }
    }
}

impl Event {
    /// This event, borrowed.
    pub fn as_ref(&self) -> EventRef<'_> {
        let c = &self.context;
        fn b(s: &str) -> Cow<'_, str> {
            Cow::Borrowed(s)
        }
        EventRef {
            event_id: self.event_id,
            event_id_derived: self.event_id_derived,
            event: b(&self.event),
            user_id: b(&self.user_id),
            anonymous_id: b(&self.anonymous_id),
            session_id: b(&self.session_id),
            client_ts_ms: self.client_ts_ms,
            ts_ms: self.ts_ms,
            properties: b(&self.properties),
            context: ContextRef {
                page_url: b(&c.page_url),
                page_path: b(&c.page_path),
                page_referrer: b(&c.page_referrer),
                page_title: b(&c.page_title),
                app_name: b(&c.app_name),
                app_version: b(&c.app_version),
                library_name: b(&c.library_name),
                library_version: b(&c.library_version),
                locale: b(&c.locale),
                screen_width: c.screen_width,
                screen_height: c.screen_height,
                campaign: c.campaign.as_ref(),
            },
        }
    }
}
