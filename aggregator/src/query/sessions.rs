//! Session requests: sessions per day, their duration and their pages.
//!
//! Pure: no I/O, no clock; every caller value is bound, only closed-enum
//! columns and constants are spliced. The SQL uses no window functions
//! (18.16 has none). Sessions with an id are plain groups; for the
//! session-less events a device's events are gathered with
//! `groupUniqArray`, sorted with `arraySort`, split with `arrayDifference`
//! and `arrayCumSum`, and spread out again with `ARRAY JOIN`; `UNION ALL`
//! joins the two kinds.
//!
//! # Definitions
//!
//! - A *session* belongs to a device: it is keyed by `(anonymous_id,
//!   session_id)`, since the SDK keeps the session id per device, and a
//!   device's events may carry no `user_id` at all.
//! - Events without a `session_id` are split per device by inactivity: sorted
//!   by time, a gap of more than [`INACTIVITY_MS`] (30 minutes) starts a new
//!   session; a gap of exactly 30 minutes does not. They are never merged
//!   into the device's sessions that have an id.
//! - A session *starts* at its first event and counts on that day in the
//!   request's timezone, even when it runs past midnight. A request counts
//!   the sessions that start in `since_ms <= t < until_ms`; events up to
//!   [`EDGE_MS`] on either side are read, so a session that began shortly
//!   before `since_ms` is known to have started earlier (and is not
//!   counted), and one that runs on past `until_ms` keeps its events up to
//!   `until_ms + EDGE_MS`, where it is cut.
//! - *Duration*: last event time minus first, in seconds (0 for a session
//!   of one event). The answer gives the mean and the median; the median is
//!   exact, and for an even count the mean of the two middle values.
//! - *Pages per session*: `page_view` events per session, averaged over all
//!   sessions (those without a page view count as 0).
//! - *Filters* pick sessions by their first event (the earliest; among
//!   events on the same millisecond, the least event id in ClickHouse's
//!   UUID order, so the pick does not depend on how rows were read):
//!   `country = DE` means
//!   sessions whose first event came from Germany, `page_path = /pricing`
//!   sessions that landed there. Events are not filtered before they are
//!   split into sessions.
//! - Duplicates of one event that ClickHouse has not merged yet count once
//!   (pages are distinct page-view event ids; the arrays are
//!   `groupUniqArray`s of tuples that include the event id).

use serde::{Deserialize, Serialize};
use spoor_store::schema::EVENTS_TABLE;

use super::{
    check_text, check_timezone, funnel::check_range, window_conditions, DimensionFilter, Param,
    RequestError, Sql, MAX_FILTERS,
};

/// A gap longer than this between a device's session-less events starts a
/// new session.
pub const INACTIVITY_MS: i64 = 30 * 60_000;
/// How far past the range's ends events are read to find where sessions
/// start and end: 6 hours.
pub const EDGE_MS: i64 = 6 * 3_600_000;
/// Longest range: 90 days.
pub const MAX_SESSIONS_RANGE_MS: i64 = 90 * 86_400_000;
/// The event that counts as a page.
pub const PAGE_EVENT: &str = "page_view";

/// One sessions question. JSON: `{"since_ms": ..., "until_ms": ...,
/// "timezone": "Europe/Berlin", "filters": [{"dimension": "country",
/// "value": "DE"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsRequest {
    /// Filled in by the service from the URL.
    #[serde(default)]
    pub project_id: String,
    /// Sessions that start in `since_ms <= t < until_ms`.
    pub since_ms: i64,
    pub until_ms: i64,
    /// An IANA name; days start at its midnight. UTC if absent.
    #[serde(default = "utc")]
    pub timezone: String,
    /// On the session's first event; all must match.
    #[serde(default)]
    pub filters: Vec<DimensionFilter>,
}

fn utc() -> String {
    "UTC".to_string()
}

impl SessionsRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        check_text("project_id", &self.project_id)?;
        check_range(
            self.since_ms,
            self.until_ms,
            MAX_SESSIONS_RANGE_MS,
            "90 days",
        )?;
        check_timezone(&self.timezone)?;
        if self.filters.len() > MAX_FILTERS {
            return Err(RequestError::TooManyFilters {
                what: "filters",
                got: self.filters.len(),
            });
        }
        for f in &self.filters {
            check_text("filter value", &f.value)?;
        }
        Ok(())
    }

    /// The query, validated first. Columns, one row per day with sessions,
    /// by day: `day` (`YYYY-MM-DD` in the timezone), `sessions`,
    /// `avg_duration_seconds`, `median_duration_seconds`,
    /// `avg_pages_per_session`; and the same over the whole range as
    /// `WITH TOTALS` (whose `day` means nothing).
    pub fn sql(&self) -> Result<Sql, RequestError> {
        self.validate()?;
        let mut params = vec![Param::Str(self.timezone.clone())];

        // Sessions with an id: one group each, no arrays needed.
        let mut firsts = String::new();
        for (i, f) in self.filters.iter().enumerate() {
            let column = f.dimension.column();
            firsts.push_str(&format!(
                ", argMin({column}, (ts_ms, event_id)) AS first_{i}"
            ));
        }
        let (where_, having) = self.conditions(&mut params);
        let with_id = format!(
            "SELECT min(ts_ms) AS start, max(ts_ms) - min(ts_ms) AS duration_ms, \
             uniqExactIf(event_id, event = '{PAGE_EVENT}') AS pages{firsts} \
             FROM {EVENTS_TABLE} WHERE {where_} AND session_id != '' \
             GROUP BY anonymous_id, session_id HAVING {having}"
        );

        // Session-less events: per device, in time order, each numbered
        // with the session it falls in; filter columns travel along.
        let mut carried = String::new();
        let mut firsts = String::new();
        for (i, f) in self.filters.iter().enumerate() {
            carried.push_str(&format!(", {}", f.dimension.column()));
            firsts.push_str(&format!(", argMin(e.{}, (e.1, e.2)) AS first_{i}", i + 4));
        }
        let (where_, having) = self.conditions(&mut params);
        let per_device = format!(
            "SELECT anonymous_id, \
             arraySort(x -> x.1, groupUniqArray((ts_ms, event_id, event = '{PAGE_EVENT}'{carried}))) AS evs, \
             arrayMap(x -> x.1, evs) AS times, \
             arrayCumSum(arrayMap((gap, i) -> i = 1 OR gap > {INACTIVITY_MS}, \
             arrayDifference(times), arrayEnumerate(times))) AS parts \
             FROM {EVENTS_TABLE} WHERE {where_} AND session_id = '' GROUP BY anonymous_id"
        );
        let without_id = format!(
            "SELECT min(e.1) AS start, max(e.1) - min(e.1) AS duration_ms, \
             sum(e.3) AS pages{firsts} \
             FROM ({per_device}) ARRAY JOIN evs AS e, parts AS part \
             GROUP BY anonymous_id, part HAVING {having}"
        );
        let per_session = format!("{with_id} UNION ALL {without_id}");
        let text = format!(
            "SELECT toString(toDate(toDateTime(intDiv(start, 1000)), ?)) AS day, \
             count() AS sessions, \
             avg(duration_ms) / 1000 AS avg_duration_seconds, \
             (arraySort(groupArray(duration_ms))[intDiv(count() + 1, 2)] \
             + arraySort(groupArray(duration_ms))[intDiv(count(), 2) + 1]) / 2000 \
             AS median_duration_seconds, \
             avg(pages) AS avg_pages_per_session \
             FROM ({per_session}) GROUP BY day WITH TOTALS ORDER BY day"
        );
        Ok(Sql { text, params })
    }

    /// The scan window (the range widened by [`EDGE_MS`]) and the sessions
    /// kept (start in the range, first event matching the filters), with
    /// their values appended to `params` in that order.
    fn conditions(&self, params: &mut Vec<Param>) -> (String, String) {
        let mut where_ = Vec::new();
        window_conditions(
            &self.project_id,
            self.since_ms.saturating_sub(EDGE_MS),
            self.until_ms.saturating_add(EDGE_MS),
            &mut where_,
            params,
        );
        let mut having = vec!["start >= ?".to_string(), "start < ?".to_string()];
        params.push(Param::Int(self.since_ms));
        params.push(Param::Int(self.until_ms));
        for (i, f) in self.filters.iter().enumerate() {
            having.push(format!("first_{i} = ?"));
            params.push(Param::Str(f.value.clone()));
        }
        (where_.join(" AND "), having.join(" AND "))
    }
}

#[cfg(test)]
mod tests;
