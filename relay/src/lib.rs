//! spoor-relay: moves event frames from NATS JetStream into ClickHouse.
//!
//! The edge publishes one frame (a `spoor_core` wire batch) per accepted
//! request to the `SPOOR_EVENTS` stream, on one subject per partition. The
//! relays of a region share the partitions through leases (`ownership`);
//! each pulls the partitions it holds through their durable consumers,
//! decodes frames with `spoor_core::decode_batch`, drops events whose
//! (project, `event_id`) it has seen in the partition, buffers rows, inserts
//! them into the `events` table in batches, and only then acks the
//! messages. It also serves `/healthz` and `/metrics`.
//!
//! The relay must never ack a message before every row decoded from it is
//! in ClickHouse, never grow its buffer while inserts fail, and never panic
//! on a frame's content. It does no event validation or enrichment of its
//! own (that happened at the edge, in `spoor_core`) beyond checking each
//! frame's project against `--projects` (see [`refused`]).

pub mod batcher;
pub mod config;
pub mod debug;
pub mod dedup;
mod fullness;
mod health;
mod http;
pub mod internal_events;
pub mod metrics;
pub mod ownership;
mod pipeline;
pub mod refused;
pub mod ring;
pub mod sink;
pub mod source;

use std::future::Future;
use std::sync::Arc;

use spoor_runtime::{Supervisor, TaskExit};
use tokio::net::TcpListener;

pub use config::{ClickHouseConfig, RelayConfig};
pub use spoor_runtime::{NatsConnectError, NatsEndpoint};

use internal_events::InternalEvent;
use metrics::Metrics;
use sink::clickhouse::SinkError;
use source::nats::{self as source_nats, SourceError};
use spoor_store::schema::{self, SchemaError};

/// Why the relay could not start. Once running, the relay retries every
/// failure instead of returning, so these are all setup failures.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("invalid configuration: {0}")]
    Config(#[from] spoor_store::retention::PolicyError),
    /// A task stopped the relay (a failure other than a source error, a
    /// panic, or a service that ended by itself).
    #[error(transparent)]
    Task(TaskExit<SourceError>),
}

/// Runs the relay until `shutdown` resolves, then drains and returns.
///
/// Setup first: connect to NATS, apply the stream definition, create the
/// durable consumer, create the ClickHouse database and apply the schema.
/// Any failure there returns an error (the HTTP endpoints answer meanwhile,
/// with `/healthz` saying "starting"); an invalid `config`
/// ([`RelayConfig::validate`]) returns one before anything starts. After
/// that it relays until shutdown; see the `pipeline` module for the drain.
/// The relay's tasks (HTTP, the debug ring and its responder, the leases,
/// retention, the stream poller) run under one [`Supervisor`]: one that fails
/// or panics, or a service that ends, stops the relay like a shutdown, and
/// `run` returns why.
/// `listener` serves `/healthz` and `/metrics`; bind it to port 0 in tests.
pub async fn run(
    config: RelayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    config.validate()?;
    match &config.projects {
        refused::Projects::AnyNonEmpty => {
            tracing::info!("--projects is unset: rows of every non-empty project id are inserted")
        }
        refused::Projects::Only(list) => tracing::info!(
            projects = %list.iter().cloned().collect::<Vec<_>>().join(","),
            "inserting only these projects; others go to the dead letters"
        ),
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(health::Health::default());
    let mut tasks = Supervisor::<SourceError>::new();
    let stop_rx = tasks.stop_signal();
    let debug_http = Arc::new(std::sync::OnceLock::new());
    let http_state = http::HttpState {
        metrics: metrics.clone(),
        health: health.clone(),
        debug: debug_http.clone(),
    };
    tasks.spawn_service(
        "the HTTP server",
        http::serve(listener, http_state, stop_rx.clone()),
    );

    let mut shutdown = std::pin::pin!(shutdown);
    let result = tokio::select! {
        r = setup(&config) => r,
        () = shutdown.as_mut() => return stopped_with(tasks.stop().await),
    };
    let (client, consumers, lease_ttl) = match result {
        Ok(ready) => ready,
        Err(e) => {
            let _ = tasks.stop().await;
            return Err(e);
        }
    };

    let instance = ownership::leases::new_instance_id();
    let js = async_nats::jetstream::new(client.clone());
    tasks.spawn_service(
        "the stream poller",
        fullness::poll(
            js.clone(),
            config.stream.clone(),
            consumers.consumers.clone(),
            config.lag_poll_interval,
            config.stream_degraded_at,
            health.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ),
    );

    // The debug ring: its own task, fed by the pipeline without waiting,
    // rebuilt from the stream in the background, answering lookups over NATS.
    let ring = debug::spawn_ring(
        ring::Ring::new(config.ring, config.partitions, instance.clone()),
        metrics.clone(),
        &mut tasks,
    );
    tasks.spawn("the debug responder", {
        let serving = debug::serve_queries(
            client.clone(),
            config.stream.clone(),
            instance.clone(),
            ring.reader.clone(),
            metrics.clone(),
            stop_rx.clone(),
        );
        let metrics = metrics.clone();
        async move {
            if let Err(e) = serving.await {
                internal_events::DebugFailed {
                    kind: "subscribe",
                    error: &e,
                }
                .emit(&metrics);
            }
        }
    });
    tasks.spawn("the debug ring's rehydration", {
        let (js, stream, consumer, partitions) = (
            js.clone(),
            config.stream.clone(),
            config.consumer.clone(),
            config.partitions,
        );
        let window =
            std::time::Duration::from_millis(u64::try_from(config.ring.window_ms).unwrap_or(0));
        let (max_frame_bytes, tx, stop, metrics) = (
            config.max_frame_bytes,
            ring.replay.clone(),
            stop_rx.clone(),
            metrics.clone(),
        );
        async move {
            let started = tokio::time::Instant::now();
            match debug::rehydrate(
                js,
                stream,
                consumer,
                partitions,
                window,
                max_frame_bytes,
                tx,
                stop,
                &metrics,
            )
            .await
            {
                Ok(done) => internal_events::RingRehydrated {
                    frames: done.frames,
                    events: done.events,
                    dead_frames: done.dead_frames,
                    ack_floor: done.ack_floor,
                    latency: started.elapsed(),
                }
                .emit(&metrics),
                Err(e) => internal_events::RingRehydrationFailed { error: &e }.emit(&metrics),
            }
        }
    });
    let ring_feed = ring.feed.clone();
    drop(ring.replay);
    let _ = debug_http.set(http::DebugHttp {
        client: client.clone(),
        stream: config.stream.clone(),
        timeout: config.debug_timeout,
    });

    // Partition ownership: the lease task takes this relay's share and
    // tells the pipeline; the fence is how the pipeline checks a lease.
    let fence = ownership::Fence::default();
    let progress = Arc::new(ownership::leases::Progress::default());
    let (changes_tx, changes_rx) = tokio::sync::mpsc::channel(256);
    let (released_tx, released_rx) = tokio::sync::mpsc::channel(256);
    // Apart from the pipeline: its own thread, runtime and connection, so
    // renewals never wait behind the pullers' decoding.
    tasks.spawn(
        "the partition leases",
        ownership::leases::run_apart(
            config.nats.clone(),
            spoor_core::contract::leases_bucket(&config.stream),
            {
                let (instance, partitions, fence, progress, metrics) = (
                    instance.clone(),
                    config.partitions,
                    fence.clone(),
                    progress.clone(),
                    metrics.clone(),
                );
                move |kv| {
                    ownership::leases::Leases::new(
                        kv,
                        instance,
                        partitions,
                        ownership::LeaseTiming { ttl: lease_ttl },
                        fence,
                        progress,
                        metrics,
                    )
                }
            },
            changes_tx,
            released_rx,
            stop_rx.clone(),
        ),
    );
    health.set_ready(client.clone());
    tracing::info!(stream = %config.stream, consumer = %config.consumer, partitions = config.partitions, instance = %instance, database = %config.clickhouse.database, "relay running");

    // Retention of events, the device tables and the rollups: drops their
    // expired partitions.
    tasks.spawn(
        "retention",
        sink::clickhouse::retention::run(
            config.clickhouse.clone(),
            config.retention(),
            sink::clickhouse::retention::RETENTION_INTERVAL,
            stop_rx.clone(),
            metrics.clone(),
        ),
    );
    let mut exit = None;
    pipeline::Pipeline::new(
        config,
        client.clone(),
        consumers,
        pipeline::OwnershipLink {
            changes: changes_rx,
            released: released_tx,
        },
        fence,
        progress,
        ring_feed,
        metrics,
        health,
    )
    .run(std::pin::pin!(async {
        tokio::select! {
            () = shutdown => {}
            e = tasks.next_exit() => exit = Some(e),
        }
    }))
    .await;

    // The tasks stop at the stop signal; one stuck on an unreachable server
    // is aborted after TASKS_STOP_TIMEOUT, so the relay's exit stays within
    // its drain time plus these few seconds.
    let late = tokio::time::timeout(TASKS_STOP_TIMEOUT, tasks.stop())
        .await
        .ok()
        .flatten();
    // Acks were flushed as they were sent; this catches any stragglers
    // (NAKs, progress) before the connection goes, if NATS answers.
    let _ = tokio::time::timeout(source_nats::NAK_TIMEOUT, client.flush()).await;
    stopped_with(exit.or(late))
}

/// How long `run` waits for its tasks after the pipeline has drained before
/// it aborts them.
/// A healthy NATS answers the lease hand-over's deletes in milliseconds;
/// with NATS down the keys expire after the lease TTL anyway. So the exit
/// with both servers down is the drain time, one NAK timeout, this and one
/// flush timeout: `--drain-timeout-secs` plus 3 s.
const TASKS_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `run`'s result once its tasks have stopped: the first task's failure,
/// if any.
fn stopped_with(exit: Option<TaskExit<SourceError>>) -> Result<(), RelayError> {
    match exit {
        None => Ok(()),
        Some(TaskExit::Failed { error, .. }) => Err(error.into()),
        Some(exit) => Err(RelayError::Task(exit)),
    }
}

/// Applies the stream definition and the ClickHouse schema, then returns:
/// what `spoor-relay migrate` does, and the first half of `run`'s setup.
pub async fn migrate(config: &RelayConfig) -> Result<(), RelayError> {
    let client = source_nats::connect(&config.nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    source::streams::ensure_all(
        &js,
        &config.stream,
        config.stream_replicas,
        &config.stream_limits,
    )
    .await?;
    schema::apply(&config.clickhouse).await?;
    let _ = client.flush().await;
    Ok(())
}

/// What `setup` hands to `run`.
type Ready = (
    async_nats::Client,
    source_nats::PartitionConsumers,
    std::time::Duration,
);

async fn setup(config: &RelayConfig) -> Result<Ready, RelayError> {
    schema::check_identifier(&config.clickhouse.database)?;
    let client = source_nats::connect(&config.nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    source::streams::ensure_all(
        &js,
        &config.stream,
        config.stream_replicas,
        &config.stream_limits,
    )
    .await?;
    let consumers = source_nats::ensure_partition_consumers(
        &js,
        &config.stream,
        &config.consumer,
        config.partitions,
        config.ack_wait,
        config.max_ack_pending(),
    )
    .await?;
    // Created (or checked) here, so a bucket that cannot work stops the
    // relay at start; the lease thread opens it again on its own connection.
    let (_, ttl) = ownership::leases::open_bucket(
        &js,
        &config.stream,
        config.lease_ttl,
        config.stream_replicas,
    )
    .await?;
    schema::apply(&config.clickhouse).await?;
    Ok((client, consumers, ttl))
}

pub(crate) use spoor_runtime::supervise::stopped;
