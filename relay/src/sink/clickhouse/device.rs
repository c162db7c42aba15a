//! The ClickHouse fallback of the device debug lookup: one device's (or one
//! user's devices') events in a time window, read from `events_by_device`
//! (and `device_users` for a user), the tables that
//! `deploy/clickhouse/002_events_by_device.sql` lays out for point lookups.
//!
//! The relay's debug endpoint and the `spoor` CLI call [`device_events`] for
//! events older than the in-memory ring or evicted from it. It only reads.
//! It must never splice a caller's string into SQL: ids go through the
//! crate's `?` binding after [`DeviceQuery::check`] has bounded them, and
//! only typed values (days, numbers) are formatted into the text. Every
//! query is limited in time on the server (`max_execution_time`) and in the
//! client.

use std::time::Duration;

use clickhouse::Client;
use serde::Deserialize;

use super::row::event_date;
use super::{base_client, date_string};
use crate::config::ClickHouseConfig;

/// Table fed from `events` by `events_by_device_mv`.
pub const DEVICE_TABLE: &str = "events_by_device";
/// Table fed from `events` by `device_users_mv`: (project, user, time) → device.
pub const DEVICE_USERS_TABLE: &str = "device_users";

/// Longest id (project, device or user) a lookup accepts, in bytes: the
/// edge's own limit for `anonymous_id` and `user_id`
/// (`spoor_core::Limits::max_id_bytes`), so nothing longer can be stored.
pub const MAX_ID_BYTES: usize = 256;
/// Most events one lookup returns.
pub const MAX_LIMIT: u32 = 10_000;
/// The default limit: a device with a busy hour, as the ring keeps it.
pub const DEFAULT_LIMIT: u32 = 1_000;
/// Longest window one lookup may cover: the `events` table's 90 days. The
/// device tables keep fewer, so a longer window would only read nothing.
pub const MAX_WINDOW_MS: i64 = 90 * 86_400_000;
/// How long a lookup may take before the caller gets [`DeviceQueryError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whose events to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    /// One device: the SDK's `anonymous_id`.
    Device(&'a str),
    /// Every device the user was seen on inside the window, with all their
    /// events in it (including those sent before login, or by another user
    /// on a shared device: each row carries its own `user_id`).
    User(&'a str),
}

/// One lookup: `since_ms <= ts_ms < until_ms` (event time, ms since the
/// epoch, UTC), at most `limit` events, the latest ones, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct DeviceQuery<'a> {
    pub project_id: &'a str,
    pub who: Who<'a>,
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: u32,
    pub timeout: Duration,
}

impl<'a> DeviceQuery<'a> {
    /// A lookup with the default limit and timeout.
    pub fn new(project_id: &'a str, who: Who<'a>, since_ms: i64, until_ms: i64) -> Self {
        DeviceQuery {
            project_id,
            who,
            since_ms,
            until_ms,
            limit: DEFAULT_LIMIT,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Rejects what no stored event can match or what the query must not
    /// carry: empty, oversized or control-character ids, an empty or
    /// inverted window, a window over [`MAX_WINDOW_MS`], a limit of 0 or
    /// over [`MAX_LIMIT`].
    pub fn check(&self) -> Result<(), DeviceQueryError> {
        check_id("project_id", self.project_id)?;
        match self.who {
            Who::Device(id) => check_id("anonymous_id", id)?,
            Who::User(id) => check_id("user_id", id)?,
        }
        if self.since_ms >= self.until_ms {
            return Err(DeviceQueryError::InvalidWindow {
                since_ms: self.since_ms,
                until_ms: self.until_ms,
            });
        }
        if self.until_ms.saturating_sub(self.since_ms) > MAX_WINDOW_MS {
            return Err(DeviceQueryError::WindowTooLong {
                days: MAX_WINDOW_MS / 86_400_000,
            });
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(DeviceQueryError::InvalidLimit(self.limit));
        }
        Ok(())
    }

    /// The SQL text with `?` placeholders, in bind order: project, [user,
    /// project, since, until,] id or nothing, since, until. Days are
    /// formatted from `event_date` of the bounds (typed, so safe to splice)
    /// to prune partitions; the key prefix (project, device) then narrows
    /// each partition to one range of the primary index.
    pub fn sql(&self) -> String {
        let first = date_string(event_date(self.since_ms));
        // until_ms is exclusive: its own day matters only past midnight.
        let last = date_string(event_date(self.until_ms.saturating_sub(1)));
        let devices = match self.who {
            Who::Device(_) => "anonymous_id = ?".to_string(),
            Who::User(_) => format!(
                "anonymous_id IN (SELECT DISTINCT anonymous_id FROM {DEVICE_USERS_TABLE} \
                 WHERE project_id = ? AND user_id = ? \
                 AND event_date BETWEEN '{first}' AND '{last}' \
                 AND ts_ms >= ? AND ts_ms < ?)"
            ),
        };
        format!(
            "SELECT {COLUMNS} FROM {DEVICE_TABLE} \
             WHERE project_id = ? AND event_date BETWEEN '{first}' AND '{last}' \
             AND {devices} AND ts_ms >= ? AND ts_ms < ? \
             ORDER BY ts_ms DESC, event_id DESC \
             LIMIT 1 BY event_id \
             LIMIT {limit}",
            limit = self.limit,
        )
    }

    /// The query with every value bound, as the crate will send it (minus
    /// `FORMAT RowBinary`). Fails on input [`DeviceQuery::check`] rejects.
    pub fn bound(&self, client: &Client) -> Result<clickhouse::query::Query, DeviceQueryError> {
        self.check()?;
        let query = client.query(&self.sql()).bind(self.project_id);
        let query = match self.who {
            Who::Device(id) => query.bind(id),
            Who::User(id) => query
                .bind(self.project_id)
                .bind(id)
                .bind(self.since_ms)
                .bind(self.until_ms),
        };
        Ok(query.bind(self.since_ms).bind(self.until_ms))
    }
}

/// The columns a lookup returns, in [`DeviceRow`]'s field order.
const COLUMNS: &str = "project_id, event_date, anonymous_id, ts_ms, event_id, event_id_derived, \
    event, user_id, session_id, client_ts_ms, sent_at_ms, received_at_ms, inserted_at, batch_id, \
    edge_region, properties, page_url, page_path, page_title, app_name, app_version, \
    library_name, library_version, country, city, colo, browser, browser_version, os, \
    os_version, device_type, is_bot";

/// One event as the debug lookup shows it: its ids, its path (client time,
/// edge receipt, insert time, batch) and a summary of its context.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct DeviceRow {
    pub project_id: String,
    /// Days since 1970-01-01, UTC.
    pub event_date: u16,
    pub anonymous_id: String,
    /// Event time (skew-corrected at the edge), ms since the epoch.
    pub ts_ms: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub event_id_derived: u8,
    pub event: String,
    pub user_id: String,
    pub session_id: String,
    /// The client's own timestamp, uncorrected, if it sent one.
    pub client_ts_ms: Option<i64>,
    pub sent_at_ms: Option<i64>,
    /// When the edge received the request.
    pub received_at_ms: i64,
    /// When ClickHouse stored the row (seconds since the epoch, server clock).
    pub inserted_at: u32,
    pub batch_id: String,
    pub edge_region: String,
    pub properties: String,
    pub page_url: String,
    pub page_path: String,
    pub page_title: String,
    pub app_name: String,
    pub app_version: String,
    pub library_name: String,
    pub library_version: String,
    pub country: String,
    pub city: String,
    pub colo: String,
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    pub device_type: String,
    pub is_bot: u8,
}

/// Why a lookup gave no answer. `InvalidId`, `InvalidWindow`, `WindowTooLong`
/// and `InvalidLimit` are the caller's to fix (a 400); `Timeout` and `Query`
/// are ClickHouse's (a 503 or 504).
#[derive(Debug, thiserror::Error)]
pub enum DeviceQueryError {
    #[error("`{field}` {reason}")]
    InvalidId {
        field: &'static str,
        reason: IdProblem,
    },
    #[error(
        "the window is empty or inverted: since {since_ms} ms must be before until {until_ms} ms"
    )]
    InvalidWindow { since_ms: i64, until_ms: i64 },
    #[error("the window is longer than {days} days, more than any table keeps")]
    WindowTooLong { days: i64 },
    #[error("limit {0} is outside 1..={MAX_LIMIT}")]
    InvalidLimit(u32),
    #[error("the device lookup in ClickHouse did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the device lookup in ClickHouse failed: {0}")]
    Query(#[source] clickhouse::error::Error),
}

impl DeviceQueryError {
    /// Whether the caller's input was at fault (answer 4xx), not the server.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            DeviceQueryError::Timeout(_) | DeviceQueryError::Query(_)
        )
    }
}

/// What is wrong with an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdProblem {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes; the limit is {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error("holds control characters")]
    ControlCharacters,
}

fn check_id(field: &'static str, id: &str) -> Result<(), DeviceQueryError> {
    let reason = if id.is_empty() {
        IdProblem::Empty
    } else if id.len() > MAX_ID_BYTES {
        IdProblem::TooLong(id.len())
    } else if id.chars().any(char::is_control) {
        IdProblem::ControlCharacters
    } else {
        return Ok(());
    };
    Err(DeviceQueryError::InvalidId { field, reason })
}

/// A client for lookups: the relay's connection settings, its database,
/// uncompressed answers (18.16's LZ4 answers break the crate). Build it
/// once and reuse it; it pools connections.
pub fn lookup_client(config: &ClickHouseConfig) -> Client {
    base_client(config).with_database(&config.database)
}

/// The latest `query.limit` events of a device (or of a user's devices) in
/// the window, oldest first, each event once. An unknown device or user is
/// an empty answer, not an error.
pub async fn device_events(
    client: &Client,
    query: &DeviceQuery<'_>,
) -> Result<Vec<DeviceRow>, DeviceQueryError> {
    // The server gives up too, so a slow lookup stops costing it; whole
    // seconds, at least one.
    let server_secs = query.timeout.as_secs().max(1);
    let fetch = query
        .bound(client)?
        .with_option("max_execution_time", server_secs.to_string())
        .fetch_all::<DeviceRow>();
    let mut rows = match tokio::time::timeout(query.timeout, fetch).await {
        Ok(result) => result.map_err(DeviceQueryError::Query)?,
        Err(_) => return Err(DeviceQueryError::Timeout(query.timeout)),
    };
    rows.reverse();
    Ok(rows)
}

#[cfg(test)]
mod tests;
