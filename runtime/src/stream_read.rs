//! Reads a stretch of a JetStream stream in sequence order through an
//! ephemeral ordered consumer: no acks, no durable state, so the relays'
//! durable consumers never notice. It stops at the stream's last sequence
//! as of the start, or at the first message stored at or after `until`.
//! The `spoor` CLI (reconcile, dead letters) and `spoor-loadtest record`
//! read the streams through it; it must never bind to or ack on a durable
//! consumer.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use time::OffsetDateTime;

/// With nothing delivered yet, this long a silence means nothing is there
/// (e.g. every message after the start time was deleted).
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(2);
/// Once messages flow, a silence this long is a stalled read.
const STALL: Duration = Duration::from_secs(15);

pub struct StoredMessage {
    pub seq: u64,
    pub published: OffsetDateTime,
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl StoredMessage {
    /// A header by name. The name is parsed first: async-nats keys received
    /// standard headers (`Nats-Msg-Id`) as standard names, which a plain
    /// `&str` lookup (always a custom name) would miss.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name: async_nats::header::HeaderName = name.parse().ok()?;
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("JetStream stream {stream} does not exist (wrong --stream, or no relay has started on this NATS yet)")]
    NotFound { stream: String },
    #[error("cannot read JetStream stream {stream}: {message}")]
    Read { stream: String, message: String },
    #[error("reading JetStream stream {stream} stalled after sequence {after_seq}")]
    Stalled { stream: String, after_seq: u64 },
}

pub async fn get_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<jetstream::stream::Stream, ReadError> {
    js.get_stream(name).await.map_err(|e| match e.kind() {
        GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            ReadError::NotFound {
                stream: name.to_string(),
            }
        }
        _ => ReadError::Read {
            stream: name.to_string(),
            message: e.to_string(),
        },
    })
}

/// Calls `each` for every message stored in `[start, until)` (an absent
/// bound is open), in sequence order.
pub async fn read(
    js: &jetstream::Context,
    name: &str,
    start: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    mut each: impl FnMut(StoredMessage),
) -> Result<(), ReadError> {
    let read_error = |e: &dyn std::fmt::Display| ReadError::Read {
        stream: name.to_string(),
        message: e.to_string(),
    };
    let mut stream = get_stream(js, name).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| read_error(&e))?
        .state
        .clone();
    if state.messages == 0 || start.is_some_and(|s| state.last_timestamp < s) {
        return Ok(());
    }
    let last = state.last_sequence;
    let deliver_policy = match start {
        Some(start_time) => DeliverPolicy::ByStartTime { start_time },
        None => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            description: Some("spoor cli: read-only pass".to_string()),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| read_error(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| read_error(&e))?;
    let mut seen = 0u64;
    loop {
        let wait = if seen == 0 { FIRST_MESSAGE_WAIT } else { STALL };
        let message = match tokio::time::timeout(wait, messages.next()).await {
            Err(_) if seen == 0 => return Ok(()),
            Err(_) => {
                return Err(ReadError::Stalled {
                    stream: name.to_string(),
                    after_seq: seen,
                })
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(read_error(&e)),
            Ok(Some(Ok(message))) => message,
        };
        let (seq, published, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.published, info.pending),
            Err(e) => return Err(read_error(&e)),
        };
        seen = seq;
        if until.is_some_and(|u| published >= u) {
            return Ok(());
        }
        let message = message.split().0;
        each(StoredMessage {
            seq,
            published,
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload,
        });
        if seq >= last || pending == 0 {
            return Ok(());
        }
    }
}
