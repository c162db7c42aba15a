//! Every read `spoor reconcile` makes: the dead-letter and events streams
//! through ephemeral ordered consumers, ClickHouse's row counts per id, and
//! relays' `/metrics`. It never writes anywhere and never touches the
//! relays' durable consumer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use spoor_core::contract::{dead_letter_header as header, DEAD_STREAM};
use spoor_core::prometheus::Metrics;
use spoor_store::schema::EVENTS_TABLE;
use time::OffsetDateTime;
use uuid::Uuid;

use super::ledger::{date_text, Ledger};
use super::{ReconcileError, ReconcileOptions, RelayCounters};
use crate::clickhouse::{quote, ClickHouse, ClickHouseError};
use spoor_runtime::stream_read::{self, ReadError};

/// Ids per ClickHouse query: about 40 bytes each keeps a query well under
/// the 256 KiB `max_query_size` default.
const IDS_PER_QUERY: usize = 2_000;

/// What `SPOOR_DEAD` says about `stream`'s frames.
#[derive(Debug, Default)]
pub(super) struct DeadLetters {
    /// Dead letters of whole frames, by original sequence: (reason, bytes).
    pub frames: HashMap<u64, (String, u64)>,
    /// Events of dead letters of rows (`Spoor-Dead-Rows`), by id: reason.
    pub events: HashMap<Uuid, String>,
}

/// Dead letters of `stream`'s frames. A frame (or rows of it) is
/// dead-lettered after it was stored, so reading from `since` on finds
/// every dead letter of a frame stored in the window. A dead letter of
/// rows that does not decode (up to `max_frame_bytes`) counts as one of
/// its whole frame.
pub(super) async fn dead_letters_of(
    js: &jetstream::Context,
    stream: &str,
    since: OffsetDateTime,
    max_frame_bytes: usize,
) -> Result<DeadLetters, ReconcileError> {
    let mut dead = DeadLetters::default();
    let read = stream_read::read(js, DEAD_STREAM, Some(since), None, |m| {
        let of_stream = m
            .header(header::ORIGINAL_STREAM)
            .is_none_or(|s| s == stream);
        let seq = m
            .header(header::ORIGINAL_STREAM_SEQ)
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let (true, Some(seq)) = (of_stream, seq) {
            let reason = m.header(header::REASON).unwrap_or("unknown").to_string();
            let rows = m
                .header(header::ROWS)
                .and_then(|_| spoor_core::decode_message(&m.payload, max_frame_bytes).ok());
            match rows {
                Some(batches) => {
                    for event in batches.iter().flat_map(|b| &b.events) {
                        dead.events.insert(event.event_id, reason.clone());
                    }
                }
                None => {
                    dead.frames.insert(seq, (reason, m.payload.len() as u64));
                }
            }
        }
    })
    .await;
    match read {
        Ok(()) => Ok(dead),
        // No relay with dead-letter support has run: there are none.
        Err(ReadError::NotFound { .. }) => Ok(dead),
        Err(e) => Err(e.into()),
    }
}

/// The window's frames, `(stream seq, payload)`, and the sequences that
/// replays in the window supersede.
pub(super) async fn read_frames(
    js: &jetstream::Context,
    opts: &ReconcileOptions,
    until: OffsetDateTime,
) -> Result<(Vec<(u64, Bytes)>, HashSet<u64>), ReconcileError> {
    // Two passes over the window: replays may come after the frames they
    // supersede, so collect the superseded sequences first. The first pass
    // carries payloads too; keeping them avoids a second read.
    let mut frames = Vec::new();
    let mut superseded = HashSet::new();
    stream_read::read(js, &opts.stream, Some(opts.since), Some(until), |m| {
        if let Some(seq) = m
            .header(header::REPLAY_OF_STREAM_SEQ)
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            superseded.insert(seq);
        }
        frames.push((m.seq, m.payload));
    })
    .await?;
    Ok((frames, superseded))
}

/// Rows per stored id of the ledger (only ids found).
pub(super) async fn stored_counts(
    clickhouse: &ClickHouse,
    ledger: &Ledger,
) -> Result<HashMap<Uuid, u64>, ReconcileError> {
    let groups = ledger.by_partition();
    let mut stored = HashMap::with_capacity(ledger.unique.len());
    for ((project, day), ids) in &groups {
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|id| format!("'{id}'")).collect();
            let sql = format!(
                "SELECT toString(event_id), count() FROM {EVENTS_TABLE} \
                 WHERE project_id = {} AND event_date = toDate({}) AND event_id IN ({}) \
                 GROUP BY event_id FORMAT TabSeparated",
                quote(project),
                quote(&date_text(*day)),
                list.join(",")
            );
            let answer = clickhouse.query(&sql).await?;
            for line in answer.lines().filter(|l| !l.is_empty()) {
                let (id, rows) = line
                    .split_once('\t')
                    .ok_or_else(|| ClickHouseError::Parse(line.to_string()))?;
                let id: Uuid = id
                    .parse()
                    .map_err(|_| ClickHouseError::Parse(line.to_string()))?;
                let rows: u64 = rows
                    .trim()
                    .parse()
                    .map_err(|_| ClickHouseError::Parse(line.to_string()))?;
                stored.insert(id, rows);
            }
        }
    }
    Ok(stored)
}

pub(super) async fn relay_counters(base: &str) -> Result<RelayCounters, ReconcileError> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let fail = |message: String| ReconcileError::RelayMetrics {
        url: url.clone(),
        message,
    };
    let body = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| fail(e.to_string()))?
        .get(&url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?
        .text()
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(parse_relay_counters(base, &body))
}

/// The relay counters out of a Prometheus text page, each summed over its
/// labels (absent ones, and lines that do not parse, count 0).
pub fn parse_relay_counters(url: &str, metrics: &str) -> RelayCounters {
    let page = Metrics::parse_lossy(metrics);
    RelayCounters {
        url: url.to_string(),
        messages_received: page.sum("spoor_relay_messages_received_total"),
        events_received: page.sum("spoor_relay_events_received_total"),
        events_deduped: page.sum("spoor_relay_events_deduped_total"),
        rows_inserted: page.sum("spoor_relay_rows_inserted_total"),
        dead_lettered: page.sum("spoor_relay_dead_lettered_total"),
    }
}
