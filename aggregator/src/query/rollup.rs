//! Which table answers a metrics request, and the SQL over a rollup.
//!
//! `deploy/clickhouse/003_rollups.sql` keeps `events` pre-aggregated in UTC
//! buckets of a minute, an hour and a day (`events_rollup_minute`, `_hour`,
//! `_day`) over `event`, `country`, `device_type`, `browser` and `os`, with
//! a `countState()` and a `uniqExactState` of the user key per bucket.
//! [`MetricsRequest::plan`] answers from the smallest of them that can
//! answer exactly (coarsest first: day, hour, minute) and from `events`
//! otherwise. A table can answer when
//!
//! * the measure is `Count` or `UniqueUsers` (the states kept);
//! * every group-by dimension and dimension filter is one of the five kept,
//!   and there is no property filter;
//! * the granularity is not finer than the table's buckets;
//! * `since_ms` and `until_ms` are multiples of the table's bucket, so the
//!   buckets selected hold exactly the events of the window;
//! * over the window, the request timezone's UTC offset is a whole number of
//!   the table's buckets and changes only on a bucket edge, so every table
//!   bucket falls inside one bucket of the request in that timezone (day
//!   table: offset 0 throughout; hour table: whole hours, not
//!   Asia/Kolkata; minute table: whole minutes, every zone today).
//!
//! Under those conditions a rollup answer equals the raw answer row for row
//! (`tests/it/rollups.rs` checks that against a real server). The output
//! columns are the raw query's (`bucket` in the request timezone, the group
//! columns in order, `value` as Float64), ordered and limited the same way,
//! so one reader (`store::run_metrics`) serves both.
//!
//! Pure: no I/O, no clock. Offsets come from the IANA database compiled
//! into `chrono-tz`, probed every hour over the window and bisected to the
//! second where they change; that assumes no zone changes its offset twice
//! within an hour, which no zone has ever done.

use chrono::{DateTime, Offset, TimeZone};
use chrono_tz::Tz;
use serde::Serialize;
use spoor_store::schema::{EVENTS_TABLE, ROLLUP_DAY_TABLE, ROLLUP_HOUR_TABLE, ROLLUP_MINUTE_TABLE};

use super::{Dimension, Granularity, Measure, MetricsRequest, Param, RequestError, Sql, MAX_ROWS};

/// The table a request is answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Day,
    Hour,
    Minute,
    Raw,
}

impl Source {
    /// The rollups, smallest table (coarsest bucket) first.
    pub const ROLLUPS: [Source; 3] = [Source::Day, Source::Hour, Source::Minute];

    /// The table; from a closed set, so safe to splice.
    pub fn table(self) -> &'static str {
        match self {
            Source::Day => ROLLUP_DAY_TABLE,
            Source::Hour => ROLLUP_HOUR_TABLE,
            Source::Minute => ROLLUP_MINUTE_TABLE,
            Source::Raw => EVENTS_TABLE,
        }
    }

    /// The table's bucket; `None` for raw events.
    pub fn bucket(self) -> Option<Granularity> {
        match self {
            Source::Day => Some(Granularity::Day),
            Source::Hour => Some(Granularity::Hour),
            Source::Minute => Some(Granularity::Minute),
            Source::Raw => None,
        }
    }
}

/// A request's query and the table it reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub source: Source,
    pub sql: Sql,
}

/// Why a rollup cannot answer a request exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("sums and averages of properties need the raw events")]
    Measure,
    #[error("property filters need the raw events")]
    Properties,
    #[error("`{0}` is not kept in the rollups")]
    Dimension(&'static str),
    #[error("the granularity is finer than the table's buckets")]
    Granularity,
    #[error("the time range does not start and end on the table's buckets")]
    Unaligned,
    #[error("the timezone's offset from UTC is not a whole number of the table's buckets over the range")]
    Timezone,
}

/// A measure over a rollup: the -Merge function and the state column.
#[derive(Debug, Clone, Copy)]
struct Merge {
    function: &'static str,
    state: &'static str,
}

/// The dimensions the rollup tables keep.
fn kept(d: Dimension) -> bool {
    matches!(
        d,
        Dimension::Event
            | Dimension::Country
            | Dimension::DeviceType
            | Dimension::Browser
            | Dimension::Os
    )
}

/// How often the zone's offset is sampled; changes between samples are
/// bisected to the second.
const PROBE_S: i64 = 3_600;

/// Whether, at every second of `[since_s, until_s)`, `tz`'s UTC offset is a
/// multiple of `width_s`, and every change of it falls on a multiple of
/// `width_s`. Then local buckets of `width_s` or wider (minute, hour, day)
/// start only on UTC multiples of `width_s`.
pub(crate) fn offsets_fit(tz: Tz, since_s: i64, until_s: i64, width_s: i64) -> bool {
    let offset = |t: i64| -> Option<i64> {
        let at = DateTime::from_timestamp(t, 0)?.naive_utc();
        Some(i64::from(
            tz.offset_from_utc_datetime(&at).fix().local_minus_utc(),
        ))
    };
    let whole = |x: i64| x.rem_euclid(width_s) == 0;
    let last = until_s - 1;
    let (mut t, mut off) = match offset(since_s) {
        Some(o) => (since_s, o),
        None => return false,
    };
    if !whole(off) {
        return false;
    }
    while t < last {
        let next = t.saturating_add(PROBE_S).min(last);
        let Some(o) = offset(next) else {
            return false;
        };
        if o == off {
            t = next;
            continue;
        }
        // The first second in (t, next] whose offset is not `off`.
        let (mut lo, mut hi) = (t, next);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if offset(mid) == Some(off) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let Some(changed) = offset(hi) else {
            return false;
        };
        if !whole(hi) || !whole(changed) {
            return false;
        }
        (t, off) = (hi, changed);
    }
    true
}

impl MetricsRequest {
    /// The service's plan: [`MetricsRequest::plan`], except that a
    /// unique-user question whose range starts at or after
    /// `raw_kept_since_ms` (the raw table still holds all of it) reads the
    /// raw events. Merging exact unique-user states costs more than
    /// counting distinct users of the raw rows (at 10M events, 178 ms
    /// against 37 ms for a week by day and country; BENCHMARKS.md), while
    /// counts are 2.5-10 times faster from the rollups. Older ranges, past
    /// the raw table's retention, still get the rollups' exact answer.
    pub fn plan_for_service(&self, raw_kept_since_ms: i64) -> Result<Plan, RequestError> {
        let plan = self.plan()?;
        if self.measure == Measure::UniqueUsers
            && plan.source != Source::Raw
            && self.since_ms >= raw_kept_since_ms
        {
            return Ok(Plan {
                source: Source::Raw,
                sql: self.sql()?,
            });
        }
        Ok(plan)
    }

    /// Validates, then picks the smallest table that answers exactly
    /// (day, hour, minute rollup, else raw `events`) and renders its query.
    pub fn plan(&self) -> Result<Plan, RequestError> {
        self.validate()?;
        for source in Source::ROLLUPS {
            if let Ok(Some(merge)) = self.check(source) {
                return Ok(Plan {
                    source,
                    sql: self.rollup_sql(source, merge),
                });
            }
        }
        Ok(Plan {
            source: Source::Raw,
            sql: self.sql()?,
        })
    }

    /// The query over `source`, validated first; an error if that table
    /// cannot answer exactly. `sql_from(Source::Raw)` is [`Self::sql`].
    pub fn sql_from(&self, source: Source) -> Result<Sql, RequestError> {
        self.validate()?;
        let merge = self.check(source).map_err(|misfit| RequestError::Rollup {
            table: source.table(),
            misfit,
        })?;
        match merge {
            Some(merge) => Ok(self.rollup_sql(source, merge)),
            None => self.sql(),
        }
    }

    /// Whether `source` answers this request exactly (raw events always
    /// do). Meaningful for a valid request.
    pub fn fit(&self, source: Source) -> Result<(), Misfit> {
        self.check(source).map(|_| ())
    }

    /// [`Self::fit`], returning how to merge the measure's state (raw
    /// events need none).
    fn check(&self, source: Source) -> Result<Option<Merge>, Misfit> {
        let Some(width) = source.bucket() else {
            return Ok(None);
        };
        let merge = match self.measure {
            Measure::Count => Merge {
                function: "countMerge",
                state: "events",
            },
            Measure::UniqueUsers => Merge {
                function: "uniqExactMerge",
                state: "users",
            },
            Measure::Sum(_) | Measure::Avg(_) => return Err(Misfit::Measure),
        };
        if !self.properties.is_empty() {
            return Err(Misfit::Properties);
        }
        let dimensions = self
            .group_by
            .iter()
            .chain(self.filters.iter().map(|f| &f.dimension));
        for d in dimensions {
            if !kept(*d) {
                return Err(Misfit::Dimension(d.column()));
            }
        }
        if self.granularity.ms() < width.ms() {
            return Err(Misfit::Granularity);
        }
        let w = width.ms();
        if self.since_ms.rem_euclid(w) != 0 || self.until_ms.rem_euclid(w) != 0 {
            return Err(Misfit::Unaligned);
        }
        let Ok(tz) = self.timezone.parse::<Tz>() else {
            return Err(Misfit::Timezone);
        };
        if !offsets_fit(tz, self.since_ms / 1000, self.until_ms / 1000, w / 1000) {
            return Err(Misfit::Timezone);
        }
        Ok(Some(merge))
    }

    /// The query over a rollup that [`Self::check`] accepted. The table's
    /// `bucket` is renamed `t` in a subquery, so the outer `bucket` (the
    /// request-timezone bucket, as in the raw query) never shadows the
    /// column the window filters on.
    fn rollup_sql(&self, source: Source, merge: Merge) -> Sql {
        let groups: Vec<&str> = self.group_by.iter().map(|d| d.column()).collect();
        // Placeholders are bound in text order: bucket tz, then the where.
        let mut params = vec![Param::Str(self.timezone.clone())];
        let mut outer = format!("{}(t, ?) AS bucket", self.granularity.function());
        let mut inner = "bucket AS t".to_string();
        let mut group = "bucket".to_string();
        for g in &groups {
            for list in [&mut outer, &mut inner, &mut group] {
                list.push_str(", ");
                list.push_str(g);
            }
        }
        let (since_s, until_s) = (self.since_ms / 1000, self.until_ms / 1000);
        let mut conditions = vec![
            "project_id = ?".to_string(),
            "event_date >= toDate(toDateTime(?), 'UTC') \
             AND event_date <= toDate(toDateTime(?), 'UTC')"
                .to_string(),
            "bucket >= toDateTime(?) AND bucket < toDateTime(?)".to_string(),
        ];
        params.push(Param::Str(self.project_id.clone()));
        params.push(Param::Int(since_s));
        params.push(Param::Int(until_s - 1));
        params.push(Param::Int(since_s));
        params.push(Param::Int(until_s));
        if !self.events.is_empty() {
            let marks = vec!["?"; self.events.len()].join(", ");
            conditions.push(format!("event IN ({marks})"));
            params.extend(self.events.iter().cloned().map(Param::Str));
        }
        for f in &self.filters {
            conditions.push(format!("{} = ?", f.dimension.column()));
            params.push(Param::Str(f.value.clone()));
        }
        let text = format!(
            "SELECT {outer}, toFloat64({}({})) AS value \
             FROM (SELECT {inner}, {} FROM {} WHERE {}) \
             GROUP BY {group} ORDER BY {group} LIMIT {MAX_ROWS}",
            merge.function,
            merge.state,
            merge.state,
            source.table(),
            conditions.join(" AND "),
        );
        Sql { text, params }
    }
}

#[cfg(test)]
mod tests;
