//! The validated event model: what the edge forwards and the relay stores.
//! These types are the contract between edge and relay; they travel as CBOR
//! inside a `codec` frame. They hold no behaviour beyond construction.

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
}
