//! The relay's Prometheus metrics, held in a registry owned by one relay
//! instance (never a process-global recorder), so tests can run several
//! relays in one process and read each one's numbers.
//!
//! Only `internal_events` should touch these fields: each named event bumps
//! its metrics and writes its log line together, so logs and metrics agree.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::internal_events::Stage;

/// A counter family with one fixed label, e.g. `kind="bad_magic"`.
pub type LabeledCounter = Family<[(&'static str, &'static str); 1], Counter>;

/// A ratio gauge with one fixed label, e.g. `limit="bytes"`.
pub type LabeledRatio =
    Family<[(&'static str, &'static str); 1], Gauge<f64, std::sync::atomic::AtomicU64>>;

/// A seconds counter with one fixed label, e.g. `stage="insert"`.
pub type LabeledSeconds =
    Family<[(&'static str, &'static str); 1], Counter<f64, std::sync::atomic::AtomicU64>>;

/// The one error family, `spoor_relay_errors_total{stage, error_type}`.
pub type ErrorCounter = Family<[(&'static str, &'static str); 2], Counter>;

/// Every metric the relay exports, with the registry that names them.
/// Names carry the `spoor_relay_` prefix; counters get `_total` appended by
/// the text encoder.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub messages_received: Counter,
    pub events_received: Counter,
    pub frames_decoded: Counter,
    /// Every failure, by stage and error type: use [`Metrics::error`].
    pub errors: ErrorCounter,
    pub dead_lettered: LabeledCounter,
    pub rows_dead_lettered: LabeledCounter,
    pub rows_rejected: Counter,
    pub isolation_inserts: Counter,
    pub events_deduped: Counter,
    pub deduped_by_layer: LabeledCounter,
    pub partitions_owned: Gauge,
    pub rebalances: LabeledCounter,
    pub lease_losses: Counter,
    pub window_rebuilt_ids: Counter,
    pub presence_checks: Counter,
    pub presence_checked_ids: Counter,
    pub dedup_window_ids: Gauge,
    pub rows_inserted: Counter,
    pub messages_acked: Counter,
    pub insert_duration_seconds: Histogram,
    pub insert_batch_rows: Histogram,
    /// The pipeline loop's time, by what it was doing (`receive`, `insert`,
    /// `acknowledge`; `decode` is part of `receive`); the rest of its wall
    /// time it waited for frames.
    pub pipeline_seconds: LabeledSeconds,
    pub consumer_lag_messages: Gauge,
    pub consumer_ack_pending_messages: Gauge,
    /// How full the events stream is, by limit (`bytes`, `messages`).
    pub stream_fullness_ratio: LabeledRatio,
    pub buffer_rows: Gauge,
    pub buffer_bytes: Gauge,
    pub buffer_messages: Gauge,
    pub ring_events: Gauge,
    pub ring_bytes: Gauge,
    pub ring_devices: Gauge,
    pub ring_evictions: LabeledCounter,
    pub ring_updates_dropped: Counter,
    pub ring_rehydrated_events: Counter,
    pub debug_queries: LabeledCounter,
    pub debug_lookups: LabeledCounter,
    pub retention_passes: Counter,
    pub retention_partitions_dropped: LabeledCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            messages_received: Counter::default(),
            events_received: Counter::default(),
            frames_decoded: Counter::default(),
            errors: ErrorCounter::default(),
            dead_lettered: LabeledCounter::default(),
            rows_dead_lettered: LabeledCounter::default(),
            rows_rejected: Counter::default(),
            isolation_inserts: Counter::default(),
            events_deduped: Counter::default(),
            deduped_by_layer: LabeledCounter::default(),
            partitions_owned: Gauge::default(),
            rebalances: LabeledCounter::default(),
            lease_losses: Counter::default(),
            window_rebuilt_ids: Counter::default(),
            presence_checks: Counter::default(),
            presence_checked_ids: Counter::default(),
            dedup_window_ids: Gauge::default(),
            rows_inserted: Counter::default(),
            messages_acked: Counter::default(),
            // 1 ms .. ~16 s: a healthy insert takes tens of milliseconds, a
            // struggling server seconds.
            insert_duration_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
            // 1 .. ~262k rows, covering a trickle up to the largest sane batch.
            insert_batch_rows: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 10),
            ),
            pipeline_seconds: LabeledSeconds::default(),
            consumer_lag_messages: Gauge::default(),
            consumer_ack_pending_messages: Gauge::default(),
            stream_fullness_ratio: LabeledRatio::default(),
            buffer_rows: Gauge::default(),
            buffer_bytes: Gauge::default(),
            buffer_messages: Gauge::default(),
            ring_events: Gauge::default(),
            ring_bytes: Gauge::default(),
            ring_devices: Gauge::default(),
            ring_evictions: LabeledCounter::default(),
            ring_updates_dropped: Counter::default(),
            ring_rehydrated_events: Counter::default(),
            debug_queries: LabeledCounter::default(),
            debug_lookups: LabeledCounter::default(),
            retention_passes: Counter::default(),
            retention_partitions_dropped: LabeledCounter::default(),
            registry: Registry::with_prefix("spoor_relay"),
        };
        let r = &mut m.registry;
        r.register(
            "messages_received",
            "JetStream messages (frames) fetched",
            m.messages_received.clone(),
        );
        r.register(
            "events_received",
            "Events in successfully decoded frames, before dedup",
            m.events_received.clone(),
        );
        r.register(
            "frames_decoded",
            "Frames that decoded successfully",
            m.frames_decoded.clone(),
        );
        r.register(
            "errors",
            "Failures, one per failed operation, by stage (fetch, decode, validate, dead_letter, claim, insert, ack, ring, debug, retention, shutdown) and error type",
            m.errors.clone(),
        );
        r.register(
            "dead_lettered",
            "Dead letters stored (PubAck received), by reason: undecodable frames (the original acked at once) and rows the relay would not insert (the original acked with its other rows)",
            m.dead_lettered.clone(),
        );
        r.register(
            "rows_dead_lettered",
            "Events of decoded frames moved to the dead-letter stream, by reason (unknown_project, rejected_by_clickhouse)",
            m.rows_dead_lettered.clone(),
        );
        r.register(
            "rows_rejected",
            "Rows ClickHouse refused for what they hold, found by splitting the refused insert",
            m.rows_rejected.clone(),
        );
        r.register(
            "isolation_inserts",
            "Inserts made while isolating refused rows (the refused insert included)",
            m.isolation_inserts.clone(),
        );
        r.register(
            "events_deduped",
            "Events dropped as duplicates of an event_id seen within the dedup window",
            m.events_deduped.clone(),
        );
        r.register(
            "events_deduped_by_layer",
            "Duplicates dropped, by the layer that caught them: own (this relay's window), claim (another relay's), stored (already in ClickHouse)",
            m.deduped_by_layer.clone(),
        );
        r.register(
            "partitions_owned",
            "Partitions of the events stream whose lease this relay holds",
            m.partitions_owned.clone(),
        );
        r.register(
            "rebalances",
            "Partition ownership changes at this relay, by change (acquired, released)",
            m.rebalances.clone(),
        );
        r.register(
            "lease_losses",
            "Partition leases lost without handing them over (expired, or taken by another relay)",
            m.lease_losses.clone(),
        );
        r.register(
            "window_rebuilt_ids",
            "Event ids loaded into the dedup window from the stream when a partition was acquired",
            m.window_rebuilt_ids.clone(),
        );
        r.register(
            "presence_checks",
            "Queries asking ClickHouse which buffered ids it already holds (after redelivery or a failed insert)",
            m.presence_checks.clone(),
        );
        r.register(
            "presence_checked_ids",
            "Event ids asked about in presence checks",
            m.presence_checked_ids.clone(),
        );
        r.register(
            "dedup_window_ids",
            "Event ids the dedup window holds (own and claimed)",
            m.dedup_window_ids.clone(),
        );
        r.register(
            "rows_inserted",
            "Rows written to ClickHouse",
            m.rows_inserted.clone(),
        );
        r.register(
            "messages_acked",
            "JetStream messages acknowledged after their rows were inserted (or dead-lettered)",
            m.messages_acked.clone(),
        );
        r.register(
            "insert_duration_seconds",
            "Duration of successful ClickHouse inserts",
            m.insert_duration_seconds.clone(),
        );
        r.register(
            "insert_batch_rows",
            "Rows per successful ClickHouse insert",
            m.insert_batch_rows.clone(),
        );
        r.register(
            "pipeline_seconds",
            "Time spent by stage. The loop: receive (handling fetched frames: dedup, building and buffering rows), wait_insert (a full batch waiting for the insert before it); its wall time less these two is time it waited for frames. Beside the loop: decode (the partition pullers decoding frames), insert (a batch's ClickHouse insert, in the flush task), acknowledge (after an insert: telling the debug ring, releasing the rows, acking the messages)",
            m.pipeline_seconds.clone(),
        );
        r.register(
            "consumer_lag_messages",
            "Messages in the stream not yet delivered to the consumer (num_pending)",
            m.consumer_lag_messages.clone(),
        );
        r.register(
            "consumer_ack_pending_messages",
            "Messages delivered but not yet acked (num_ack_pending)",
            m.consumer_ack_pending_messages.clone(),
        );
        r.register(
            "stream_fullness_ratio",
            "How full the events stream is: bytes stored / max_bytes (limit=\"bytes\") and messages / max_msgs (limit=\"messages\", when set); at 1 it refuses new frames (discard: new)",
            m.stream_fullness_ratio.clone(),
        );
        r.register(
            "buffer_rows",
            "Rows buffered for the next insert",
            m.buffer_rows.clone(),
        );
        r.register(
            "buffer_bytes",
            "Estimated bytes of rows buffered for the next insert",
            m.buffer_bytes.clone(),
        );
        r.register(
            "buffer_messages",
            "Messages awaiting ack until the next insert",
            m.buffer_messages.clone(),
        );
        r.register(
            "ring_events",
            "Events held in the device debug ring",
            m.ring_events.clone(),
        );
        r.register(
            "ring_bytes",
            "Estimated bytes held by the device debug ring (see ring module docs)",
            m.ring_bytes.clone(),
        );
        r.register(
            "ring_devices",
            "Device keys held in the device debug ring",
            m.ring_devices.clone(),
        );
        r.register(
            "ring_evictions",
            "Events evicted from the debug ring, by reason: age, bytes (budget), device_cap",
            m.ring_evictions.clone(),
        );
        r.register(
            "ring_updates_dropped",
            "Events whose ring update was dropped because the ring's channel was full (the insert path never waits for the ring)",
            m.ring_updates_dropped.clone(),
        );
        r.register(
            "ring_rehydrated_events",
            "Events put back into the debug ring by replaying the stream at start",
            m.ring_rehydrated_events.clone(),
        );
        r.register(
            "debug_queries",
            "Debug ring queries this relay answered over NATS, by outcome",
            m.debug_queries.clone(),
        );
        r.register(
            "debug_lookups",
            "Region-wide debug lookups served over HTTP, by outcome",
            m.debug_lookups.clone(),
        );
        r.register(
            "retention_passes",
            "Retention passes that listed the retained tables' partitions",
            m.retention_passes.clone(),
        );
        r.register(
            "retention_partitions_dropped",
            "Partitions dropped past their table's retention, by table",
            m.retention_partitions_dropped.clone(),
        );
        m
    }

    /// The error counter of one stage and error type.
    pub fn error(&self, stage: Stage, error_type: &'static str) -> Counter {
        self.errors
            .get_or_create(&[("stage", stage.as_str()), ("error_type", error_type)])
            .clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
