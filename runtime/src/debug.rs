//! The device debug lookup client: asks every relay of a region for one
//! device's (or user's) recent events over NATS and merges the answers.
//! The relay's `GET /debug/device` and `spoor debug device` both call it.
//!
//! Protocol (the relay's responder is the other half). Every relay
//! subscribes, without a queue group, to
//! [`debug_subject`](spoor_core::contract::debug_subject)`(stream)`. The
//! requester publishes one JSON [`DeviceQuery`] with a reply inbox; each
//! relay answers with one or more JSON [`RelayAnswer`] parts (NATS caps a
//! message's size) carrying its instance id, even when it holds nothing, so
//! the requester can count who answered. The requester gathers until its
//! deadline and merges with [`spoor_core::debug::merge`].
//!
//! Why the requester waits its whole timeout rather than for a number of
//! answers: JetStream keeps no registry of the relays sharing a consumer, so
//! nobody knows how many will answer. Each answer names its instance and the
//! lookup lists who answered; `lookup_expecting` stops early when the caller
//! knows the count (tests).

use std::time::Duration;

use futures_util::StreamExt;
use spoor_core::contract::debug_subject;
use spoor_core::debug::{merge, DeviceLookup, DeviceQuery, QueryError, RelayAnswer};
use tokio::time::Instant;

/// Why a lookup failed as a whole. A relay that does not answer is not an
/// error: the result lists who answered.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("cannot ask the relays over NATS: {0}")]
    Nats(String),
}

/// Asks every relay of `stream`'s region for `query` and merges what
/// arrives within `timeout`: the library call behind `GET /debug/device`
/// and `spoor debug device`. Waits the whole `timeout` (the number of
/// relays is not known in advance); `DeviceLookup::relays` says who
/// answered. See [`lookup_expecting`] to stop as soon as a known number of
/// relays has answered.
pub async fn lookup(
    client: &async_nats::Client,
    stream: &str,
    query: &DeviceQuery,
    timeout: Duration,
) -> Result<DeviceLookup, LookupError> {
    lookup_expecting(client, stream, query, timeout, None).await
}

/// [`lookup`] that returns early once `expect` relays have answered
/// completely (every part), for a caller that knows how many run.
pub async fn lookup_expecting(
    client: &async_nats::Client,
    stream: &str,
    query: &DeviceQuery,
    timeout: Duration,
    expect: Option<usize>,
) -> Result<DeviceLookup, LookupError> {
    query.validate()?;
    let nats = |e: &dyn std::fmt::Display| LookupError::Nats(e.to_string());
    let payload = serde_json::to_vec(query).map_err(|e| nats(&e))?;
    let inbox = client.new_inbox();
    let mut answers_sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| nats(&e))?;
    client
        .publish_with_reply(debug_subject(stream), inbox, payload.into())
        .await
        .map_err(|e| nats(&e))?;
    client.flush().await.map_err(|e| nats(&e))?;
    let deadline = Instant::now() + timeout;
    let mut answers = Vec::new();
    let mut complete = std::collections::HashSet::new();
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers_sub.next()).await {
        match serde_json::from_slice::<RelayAnswer>(&message.payload) {
            Ok(a) => {
                // A relay's parts are published in order on one connection,
                // so its last part arrives after the others.
                if a.last {
                    complete.insert(a.relay.clone());
                }
                answers.push(a);
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an unreadable debug answer"),
        }
        if expect.is_some_and(|n| complete.len() >= n) {
            break;
        }
    }
    let _ = answers_sub.unsubscribe().await;
    Ok(merge(query.clone(), answers))
}
