//! Rehydration: rebuilds the debug ring at start from the last window of
//! the events stream, beside the pipeline, so relaying never waits for it.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures_util::StreamExt;
use spoor_core::contract::EVENTS_FILTER;
use spoor_core::debug::{DeadFrame, EventState};
use tokio::sync::{mpsc, watch};

use super::{observed, RingUpdate};
use crate::internal_events::{InternalEvent, RingReplayFailed};
use crate::metrics::Metrics;

/// What rehydration did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Rehydrated {
    pub frames: u64,
    pub events: u64,
    pub dead_frames: u64,
    pub ack_floor: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RehydrateError {
    #[error("cannot read stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("cannot replay stream {stream}: {detail}")]
    Replay { stream: String, detail: String },
}

/// Rebuilds the ring from the last `window` of the events stream, through an
/// ephemeral ordered consumer (no acks, no durable state), up to the
/// stream's last message as of the start. Events of frames at or below
/// their partition consumer's ack floor are marked inserted (acked means inserted,
/// or deduplicated, or dead-lettered); later ones pending, which is
/// conservative: frames above the floor may be acked too, and the relay
/// that inserts them reports them inserted in its own answer. Runs beside
/// the pipeline, so relaying never waits for it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn rehydrate(
    js: async_nats::jetstream::Context,
    stream: String,
    consumer: String,
    partitions: u32,
    window: Duration,
    max_frame_bytes: usize,
    tx: mpsc::Sender<RingUpdate>,
    mut stop: watch::Receiver<bool>,
    metrics: &Metrics,
) -> Result<Rehydrated, RehydrateError> {
    let stream_err = |detail: String| RehydrateError::Stream {
        stream: stream.clone(),
        detail,
    };
    let mut s = js
        .get_stream(&stream)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    // The floors first: anything acked after this read is reported pending.
    let mut floors = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let name = spoor_core::contract::partition_consumer(&consumer, partition);
        floors.push(
            s.consumer_info(&name)
                .await
                .map(|c| c.ack_floor.stream_sequence)
                .unwrap_or(0),
        );
    }
    let ack_floor = floors.iter().copied().min().unwrap_or(0);
    let last_seq = s
        .info()
        .await
        .map_err(|e| stream_err(e.to_string()))?
        .state
        .last_sequence;
    let mut done = Rehydrated {
        ack_floor,
        ..Default::default()
    };
    let start_time = time::OffsetDateTime::now_utc() - window;
    let ordered = s
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            filter_subject: EVENTS_FILTER.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| RehydrateError::Replay {
            stream: stream.clone(),
            detail: e.to_string(),
        })?;
    if last_seq == 0 || ordered.cached_info().num_pending == 0 {
        return Ok(done);
    }
    let mut messages = ordered
        .messages()
        .await
        .map_err(|e| RehydrateError::Replay {
            stream: stream.clone(),
            detail: e.to_string(),
        })?;
    loop {
        let next = tokio::select! {
            () = crate::stopped(&mut stop) => return Ok(done),
            next = messages.next() => next,
        };
        let message = match next {
            None => return Ok(done),
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                RingReplayFailed { error: &e }.emit(metrics);
                continue;
            }
        };
        let Ok(info) = message.info() else { continue };
        let (seq, pending) = (info.stream_sequence, info.pending);
        let stream_at_ms =
            i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        done.frames += 1;
        let update = match spoor_core::decode_message(&message.payload, max_frame_bytes) {
            Ok(batches) => {
                let floor = spoor_core::route::partition_of_subject(&message.subject)
                    .and_then(|p| floors.get(p as usize).copied())
                    .unwrap_or(0);
                let state = if seq <= floor {
                    EventState::Inserted { at_ms: None }
                } else {
                    EventState::Pending
                };
                let mut events = Vec::new();
                for batch in batches {
                    events.extend(observed(batch, stream_at_ms, seq, None, state));
                }
                done.events += events.len() as u64;
                RingUpdate::Observed(events)
            }
            Err(e) => {
                done.dead_frames += 1;
                RingUpdate::Dead(DeadFrame {
                    subject: message.subject.to_string(),
                    stream_seq: seq,
                    reason: e.kind().to_string(),
                    stream_at_ms,
                })
            }
        };
        if tx.send(update).await.is_err() {
            return Ok(done);
        }
        if seq >= last_seq || pending == 0 {
            return Ok(done);
        }
    }
}
