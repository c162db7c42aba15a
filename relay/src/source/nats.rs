//! The NATS JetStream source: connects, applies the `SPOOR_EVENTS` stream
//! definition, creates each partition's durable pull consumer, pulls the
//! partitions this relay holds, rebuilds a partition's recent ids from the
//! stream, and sends acks.
//!
//! It moves frames and acknowledgements and makes no buffering decisions.
//! A puller decodes each message's frames as it pulls them and encodes
//! their rows for the insert, with the debug ring's view of their events
//! ([`Fetched`] carries the result, failures included), so that work runs
//! beside the pipeline's loop, and during its inserts, instead of inside
//! it; a [`Lookahead`] budget bounds the rows pulled but not yet taken. It
//! never acks on its own; the pipeline calls [`ack_all`] only after the
//! rows of those messages were inserted; frames that can never be inserted
//! go through `source::dead_letter`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, AckKind};

use futures_util::StreamExt;
use spoor_core::contract::{partition_consumer, partition_filter};
use spoor_core::debug::EventState;
use spoor_core::{DecodeError, WireBatch};
use spoor_store::Shared;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use spoor_runtime::nats::{NatsConnectError, NatsEndpoint};

use crate::ring::Observed;
use crate::sink::clickhouse::encoded::{EncodedFrame, EncodedRow};

/// The stream definition, in the JetStream API's JSON form, as deployed.
pub const STREAM_CONFIG_JSON: &str = include_str!("../../../deploy/nats/events-stream.json");

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Connect(#[from] NatsConnectError),
    #[error("an embedded stream definition (deploy/nats/*-stream.json) is invalid: {0}")]
    StreamDefinition(#[source] serde_json::Error),
    #[error("cannot create or update JetStream stream {name}: {source}")]
    Stream {
        name: String,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("cannot read JetStream stream {name}: {source}")]
    StreamInfo {
        name: String,
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("cannot create or update consumer {consumer} on stream {stream}: {source}")]
    Consumer {
        stream: String,
        consumer: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("partition leases in KV bucket {bucket}: {detail}")]
    Leases { bucket: String, detail: String },
    #[error("cannot read partition {partition}'s recent frames: {detail}")]
    Window { partition: u32, detail: String },
    #[error(
        "refusing to lower stream {name}'s limits below what it holds ({detail}): JetStream would remove the oldest frames to fit, inserted or not; raise the limit (--stream-max-bytes / --stream-max-msgs) or wait until frames age out"
    )]
    WouldDrop { name: String, detail: String },
    #[error("JetStream pull request failed: {0}")]
    Fetch(#[source] async_nats::jetstream::consumer::pull::BatchError),
}

/// Connects to NATS (TLS and nkey as `endpoint` says). The client
/// reconnects by itself afterwards; the initial connection failing is an
/// error so a misconfigured relay stops at once instead of looking alive.
pub async fn connect(endpoint: &NatsEndpoint) -> Result<async_nats::Client, SourceError> {
    Ok(endpoint.connect("spoor-relay", None).await?)
}

/// Limits that replace the embedded definition's for one deployment
/// (`--stream-max-bytes`, `--stream-max-msgs`): a bigger budget, or a tiny
/// stream in a test. `None` keeps the definition's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_bytes: Option<i64>,
    pub max_msgs: Option<i64>,
}

/// The embedded events stream definition with `limits` applied, as JSON.
pub fn events_definition(limits: &StreamLimits) -> Result<String, SourceError> {
    let mut definition: serde_json::Value =
        serde_json::from_str(STREAM_CONFIG_JSON).map_err(SourceError::StreamDefinition)?;
    if let Some(max) = limits.max_bytes {
        definition["max_bytes"] = max.into();
    }
    if let Some(max) = limits.max_msgs {
        definition["max_msgs"] = max.into();
    }
    Ok(definition.to_string())
}

/// The embedded events stream definition, renamed to `name`.
pub fn stream_config(name: &str) -> Result<jetstream::stream::Config, SourceError> {
    stream_config_from(STREAM_CONFIG_JSON, name)
}

/// A stream definition file (`deploy/nats/*.json`), renamed to `name`.
///
/// The file is the JetStream API's JSON, where the server fills in omitted
/// fields; async-nats' `Config` instead requires some of them (e.g.
/// `max_msgs_per_subject`). So the file is laid over `Config::default()`:
/// a field the file omits gets the crate's zero, which the server reads as
/// its own default (0 limits mean unlimited).
pub fn stream_config_from(
    definition: &str,
    name: &str,
) -> Result<jetstream::stream::Config, SourceError> {
    let file: serde_json::Value =
        serde_json::from_str(definition).map_err(SourceError::StreamDefinition)?;
    let mut merged = serde_json::to_value(jetstream::stream::Config::default())
        .map_err(SourceError::StreamDefinition)?;
    if let (Some(merged), Some(file)) = (merged.as_object_mut(), file.as_object()) {
        for (key, value) in file {
            merged.insert(key.clone(), value.clone());
        }
    }
    let mut config: jetstream::stream::Config =
        serde_json::from_value(merged).map_err(SourceError::StreamDefinition)?;
    config.name = name.to_string();
    Ok(config)
}

/// Creates the events stream if missing, or updates it when a field the
/// embedded definition declares differs from the server's.
pub async fn ensure_stream(js: &jetstream::Context, name: &str) -> Result<(), SourceError> {
    ensure_stream_sized(js, name, &StreamLimits::default()).await
}

/// [`ensure_stream`] with `limits` in place of the definition's. A stream
/// created before `discard: new` is updated to it here.
pub async fn ensure_stream_sized(
    js: &jetstream::Context,
    name: &str,
    limits: &StreamLimits,
) -> Result<(), SourceError> {
    ensure_stream_from(js, &events_definition(limits)?, name).await
}

/// [`ensure_stream`] for any embedded definition (`definition` is its JSON),
/// under `name`.
pub async fn ensure_stream_from(
    js: &jetstream::Context,
    definition: &str,
    name: &str,
) -> Result<(), SourceError> {
    ensure_stream_config(js, stream_config_from(definition, name)?, definition).await
}

/// Creates the stream `config` if missing, or updates it when a field that
/// `definition` declares differs from the server's; otherwise leaves it alone.
///
/// It asks first rather than creating blindly: nats-server checks storage
/// reservations before noticing that a create repeats an existing stream, so
/// a create of an unchanged stream whose `max_bytes` fills `max_file_store`
/// fails with "insufficient storage resources" on every restart.
pub async fn ensure_stream_config(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
    definition: &str,
) -> Result<(), SourceError> {
    let name = config.name.clone();
    let name = name.as_str();
    let stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(err) if is_stream_not_found(&err) => {
            js.create_stream(config)
                .await
                .map_err(|source| SourceError::Stream {
                    name: name.to_string(),
                    source,
                })?;
            tracing::info!(stream = name, "JetStream stream created");
            return Ok(());
        }
        Err(source) => {
            return Err(SourceError::StreamInfo {
                name: name.to_string(),
                source,
            })
        }
    };
    let drifted = drifted_from_config(definition, &config, &stream.cached_info().config)?;
    if drifted.is_empty() {
        tracing::info!(stream = name, "JetStream stream matches its definition");
        return Ok(());
    }
    let held = &stream.cached_info().state;
    if let Some(detail) = would_drop(&config, held.bytes, held.messages) {
        return Err(SourceError::WouldDrop {
            name: name.to_string(),
            detail,
        });
    }
    js.update_stream(&config)
        .await
        .map_err(|source| SourceError::Stream {
            name: name.to_string(),
            source,
        })?;
    tracing::info!(stream = name, fields = ?drifted, "JetStream stream updated to its definition");
    Ok(())
}

/// What a stream holding `state` has beyond `config`'s limits, if
/// anything: JetStream enforces a lowered limit at once by removing the
/// oldest messages, whatever the discard policy.
fn would_drop(config: &jetstream::stream::Config, bytes: u64, messages: u64) -> Option<String> {
    let mut over = Vec::new();
    if config.max_bytes > 0 && bytes > config.max_bytes as u64 {
        over.push(format!(
            "{bytes} bytes stored, max_bytes {}",
            config.max_bytes
        ));
    }
    if config.max_messages > 0 && messages > config.max_messages as u64 {
        over.push(format!(
            "{messages} messages stored, max_msgs {}",
            config.max_messages
        ));
    }
    (!over.is_empty()).then(|| over.join(", "))
}

fn is_stream_not_found(err: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        GetStreamErrorKind::JetStream(ref e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

/// The fields the embedded events definition declares (other than `name`)
/// whose value on the server differs. Fields the file leaves out are the
/// server's business and never count as drift.
pub fn drifted_fields(current: &jetstream::stream::Config) -> Result<Vec<String>, SourceError> {
    drifted_fields_from(STREAM_CONFIG_JSON, current)
}

/// [`drifted_fields`] for any definition file.
pub fn drifted_fields_from(
    definition: &str,
    current: &jetstream::stream::Config,
) -> Result<Vec<String>, SourceError> {
    let declared: serde_json::Value =
        serde_json::from_str(definition).map_err(SourceError::StreamDefinition)?;
    let current = serde_json::to_value(current).map_err(SourceError::StreamDefinition)?;
    let mut drifted = Vec::new();
    if let Some(declared) = declared.as_object() {
        for (key, want) in declared {
            if key != "name" && current.get(key) != Some(want) {
                drifted.push(key.clone());
            }
        }
    }
    Ok(drifted)
}

/// The fields `definition` declares (other than `name`), and `subjects`,
/// whose value in `want` (the definition as applied: renamed, with its own
/// subjects and the operator's replica count) differs from `current`.
pub fn drifted_from_config(
    definition: &str,
    want: &jetstream::stream::Config,
    current: &jetstream::stream::Config,
) -> Result<Vec<String>, SourceError> {
    let declared: serde_json::Value =
        serde_json::from_str(definition).map_err(SourceError::StreamDefinition)?;
    let want = serde_json::to_value(want).map_err(SourceError::StreamDefinition)?;
    let current = serde_json::to_value(current).map_err(SourceError::StreamDefinition)?;
    let mut keys: Vec<&str> = declared
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if !keys.contains(&"subjects") {
        keys.push("subjects");
    }
    Ok(keys
        .into_iter()
        .filter(|key| *key != "name" && want.get(*key) != current.get(*key))
        .map(str::to_string)
        .collect())
}

/// The partition consumers, and where the consumer they replace stopped.
pub struct PartitionConsumers {
    /// Every partition's consumer, by partition.
    pub consumers: Vec<PullConsumer>,
    /// The last stream sequence the single consumer of relays before
    /// partition ownership delivered (0 when there is none). Frames up to
    /// it may already be stored, so they are treated as redeliveries.
    pub legacy_delivered: u64,
}

/// Creates every partition's durable pull consumer, or updates them to
/// this config: `<consumer>-p<p>` with filter `spoor.events.*.<p>` for `p`
/// in `0..partitions`. Each relay does this at start, so a consumer exists
/// (and its lag is visible) whether or not a relay holds the partition yet.
///
/// Upgrading from relays that shared the single consumer `<consumer>`: a
/// partition consumer created while that one exists starts just after its
/// ack floor (everything at or below it is stored), not at the start of
/// the stream, and the frames between its ack floor and its last delivery
/// are reported in `legacy_delivered` so the pipeline checks them against
/// ClickHouse. Delete the old consumer once every partition is past it.
pub async fn ensure_partition_consumers(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    partitions: u32,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<PartitionConsumers, SourceError> {
    let info_err = |source| SourceError::StreamInfo {
        name: stream.to_string(),
        source,
    };
    let events = js.get_stream(stream).await.map_err(info_err)?;
    let legacy = events.consumer_info(consumer).await.ok().map(|info| {
        (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        )
    });
    let mut consumers = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let name = partition_consumer(consumer, partition);
        // An existing consumer keeps where it started (it cannot change);
        // a new one starts at the stream's start, or after the old
        // consumer's ack floor.
        let deliver_policy = match events.consumer_info(&name).await {
            Ok(existing) => existing.config.deliver_policy,
            Err(_) => match legacy {
                Some((floor, _)) => DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                },
                None => DeliverPolicy::All,
            },
        };
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!(
                "spoor-relay: partition {partition}'s frames to ClickHouse"
            )),
            deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_ack_pending,
            filter_subject: partition_filter(partition),
            ..Default::default()
        };
        let created = js
            .create_consumer_on_stream(config, stream)
            .await
            .map_err(|source| SourceError::Consumer {
                stream: stream.to_string(),
                consumer: name,
                source,
            })?;
        consumers.push(created);
    }
    if let Some((floor, delivered)) = legacy {
        tracing::warn!(
            consumer,
            ack_floor = floor,
            delivered,
            "the single consumer of relays before partition ownership still exists: \
             partition consumers start after its ack floor; delete it once `spoor relays` \
             shows every partition past it"
        );
    }
    Ok(PartitionConsumers {
        consumers,
        legacy_delivered: legacy.map_or(0, |(_, delivered)| delivered),
    })
}

/// One pull request: up to `max_messages`, waiting at most `expires` for
/// them to arrive.
pub async fn fetch(
    consumer: &PullConsumer,
    max_messages: usize,
    expires: Duration,
) -> Result<Batch, SourceError> {
    consumer
        .batch()
        .max_messages(max_messages)
        .expires(expires)
        .messages()
        .await
        .map_err(SourceError::Fetch)
}

/// A message pulled from a partition's consumer, with its frames decoded
/// and encoded.
pub struct Fetched {
    pub partition: u32,
    /// The epoch of the lease the partition was pulled under: a message
    /// pulled under an earlier lease on the same partition is not this
    /// lease's (the window rebuilt for it already counts its delivery).
    pub epoch: u64,
    pub message: jetstream::Message,
    pub meta: Meta,
    /// The message's frames, or why they do not decode (the pipeline
    /// dead-letters those).
    pub frames: Result<Vec<PulledFrame>, DecodeError>,
    /// Time spent decoding and encoding, in the puller.
    pub decoding: Duration,
    /// The message's share of the [`Lookahead`] budget, given back when
    /// the pipeline drops it.
    pub _budget: OwnedSemaphorePermit,
}

/// One frame of a pulled message: its rows encoded for the insert, and the
/// debug ring's view of the same events, both in event order.
pub struct PulledFrame {
    /// The frame's place in its message (a bundle holds several).
    pub index: usize,
    pub project_id: Shared,
    pub batch_id: Shared,
    pub rows: Vec<EncodedRow>,
    pub observed: Vec<Observed>,
}

impl PulledFrame {
    /// Encodes frame `index` of the message whose payload is `payload`.
    pub fn of(
        payload: &bytes::Bytes,
        index: usize,
        batch: WireBatch,
        stream_at_ms: i64,
        stream_seq: u64,
        relay_received_at_ms: i64,
    ) -> PulledFrame {
        let rows = EncodedFrame::encode(payload, index, &batch);
        let project_id = batch.project_id.as_str().into();
        let batch_id = batch.batch_id.as_str().into();
        // The ring's view takes the event's strings (no copy): the batch
        // is not needed past here.
        let observed = crate::debug::observed(
            batch,
            stream_at_ms,
            stream_seq,
            Some(relay_received_at_ms),
            EventState::Pending,
        );
        PulledFrame {
            index,
            project_id,
            batch_id,
            rows,
            observed,
        }
    }
}

/// A message's JetStream metadata, read once by its puller (each
/// `Message::info` parses the reply subject again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Its stream, sequence and publish time, for dead letters.
    pub origin: super::dead_letter::Origin,
    /// Its publish time in epoch ms (the ring's time base), or the relay's
    /// clock for a message without metadata.
    pub stream_at_ms: i64,
    /// How many times JetStream has delivered it; None without metadata.
    pub delivered: Option<i64>,
}

impl Meta {
    pub fn of(message: &jetstream::Message) -> Meta {
        match message.info() {
            Ok(info) => Meta {
                origin: super::dead_letter::Origin::of(&info),
                stream_at_ms: i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or_else(|_| crate::debug::wall_ms()),
                delivered: Some(info.delivered),
            },
            Err(_) => Meta {
                origin: super::dead_letter::Origin::default(),
                stream_at_ms: crate::debug::wall_ms(),
                delivered: None,
            },
        }
    }
}

/// The budget of rows the pullers may decode ahead of the pipeline's loop,
/// shared by every puller: about one batch, so that the next batch is
/// decoded while the current one is inserted, and decoded rows waiting for
/// the loop never exceed `max_rows` plus one message per puller.
#[derive(Clone)]
pub struct Lookahead {
    rows: Arc<Semaphore>,
    max_rows: u32,
    max_frame_bytes: usize,
}

impl Lookahead {
    pub fn new(max_rows: usize, max_frame_bytes: usize) -> Self {
        let max_rows = u32::try_from(max_rows.max(1))
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Lookahead {
            rows: Arc::new(Semaphore::new(max_rows as usize)),
            max_rows,
            max_frame_bytes,
        }
    }

    /// Decodes `message`'s frames and encodes their rows (what budget
    /// share they need is their row count: one for a message that does not
    /// decode, and at most the whole budget).
    fn decode(&self, partition: u32, epoch: u64, message: jetstream::Message) -> Decoded {
        let started = Instant::now();
        let meta = Meta::of(&message);
        // A frame's rows repeat its request-level fields: bounded, so one
        // frame cannot make the relay encode gigabytes.
        let max_rows_bytes = self
            .max_frame_bytes
            .saturating_mul(ROWS_PER_FRAME_BYTE)
            .min(spoor_store::row_binary::MAX_BLOCK_INPUT);
        let frames = spoor_core::decode_message(&message.payload, self.max_frame_bytes)
            .and_then(|batches| {
                for batch in &batches {
                    let bytes = spoor_store::row_binary::rows_size(batch);
                    if bytes > max_rows_bytes {
                        return Err(DecodeError::RowsTooLarge {
                            bytes,
                            max: max_rows_bytes,
                        });
                    }
                }
                Ok(batches)
            })
            .map(|batches| {
                let (stream_at_ms, seq) = (meta.stream_at_ms, meta.origin.stream_sequence);
                let seq = seq.unwrap_or(0);
                let now = crate::debug::wall_ms();
                batches
                    .into_iter()
                    .enumerate()
                    .map(|(i, batch)| {
                        PulledFrame::of(&message.payload, i, batch, stream_at_ms, seq, now)
                    })
                    .collect::<Vec<_>>()
            });
        let decoding = started.elapsed();
        let rows = frames
            .as_ref()
            .map(|frames| frames.iter().map(|f| f.rows.len()).sum::<usize>())
            .unwrap_or(1);
        Decoded {
            partition,
            epoch,
            message,
            meta,
            frames,
            decoding,
            share: u32::try_from(rows)
                .unwrap_or(u32::MAX)
                .clamp(1, self.max_rows),
        }
    }
}

/// How many bytes of rows a frame may encode to per byte of
/// `--max-frame-bytes` (capped by the largest compressed block): a
/// frame's rows take a few times its CBOR, one with long request fields
/// repeated on many rows more, and past this it goes to the dead letters
/// as `too_large`.
const ROWS_PER_FRAME_BYTE: usize = 16;

/// A decoded message waiting for its share of the lookahead budget.
struct Decoded {
    partition: u32,
    epoch: u64,
    message: jetstream::Message,
    meta: Meta,
    frames: Result<Vec<PulledFrame>, DecodeError>,
    decoding: Duration,
    share: u32,
}

impl Decoded {
    fn with(self, budget: OwnedSemaphorePermit) -> Fetched {
        Fetched {
            partition: self.partition,
            epoch: self.epoch,
            message: self.message,
            meta: self.meta,
            frames: self.frames,
            decoding: self.decoding,
            _budget: budget,
        }
    }
}

/// Longest a pull request waits for messages. It bounds how long a puller
/// takes to notice it must stop.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(1);

/// What a partition's puller needs.
pub struct Pull<F> {
    pub client: async_nats::Client,
    pub consumer: PullConsumer,
    pub partition: u32,
    /// The epoch of the lease it pulls under (see [`Fetched::epoch`]).
    pub epoch: u64,
    /// Messages per pull request.
    pub max_messages: usize,
    pub lookahead: Lookahead,
    pub tx: mpsc::Sender<Fetched>,
    /// True while the pipeline's inserts fail: nothing is pulled.
    pub paused: watch::Receiver<bool>,
    pub stop: watch::Receiver<bool>,
    /// Told of each failed pull.
    pub failed: F,
}

/// Pulls one partition's consumer into `tx` until `stop` turns true (or
/// the pipeline is gone), pausing while `paused` is true, and decodes each
/// message as it comes (see [`Lookahead`]). A pull request in flight when
/// it stops is finished and its messages NAKed, so the partition's next
/// owner gets them at once. Failed pulls are reported through `failed` and
/// retried after a backoff.
pub async fn pull_partition<F: Fn(&dyn std::fmt::Display)>(pull: Pull<F>) {
    let Pull {
        client,
        consumer,
        partition,
        epoch,
        max_messages,
        lookahead,
        tx,
        mut paused,
        mut stop,
        failed,
    } = pull;
    let mut failures = 0u32;
    while !*stop.borrow() {
        // While the pipeline's inserts fail, pull nothing: JetStream keeps
        // what arrives.
        while *paused.borrow_and_update() {
            tokio::select! {
                r = paused.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        let batch = tokio::select! {
            r = fetch(&consumer, max_messages, MAX_FETCH_WAIT) => r,
            _ = stop.changed() => break,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                failed(&e);
                failures = failures.saturating_add(1);
                let delay = Duration::from_millis(100)
                    .saturating_mul(1 << failures.min(5))
                    .min(Duration::from_secs(5));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        failures = 0;
        // The request's messages are taken off its subscription as they
        // arrive, whatever the pace below: async-nats ends a batch on a
        // timer of its own (expiry + 5 s) and drops the messages it still
        // buffers, which then come back only after `ack_wait`. The pace
        // below waits for the lookahead budget, so for as long as an
        // insert lasts.
        let mut batch = drain(batch, max_messages);
        let mut handed_back = Vec::new();
        while let Some(item) = batch.recv().await {
            match item {
                Ok(message) if *stop.borrow() => handed_back.push(message),
                Ok(message) => {
                    // Waits for the lookahead budget and the channel while
                    // the pipeline flushes: that is the back-pressure that
                    // bounds what is pulled and decoded.
                    let decoded = lookahead.decode(partition, epoch, message);
                    let budget = tokio::select! {
                        b = lookahead.rows.clone().acquire_many_owned(decoded.share) => b.ok(),
                        _ = stop.changed() => None,
                    };
                    let Some(budget) = budget else {
                        handed_back.push(decoded.message);
                        continue;
                    };
                    let permit = tokio::select! {
                        p = tx.reserve() => p.ok(),
                        _ = stop.changed() => None,
                    };
                    match permit {
                        Some(permit) => permit.send(decoded.with(budget)),
                        None => handed_back.push(decoded.message),
                    }
                }
                Err(e) => {
                    failed(&e);
                    break;
                }
            }
        }
        if !handed_back.is_empty() {
            let acks: Vec<Acker> = handed_back.into_iter().map(|m| m.split().1).collect();
            let _ = nak_all(&client, &acks).await;
        }
    }
}

/// Moves a pull request's messages (at most `max_messages`, plus an error)
/// into a channel as they arrive, in a task of their own, so that the
/// request never times out holding any.
fn drain(
    batch: Batch,
    max_messages: usize,
) -> mpsc::Receiver<Result<jetstream::Message, async_nats::Error>> {
    let (tx, rx) = mpsc::channel(max_messages.saturating_add(1).max(1));
    tokio::spawn(async move {
        let mut batch = std::pin::pin!(batch);
        while let Some(item) = batch.next().await {
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                break;
            }
        }
    });
    rx
}

/// The ids of the events a partition's consumer has delivered within the
/// last `window`: what the partition's previous owners stored (or hold
/// unacked, which comes back to the new owner as redeliveries). Read from
/// the stream through an ephemeral ordered consumer, up to the durable
/// consumer's last delivered message.
pub async fn recent_ids(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    partition: u32,
    window: Duration,
    max_frame_bytes: usize,
    mut each: impl FnMut(&str, uuid::Uuid),
) -> Result<u64, SourceError> {
    let err = |detail: String| SourceError::Window { partition, detail };
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let delivered = s
        .consumer_info(partition_consumer(consumer, partition))
        .await
        .map_err(|e| err(e.to_string()))?
        .delivered
        .stream_sequence;
    if delivered == 0 || window.is_zero() {
        return Ok(0);
    }
    let start_time = time::OffsetDateTime::now_utc() - window;
    let ordered = s
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            filter_subject: partition_filter(partition),
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    if ordered.cached_info().num_pending == 0 {
        return Ok(0);
    }
    let mut messages = ordered.messages().await.map_err(|e| err(e.to_string()))?;
    let mut frames = 0u64;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| err("the stream stopped answering".into()))?;
        let message = match next {
            None => return Ok(frames),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(err(e.to_string())),
        };
        let Ok(info) = message.info() else { continue };
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > delivered {
            return Ok(frames);
        }
        frames += 1;
        if let Ok(batches) = spoor_core::decode_message(&message.payload, max_frame_bytes) {
            for batch in &batches {
                for event in &batch.events {
                    each(&batch.project_id, event.event_id);
                }
            }
        }
        if seq >= delivered || pending == 0 {
            return Ok(frames);
        }
    }
}

/// Acks every message and flushes the client, so that when this returns
/// `Ok(n)` the `n` acks have been written to the server's socket. A plain
/// ack plus one flush, rather than a double ack per message, because a
/// batch holds up to tens of thousands of messages; an ack lost in a crash
/// right after the flush only means a redelivery, which dedup absorbs.
/// How long acks or progress acks may take to reach the server. A healthy
/// server takes milliseconds; past this NATS is taken to be unreachable
/// (async-nats would wait for the reconnection), the acks count as failed,
/// and JetStream redelivers what it did not get, which the presence check
/// absorbs. Bounding it keeps a relay able to stop while NATS is down.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the NAKs of an abandoned drain may take: they only hasten a
/// redelivery that `ack_wait` brings anyway, so shutdown waits briefly.
pub const NAK_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn ack_all<'a>(
    client: &async_nats::Client,
    acks: impl IntoIterator<Item = &'a Acker>,
) -> Result<usize, AckError> {
    send_all(client, acks, || AckKind::Ack, ACK_TIMEOUT).await
}

/// Tells JetStream the messages are still being worked on (an insert is
/// being retried), resetting their ack_wait so they are not redelivered
/// to another relay meanwhile.
pub async fn progress_all<'a>(
    client: &async_nats::Client,
    acks: impl IntoIterator<Item = &'a Acker>,
) -> Result<usize, AckError> {
    send_all(client, acks, || AckKind::Progress, ACK_TIMEOUT).await
}

/// Hands messages back for prompt redelivery (shutdown gave up on them).
pub async fn nak_all<'a>(
    client: &async_nats::Client,
    acks: impl IntoIterator<Item = &'a Acker>,
) -> Result<usize, AckError> {
    send_all(client, acks, || AckKind::Nak(None), NAK_TIMEOUT).await
}

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("{failed} of {total} acks could not be queued: {first}")]
    Send {
        failed: usize,
        total: usize,
        first: async_nats::Error,
    },
    #[error("acks queued but not flushed to the server: {0}")]
    Flush(#[source] async_nats::client::FlushError),
    #[error("acks not confirmed by the server within {0:?} (is NATS reachable?)")]
    Timeout(Duration),
}

async fn send_all<'a>(
    client: &async_nats::Client,
    acks: impl IntoIterator<Item = &'a Acker>,
    kind: impl Fn() -> AckKind,
    timeout: Duration,
) -> Result<usize, AckError> {
    tokio::time::timeout(timeout, send_all_unbounded(client, acks, kind))
        .await
        .unwrap_or(Err(AckError::Timeout(timeout)))
}

async fn send_all_unbounded<'a>(
    client: &async_nats::Client,
    acks: impl IntoIterator<Item = &'a Acker>,
    kind: impl Fn() -> AckKind,
) -> Result<usize, AckError> {
    let mut failed = 0;
    let mut total = 0;
    let mut first = None;
    for acker in acks {
        total += 1;
        if let Err(e) = acker.ack_with(kind()).await {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    client.flush().await.map_err(AckError::Flush)?;
    match first {
        Some(first) => Err(AckError::Send {
            failed,
            total,
            first,
        }),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::stream_config;
    use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
    use std::time::Duration;

    #[test]
    fn embedded_stream_definition_parses_with_its_values() {
        let c = stream_config("SPOOR_EVENTS").unwrap();
        assert_eq!(c.name, "SPOOR_EVENTS");
        assert_eq!(
            c.subjects,
            vec![spoor_core::contract::EVENTS_FILTER.to_string()]
        );
        assert_eq!(c.retention, RetentionPolicy::Limits);
        assert_eq!(c.storage, StorageType::File);
        // Nothing the stream acknowledged is discarded to make room: a
        // full stream refuses new frames instead.
        assert_eq!(c.discard, DiscardPolicy::New);
        assert_eq!(c.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.max_bytes, 10 * 1024 * 1024 * 1024);
        assert_eq!(c.max_messages_per_subject, -1);
        assert_eq!(c.max_message_size, 2 * 1024 * 1024);
        assert_eq!(c.max_messages, 80_000_000);
        assert_eq!(c.duplicate_window, Duration::from_secs(600));
        assert_eq!(c.num_replicas, 1);
        let renamed = stream_config("OTHER").unwrap();
        assert_eq!(renamed.name, "OTHER");
    }

    #[test]
    fn limits_override_the_definition_and_count_as_drift() {
        use super::{events_definition, stream_config_from, StreamLimits};
        let same = events_definition(&StreamLimits::default()).unwrap();
        let c = stream_config_from(&same, "SPOOR_EVENTS").unwrap();
        assert_eq!(c, stream_config("SPOOR_EVENTS").unwrap());
        let small = events_definition(&StreamLimits {
            max_bytes: Some(65_536),
            max_msgs: Some(100),
        })
        .unwrap();
        let s = stream_config_from(&small, "SPOOR_EVENTS").unwrap();
        assert_eq!((s.max_bytes, s.max_messages), (65_536, 100));
        assert_eq!(s.discard, DiscardPolicy::New);
        assert_eq!(
            super::drifted_fields_from(&small, &c).unwrap(),
            vec!["max_bytes", "max_msgs"]
        );
    }

    #[test]
    fn lowering_limits_below_what_the_stream_holds_is_refused() {
        let mut c = stream_config("S").unwrap();
        c.max_bytes = 1_000;
        c.max_messages = -1;
        assert_eq!(super::would_drop(&c, 1_000, 10), None);
        assert_eq!(
            super::would_drop(&c, 1_001, 10).as_deref(),
            Some("1001 bytes stored, max_bytes 1000")
        );
        c.max_messages = 5;
        assert!(super::would_drop(&c, 10, 6)
            .unwrap()
            .contains("6 messages stored, max_msgs 5"));
        c.max_bytes = -1;
        c.max_messages = -1;
        assert_eq!(super::would_drop(&c, u64::MAX, u64::MAX), None);
    }

    #[test]
    fn drift_is_judged_on_declared_fields_only() {
        let mut c = stream_config("SPOOR_EVENTS").unwrap();
        assert!(super::drifted_fields(&c).unwrap().is_empty());
        // Server-filled values the file does not declare are not drift.
        c.max_messages_per_subject = -1;
        c.allow_direct = true;
        assert!(super::drifted_fields(&c).unwrap().is_empty());
        c.max_age = Duration::from_secs(60);
        c.subjects.push("other.>".into());
        assert_eq!(
            super::drifted_fields(&c).unwrap(),
            vec!["max_age", "subjects"]
        );
    }

    #[test]
    fn drift_is_judged_against_the_definition_as_applied() {
        let json = super::STREAM_CONFIG_JSON;
        let mut want = stream_config("OTHER").unwrap();
        want.subjects = vec!["other.>".into()];
        want.num_replicas = 3;
        let mut current = want.clone();
        current.allow_direct = true; // server-filled, not declared
        assert!(super::drifted_from_config(json, &want, &current)
            .unwrap()
            .is_empty());
        current.num_replicas = 1;
        current.subjects = vec!["spoor.events.>".into()];
        let mut drifted = super::drifted_from_config(json, &want, &current).unwrap();
        drifted.sort();
        assert_eq!(drifted, vec!["num_replicas", "subjects"]);
    }
}
