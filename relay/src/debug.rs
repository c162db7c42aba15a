//! Device debug lookups: the task that owns this relay's debug ring, the
//! NATS responder through which every relay of a region answers, the
//! scatter-gather [`lookup`] any requester (a relay's HTTP endpoint, the
//! `spoor` CLI) calls, and the rehydration that rebuilds the ring at start.
//!
//! Protocol. Every relay subscribes (no queue group, so every relay gets
//! every request) to `spoor.debug.<stream>.device`. A requester publishes
//! one JSON [`DeviceQuery`] with a reply inbox; each relay answers with one
//! or more JSON [`RelayAnswer`] parts (NATS caps a message's size) carrying
//! its instance id, even when it holds nothing, so the requester can count
//! who answered. The requester gathers until its deadline and merges with
//! `spoor_core::debug::merge`.
//!
//! What this module must never do: make the insert path wait (the pipeline
//! only `try_send`s to the ring task and drops updates, counted, when the
//! channel is full), read ClickHouse's events table, or touch the durable
//! consumer beyond reading its ack floor (rehydration uses its own
//! ephemeral ordered consumer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures_util::StreamExt;
use spoor_core::debug::{
    merge, DeadFrame, DeviceLookup, DeviceQuery, EventState, QueryError, RelayAnswer, RingCoverage,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::internal_events::*;
use crate::metrics::Metrics;
use crate::ring::{Found, Observed, Ring};
use crate::source::nats::EVENTS_FILTER;

/// Most dead frames one relay's answer lists (the newest).
pub const MAX_DEAD_FRAMES_PER_ANSWER: usize = 1_000;
/// Capacity of the pipeline → ring channel, in updates (one per frame or
/// per flush). Beyond it updates are dropped and counted.
const LIVE_CHANNEL: usize = 4_096;

/// The subject every relay of `stream`'s region answers lookups on.
pub fn subject(stream: &str) -> String {
    format!("spoor.debug.{stream}.device")
}

/// The wall clock in epoch ms (the ring's time base is JetStream's).
pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A change to the ring.
#[derive(Debug)]
pub(crate) enum RingUpdate {
    /// Events decoded from one frame.
    Observed(Vec<Observed>),
    /// Events now in ClickHouse: (device key, event id).
    Inserted {
        events: Vec<(String, Uuid)>,
        at_ms: Option<i64>,
    },
    /// A frame that could not be decoded.
    Dead(DeadFrame),
}

impl RingUpdate {
    fn len(&self) -> usize {
        match self {
            RingUpdate::Observed(v) => v.len(),
            RingUpdate::Inserted { events, .. } => events.len(),
            RingUpdate::Dead(_) => 1,
        }
    }
}

/// The pipeline's side of the ring: never waits.
#[derive(Clone)]
pub(crate) struct RingFeed {
    tx: mpsc::Sender<RingUpdate>,
    metrics: std::sync::Arc<Metrics>,
}

impl RingFeed {
    pub(crate) fn send(&self, update: RingUpdate) {
        if let Err(mpsc::error::TrySendError::Full(update)) = self.tx.try_send(update) {
            RingUpdatesDropped {
                events: update.len(),
            }
            .emit(&self.metrics);
        }
    }
}

struct LookupRequest {
    query: DeviceQuery,
    reply: oneshot::Sender<(Found, RingCoverage)>,
}

/// Asks the ring task for a lookup.
#[derive(Clone)]
pub(crate) struct RingReader {
    tx: mpsc::Sender<LookupRequest>,
}

impl RingReader {
    async fn lookup(&self, query: DeviceQuery) -> Option<(Found, RingCoverage)> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(LookupRequest { query, reply }).await.ok()?;
        answer.await.ok()
    }
}

/// The ring task's handles.
pub(crate) struct RingTask {
    pub feed: RingFeed,
    /// Rehydration's channel: it may wait, the pipeline's may not. Closing
    /// it (dropping every sender) ends the "rehydrating" state.
    pub replay: mpsc::Sender<RingUpdate>,
    pub reader: RingReader,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the task that owns `ring` until `stop`.
pub(crate) fn spawn_ring(
    ring: Ring,
    metrics: std::sync::Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> RingTask {
    let (live_tx, live_rx) = mpsc::channel(LIVE_CHANNEL);
    let (replay_tx, replay_rx) = mpsc::channel(64);
    let (lookup_tx, lookup_rx) = mpsc::channel(64);
    let task = tokio::spawn(run_ring(
        ring,
        live_rx,
        replay_rx,
        lookup_rx,
        metrics.clone(),
        stop,
    ));
    RingTask {
        feed: RingFeed {
            tx: live_tx,
            metrics,
        },
        replay: replay_tx,
        reader: RingReader { tx: lookup_tx },
        task,
    }
}

async fn run_ring(
    mut ring: Ring,
    mut live: mpsc::Receiver<RingUpdate>,
    mut replay: mpsc::Receiver<RingUpdate>,
    mut lookups: mpsc::Receiver<LookupRequest>,
    metrics: std::sync::Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rehydrating = true;
    let mut reported = ring.evictions();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Lookups first: a person is waiting on them.
            biased;
            () = crate::stopped(&mut stop) => return,
            Some(request) = lookups.recv() => {
                let found = ring.lookup(&request.query);
                let _ = request.reply.send((found, ring.coverage(rehydrating)));
                continue;
            }
            Some(update) = live.recv() => apply(&mut ring, update),
            update = replay.recv(), if rehydrating => match update {
                Some(update) => apply(&mut ring, update),
                None => rehydrating = false,
            },
            _ = tick.tick() => ring.expire(wall_ms()),
        }
        let now = ring.evictions();
        RingChanged {
            events: ring.events(),
            bytes: ring.bytes(),
            devices: ring.devices(),
            evicted: crate::ring::Evictions {
                age: now.age - reported.age,
                bytes: now.bytes - reported.bytes,
                device_cap: now.device_cap - reported.device_cap,
            },
        }
        .emit(&metrics);
        reported = now;
    }
}

fn apply(ring: &mut Ring, update: RingUpdate) {
    let now = wall_ms();
    match update {
        RingUpdate::Observed(events) => {
            for event in events {
                ring.observe(event, now);
            }
        }
        RingUpdate::Inserted { events, at_ms } => {
            ring.mark_inserted(events.iter().map(|(k, id)| (k.as_str(), *id)), at_ms)
        }
        RingUpdate::Dead(frame) => ring.dead_frame(frame, now),
    }
}

/// Answers lookups published on [`subject`] from this relay's ring until
/// `stop`.
pub(crate) async fn serve_queries(
    client: async_nats::Client,
    stream: String,
    instance: String,
    reader: RingReader,
    metrics: std::sync::Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client.subscribe(subject(&stream)).await?;
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
                            tracing::warn!(error = %e, "cannot publish a debug answer");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot encode a debug answer"),
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
        .publish_with_reply(subject(stream), inbox, payload.into())
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
/// stream's last message as of the start. Events of frames at or below the
/// durable consumer's ack floor are marked inserted (acked means inserted,
/// or deduplicated, or dead-lettered); later ones pending, which is
/// conservative: frames above the floor may be acked too, and the relay
/// that inserts them reports them inserted in its own answer. Runs beside
/// the pipeline, so relaying never waits for it.
pub(crate) async fn rehydrate(
    js: async_nats::jetstream::Context,
    stream: String,
    consumer: String,
    window: Duration,
    max_frame_bytes: usize,
    tx: mpsc::Sender<RingUpdate>,
    mut stop: watch::Receiver<bool>,
) -> Result<Rehydrated, RehydrateError> {
    let stream_err = |detail: String| RehydrateError::Stream {
        stream: stream.clone(),
        detail,
    };
    let mut s = js
        .get_stream(&stream)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    // The floor first: anything acked after this read is reported pending.
    let ack_floor = s
        .consumer_info(&consumer)
        .await
        .map(|c| c.ack_floor.stream_sequence)
        .unwrap_or(0);
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
                tracing::warn!(error = %e, "debug ring replay error; continuing");
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
                let state = if seq <= ack_floor {
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

/// The ring's view of a decoded frame's events.
pub(crate) fn observed(
    batch: spoor_core::WireBatch,
    stream_at_ms: i64,
    stream_seq: u64,
    relay_received_at_ms: Option<i64>,
    state: EventState,
) -> Vec<Observed> {
    let spoor_core::WireBatch {
        project_id,
        received_at_ms,
        events,
        ..
    } = batch;
    events
        .into_iter()
        .map(|e| Observed {
            event_id: e.event_id,
            event: e.event,
            project_id: project_id.clone(),
            anonymous_id: e.anonymous_id,
            user_id: e.user_id,
            session_id: e.session_id,
            ts_ms: e.ts_ms,
            properties: e.properties,
            client_ts_ms: e.client_ts_ms,
            edge_received_at_ms: received_at_ms,
            stream_at_ms,
            stream_seq,
            relay_received_at_ms,
            state,
        })
        .collect()
}

/// The ring's view of a buffered row (live: the relay just decoded it).
pub(crate) fn observed_row(
    row: &crate::sink::clickhouse::EventRow,
    stream_at_ms: i64,
    stream_seq: u64,
    relay_received_at_ms: i64,
) -> Observed {
    Observed {
        event_id: row.event_id,
        event: row.event.clone(),
        project_id: row.project_id.clone(),
        anonymous_id: row.anonymous_id.clone(),
        user_id: row.user_id.clone(),
        session_id: row.session_id.clone(),
        ts_ms: row.ts_ms,
        properties: row.properties.clone(),
        client_ts_ms: row.client_ts_ms,
        edge_received_at_ms: row.received_at_ms,
        stream_at_ms,
        stream_seq,
        relay_received_at_ms: Some(relay_received_at_ms),
        state: EventState::Pending,
    }
}

/// The key a row is held under in the ring (its routing key).
pub(crate) fn row_key(row: &crate::sink::clickhouse::EventRow) -> &str {
    if row.anonymous_id.is_empty() {
        &row.user_id
    } else {
        &row.anonymous_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoor_core::debug::{DeviceEvent, EventPath};

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
