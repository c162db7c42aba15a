//! The ClickHouse sink: writes buffered `EventRow`s into the `events` table
//! with the official `clickhouse` crate (RowBinary over HTTP, LZ4).
//!
//! This is the only place the relay talks to ClickHouse. It reports success
//! or failure of one insert and never retries, buffers or acks by itself:
//! the pipeline decides what a failure means, so the "ack only after insert"
//! rule lives in one place.

pub mod row;
pub mod schema;

use std::time::Duration;

use clickhouse::{Client, Compression};

pub use row::EventRow;

use crate::config::ClickHouseConfig;

/// The table every row goes to; created by `deploy/clickhouse/001_events.sql`.
pub const EVENTS_TABLE: &str = "events";

/// Longest time to stream one insert's rows, and to wait for ClickHouse to
/// confirm it. Past these the attempt counts as failed and is retried. Their
/// sum stays under the consumer's 60 s `ack_wait`, so a hung insert fails
/// (and progress acks start) before JetStream redelivers its messages.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
const END_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("`{0}` is not a valid ClickHouse database name (letters, digits, `_`; not starting with a digit)")]
    InvalidDatabaseName(String),
    #[error("applying schema {file} failed on `{statement}`: {source}")]
    Schema {
        file: &'static str,
        statement: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("insert into {EVENTS_TABLE} failed: {0}")]
    Insert(#[source] clickhouse::error::Error),
}

/// A client with the connection settings but no database. Validation is off
/// because ClickHouse 18.16 cannot answer the schema query it needs; queries
/// are uncompressed because 18.16's LZ4 responses break the crate.
pub(crate) fn base_client(config: &ClickHouseConfig) -> Client {
    let mut client = Client::default()
        .with_url(&config.url)
        .with_validation(false)
        .with_compression(Compression::None);
    if let Some(user) = &config.user {
        client = client.with_user(user);
    }
    if let Some(password) = &config.password {
        client = client.with_password(password);
    }
    client
}

/// Inserts rows into `events`.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
}

impl ClickHouseSink {
    pub fn new(config: &ClickHouseConfig) -> Self {
        // Inserts (request bodies) work with LZ4 on 18.16 and cut the bytes
        // on the wire several times for this text-heavy row.
        let client = base_client(config)
            .with_database(&config.database)
            .with_compression(Compression::Lz4);
        ClickHouseSink { client }
    }

    /// Writes `rows` in one INSERT. Either every row is in the table when
    /// this returns `Ok`, or the caller must treat none as stored and retry
    /// (a retry after a lost response may duplicate rows; the table's
    /// ReplacingMergeTree on `event_id` collapses them).
    pub async fn insert(&self, rows: &[EventRow]) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<EventRow>(EVENTS_TABLE)
            .await
            .map_err(SinkError::Insert)?
            .with_timeouts(Some(SEND_TIMEOUT), Some(END_TIMEOUT));
        for row in rows {
            insert.write(row).await.map_err(SinkError::Insert)?;
        }
        insert.end().await.map_err(SinkError::Insert)
    }
}
