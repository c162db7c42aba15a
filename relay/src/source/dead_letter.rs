//! Dead letters: moves a frame that can never be inserted (it does not
//! decode, has an unknown format version, is oversized, or inflates past the
//! limit) from the events stream to the `SPOOR_DEAD` stream, with the reason
//! and the frame's origin in headers, so it can be inspected and replayed
//! (`spoor dead-letters`). Rows of a decoded frame that the relay will not
//! insert (an unknown project, rows ClickHouse refuses) go the same way as
//! a [`RowsLetter`]: re-encoded as a frame, published, and the original
//! acked with its other rows (see `crate::refused`).
//!
//! The one rule: **nothing leaves the main stream undecoded without a
//! dead-letter PubAck.** The original is acked only after JetStream has
//! stored the dead letter; if that publish fails the original stays unacked
//! and comes back after `ack_wait`. The dead letter's `Nats-Msg-Id` is
//! derived from the original's stream and sequence, so a crash between the
//! publish and the ack (a redelivery publishes again) cannot store it twice.
//! This module never decides *whether* a frame is dead: the pipeline does,
//! from `spoor_core::decode_batch`.

use async_nats::jetstream::{self, message::Acker};
use async_nats::HeaderMap;
use time::format_description::well_known::Rfc3339;

use spoor_core::contract::{dead_letter_header as header, DEAD_STREAM, DEAD_SUBJECT_PREFIX};

use super::nats::{self as source_nats, SourceError};
use crate::internal_events::{
    DeadLetterFailed, FrameDeadLettered, InternalEvent, RowsDeadLettered,
};
use crate::metrics::Metrics;

/// The dead-letter stream definition, in the JetStream API's JSON form.
pub const DEAD_STREAM_CONFIG_JSON: &str = include_str!("../../../deploy/nats/dead-stream.json");
/// Longest `Spoor-Dead-Detail` kept; the rest of a long error is cut.
const MAX_DETAIL_BYTES: usize = 512;

/// Creates or updates `SPOOR_DEAD` from its embedded definition.
pub async fn ensure_stream(js: &jetstream::Context) -> Result<(), SourceError> {
    source_nats::ensure_stream_from(js, DEAD_STREAM_CONFIG_JSON, DEAD_STREAM).await
}

/// Where a message came from, read before the message is split into its
/// parts. Everything is optional because a message without JetStream
/// metadata can still be dead-lettered (just without a dedup id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub stream: Option<String>,
    pub stream_sequence: Option<u64>,
    /// When JetStream stored it; written as RFC 3339 only into a dead
    /// letter's headers.
    pub published: Option<time::OffsetDateTime>,
}

impl Origin {
    /// The origin in `info`, a message's JetStream metadata.
    pub fn of(info: &jetstream::message::Info<'_>) -> Origin {
        Origin {
            stream: Some(info.stream.to_string()),
            stream_sequence: Some(info.stream_sequence),
            published: Some(info.published),
        }
    }

    /// `dead:<stream>:<seq>`: the same original always gives the same id.
    pub fn dead_letter_msg_id(&self) -> Option<String> {
        match (&self.stream, self.stream_sequence) {
            (Some(stream), Some(seq)) => Some(format!("dead:{stream}:{seq}")),
            _ => None,
        }
    }
}

/// Why a frame is dead.
#[derive(Debug, Clone, Copy)]
pub struct Reason<'a> {
    /// `DecodeError::kind()`: a subject token and a metric label.
    pub kind: &'static str,
    /// `Sync` because it is held across the publish's awaits.
    pub error: &'a (dyn std::error::Error + Sync),
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("publishing the dead letter to {subject} failed: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("the dead letter is stored but the original could not be acked: {0}")]
    Ack(#[source] source_nats::AckError),
    #[error("the rows could not be encoded as a frame: {0}")]
    Encode(#[source] spoor_core::codec::EncodeError),
    #[error(
        "refused row {event_id}'s message no longer decodes, so its dead letter cannot be written"
    )]
    Rebuild { event_id: uuid::Uuid },
}

/// The headers of a dead letter for `message`. Pure, so it is unit-tested.
pub fn headers(message: &async_nats::Message, origin: &Origin, reason: Reason<'_>) -> HeaderMap {
    // By constant, not by "Nats-Msg-Id": async-nats keys a received
    // standard header as the standard name, and a `&str` lookup as a custom
    // one, which never match.
    let original_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str())
        .unwrap_or_default();
    let mut h = common_headers(
        message.subject.as_str(),
        original_id,
        origin,
        reason.kind,
        &reason.error.to_string(),
    );
    if let Some(id) = origin.dead_letter_msg_id() {
        h.insert(header::NATS_MSG_ID, header_value(&id).as_str());
    }
    h
}

/// What every dead letter says about itself and its original.
fn common_headers(
    subject: &str,
    original_id: &str,
    origin: &Origin,
    reason: &str,
    detail: &str,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::REASON, reason);
    h.insert(header::DETAIL, header_value(detail).as_str());
    h.insert(header::ORIGINAL_SUBJECT, header_value(subject).as_str());
    h.insert(header::ORIGINAL_MSG_ID, header_value(original_id).as_str());
    if let Some(stream) = &origin.stream {
        h.insert(header::ORIGINAL_STREAM, header_value(stream).as_str());
    }
    if let Some(seq) = origin.stream_sequence {
        h.insert(header::ORIGINAL_STREAM_SEQ, seq.to_string().as_str());
    }
    if let Some(published) = origin.published.and_then(|t| t.format(&Rfc3339).ok()) {
        h.insert(header::ORIGINAL_TIME, published.as_str());
    }
    h
}

/// A dead letter holding some events of a message that decoded, re-encoded
/// as a frame (or a bundle) of the events stream's format: rows the relay
/// will not insert while the rest of the message is inserted. It replays
/// like any dead letter (`spoor dead-letters replay`) to the original's
/// subject.
#[derive(Debug, Clone)]
pub struct RowsLetter<'a> {
    /// The original message's subject and `Nats-Msg-Id` (empty if none).
    pub subject: &'a str,
    pub original_msg_id: &'a str,
    pub origin: &'a Origin,
    /// A subject token and a metric label, e.g. `unknown_project`.
    pub reason: &'static str,
    /// For a person: the server's exception, the refused project.
    pub detail: &'a str,
    /// The events it holds, by id (they name its `Nats-Msg-Id`).
    pub event_ids: &'a [uuid::Uuid],
    pub payload: bytes::Bytes,
}

impl RowsLetter<'_> {
    /// `dead:<stream>:<seq>:<reason>:<hash of the event ids>`: the same rows
    /// of the same original, refused for the same reason, always get the same
    /// id, so dead-lettering them again after a redelivery stores nothing new.
    pub fn msg_id(&self) -> Option<String> {
        let base = self.origin.dead_letter_msg_id()?;
        let mut ids = self.event_ids.to_vec();
        ids.sort_unstable();
        let hash = spoor_core::route::batch_id(self.reason, 0, &ids);
        Some(format!("{base}:{}:{hash}", self.reason))
    }

    /// Its headers. Pure, so it is unit-tested.
    pub fn headers(&self) -> HeaderMap {
        let mut h = common_headers(
            self.subject,
            self.original_msg_id,
            self.origin,
            self.reason,
            self.detail,
        );
        h.insert(header::ROWS, self.event_ids.len().to_string().as_str());
        if let Some(id) = self.msg_id() {
            h.insert(header::NATS_MSG_ID, header_value(&id).as_str());
        }
        h
    }
}

/// Publishes a rows dead letter and waits for its PubAck. The original is
/// not acked here: it carries other rows, and is acked with them.
pub async fn publish_rows(
    client: &async_nats::Client,
    letter: &RowsLetter<'_>,
    metrics: &Metrics,
) -> Result<(), DeadLetterError> {
    let subject = format!("{DEAD_SUBJECT_PREFIX}{}", letter.reason);
    let js = jetstream::new(client.clone());
    let publish = |source| DeadLetterError::Publish {
        subject: subject.clone(),
        source,
    };
    let result = async {
        js.publish_with_headers(subject.clone(), letter.headers(), letter.payload.clone())
            .await
            .map_err(publish)?
            .await
            .map_err(publish)
    }
    .await;
    match &result {
        Ok(ack) => RowsDeadLettered {
            reason: letter.reason,
            rows: letter.event_ids.len(),
            stream_sequence: letter.origin.stream_sequence,
            dead_sequence: ack.sequence,
            duplicate: ack.duplicate,
        }
        .emit(metrics),
        Err(error) => DeadLetterFailed {
            reason: letter.reason,
            stream_sequence: letter.origin.stream_sequence,
            error,
        }
        .emit(metrics),
    }
    result.map(|_| ())
}

/// A header value NATS accepts: no CR/LF or other control characters, and
/// bounded (error texts can quote parts of the payload).
fn header_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_DETAIL_BYTES));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_DETAIL_BYTES {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// Publishes `message` to `spoor.dead.<reason>`, waits for the PubAck, and
/// only then acks the original. On any failure the original is left unacked
/// (JetStream redelivers it after `ack_wait`, and it is dead-lettered again
/// under the same `Nats-Msg-Id`).
pub async fn dead_letter(
    client: &async_nats::Client,
    acker: &Acker,
    message: &async_nats::Message,
    origin: &Origin,
    reason: Reason<'_>,
    metrics: &Metrics,
) -> Result<(), DeadLetterError> {
    let result = publish_then_ack(client, acker, message, origin, reason).await;
    match &result {
        Ok(ack) => FrameDeadLettered {
            reason: reason.kind,
            stream_sequence: origin.stream_sequence,
            dead_sequence: ack.sequence,
            duplicate: ack.duplicate,
        }
        .emit(metrics),
        Err(error) => DeadLetterFailed {
            reason: reason.kind,
            stream_sequence: origin.stream_sequence,
            error,
        }
        .emit(metrics),
    }
    result.map(|_| ())
}

async fn publish_then_ack(
    client: &async_nats::Client,
    acker: &Acker,
    message: &async_nats::Message,
    origin: &Origin,
    reason: Reason<'_>,
) -> Result<jetstream::publish::PublishAck, DeadLetterError> {
    let subject = format!("{DEAD_SUBJECT_PREFIX}{}", reason.kind);
    let js = jetstream::new(client.clone());
    let publish = |source| DeadLetterError::Publish {
        subject: subject.clone(),
        source,
    };
    let ack = js
        .publish_with_headers(
            subject.clone(),
            headers(message, origin, reason),
            message.payload.clone(),
        )
        .await
        .map_err(publish)?
        .await
        .map_err(publish)?;
    source_nats::ack_all(client, std::slice::from_ref(acker))
        .await
        .map_err(DeadLetterError::Ack)?;
    Ok(ack)
}

#[cfg(test)]
mod tests;
