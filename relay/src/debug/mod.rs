//! Device debug lookups, the relay's half: the task that owns this relay's
//! debug ring ([`ring_task`]), the NATS responder through which every relay
//! of a region answers ([`responder`]), and the rehydration that rebuilds
//! the ring at start ([`rehydrate`]). The requester's half, the
//! scatter-gather lookup the relay's `GET /debug/device` and the `spoor`
//! CLI call, is `spoor_runtime::debug`; the protocol is described there.
//!
//! What this module must never do: make the insert path wait (the pipeline
//! only `try_send`s to the ring task and drops updates, counted, when the
//! channel is full), read ClickHouse's events table, or touch the durable
//! consumer beyond reading its ack floor (rehydration uses its own
//! ephemeral ordered consumer).

use std::time::{SystemTime, UNIX_EPOCH};

use spoor_core::debug::EventState;

use crate::ring::Observed;
use crate::sink::clickhouse::encoded::EncodedRow;

mod rehydrate;
mod responder;
mod ring_task;

pub(crate) use rehydrate::rehydrate;
pub(crate) use responder::serve_queries;
pub use responder::MAX_DEAD_FRAMES_PER_ANSWER;
pub(crate) use ring_task::{spawn_ring, RingFeed, RingUpdate};

/// The wall clock in epoch ms (the ring's time base is JetStream's).
pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

/// The ring's notice of `rows` stored: their event ids under their device
/// keys, one key per run of consecutive rows of the same device (a frame's
/// rows are usually one device's: the SDKs send a device's own events), so
/// a batch of 50,000 rows costs about a key string per frame, not per row.
pub(crate) fn inserted_by_device<'a>(
    rows: impl IntoIterator<Item = &'a EncodedRow>,
) -> Vec<(String, Vec<uuid::Uuid>)> {
    let mut out: Vec<(String, Vec<uuid::Uuid>)> = Vec::new();
    for row in rows {
        let key = row.device_key();
        match out.last_mut() {
            Some((last, ids)) if last.as_str() == key => ids.push(row.event_id),
            _ => out.push((key.to_string(), vec![row.event_id])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use spoor_core::{Context, Device, Event, Geo, WireBatch};
    use uuid::Uuid;

    use super::inserted_by_device;
    use crate::sink::clickhouse::encoded::{EncodedFrame, EncodedRow};

    /// One frame's rows, of the devices `devices` (event ids 1, 2, ...).
    fn rows(devices: &[&str]) -> Vec<EncodedRow> {
        let batch = WireBatch {
            batch_id: "b".into(),
            project_id: "p".into(),
            region: "eu".into(),
            received_at_ms: 0,
            sent_at_ms: None,
            geo: Geo::default(),
            device: Device::default(),
            ip_prefix: String::new(),
            events: devices
                .iter()
                .zip(1u128..)
                .map(|(device, n)| Event {
                    event_id: Uuid::from_u128(n),
                    event_id_derived: false,
                    event: "page_view".into(),
                    user_id: String::new(),
                    anonymous_id: device.to_string(),
                    session_id: String::new(),
                    client_ts_ms: None,
                    ts_ms: 0,
                    properties: "{}".into(),
                    context: Context::default(),
                })
                .collect(),
        };
        let payload = bytes::Bytes::from(spoor_core::encode_batch(&batch).unwrap());
        EncodedFrame::encode(&payload, 0, &batch)
    }

    #[test]
    fn the_inserted_notice_keeps_every_id_under_its_device_in_runs() {
        let rows = rows(&["a", "a", "b", "a"]);
        assert_eq!(
            inserted_by_device(&rows),
            [
                (
                    "a".to_string(),
                    vec![Uuid::from_u128(1), Uuid::from_u128(2)]
                ),
                ("b".to_string(), vec![Uuid::from_u128(3)]),
                ("a".to_string(), vec![Uuid::from_u128(4)]),
            ]
        );
        assert!(inserted_by_device(&[]).is_empty());
    }
}
