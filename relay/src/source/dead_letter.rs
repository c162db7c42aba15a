//! Dead letters: moves a frame that can never be inserted (it does not
//! decode, has an unknown format version, is oversized, or inflates past the
//! limit) from the events stream to the `SPOOR_DEAD` stream, with the reason
//! and the frame's origin in headers, so it can be inspected and replayed
//! (`spoor dead-letters`).
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
use crate::internal_events::{DeadLetterFailed, FrameDeadLettered, InternalEvent};
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
    /// RFC 3339.
    pub published: Option<String>,
}

impl Origin {
    pub fn of(message: &jetstream::Message) -> Origin {
        match message.info() {
            Ok(info) => Origin {
                stream: Some(info.stream.to_string()),
                stream_sequence: Some(info.stream_sequence),
                published: info.published.format(&Rfc3339).ok(),
            },
            Err(_) => Origin::default(),
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
        .map(|v| v.as_str());
    let mut h = HeaderMap::new();
    h.insert(header::REASON, reason.kind);
    h.insert(
        header::DETAIL,
        header_value(&reason.error.to_string()).as_str(),
    );
    h.insert(
        header::ORIGINAL_SUBJECT,
        header_value(message.subject.as_str()).as_str(),
    );
    let original_id = original_id.map(header_value).unwrap_or_default();
    h.insert(header::ORIGINAL_MSG_ID, original_id.as_str());
    if let Some(stream) = &origin.stream {
        h.insert(header::ORIGINAL_STREAM, header_value(stream).as_str());
    }
    if let Some(seq) = origin.stream_sequence {
        h.insert(header::ORIGINAL_STREAM_SEQ, seq.to_string().as_str());
    }
    if let Some(published) = &origin.published {
        h.insert(header::ORIGINAL_TIME, published.as_str());
    }
    if let Some(id) = origin.dead_letter_msg_id() {
        h.insert(header::NATS_MSG_ID, header_value(&id).as_str());
    }
    h
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
