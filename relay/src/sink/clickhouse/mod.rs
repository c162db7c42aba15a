//! The ClickHouse sink: writes buffered rows into the `events` table with
//! the official `clickhouse` crate (RowBinary over HTTP, LZ4). The relay's
//! rows come encoded ([`encoded`]: RowBinary and compressed blocks made by
//! the partition pullers), so an insert only sends bytes;
//! [`ClickHouseSink::insert`] writes `EventRow`s through the crate's own
//! serialiser.
//!
//! This is the only place the relay writes to ClickHouse. It reports
//! success or failure of one insert and never retries, buffers or acks by
//! itself: the pipeline decides what a failure means, so the "ack only
//! after insert" rule lives in one place. The row, the table, the schema
//! and the client come from `spoor_store`; [`failure`] tells a refusal of
//! the rows from an outage, [`isolate`] finds the rows ClickHouse refuses
//! and inserts the rest; [`retention`] is the relay's periodic retention
//! task.

pub mod encoded;
pub mod failure;
pub mod isolate;
pub mod retention;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use clickhouse::{Client, Compression};
use spoor_store::date::date_string;
use spoor_store::schema::{SchemaError, EVENTS_TABLE};
use spoor_store::EVENT_COLUMNS;
use uuid::Uuid;

pub use spoor_store::EventRow;

use crate::config::ClickHouseConfig;

/// Longest time to stream one insert's rows, and to wait for ClickHouse to
/// confirm it. Past these the attempt counts as failed and is retried. They
/// shrink with a short `ack_wait` (see [`ClickHouseSink::new`]), so a hung
/// insert always fails (and progress acks go out) before JetStream
/// redelivers its messages to another relay.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
const END_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("insert into {EVENTS_TABLE} failed: {0}")]
    Insert(#[source] clickhouse::error::Error),
    #[error("checking {EVENTS_TABLE} for already stored event ids failed: {0}")]
    Presence(#[source] clickhouse::error::Error),
    #[error("checking {EVENTS_TABLE} for already stored event ids timed out")]
    PresenceTimeout,
    #[error("isolating the rows ClickHouse refuses ran out of time after {inserts} inserts ({rejected} rows refused so far); resuming with the rows not yet stored")]
    IsolationOutOfTime { rejected: usize, inserts: u32 },
}

/// Most ids asked about in one presence query; keeps the SQL text (about
/// 40 bytes an id) well under ClickHouse's default 256 KiB `max_query_size`.
const PRESENCE_CHUNK: usize = 4_000;

/// Inserts rows into `events`, and answers which event ids it already holds.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    send_timeout: Duration,
    end_timeout: Duration,
    /// How long bisecting a refused insert may go on starting inserts.
    isolation_budget: Duration,
    /// Same server and database, uncompressed: 18.16's LZ4 responses break
    /// the crate, so reads never use the insert client.
    reader: Client,
    /// Inserts of encoded rows: the body is already compressed blocks, so
    /// the crate sends it as is and the server is told to decompress.
    encoded: Client,
    /// `INSERT INTO events(<EventRow's columns>) FORMAT RowBinary`.
    insert_sql: String,
}

impl ClickHouseSink {
    /// A sink whose inserts and presence checks give up well inside
    /// `ack_wait`: sending within 30% of it and confirming within 40%, capped
    /// at 20 s and 30 s.
    pub fn new(config: &ClickHouseConfig, ack_wait: Duration) -> Self {
        // Inserts (request bodies) work with LZ4 on 18.16 and cut the bytes
        // on the wire several times for this text-heavy row.
        let client = config.client().with_compression(Compression::Lz4);
        let reader = config.client();
        let encoded = config
            .client()
            .with_compression(Compression::None)
            .with_option("decompress", "1");
        ClickHouseSink {
            client,
            reader,
            encoded,
            insert_sql: format!(
                "INSERT INTO {EVENTS_TABLE}({}) FORMAT RowBinary",
                EVENT_COLUMNS.join(",")
            ),
            send_timeout: SEND_TIMEOUT.min(ack_wait.mul_f64(0.3)),
            end_timeout: END_TIMEOUT.min(ack_wait.mul_f64(0.4)),
            // Started inserts end within send + end timeouts (70% of
            // ack_wait), so one started before 25% is over by 95%.
            isolation_budget: ack_wait.mul_f64(0.25),
        }
    }

    /// Writes `rows` in one INSERT. Either every row is in the table when
    /// this returns `Ok`, or the caller must treat none as stored and retry
    /// (a retry after a lost response may duplicate rows; the table's
    /// ReplacingMergeTree on `event_id` collapses them).
    pub async fn insert(&self, rows: &[EventRow]) -> Result<(), SinkError> {
        self.insert_all(rows.iter(), rows.len()).await
    }

    /// [`ClickHouseSink::insert`] of borrowed rows (a part of the buffer).
    pub async fn insert_refs(&self, rows: &[&EventRow]) -> Result<(), SinkError> {
        self.insert_all(rows.iter().copied(), rows.len()).await
    }

    async fn insert_all<'a>(
        &self,
        rows: impl Iterator<Item = &'a EventRow>,
        len: usize,
    ) -> Result<(), SinkError> {
        if len == 0 {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<EventRow>(EVENTS_TABLE)
            .await
            .map_err(SinkError::Insert)?
            .with_timeouts(Some(self.send_timeout), Some(self.end_timeout));
        for row in rows {
            insert.write(row).await.map_err(SinkError::Insert)?;
        }
        insert.end().await.map_err(SinkError::Insert)
    }

    /// Writes encoded rows (see [`encoded`]) in one INSERT, with the same
    /// promise as [`ClickHouseSink::insert`].
    pub async fn insert_encoded<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a encoded::EncodedRow>,
    ) -> Result<(), SinkError> {
        let chunks = encoded::body(rows);
        if chunks.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .encoded
            .insert_formatted_with(self.insert_sql.as_str())
            .with_timeouts(Some(self.send_timeout), Some(self.end_timeout));
        for chunk in chunks {
            insert.send(chunk).await.map_err(SinkError::Insert)?;
        }
        insert.end().await.map_err(SinkError::Insert)
    }

    /// Which of `ids` (events of `project_id` on the UTC days `dates`) are
    /// already in `events`. The relay asks before inserting rows that may
    /// have been inserted already: rows of redelivered messages, and a
    /// buffer whose previous insert attempt failed (it may have succeeded on
    /// the server). The partition key prunes the scan to those days.
    ///
    /// Reads go to the server the relay inserts into; on a replicated
    /// cluster this must be the same replica (or use
    /// `select_sequential_consistency`), or a just-inserted row can be
    /// missed.
    pub async fn stored_ids(
        &self,
        project_id: &str,
        dates: &BTreeSet<u16>,
        ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, SinkError> {
        let mut stored = HashSet::new();
        if ids.is_empty() || dates.is_empty() {
            return Ok(stored);
        }
        // Dates and UUIDs are formatted here from typed values, so they are
        // safe to splice; the project id is bound (escaped by the crate).
        let dates = dates
            .iter()
            .map(|d| format!("'{}'", date_string(*d)))
            .collect::<Vec<_>>()
            .join(",");
        for chunk in ids.chunks(PRESENCE_CHUNK) {
            let mut list = String::with_capacity(chunk.len() * 40);
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    list.push(',');
                }
                list.push('\'');
                list.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
                list.push('\'');
            }
            let sql = format!(
                "SELECT DISTINCT toString(event_id) FROM {EVENTS_TABLE} \
                 WHERE project_id = ? AND event_date IN ({dates}) AND event_id IN ({list})"
            );
            let query = self.reader.query(&sql).bind(project_id).fetch_all();
            let found: Vec<String> =
                match tokio::time::timeout(self.send_timeout + self.end_timeout, query).await {
                    Ok(r) => r.map_err(SinkError::Presence)?,
                    Err(_) => return Err(SinkError::PresenceTimeout),
                };
            stored.extend(found.iter().filter_map(|s| Uuid::parse_str(s).ok()));
        }
        Ok(stored)
    }
}
