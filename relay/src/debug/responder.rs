//! The NATS responder: answers the region's device lookups
//! (`spoor_core::contract::debug_subject`) from this relay's ring, in parts
//! that each fit a NATS message, always naming this relay, even when it
//! holds nothing, so the requester can count who answered.

use futures_util::StreamExt;
use spoor_core::contract::debug_subject;
use spoor_core::debug::{DeviceQuery, QueryError, RelayAnswer, RingCoverage};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ring_task::RingReader;
use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::ring::Found;

/// Most dead frames one relay's answer lists (the newest).
pub const MAX_DEAD_FRAMES_PER_ANSWER: usize = 1_000;

/// Answers lookups published on [`debug_subject`] from this relay's ring until
/// `stop`.
pub(crate) async fn serve_queries(
    client: async_nats::Client,
    stream: String,
    instance: String,
    reader: RingReader,
    metrics: std::sync::Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.subscribe(debug_subject(&stream)).await?;
    loop {
        let message = tokio::select! {
            () = crate::stopped(&mut stop) => return Ok(()),
            m = requests.next() => match m {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let (client, instance, reader, metrics) = (
            client.clone(),
            instance.clone(),
            reader.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let max_payload = client.server_info().max_payload;
            let (parts, outcome, events) =
                match answer(&message.payload, &instance, &reader, max_payload).await {
                    Ok((parts, events)) => (parts, "ok", events),
                    Err(e) => (
                        vec![RelayAnswer {
                            relay: instance.clone(),
                            part: 0,
                            last: true,
                            events: vec![],
                            dead_frames: vec![],
                            coverage: RingCoverage::default(),
                            error: Some(e.to_string()),
                        }],
                        e.kind(),
                        0,
                    ),
                };
            for part in parts {
                match serde_json::to_vec(&part) {
                    Ok(bytes) => {
                        if let Err(e) = client.publish(reply.clone(), bytes.into()).await {
                            DebugFailed {
                                kind: "publish",
                                error: &e,
                            }
                            .emit(&metrics);
                        }
                    }
                    Err(e) => DebugFailed {
                        kind: "encode",
                        error: &e,
                    }
                    .emit(&metrics),
                }
            }
            let _ = client.flush().await;
            DebugQueryAnswered {
                outcome,
                events,
                latency: started.elapsed(),
            }
            .emit(&metrics);
        });
    }
}

/// Why a relay could not answer a query it received.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error("the query is not a DeviceQuery in JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("the relay's debug ring is not running")]
    RingGone,
}

impl AnswerError {
    fn kind(&self) -> &'static str {
        match self {
            AnswerError::Json(_) => "invalid_json",
            AnswerError::Query(e) => e.kind(),
            AnswerError::RingGone => "ring_gone",
        }
    }
}

/// This relay's answer to one query, in parts that each fit a NATS message.
async fn answer(
    payload: &[u8],
    instance: &str,
    reader: &RingReader,
    max_payload: usize,
) -> Result<(Vec<RelayAnswer>, usize), AnswerError> {
    let query: DeviceQuery = serde_json::from_slice(payload)?;
    query.validate()?;
    let limit = query.limit;
    let (mut found, coverage) = reader.lookup(query).await.ok_or(AnswerError::RingGone)?;
    // A user's several devices may together exceed the limit: keep the newest.
    found
        .events
        .sort_by_key(|e| std::cmp::Reverse((e.ts_ms, e.event_id)));
    found.events.truncate(limit);
    found
        .dead_frames
        .sort_by_key(|f| std::cmp::Reverse(f.stream_seq));
    found.dead_frames.truncate(MAX_DEAD_FRAMES_PER_ANSWER);
    let count = found.events.len();
    Ok((split(found, coverage, instance, max_payload), count))
}

/// Splits a relay's findings into parts of about half the server's
/// `max_payload` each (JSON size measured per event).
fn split(
    found: Found,
    coverage: RingCoverage,
    instance: &str,
    max_payload: usize,
) -> Vec<RelayAnswer> {
    let budget = (max_payload / 2).clamp(16 << 10, 4 << 20);
    let mut parts = Vec::new();
    let new_part = |part: u32| RelayAnswer {
        relay: instance.to_string(),
        part,
        last: false,
        events: Vec::new(),
        dead_frames: Vec::new(),
        coverage: coverage.clone(),
        error: None,
    };
    let mut current = new_part(0);
    current.dead_frames = found.dead_frames;
    let mut size = current.dead_frames.len() * 160;
    for event in found.events {
        let event_size = serde_json::to_vec(&event).map(|v| v.len()).unwrap_or(0) + 1;
        if size + event_size > budget && !current.events.is_empty() {
            let next = new_part(current.part + 1);
            parts.push(std::mem::replace(&mut current, next));
            size = 0;
        }
        size += event_size;
        current.events.push(event);
    }
    current.last = true;
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoor_core::debug::{merge, DeviceEvent, EventPath, EventState};
    use uuid::Uuid;

    fn event(n: u128, properties_bytes: usize) -> DeviceEvent {
        DeviceEvent {
            event_id: Uuid::from_u128(n),
            event: "click".into(),
            project_id: "p".into(),
            anonymous_id: "d".into(),
            user_id: String::new(),
            session_id: String::new(),
            ts_ms: n as i64,
            properties: "x".repeat(properties_bytes),
            path: EventPath {
                client_ts_ms: None,
                edge_received_at_ms: 0,
                stream_at_ms: 0,
                stream_seq: 1,
                relay_received_at_ms: None,
                state: EventState::Pending,
            },
            relay: "r".into(),
        }
    }

    #[test]
    fn answers_split_into_parts_that_fit_and_merge_back() {
        // (events, bag size, max_payload, expected parts)
        let cases = [
            (0usize, 0usize, 1 << 20, 1usize),
            (10, 10, 1 << 20, 1),
            (120, 10_000, 1 << 20, 3),
            (3, 100_000, 64 << 10, 3), // each event alone, even over budget
        ];
        for (n, bag, max_payload, expected) in cases {
            let found = Found {
                events: (0..n as u128).map(|i| event(i, bag)).collect(),
                dead_frames: vec![],
            };
            let parts = split(found, RingCoverage::default(), "r", max_payload);
            assert_eq!(parts.len(), expected, "{n} events of {bag} bytes");
            for (i, part) in parts.iter().enumerate() {
                assert_eq!(part.part as usize, i);
                assert_eq!(part.last, i + 1 == parts.len());
                let bytes = serde_json::to_vec(part).unwrap().len();
                assert!(
                    part.events.len() == 1 || bytes <= max_payload,
                    "part {i}: {bytes}"
                );
            }
            let q = DeviceQuery::new(
                spoor_core::debug::Subject::Device("d".into()),
                None,
                3_600_000,
                1_000_000,
                10_000,
            )
            .unwrap();
            let merged = merge(q, parts);
            assert_eq!(merged.events.len(), n);
            assert_eq!(merged.relays, vec!["r".to_string()]);
        }
    }
}
