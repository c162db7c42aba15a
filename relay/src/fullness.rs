//! The events stream's state, polled every `--lag-poll-interval`: its
//! fullness from the stream's info (`spoor_relay_stream_fullness_ratio{limit}`
//! and the "degraded" line of `/healthz` past `--stream-fullness-degraded`),
//! and the partition consumers' lag from their info
//! (`spoor_relay_consumer_lag_messages`, summed over the partitions).
//!
//! `SPOOR_EVENTS` is `discard: new`, so a full stream refuses frames (the
//! edge answers durable acks 503 and spills fast acks) instead of dropping
//! acknowledged ones; this is the warning before it gets there. A failed
//! read (logged at debug) keeps the last verdict. It only reads; what it
//! learns changes no decision of the pipeline.

use std::sync::Arc;
use std::time::Duration;

use spoor_core::fullness::StreamUsage;
use tokio::sync::watch;

use crate::health::Health;
use async_nats::jetstream::consumer::PullConsumer;

use crate::internal_events::{ConsumerLagPolled, InternalEvent as _, StreamFullnessPolled};
use crate::metrics::Metrics;
use crate::stopped;

/// Polls `stream`'s info and its partition `consumers`' info every
/// `every` until `stop`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn poll(
    js: async_nats::jetstream::Context,
    stream: String,
    mut consumers: Vec<PullConsumer>,
    every: Duration,
    degraded_at: f64,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let info = tokio::select! {
            () = stopped(&mut stop) => return,
            info = js.get_stream(&stream) => info,
        };
        match info {
            Ok(s) => {
                let info = s.cached_info();
                let usage = StreamUsage {
                    bytes: info.state.bytes,
                    max_bytes: info.config.max_bytes,
                    messages: info.state.messages,
                    max_msgs: info.config.max_messages,
                };
                health.set_stream_degraded(usage.degraded(&stream, degraded_at));
                StreamFullnessPolled {
                    stream: &stream,
                    usage,
                    degraded_at,
                }
                .emit(&metrics);
            }
            Err(e) => tracing::debug!(error = %e, stream, "stream info poll failed"),
        }
        poll_lag(&mut consumers, &metrics).await;
    }
}

/// Sums the partition consumers' lag into the gauges (only when every
/// consumer answered).
async fn poll_lag(consumers: &mut [PullConsumer], metrics: &Metrics) {
    let (mut pending, mut ack_pending) = (0u64, 0usize);
    for consumer in consumers {
        match consumer.info().await {
            Ok(info) => {
                pending += info.num_pending;
                ack_pending += info.num_ack_pending;
            }
            Err(e) => {
                tracing::debug!(error = %e, "consumer info poll failed");
                return;
            }
        }
    }
    ConsumerLagPolled {
        pending,
        ack_pending,
    }
    .emit(metrics);
}
