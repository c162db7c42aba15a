//! The events stream's fullness, polled from JetStream's stream info:
//! `spoor_relay_stream_fullness_ratio{limit}` and the "degraded" line of
//! `/healthz` past `--stream-fullness-degraded`.
//!
//! `SPOOR_EVENTS` is `discard: new`, so a full stream refuses frames (the
//! edge answers durable acks 503 and spills fast acks) instead of dropping
//! acknowledged ones; this is the warning before it gets there. Its own
//! task beside the consumer-lag poller, on the same interval: the lag
//! poller reads consumer info, this one the stream's, and a failed read
//! here (logged at debug, like the lag poller's) keeps the last verdict.
//! It only reads; what it learns changes no decision of the pipeline.

use std::sync::Arc;
use std::time::Duration;

use spoor_core::fullness::StreamUsage;
use tokio::sync::watch;

use crate::health::Health;
use crate::internal_events::{InternalEvent as _, StreamFullnessPolled};
use crate::metrics::Metrics;
use crate::stopped;

/// Polls `stream`'s info every `every` until `stop`.
pub(crate) async fn poll(
    js: async_nats::jetstream::Context,
    stream: String,
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
    }
}
