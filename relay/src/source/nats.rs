//! The NATS JetStream source: connects, applies the `SPOOR_EVENTS` stream
//! definition, binds the relay's durable pull consumer, and sends acks.
//!
//! It moves frames and acknowledgements and nothing else: no decoding, no
//! buffering decisions. In particular it never acks on its own; the pipeline
//! calls [`ack_all`] only after the rows of those messages were inserted;
//! frames that can never be inserted go through `source::dead_letter`.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, AckKind};

use spoor_core::contract::EVENTS_FILTER;

use spoor_runtime::nats::{NatsConnectError, NatsEndpoint};

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
    #[error(
        "refusing to lower stream {name}'s limits below what it holds ({detail}): JetStream would remove the oldest frames to fit, inserted or not; raise the limit (--stream-max-bytes / --stream-max-msgs) or wait until frames age out"
    )]
    WouldDrop { name: String, detail: String },
    #[error("cannot follow the claims stream: {0}")]
    Follow(String),
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
    let mut drifted = drifted_fields_from(definition, &stream.cached_info().config)?;
    // A renamed definition carries its own subjects; judge those as given.
    if stream.cached_info().config.subjects != config.subjects {
        if !drifted.iter().any(|f| f == "subjects") {
            drifted.push("subjects".to_string());
        }
    } else {
        drifted.retain(|f| f != "subjects");
    }
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

/// Creates the durable pull consumer, or updates it to this config.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<PullConsumer, SourceError> {
    let config = pull::Config {
        durable_name: Some(consumer.to_string()),
        description: Some("spoor-relay: frames to ClickHouse".to_string()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        filter_subject: EVENTS_FILTER.to_string(),
        ..Default::default()
    };
    js.create_consumer_on_stream(config, stream)
        .await
        .map_err(|source| SourceError::Consumer {
            stream: stream.to_string(),
            consumer: consumer.to_string(),
            source,
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

pub async fn ack_all(client: &async_nats::Client, acks: &[Acker]) -> Result<usize, AckError> {
    send_all(client, acks, || AckKind::Ack, ACK_TIMEOUT).await
}

/// Tells JetStream the messages are still being worked on (an insert is
/// being retried), resetting their ack_wait so they are not redelivered
/// to another relay meanwhile.
pub async fn progress_all(client: &async_nats::Client, acks: &[Acker]) -> Result<usize, AckError> {
    send_all(client, acks, || AckKind::Progress, ACK_TIMEOUT).await
}

/// Hands messages back for prompt redelivery (shutdown gave up on them).
pub async fn nak_all(client: &async_nats::Client, acks: &[Acker]) -> Result<usize, AckError> {
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

async fn send_all(
    client: &async_nats::Client,
    acks: &[Acker],
    kind: impl Fn() -> AckKind,
    timeout: Duration,
) -> Result<usize, AckError> {
    tokio::time::timeout(timeout, send_all_unbounded(client, acks, kind))
        .await
        .unwrap_or(Err(AckError::Timeout(timeout)))
}

async fn send_all_unbounded(
    client: &async_nats::Client,
    acks: &[Acker],
    kind: impl Fn() -> AckKind,
) -> Result<usize, AckError> {
    let mut failed = 0;
    let mut first = None;
    for acker in acks {
        if let Err(e) = acker.ack_with(kind()).await {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    client.flush().await.map_err(AckError::Flush)?;
    match first {
        Some(first) => Err(AckError::Send {
            failed,
            total: acks.len(),
            first,
        }),
        None => Ok(acks.len()),
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
}
