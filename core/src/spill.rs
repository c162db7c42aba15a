//! The spill format: a frame that no NATS region took, parked on a Cloudflare
//! Queue until the queue consumer can republish it, and the deterministic
//! split of frames too big for one queue message.
//!
//! A spilled message keeps its subject and `Nats-Msg-Id`, so the replay is
//! idempotent under JetStream's duplicate window. A frame is split only when
//! it does not fit; each piece then gets its own stable id, derived from the
//! parent's id and the piece's event ids, so spilling the same frame twice
//! yields the same pieces. Pure: no I/O, no clock.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::codec::{decode_batch, encode_batch};
use crate::event::{Event, WireBatch};
use crate::ingest::Outbound;

/// Version of the spill message layout.
pub const SPILL_VERSION: u8 = 1;

/// Cloudflare Queues accept messages up to 128 KB. The default leaves room
/// for the runtime's own wrapping of the JSON body.
pub const DEFAULT_SPILL_MAX_BYTES: usize = 96 * 1024;

/// One queue message: JSON with the frame in base64, so the dashboard can
/// preview it and any consumer can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpillMessage {
    pub v: u8,
    pub subject: String,
    /// `Nats-Msg-Id` to republish under.
    pub msg_id: String,
    /// Events in the frame, for counters.
    pub events: usize,
    /// The frame, standard base64.
    pub frame: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpillError {
    #[error("spilled frame {msg_id} cannot be split: {reason}")]
    Unsplittable { msg_id: String, reason: String },
    #[error("one event of frame {msg_id} needs {bytes} bytes as a queue message, over the {max}-byte limit")]
    EventTooLarge {
        msg_id: String,
        bytes: usize,
        max: usize,
    },
    #[error("spill message has version {0}, this edge reads version {SPILL_VERSION}")]
    UnknownVersion(u8),
    #[error("spill message frame is not base64: {0}")]
    BadFrame(String),
}

impl SpillMessage {
    pub fn new(subject: &str, msg_id: &str, events: usize, frame: &[u8]) -> Self {
        SpillMessage {
            v: SPILL_VERSION,
            subject: subject.to_string(),
            msg_id: msg_id.to_string(),
            events,
            frame: B64.encode(frame),
        }
    }

    /// Size of the message as JSON, the form the queue stores.
    pub fn encoded_len(&self) -> usize {
        // Subject and msg id are ASCII the edge produced; only the base64 and
        // the JSON punctuation add up. Serialising never fails for this type.
        serde_json::to_vec(self)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    }

    /// The frame bytes to republish.
    pub fn frame_bytes(&self) -> Result<Vec<u8>, SpillError> {
        if self.v != SPILL_VERSION {
            return Err(SpillError::UnknownVersion(self.v));
        }
        B64.decode(&self.frame)
            .map_err(|e| SpillError::BadFrame(e.to_string()))
    }
}

/// The id of a piece of a split frame: a hash of the parent's `Nats-Msg-Id`
/// and the piece's event ids.
pub fn piece_msg_id(parent: &str, event_ids: &[Uuid]) -> String {
    let mut buf = Vec::with_capacity(parent.len() + 1 + event_ids.len() * 16);
    buf.extend_from_slice(parent.as_bytes());
    buf.push(0);
    for id in event_ids {
        buf.extend_from_slice(id.as_bytes());
    }
    format!("{:032x}", xxh3_128_with_seed(&buf, 0x5b11))
}

/// The queue messages that carry `out`: one when it fits in `max_bytes`,
/// else pieces split by event (halving, in event order) until each fits.
/// `max_frame_bytes` bounds the decode of the frame being split.
pub fn spill_messages(
    out: &Outbound,
    max_bytes: usize,
    max_frame_bytes: usize,
) -> Result<Vec<SpillMessage>, SpillError> {
    let whole = SpillMessage::new(&out.subject, &out.msg_id, out.events, &out.frame);
    if whole.encoded_len() <= max_bytes {
        return Ok(vec![whole]);
    }
    let unsplittable = |reason: String| SpillError::Unsplittable {
        msg_id: out.msg_id.clone(),
        reason,
    };
    let batch =
        decode_batch(&out.frame, max_frame_bytes).map_err(|e| unsplittable(e.to_string()))?;
    let template = WireBatch {
        events: Vec::new(),
        ..batch.clone()
    };
    let mut pieces = Vec::new();
    split_into(out, &template, &batch.events, max_bytes, &mut pieces)?;
    Ok(pieces)
}

fn split_into(
    out: &Outbound,
    template: &WireBatch,
    events: &[Event],
    max_bytes: usize,
    pieces: &mut Vec<SpillMessage>,
) -> Result<(), SpillError> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let msg_id = piece_msg_id(&out.msg_id, &ids);
    let piece = WireBatch {
        batch_id: msg_id.clone(),
        events: events.to_vec(),
        ..template.clone()
    };
    let frame = encode_batch(&piece).map_err(|e| SpillError::Unsplittable {
        msg_id: out.msg_id.clone(),
        reason: e.to_string(),
    })?;
    let msg = SpillMessage::new(&out.subject, &msg_id, events.len(), &frame);
    let len = msg.encoded_len();
    if len <= max_bytes {
        pieces.push(msg);
        return Ok(());
    }
    if events.len() == 1 {
        return Err(SpillError::EventTooLarge {
            msg_id: out.msg_id.clone(),
            bytes: len,
            max: max_bytes,
        });
    }
    let (a, b) = events.split_at(events.len() / 2);
    split_into(out, template, a, max_bytes, pieces)?;
    split_into(out, template, b, max_bytes, pieces)
}

#[cfg(test)]
mod tests;
