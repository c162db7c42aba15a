//! Claims: how the relays of a region share their dedup windows.
//!
//! When a relay buffers events, it publishes their ids (16 raw bytes each)
//! to the claims stream, `<events stream>_CLAIMS` on subject
//! `spoor.claims.<events stream>`, with its instance id in a header. Every
//! relay follows that stream with an ordered consumer and adds other
//! instances' ids to its window as [`Origin::Claimed`](crate::dedup::Origin),
//! so a copy of an event that reaches a different relay (an SDK resend the
//! edge could not collapse) is dropped there too.
//!
//! At start a relay replays the last `dedup_window` of claims *before* it
//! pulls its first frame, so a restarted relay (or a new one scaled in)
//! knows what the region buffered recently. That is the "window survives
//! restarts" half of the design; the other half is that a redelivered frame
//! never trusts a claim and asks ClickHouse instead (see `crate::dedup`).
//!
//! Publishing is fire-and-forget (no PubAck awaited): a lost claim costs at
//! most one duplicate row, which the table's ReplacingMergeTree collapses and
//! `spoor reconcile` reports; waiting for it would put a round trip on every
//! frame.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream::Config};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use spoor_core::contract::{claims_stream, claims_subject, CLAIMS_INSTANCE_HEADER};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::internal_events::{ClaimsFollowFailed, InternalEvent};
use crate::metrics::Metrics;

use super::nats::{ensure_stream_config, stream_config_from, SourceError};

/// The claims stream definition, in the JetStream API's JSON form.
pub const CLAIMS_STREAM_JSON: &str = include_str!("../../../deploy/nats/claims-stream.json");

/// Most ids in one claim message (16 bytes each: 512 KiB).
pub const MAX_IDS_PER_CLAIM: usize = 32_768;

/// The claims stream definition for `events_stream`.
pub fn stream_config(events_stream: &str) -> Result<Config, SourceError> {
    let mut config = stream_config_from(CLAIMS_STREAM_JSON, &claims_stream(events_stream))?;
    config.subjects = vec![claims_subject(events_stream)];
    Ok(config)
}

/// Creates or updates the claims stream for `events_stream`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    events_stream: &str,
) -> Result<(), SourceError> {
    ensure_stream_config(js, stream_config(events_stream)?, CLAIMS_STREAM_JSON).await
}

/// Encodes ids as concatenated 16-byte values.
pub fn encode(ids: &[Uuid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 16);
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Decodes a claim payload. A payload whose length is not a multiple of 16
/// is not a claim (nothing trustworthy can be read from it) and yields
/// `None`.
pub fn decode(payload: &[u8]) -> Option<Vec<Uuid>> {
    if !payload.len().is_multiple_of(16) {
        return None;
    }
    Some(
        payload
            .chunks_exact(16)
            .filter_map(|c| <[u8; 16]>::try_from(c).ok().map(Uuid::from_bytes))
            .collect(),
    )
}

/// Publishes this relay's claims.
#[derive(Clone)]
pub struct ClaimPublisher {
    js: jetstream::Context,
    subject: String,
    instance: String,
}

impl ClaimPublisher {
    pub fn new(js: jetstream::Context, events_stream: &str, instance: &str) -> Self {
        ClaimPublisher {
            js,
            subject: claims_subject(events_stream),
            instance: instance.to_string(),
        }
    }

    /// Announces that this relay buffered `ids`. Does not wait for the
    /// PubAck; an error means the client could not even queue it.
    pub async fn publish(&self, ids: &[Uuid]) -> Result<(), async_nats::Error> {
        for chunk in ids.chunks(MAX_IDS_PER_CLAIM) {
            let mut headers = HeaderMap::new();
            headers.insert(CLAIMS_INSTANCE_HEADER, self.instance.as_str());
            // The returned future would yield the PubAck; dropping it is the
            // fire-and-forget described in the module docs.
            let _ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, encode(chunk).into())
                .await?;
        }
        Ok(())
    }
}

/// Ids another instance claimed.
pub type Claimed = Vec<Uuid>;

/// Follows the claims stream from `now - window`, sending other instances'
/// ids to `tx`, until `stop`. `ready` receives the number of ids replayed
/// once the follower has caught up with what the stream held at start (its
/// last message then, or nothing left pending; at once when the window held
/// nothing).
#[allow(clippy::too_many_arguments)]
pub async fn follow(
    js: jetstream::Context,
    events_stream: String,
    instance: String,
    window: Duration,
    tx: mpsc::Sender<Claimed>,
    ready: tokio::sync::oneshot::Sender<usize>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> Result<(), SourceError> {
    let name = claims_stream(&events_stream);
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|source| SourceError::StreamInfo {
            name: name.clone(),
            source,
        })?;
    // What the stream held when the replay began: caught up means having
    // seen that message (or nothing left pending). "Nothing pending" alone
    // might never happen while other relays keep publishing.
    let tail_at_start = stream.cached_info().state.last_sequence;
    let start_time = time::OffsetDateTime::now_utc() - window;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            filter_subject: claims_subject(&events_stream),
            ..Default::default()
        })
        .await
        .map_err(|source| SourceError::Consumer {
            stream: name.clone(),
            consumer: "ordered claims follower".to_string(),
            source,
        })?;
    let backlog = consumer.cached_info().num_pending;
    let mut ready = Some(ready);
    let mut replayed = 0usize;
    if backlog == 0 {
        if let Some(r) = ready.take() {
            let _ = r.send(0);
        }
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|source| SourceError::Follow(source.to_string()))?;
    loop {
        let next = tokio::select! {
            () = crate::stopped(&mut stop) => return Ok(()),
            next = messages.next() => next,
        };
        let message = match next {
            None => return Ok(()),
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // The ordered consumer recreates itself after gaps and
                // reconnects; an error here is reported and the loop goes on.
                ClaimsFollowFailed {
                    kind: "follow",
                    error: &e,
                }
                .emit(&metrics);
                continue;
            }
        };
        let (pending, sequence) = message
            .info()
            .map(|i| (i.pending, i.stream_sequence))
            .unwrap_or((0, u64::MAX));
        let from_self = message
            .headers
            .as_ref()
            .and_then(|h| h.get(CLAIMS_INSTANCE_HEADER))
            .is_some_and(|v| v.as_str() == instance);
        if !from_self {
            match decode(&message.payload) {
                Some(ids) => {
                    replayed += ids.len();
                    if tx.send(ids).await.is_err() {
                        return Ok(());
                    }
                }
                None => ClaimsFollowFailed {
                    kind: "undecodable",
                    error: &format_args!(
                        "a claim of {} bytes, not a multiple of 16, ignored",
                        message.payload.len()
                    ),
                }
                .emit(&metrics),
            }
        }
        if pending == 0 || sequence >= tail_at_start {
            if let Some(r) = ready.take() {
                let _ = r.send(replayed);
            }
        }
    }
}

/// A relay instance id: unique per process start (pid and start time).
pub fn new_instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("relay-{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_lengths_are_refused() {
        let ids: Vec<Uuid> = (1..=3u128).map(Uuid::from_u128).collect();
        let bytes = encode(&ids);
        assert_eq!(bytes.len(), 48);
        assert_eq!(decode(&bytes), Some(ids));
        assert_eq!(decode(&[]), Some(vec![]));
        assert_eq!(decode(&bytes[..47]), None);
    }

    #[test]
    fn claims_stream_follows_the_events_stream_name() {
        let c = stream_config("OTHER").unwrap();
        assert_eq!(c.name, "OTHER_CLAIMS");
        assert_eq!(c.subjects, vec!["spoor.claims.OTHER".to_string()]);
        assert_eq!(c.max_age, Duration::from_secs(900));
        let d = stream_config("SPOOR_EVENTS").unwrap();
        assert_eq!(d.name, "SPOOR_EVENTS_CLAIMS");
    }
}
