//! The edge's hand-off to its NATS link: which link a request's frames go
//! to, the body that carries them there, the link's answer, and how a link
//! coalesces frames into JetStream messages.
//!
//! A link is a Durable Object that owns one long-lived NATS connection
//! (`edge/src/link.rs`). This module is the platform-neutral part of it:
//! pure functions, unit-tested and fuzzed natively. It never does I/O.
//!
//! Invariants:
//! - The hand-off body is decoded without trusting a single length: every
//!   count and length is checked against what is left, and bad input is an
//!   error, never a panic.
//! - A coalesced message's `Nats-Msg-Id` depends only on the ids of the
//!   frames it holds, in order: the link's retry of the same message is
//!   JetStream's duplicate. A message of one frame is that frame, bare,
//!   under the frame's own id, exactly what the per-request path publishes.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::codec::{bundle_overhead, encode_bundle};

/// The hand-off format's version byte.
pub const HANDOFF_VERSION: u8 = 1;

/// The link a request's frames go to: `<region>:<colo>:<k>`, `k` chosen
/// from the request's first partition so that one partition's frames meet
/// in one link (where they coalesce).
pub fn link_name(region: &str, colo: &str, first_partition: u32, shards: u32) -> String {
    let colo = if colo.is_empty() { "local" } else { colo };
    format!("{region}:{colo}:{}", first_partition % shards.max(1))
}

/// One frame handed to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffFrame {
    pub subject: String,
    pub msg_id: String,
    pub events: u32,
    pub frame: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link hand-off body is malformed: {0}")]
pub struct HandoffError(pub String);

/// Frames handed to a link, and how it may send them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Each frame goes out as its own message under its own id, never
    /// coalesced: the spill replay's frames may repeat one another (a frame
    /// spilled twice), and only bare frames let JetStream's duplicate window
    /// drop the repeat.
    pub alone: bool,
    pub frames: Vec<HandoffFrame>,
}

const FLAG_ALONE: u8 = 1;

/// A frame to hand off, borrowed from the request's own frames (the
/// hand-off body is the only copy made).
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub subject: &'a str,
    pub msg_id: &'a str,
    pub events: u32,
    pub frame: &'a [u8],
}

impl HandoffFrame {
    pub fn as_ref(&self) -> FrameRef<'_> {
        FrameRef {
            subject: &self.subject,
            msg_id: &self.msg_id,
            events: self.events,
            frame: &self.frame,
        }
    }
}

/// Encodes a hand-off for the link (see [`encode_handoff_refs`]).
pub fn encode_handoff(handoff: &Handoff) -> Vec<u8> {
    let frames: Vec<FrameRef<'_>> = handoff.frames.iter().map(HandoffFrame::as_ref).collect();
    encode_handoff_refs(handoff.alone, &frames)
}

/// Encodes a hand-off for the link: `version, flags, count u16, then per
/// frame: subject (u16 len), msg id (u16 len), events u32, frame (u32
/// len)`, all little-endian.
pub fn encode_handoff_refs(alone: bool, frames: &[FrameRef<'_>]) -> Vec<u8> {
    let size: usize = frames
        .iter()
        .map(|f| 12 + f.subject.len() + f.msg_id.len() + f.frame.len())
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.push(HANDOFF_VERSION);
    out.push(if alone { FLAG_ALONE } else { 0 });
    out.extend_from_slice(&(frames.len() as u16).to_le_bytes());
    for f in frames {
        out.extend_from_slice(&(f.subject.len() as u16).to_le_bytes());
        out.extend_from_slice(f.subject.as_bytes());
        out.extend_from_slice(&(f.msg_id.len() as u16).to_le_bytes());
        out.extend_from_slice(f.msg_id.as_bytes());
        out.extend_from_slice(&f.events.to_le_bytes());
        out.extend_from_slice(&(f.frame.len() as u32).to_le_bytes());
        out.extend_from_slice(f.frame);
    }
    out
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], HandoffError> {
        if self.rest.len() < n {
            return Err(HandoffError(format!(
                "{what} needs {n} bytes, {} remain",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u16(&mut self, what: &str) -> Result<usize, HandoffError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self, what: &str) -> Result<u32, HandoffError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn text(&mut self, what: &str) -> Result<String, HandoffError> {
        let n = self.u16(what)?;
        let b = self.take(n, what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| HandoffError(format!("{what} is not UTF-8")))
    }
}

/// Decodes a hand-off body.
pub fn decode_handoff(body: &[u8]) -> Result<Handoff, HandoffError> {
    let mut c = Cursor { rest: body };
    let version = c.take(1, "version")?[0];
    if version != HANDOFF_VERSION {
        return Err(HandoffError(format!("unsupported version {version}")));
    }
    let flags = c.take(1, "flags")?[0];
    if flags & !FLAG_ALONE != 0 {
        return Err(HandoffError(format!("unknown flags {flags:#04x}")));
    }
    let count = c.u16("frame count")?;
    // Each frame takes at least 12 bytes of lengths.
    if count > c.rest.len() / 12 {
        return Err(HandoffError(format!(
            "{count} frames cannot fit in {} bytes",
            c.rest.len()
        )));
    }
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        let subject = c.text("subject")?;
        let msg_id = c.text("msg id")?;
        let events = c.u32("event count")?;
        let len = c.u32("frame length")? as usize;
        let frame = c.take(len, "frame")?.to_vec();
        frames.push(HandoffFrame {
            subject,
            msg_id,
            events,
            frame,
        });
    }
    if !c.rest.is_empty() {
        return Err(HandoffError(format!(
            "{} bytes after the last frame",
            c.rest.len()
        )));
    }
    Ok(Handoff {
        alone: flags & FLAG_ALONE != 0,
        frames,
    })
}

/// The link's answer for one handed-off frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameResult {
    /// The PubAck's stream sequence when stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Why it was not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// JetStream refused it because the stream (or the server's store) is
    /// full: not stored, and retrying soon will not help.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream_full: bool,
}

impl FrameResult {
    pub fn is_stored(&self) -> bool {
        self.seq.is_some()
    }
}

/// The link's answer to one hand-off: a result per frame, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffAnswer {
    pub results: Vec<FrameResult>,
}

/// What a link reports of itself (its `/health`), shown by the edge's
/// /healthz and /metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkHealth {
    pub name: String,
    pub connected: bool,
    pub in_flight: usize,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at_ms: Option<i64>,
    /// Connections opened since the object started.
    pub connects: u64,
    /// Connection attempts the network cut off and the link made again.
    #[serde(default)]
    pub connect_retries: u64,
    /// JetStream messages published, and the frames they carried.
    pub messages: u64,
    pub frames: u64,
    /// Frames a failure answered (no PubAck).
    pub failed_frames: u64,
    /// Frames answered as duplicates of one the link stored (or was
    /// storing) under the same id, without publishing them again.
    #[serde(default)]
    pub duplicate_frames: u64,
    /// Frames JetStream refused because the stream was full (counted in
    /// `failed_frames` too), and when that last happened.
    #[serde(default)]
    pub stream_full_frames: u64,
    #[serde(default)]
    pub last_stream_full_at_ms: Option<i64>,
}

/// The `Nats-Msg-Id` of a message coalescing frames with `ids`.
pub fn bundle_msg_id<S: AsRef<str>>(ids: &[S]) -> String {
    let mut buf = Vec::with_capacity(ids.len() * 33);
    for id in ids {
        buf.extend_from_slice(id.as_ref().as_bytes());
        buf.push(0);
    }
    format!("{:032x}", xxh3_128_with_seed(&buf, 0xb0d1e))
}

/// How long and how big a link lets a subject's pending message grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce {
    /// Frames that reach the link within this many ms of the first go out
    /// together; 0 publishes every frame at once, alone.
    pub window_ms: u64,
    /// A pending message is sent as soon as it holds this many bytes.
    pub max_bytes: usize,
}

impl Default for Coalesce {
    fn default() -> Self {
        Coalesce {
            window_ms: 2,
            max_bytes: 256 * 1024,
        }
    }
}

/// Frames waiting for their subject's message to be sent.
#[derive(Debug, Default)]
pub struct Pending {
    pub frames: Vec<HandoffFrame>,
    pub bytes: usize,
}

/// What adding a frame to a subject's pending message asks the link to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// The frame opened a new pending message: start its window timer.
    Opened,
    /// The frame joined a pending message that is still open.
    Joined,
    /// The pending message is full (or coalescing is off): send it now.
    Full,
}

impl Pending {
    /// Whether `frame` fits, given `limits`, without the message passing
    /// `max_bytes` (a message always takes at least one frame).
    pub fn fits(&self, frame: &HandoffFrame, limits: Coalesce) -> bool {
        self.frames.is_empty()
            || self.bytes + frame.frame.len() + bundle_overhead(self.frames.len() + 1)
                <= limits.max_bytes
    }

    /// Adds a frame (the caller checked `fits`, or sent the old message).
    pub fn add(&mut self, frame: HandoffFrame, limits: Coalesce) -> AddOutcome {
        let opened = self.frames.is_empty();
        self.bytes += frame.frame.len();
        self.frames.push(frame);
        if limits.window_ms == 0
            || self.bytes + bundle_overhead(self.frames.len()) >= limits.max_bytes
        {
            AddOutcome::Full
        } else if opened {
            AddOutcome::Opened
        } else {
            AddOutcome::Joined
        }
    }

    /// The message to publish: `(msg id, payload)`. One frame goes bare
    /// under its own id; several go as a bundle under [`bundle_msg_id`].
    pub fn message(&self) -> (String, Vec<u8>) {
        match self.frames.as_slice() {
            [one] => (one.msg_id.clone(), one.frame.clone()),
            many => {
                let ids: Vec<&str> = many.iter().map(|f| f.msg_id.as_str()).collect();
                let frames: Vec<&[u8]> = many.iter().map(|f| f.frame.as_slice()).collect();
                (bundle_msg_id(&ids), encode_bundle(&frames))
            }
        }
    }
}

/// The frames a link has stored recently, by `Nats-Msg-Id`, with their
/// stream sequence: a frame handed to the link again (an SDK's resend of
/// the same batch, a fast ack's retry) is answered from here instead of
/// being published inside another message under another id. This is
/// JetStream's duplicate window at frame granularity, which coalescing
/// would otherwise lose. Bounded by age and by count, oldest first.
#[derive(Debug)]
pub struct RecentFrames {
    window_ms: i64,
    max: usize,
    /// By a 128-bit hash of the id (16 bytes, not the id's text): about 80
    /// bytes an entry with the order below, 8 MB at 100,000.
    seq_by_id: std::collections::HashMap<u128, (u64, i64)>,
    /// Insertion order, one slot per id in `seq_by_id`.
    order: std::collections::VecDeque<(i64, u128)>,
}

fn id_key(id: &str) -> u128 {
    xxh3_128_with_seed(id.as_bytes(), 0x1d5)
}

impl RecentFrames {
    pub fn new(window_ms: i64, max: usize) -> Self {
        RecentFrames {
            window_ms,
            max: max.max(1),
            seq_by_id: Default::default(),
            order: Default::default(),
        }
    }

    /// The stored frame's sequence, if `id` was stored within the window.
    pub fn get(&mut self, id: &str, now_ms: i64) -> Option<u64> {
        self.expire(now_ms);
        self.seq_by_id.get(&id_key(id)).map(|(seq, _)| *seq)
    }

    pub fn insert(&mut self, id: &str, seq: u64, now_ms: i64) {
        self.expire(now_ms);
        let key = id_key(id);
        // One entry per id, aged from its first store.
        if let std::collections::hash_map::Entry::Vacant(slot) = self.seq_by_id.entry(key) {
            slot.insert((seq, now_ms));
            self.order.push_back((now_ms, key));
        }
        while self.seq_by_id.len() > self.max {
            self.pop_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.seq_by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq_by_id.is_empty()
    }

    fn expire(&mut self, now_ms: i64) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > self.window_ms)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.seq_by_id.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
