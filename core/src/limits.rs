//! The limits the edge enforces on requests and events, with their defaults.
//! Limits are plain data handed to `ingest`; nothing here reads configuration.

use serde::{Deserialize, Serialize};

/// Every bound the ingest path enforces. `Default` gives the documented
/// production values; tests and deployments may tighten them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Most events in one `/v1/batch` request.
    pub max_batch_events: usize,
    /// Most bytes in one request body, counted after gzip decompression.
    pub max_body_bytes: usize,
    /// Most bytes of one event's JSON text.
    pub max_event_bytes: usize,
    /// Deepest nesting of objects and arrays inside `properties` (the bag itself is depth 1).
    pub max_property_depth: usize,
    /// Longest string value (and property key) in bytes.
    pub max_string_bytes: usize,
    /// Longest `user_id`, `anonymous_id` or `session_id` in bytes.
    pub max_id_bytes: usize,
    /// Longest event name in bytes.
    pub max_event_name_bytes: usize,
    /// How far in the future (after skew correction) an event time may lie.
    pub max_future_ms: i64,
    /// How far in the past (after skew correction) an event time may lie.
    pub max_past_ms: i64,
    /// Largest uncompressed wire frame a decoder will inflate.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_events: 500,
            max_body_bytes: 512 * 1024,
            max_event_bytes: 32 * 1024,
            max_property_depth: 8,
            max_string_bytes: 8 * 1024,
            max_id_bytes: 256,
            max_event_name_bytes: 128,
            max_future_ms: 24 * 3600 * 1000,
            max_past_ms: 30 * 24 * 3600 * 1000,
            max_frame_bytes: 8 * 1024 * 1024,
        }
    }
}
