//! The ClickHouse side of the device debug lookup: one device's (or one
//! user's devices') events in a time window, read from `events_by_device`
//! (and `device_users` for a user), the tables that
//! `deploy/clickhouse/002_events_by_device.sql` lays out for point lookups.
//!
//! The `spoor` CLI calls [`device_events`] for events older than the
//! relays' in-memory rings or evicted from them. It only reads. It must
//! never splice a caller's string into SQL: ids go through the crate's `?`
//! binding after [`DeviceQuery::check`] has bounded them, and only typed
//! values (days, numbers) are formatted into the text. Every query is
//! limited in time on the server (`max_execution_time`) and in the client.
//!
//! **The clock.** A table read windows on the event time `ts_ms` (the
//! skew-corrected time of the event, ms since the epoch, UTC): both tables
//! are partitioned by its day (`event_date`) and sorted by it within a
//! device or user, so that window is what prunes partitions and narrows the
//! primary-key range; `device_users` holds no other time. The relays'
//! rings ([`spoor_core::debug::DeviceQuery`]) window on the edge's
//! `received_at_ms` instead, the time they hold events by. The two agree
//! for events sent as they happen (the usual case: `ts_ms` is corrected
//! to the edge's clock); an event a client queued for a long time before
//! sending is found by its event time here and by its arrival time in a
//! ring. [`DeviceQuery::beyond_rings`] is the one place a ring request
//! becomes a table read, with the same numbers.

use std::time::Duration;

use clickhouse::Client;

use crate::date::{date_string, event_date};
pub use crate::row::DeviceRow;
use crate::row::DEVICE_COLUMNS as COLUMNS;
pub use crate::schema::{DEVICE_TABLE, DEVICE_USERS_TABLE};
use crate::ClickHouseConfig;

/// Longest id (project, device or user) a lookup accepts, in bytes: the
/// edge's own limit for `anonymous_id` and `user_id`
/// (`spoor_core::Limits::max_id_bytes`), so nothing longer can be stored;
/// the rings' requests take the same.
pub const MAX_ID_BYTES: usize = spoor_core::debug::MAX_ID_BYTES;
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

    /// The table read for the part of a ring request (`ring`, windowed on
    /// the edge's receive time) that the rings do not hold: the same
    /// subject, project and limit, from `ring.since_ms` up to `until_ms`
    /// (at most `ring.until_ms`), on this table's clock, event time. `None`
    /// when there is nothing to read: no project (the tables are keyed by
    /// it), or an empty window.
    pub fn beyond_rings(ring: &'a spoor_core::debug::DeviceQuery, until_ms: i64) -> Option<Self> {
        let project_id = ring.project_id.as_deref()?;
        let who = match &ring.subject {
            spoor_core::debug::Subject::Device(id) => Who::Device(id),
            spoor_core::debug::Subject::User(id) => Who::User(id),
        };
        let until_ms = until_ms.min(ring.until_ms);
        if until_ms <= ring.since_ms {
            return None;
        }
        Some(DeviceQuery {
            limit: u32::try_from(ring.limit).unwrap_or(u32::MAX),
            ..DeviceQuery::new(project_id, who, ring.since_ms, until_ms)
        })
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

/// A client for lookups: [`ClickHouseConfig::client`] (its database,
/// uncompressed answers). Build it once and reuse it; it pools connections.
pub fn lookup_client(config: &ClickHouseConfig) -> Client {
    config.client()
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
