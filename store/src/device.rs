//! The ClickHouse side of the device debug lookup: one device's (or one
//! user's devices') events in a receive-time window, read from
//! `events_by_device` (and `device_users` for a user), the tables that
//! `deploy/clickhouse/002_events_by_device.sql` lays out for point lookups.
//!
//! The request is the rings' own, [`spoor_core::debug::DeviceQuery`]; the
//! `spoor` CLI calls [`device_events`] for the part of its window the
//! relays' in-memory rings do not hold
//! ([`spoor_core::debug::DeviceLookup::not_in_rings`]). It only reads. It
//! must never splice a caller's string into SQL: ids go through the crate's
//! `?` binding after [`spoor_core::debug::DeviceQuery::validate_within`] has
//! bounded them, and only typed values (days, numbers) are formatted into
//! the text. Every query is limited in time on the server
//! (`max_execution_time`) and in the client.
//!
//! **The clock.** A read windows on the edge's receive time,
//! `since_ms <= received_at_ms < until_ms`, as the rings do: "this device's
//! last hour" is what arrived in it, late events an offline phone sent now
//! included. Both tables are partitioned by the day of the event time and
//! sorted by it within a device or user (`device_users` holds no other
//! time), so the read also bounds `ts_ms`, to lose nothing and still prune
//! partitions and narrow the primary-key range: the edge rejects an event
//! whose skew-corrected time lies more than `Limits::max_past_ms` before
//! or `max_future_ms` after its receipt (`spoor_core::ingest`,
//! `timestamp_out_of_range`; the edge runs with `Limits::default()`), so
//! every stored event received in the window has
//! `since_ms - max_past_ms <= ts_ms < until_ms + max_future_ms`
//! ([`event_time_range`]).
//!
//! **A user's events.** The devices a user was seen on come from
//! `device_users`, by `ts_ms` in that widened range; then every event of
//! those devices received in the window is returned, including those sent
//! before login, or by another user on a shared device (each row carries
//! its own `user_id`), as the rings answer.

use std::time::Duration;

use clickhouse::Client;
use spoor_core::debug::{DeviceQuery, QueryError, Subject, MAX_TABLE_WINDOW_MS};
use spoor_core::Limits;

use crate::date::{date_string, event_date};
pub use crate::row::DeviceRow;
use crate::row::DEVICE_COLUMNS as COLUMNS;
pub use crate::schema::{DEVICE_TABLE, DEVICE_USERS_TABLE};
use crate::ClickHouseConfig;

/// How long a lookup may take before the caller gets [`DeviceQueryError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The event times (`ts_ms`, inclusive start, exclusive end) any event the
/// edge accepted can have when it was received in `query`'s window: the
/// window widened by the edge's `max_past_ms` before and `max_future_ms`
/// after (the module doc says why).
pub fn event_time_range(query: &DeviceQuery) -> (i64, i64) {
    let limits = Limits::default();
    (
        query.since_ms.saturating_sub(limits.max_past_ms),
        query.until_ms.saturating_add(limits.max_future_ms),
    )
}

/// Rejects what no stored event can match or what the query must not
/// carry: no project (the tables are keyed by it), and what
/// [`DeviceQuery::validate_within`] refuses with the tables' window cap,
/// [`MAX_TABLE_WINDOW_MS`]. Returns the project.
pub fn check(query: &DeviceQuery) -> Result<&str, DeviceQueryError> {
    query.validate_within(MAX_TABLE_WINDOW_MS)?;
    query
        .project_id
        .as_deref()
        .ok_or(DeviceQueryError::NoProject)
}

/// The SQL text with `?` placeholders, in bind order: project, [project,
/// user, ts since, ts until,] id or nothing, ts since, ts until, receive
/// since, receive until. Days are formatted from `event_date` of the event
/// times [`event_time_range`] allows (typed, so safe to splice) to prune
/// partitions; the key prefix (project, device) and the `ts_ms` bounds then
/// narrow each partition to one range of the primary index, and
/// `received_at_ms` picks the window's events. Fails on what [`check`]
/// rejects.
pub fn sql(query: &DeviceQuery) -> Result<String, DeviceQueryError> {
    check(query)?;
    let (ts_since, ts_until) = event_time_range(query);
    let first = date_string(event_date(ts_since));
    // The end is exclusive: its own day matters only past midnight.
    let last = date_string(event_date(ts_until.saturating_sub(1)));
    let devices = match query.subject {
        Subject::Device(_) => "anonymous_id = ?".to_string(),
        Subject::User(_) => format!(
            "anonymous_id IN (SELECT DISTINCT anonymous_id FROM {DEVICE_USERS_TABLE} \
             WHERE project_id = ? AND user_id = ? \
             AND event_date BETWEEN '{first}' AND '{last}' \
             AND ts_ms >= ? AND ts_ms < ?)"
        ),
    };
    Ok(format!(
        "SELECT {COLUMNS} FROM {DEVICE_TABLE} \
         WHERE project_id = ? AND event_date BETWEEN '{first}' AND '{last}' \
         AND {devices} AND ts_ms >= ? AND ts_ms < ? \
         AND received_at_ms >= ? AND received_at_ms < ? \
         ORDER BY ts_ms DESC, event_id DESC \
         LIMIT 1 BY event_id \
         LIMIT {limit}",
        limit = query.limit,
    ))
}

/// The query with every value bound, as the crate will send it (minus
/// `FORMAT RowBinary`). Fails on what [`check`] rejects.
pub fn bound(
    client: &Client,
    query: &DeviceQuery,
) -> Result<clickhouse::query::Query, DeviceQueryError> {
    let text = sql(query)?;
    let project = check(query)?;
    let (ts_since, ts_until) = event_time_range(query);
    let bound = client.query(&text).bind(project);
    let bound = match &query.subject {
        Subject::Device(id) => bound.bind(id.as_str()),
        Subject::User(id) => bound
            .bind(project)
            .bind(id.as_str())
            .bind(ts_since)
            .bind(ts_until),
    };
    Ok(bound
        .bind(ts_since)
        .bind(ts_until)
        .bind(query.since_ms)
        .bind(query.until_ms))
}

/// Why a lookup gave no answer. `NoProject` and `Invalid` are the caller's
/// to fix (a 400); `Timeout` and `Query` are ClickHouse's (a 503 or 504).
#[derive(Debug, thiserror::Error)]
pub enum DeviceQueryError {
    #[error("the device tables are keyed by project: the lookup needs a project")]
    NoProject,
    #[error(transparent)]
    Invalid(#[from] QueryError),
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

/// A client for lookups: [`ClickHouseConfig::client`] (its database,
/// uncompressed answers). Build it once and reuse it; it pools connections.
pub fn lookup_client(config: &ClickHouseConfig) -> Client {
    config.client()
}

/// The latest `query.limit` events (by event time) of a device, or of a
/// user's devices, received in the window, oldest first, each event once.
/// An unknown device or user is an empty answer, not an error. `timeout`
/// bounds the whole lookup ([`DEFAULT_TIMEOUT`] is a good one).
pub async fn device_events(
    client: &Client,
    query: &DeviceQuery,
    timeout: Duration,
) -> Result<Vec<DeviceRow>, DeviceQueryError> {
    // The server gives up too, so a slow lookup stops costing it; whole
    // seconds, at least one.
    let server_secs = timeout.as_secs().max(1);
    let fetch = bound(client, query)?
        .with_option("max_execution_time", server_secs.to_string())
        .fetch_all::<DeviceRow>();
    let mut rows = match tokio::time::timeout(timeout, fetch).await {
        Ok(result) => result.map_err(DeviceQueryError::Query)?,
        Err(_) => return Err(DeviceQueryError::Timeout(timeout)),
    };
    rows.reverse();
    Ok(rows)
}

#[cfg(test)]
mod tests;
