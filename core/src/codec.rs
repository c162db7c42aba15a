//! The wire frame between edge and relay: a 16-byte versioned header followed
//! by an LZ4 block holding one CBOR-encoded `WireBatch`.
//!
//! ```text
//! 0..4   magic  b"SPR\0"
//! 4      format version (1)
//! 5      flags (bit 0: body is LZ4; no other bits defined)
//! 6..8   reserved, zero
//! 8..12  event count, u32 little-endian
//! 12..16 uncompressed body length, u32 little-endian
//! ```
//!
//! Decoding never trusts the header: the declared length is capped by the
//! caller's limit before anything is allocated, the LZ4 block must inflate to
//! exactly that length, and the decoded event count must match. Every failure
//! is a `DecodeError`; no input panics (the decoders are fuzzed).
//!
//! A JetStream message holds either one frame or a **bundle**: the frames of
//! several requests for the same subject that an edge link coalesced into one
//! message (see `edge/src/link`). A bundle is
//!
//! ```text
//! 0..4   magic  b"SPB\0"
//! 4      bundle version (1)
//! 5..8   reserved, zero
//! 8..12  frame count, u32 little-endian (at least 1)
//! then per frame: its length, u32 little-endian, and the frame itself
//! ```
//!
//! Readers of the stream call [`decode_message`] (or [`split_message`]),
//! never `decode_batch` on a message payload directly.

use crate::event::{BatchRef, WireBatch};

mod cbor;
#[doc(hidden)]
pub use cbor::read_batch as read_cbor_batch;
pub(crate) use cbor::write_batch as write_cbor;

pub const MAGIC: [u8; 4] = *b"SPR\0";
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
const FLAG_LZ4: u8 = 1;

/// The parsed, checked header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub event_count: u32,
    pub uncompressed_len: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    Incomplete(usize),
    #[error("not a Spoor frame (bad magic)")]
    BadMagic,
    #[error("unsupported frame format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("frame declares {declared} uncompressed bytes, over the {max}-byte limit")]
    TooLarge { declared: usize, max: usize },
    /// The frame decodes, but its rows would be too large: every row
    /// repeats the frame's request-level fields (geo, device, ids), so a
    /// frame of many events with long request fields multiplies in size.
    #[error("frame's rows would take up to {bytes} bytes, over the {max}-byte limit")]
    RowsTooLarge { bytes: usize, max: usize },
    #[error("LZ4 body is corrupt: {0}")]
    Decompress(String),
    #[error("LZ4 body inflated to {actual} bytes but the header declares {declared}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("CBOR body is invalid: {0}")]
    Cbor(String),
    #[error("frame declares {declared} events but holds {actual}")]
    CountMismatch { declared: u32, actual: usize },
    #[error("bundle is malformed: {0}")]
    BadBundle(String),
    #[error("frame {index} of a bundle: {source}")]
    InBundle {
        index: usize,
        #[source]
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    /// A short stable label for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Incomplete(_) => "incomplete",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::UnknownFlags(_) => "unknown_flags",
            DecodeError::TooLarge { .. } | DecodeError::RowsTooLarge { .. } => "too_large",
            DecodeError::Decompress(_) => "decompress",
            DecodeError::LengthMismatch { .. } => "length_mismatch",
            DecodeError::Cbor(_) => "cbor",
            DecodeError::CountMismatch { .. } => "count_mismatch",
            DecodeError::BadBundle(_) => "bad_bundle",
            DecodeError::InBundle { source, .. } => source.kind(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("batch encodes to {0} bytes, more than a frame can declare")]
    TooLarge(usize),
    #[error("CBOR encoding failed: {0}")]
    Cbor(String),
    #[error("LZ4 compression failed: {0}")]
    Compress(String),
}

/// Encodes a batch into one frame.
pub fn encode_batch(batch: &WireBatch) -> Result<Vec<u8>, EncodeError> {
    batch.with_ref(encode_batch_ref)
}

/// Encodes a borrowed batch into one frame (the edge's path: no copy of
/// the events' strings).
pub fn encode_batch_ref(batch: &BatchRef<'_>) -> Result<Vec<u8>, EncodeError> {
    let mut cbor = Vec::with_capacity(256 + batch.events.len() * 640);
    cbor::write_batch(&mut cbor, batch);
    let len = u32::try_from(cbor.len()).map_err(|_| EncodeError::TooLarge(cbor.len()))?;
    let count =
        u32::try_from(batch.events.len()).map_err(|_| EncodeError::TooLarge(batch.events.len()))?;
    let bound = lz4_flex::block::get_maximum_output_size(cbor.len());
    let mut out = vec![0u8; HEADER_LEN + bound];
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = FORMAT_VERSION;
    out[5] = FLAG_LZ4;
    out[8..12].copy_from_slice(&count.to_le_bytes());
    out[12..16].copy_from_slice(&len.to_le_bytes());
    let n = lz4_flex::block::compress_into(&cbor, &mut out[HEADER_LEN..])
        .map_err(|e| EncodeError::Compress(e.to_string()))?;
    out.truncate(HEADER_LEN + n);
    Ok(out)
}

/// Checks a frame's header without touching its body.
pub fn check_header(frame: &[u8], max_uncompressed: usize) -> Result<FrameHeader, DecodeError> {
    if frame.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete(frame.len()));
    }
    if frame[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = frame[4];
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let flags = frame[5];
    if flags != FLAG_LZ4 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let event_count = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]);
    let uncompressed_len = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]);
    if uncompressed_len as usize > max_uncompressed {
        return Err(DecodeError::TooLarge {
            declared: uncompressed_len as usize,
            max: max_uncompressed,
        });
    }
    Ok(FrameHeader {
        version,
        event_count,
        uncompressed_len,
    })
}

/// Decodes one frame, inflating at most `max_uncompressed` bytes.
pub fn decode_batch(frame: &[u8], max_uncompressed: usize) -> Result<WireBatch, DecodeError> {
    let header = check_header(frame, max_uncompressed)?;
    let declared = header.uncompressed_len as usize;
    let cbor = lz4_flex::block::decompress(&frame[HEADER_LEN..], declared)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if cbor.len() != declared {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: cbor.len(),
        });
    }
    // The edge's exact shape is read directly; anything else (an older
    // writer's field order, say) goes through ciborium, the reference.
    let batch: WireBatch = match cbor::read_batch(&cbor) {
        Some(batch) => batch,
        None => {
            ciborium::from_reader(cbor.as_slice()).map_err(|e| DecodeError::Cbor(e.to_string()))?
        }
    };
    if batch.events.len() != header.event_count as usize {
        return Err(DecodeError::CountMismatch {
            declared: header.event_count,
            actual: batch.events.len(),
        });
    }
    Ok(batch)
}

pub const BUNDLE_MAGIC: [u8; 4] = *b"SPB\0";
pub const BUNDLE_VERSION: u8 = 1;
pub const BUNDLE_HEADER_LEN: usize = 12;

/// The bytes a bundle of `frame_lens` frames adds around them.
pub fn bundle_overhead(frames: usize) -> usize {
    BUNDLE_HEADER_LEN + 4 * frames
}

/// Wraps frames into one bundle. Frames are copied as they are; a bundle of
/// one frame is valid, but publishers send a lone frame bare.
pub fn encode_bundle<F: AsRef<[u8]>>(frames: &[F]) -> Vec<u8> {
    let body: usize = frames.iter().map(|f| f.as_ref().len()).sum();
    let mut out = Vec::with_capacity(bundle_overhead(frames.len()) + body);
    out.extend_from_slice(&BUNDLE_MAGIC);
    out.push(BUNDLE_VERSION);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for f in frames {
        let f = f.as_ref();
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// True when a message payload is a bundle rather than a single frame.
pub fn is_bundle(payload: &[u8]) -> bool {
    payload.len() >= 4 && payload[0..4] == BUNDLE_MAGIC
}

/// The frames a message payload holds: itself when it is a plain frame, the
/// bundle's members otherwise. Checks the bundle's structure only (every
/// length inside the payload, nothing left over); the frames themselves are
/// checked by `decode_batch`.
pub fn split_message(payload: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    if !is_bundle(payload) {
        return Ok(vec![payload]);
    }
    let bad = |m: String| DecodeError::BadBundle(m);
    if payload.len() < BUNDLE_HEADER_LEN {
        return Err(bad(format!(
            "{} bytes, shorter than the {BUNDLE_HEADER_LEN}-byte header",
            payload.len()
        )));
    }
    if payload[4] != BUNDLE_VERSION {
        return Err(bad(format!("unsupported bundle version {}", payload[4])));
    }
    if payload[5..8] != [0, 0, 0] {
        return Err(bad("reserved bytes are not zero".into()));
    }
    let count = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]) as usize;
    // Every member needs at least its length and a frame header, so a count
    // the payload cannot hold is refused before anything is allocated.
    let room = (payload.len() - BUNDLE_HEADER_LEN) / (4 + HEADER_LEN);
    if count == 0 || count > room {
        return Err(bad(format!(
            "declares {count} frames, but {} bytes hold between 1 and {room}",
            payload.len()
        )));
    }
    let mut frames = Vec::with_capacity(count);
    let mut rest = &payload[BUNDLE_HEADER_LEN..];
    for i in 0..count {
        if rest.len() < 4 {
            return Err(bad(format!("frame {i}'s length is cut off")));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if len > rest.len() {
            return Err(bad(format!(
                "frame {i} declares {len} bytes but {} remain",
                rest.len()
            )));
        }
        frames.push(&rest[..len]);
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the last frame", rest.len())));
    }
    Ok(frames)
}

/// Decodes every batch of one message payload (a frame or a bundle). All or
/// nothing: one bad member fails the message, naming the member, because
/// the edge writes every member of a bundle itself and a bad one means the
/// message is damaged.
pub fn decode_message(
    payload: &[u8],
    max_uncompressed: usize,
) -> Result<Vec<WireBatch>, DecodeError> {
    let frames = split_message(payload)?;
    let bundled = is_bundle(payload);
    frames
        .into_iter()
        .enumerate()
        .map(|(index, f)| {
            decode_batch(f, max_uncompressed).map_err(|e| {
                if bundled {
                    DecodeError::InBundle {
                        index,
                        source: Box::new(e),
                    }
                } else {
                    e
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
