//! Funnel requests and the SQL they become.
//!
//! A [`FunnelRequest`] names 2 to 8 ordered steps (an event name and
//! optional property filters each), a conversion window and a time range,
//! and optionally a breakdown [`Dimension`]. [`FunnelRequest::sql`] renders
//! one query that computes, per user, how far along the steps they got with
//! ClickHouse's `windowFunnel`, then counts users per step. Pure: no I/O, no
//! clock; every caller value is bound, only closed-enum columns and derived
//! constants (step numbers) are spliced.
//!
//! # What the numbers mean
//!
//! - A *user* is `user_id`, or the device (`anonymous_id`) for events
//!   without one, as in the metrics. Users are grouped by the 64-bit
//!   `cityHash64` of that key, which aggregates several times faster than
//!   the string; two users could only be merged by a hash collision
//!   (probability about n²/2⁶⁵: under 3·10⁻⁸ at a million users).
//! - A user *enters* the funnel with a step-1 event in
//!   `since_ms <= t < until_ms`. Later steps may happen up to the window
//!   after that, even past `until_ms`.
//! - A user *reaches* step k when some chain of their events e1, ..., ek
//!   matches steps 1..k in order, each strictly later than the one before
//!   (at the tick resolution below), with `t(ek) - t(e1) <= window`. A user's
//!   level is the longest such chain over all their step-1 events
//!   (`windowFunnel`'s definition). One event serves at most one step of a
//!   chain, even when it matches several.
//! - Timestamps are compared in ticks of [`FunnelRequest::tick_ms`]
//!   milliseconds since `since_ms`: 1 ms for short spans, 10 or 100 ms for
//!   longer ones (18.16's `windowFunnel` takes a `UInt32` time and keeps it
//!   in an `Int32`). Two events of one user in the same tick never count as
//!   one step following the other; that is what makes the answer the same
//!   on 18.16 and current releases, which order ties differently.
//!
//! Per step the answer gives `entered` (users who reached it), `converted`
//! (those who also reached the next step; for the last step, equal to
//! `entered`: reaching the last step completes the funnel), `dropped`,
//! `conversion_rate` (entered / entered at the previous step; 1 for step
//! 1), `overall_conversion_rate` (entered / entered at step 1) and
//! `drop_off_rate` (dropped / entered; 0 for the last step). Rates over
//! zero users are 0. See [`funnel_steps`].
//!
//! With a breakdown, a user's value is the dimension of their earliest
//! step-1 event in the range (`argMinIf(dim, (ts_ms, event_id), step = 1)`:
//! on a tie, the least event id in ClickHouse's UUID order), even when a
//! later step-1 event started their longest chain. The query returns the
//! `breakdown_limit` values with the most users entered (ties by value) and,
//! through `WITH TOTALS`, the funnel over all users, from which the runner
//! derives the remainder as "other".

use serde::{Deserialize, Serialize};
use spoor_store::schema::EVENTS_TABLE;

use super::{
    check_property_name, check_text, property_condition, window_conditions, Dimension, Param,
    PropertyFilter, RequestError, Sql, MAX_FILTERS,
};

/// Fewest steps a funnel may have.
pub const MIN_STEPS: usize = 2;
/// Most steps a funnel may have.
pub const MAX_STEPS: usize = 8;
/// Longest conversion window: 30 days.
pub const MAX_WINDOW_SECONDS: i64 = 30 * 86_400;
/// Longest time range a funnel's step 1 may cover: 90 days.
pub const MAX_FUNNEL_RANGE_MS: i64 = 90 * 86_400_000;
/// Breakdown values returned when the request does not say.
pub const DEFAULT_BREAKDOWN_LIMIT: u32 = 10;
/// Most breakdown values one answer may hold.
pub const MAX_BREAKDOWN_LIMIT: u32 = 100;

/// One step: an event name and filters on its properties (all must match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelStep {
    pub event: String,
    #[serde(default)]
    pub properties: Vec<PropertyFilter>,
}

/// One funnel question. JSON:
/// `{"steps": [{"event": "add_to_cart"}, {"event": "payment",
/// "properties": [{"name": "method", "value": "card"}]}],
/// "window_seconds": 3600, "since_ms": ..., "until_ms": ...,
/// "breakdown": "country", "breakdown_limit": 10}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelRequest {
    /// Filled in by the service from the URL.
    #[serde(default)]
    pub project_id: String,
    pub steps: Vec<FunnelStep>,
    /// How long after step 1 the last step may happen, in seconds.
    pub window_seconds: i64,
    /// Step-1 events in `since_ms <= t < until_ms`, ms since the epoch.
    pub since_ms: i64,
    pub until_ms: i64,
    #[serde(default)]
    pub breakdown: Option<Dimension>,
    #[serde(default = "default_breakdown_limit")]
    pub breakdown_limit: u32,
}

fn default_breakdown_limit() -> u32 {
    DEFAULT_BREAKDOWN_LIMIT
}

/// `since_ms < until_ms` and at most `max_ms` apart.
pub(crate) fn check_range(
    since_ms: i64,
    until_ms: i64,
    max_ms: i64,
    max_text: &str,
) -> Result<(), RequestError> {
    if since_ms >= until_ms {
        return Err(RequestError::BadRange { since_ms, until_ms });
    }
    if until_ms.saturating_sub(since_ms) > max_ms {
        return Err(RequestError::Invalid {
            field: "until_ms",
            reason: format!("the time range is longer than {max_text}"),
        });
    }
    Ok(())
}

/// The largest value 18.16's `windowFunnel` handles: it keeps times in an
/// `Int32`.
const MAX_FUNNEL_TIME: i64 = i32::MAX as i64;

impl FunnelRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        check_text("project_id", &self.project_id)?;
        if !(MIN_STEPS..=MAX_STEPS).contains(&self.steps.len()) {
            return Err(RequestError::Invalid {
                field: "steps",
                reason: format!(
                    "a funnel has {MIN_STEPS} to {MAX_STEPS} steps, got {}",
                    self.steps.len()
                ),
            });
        }
        let filters: usize = self.steps.iter().map(|s| s.properties.len()).sum();
        if filters > 2 * MAX_FILTERS {
            return Err(RequestError::TooManyFilters {
                what: "property filters over all steps",
                got: filters,
            });
        }
        for step in &self.steps {
            check_text("steps.event", &step.event)?;
            if step.properties.len() > MAX_FILTERS {
                return Err(RequestError::TooManyFilters {
                    what: "property filters in one step",
                    got: step.properties.len(),
                });
            }
            for p in &step.properties {
                check_property_name(&p.name)?;
                check_text("property value", &p.value)?;
            }
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.window_seconds) {
            return Err(RequestError::Invalid {
                field: "window_seconds",
                reason: format!(
                    "the conversion window is 1 to {MAX_WINDOW_SECONDS} seconds (30 days), got {}",
                    self.window_seconds
                ),
            });
        }
        check_range(self.since_ms, self.until_ms, MAX_FUNNEL_RANGE_MS, "90 days")?;
        if !(1..=MAX_BREAKDOWN_LIMIT).contains(&self.breakdown_limit) {
            return Err(RequestError::Invalid {
                field: "breakdown_limit",
                reason: format!(
                    "1 to {MAX_BREAKDOWN_LIMIT} values, got {}",
                    self.breakdown_limit
                ),
            });
        }
        Ok(())
    }

    /// The tick, in ms, at which event times are compared: the finest of 1,
    /// 10, 100 and 1000 ms at which `(since, until + window)` in ticks,
    /// times the step count (see [`FunnelRequest::sql`]), fits 18.16's
    /// `Int32`. 1 ms up to about 3 days for 8 steps (12 days for 2), 10 ms
    /// up to 30 days, 100 ms beyond. Assumes a validated request.
    pub fn tick_ms(&self) -> i64 {
        let span = self.until_ms - self.since_ms + self.window_seconds * 1000;
        let steps = self.steps.len() as i64;
        [1, 10, 100]
            .into_iter()
            .find(|tick| (span / tick + 1) * steps <= MAX_FUNNEL_TIME)
            .unwrap_or(1000)
    }

    /// The funnel query, validated first.
    ///
    /// Each event that matches any step becomes one row per step it matches
    /// (`arrayJoin`), with the time `tick * n + (n - step)`: within one tick
    /// a higher step sorts first, so neither one event nor two events in
    /// the same tick can chain, and the window `window_ticks * n` still
    /// means `t(last) - t(first) <= window` in ticks. `windowFunnel` then
    /// gives each user's level.
    ///
    /// Columns without a breakdown: one row, `entered` for steps 1..=n.
    /// With one: `breakdown` then the n counts, the top `breakdown_limit`
    /// values, and the totals over all users (`WITH TOTALS`).
    pub fn sql(&self) -> Result<Sql, RequestError> {
        self.validate()?;
        let n = self.steps.len();
        let tick = self.tick_ms();
        let window_ticks = self.window_seconds * 1000 / tick;
        let mut params = Vec::new();

        // The per-user query: its own placeholders come before the inner
        // query's in the text.
        let conditions: Vec<String> = (1..=n).map(|k| format!("step = {k}")).collect();
        let mut per_user = format!(
            "SELECT cityHash64(if(user_id != '', user_id, anonymous_id)) AS who, \
             windowFunnel(?)(toUInt32(intDiv(ts_ms - ?, ?) * {n} + {n} - step), {}) AS level",
            conditions.join(", ")
        );
        params.push(Param::Int(window_ticks * n as i64));
        params.push(Param::Int(self.since_ms));
        params.push(Param::Int(tick));
        if self.breakdown.is_some() {
            per_user
                .push_str(", argMinIf(breakdown_value, (ts_ms, event_id), step = 1) AS breakdown");
        }

        // The inner query: one row per (event, step it matches).
        let mut conds = Vec::with_capacity(n);
        for (i, step) in self.steps.iter().enumerate() {
            let mut all = vec!["event = ?".to_string()];
            params.push(Param::Str(step.event.clone()));
            for p in &step.properties {
                property_condition(p, &mut all, &mut params);
            }
            if i == 0 {
                all.push("ts_ms < ?".to_string());
                params.push(Param::Int(self.until_ms));
            }
            conds.push(all.join(" AND "));
        }
        // `event_id` only breaks breakdown ties; without one it is not read.
        let breakdown_column = match self.breakdown {
            Some(d) => format!(", event_id, {} AS breakdown_value", d.column()),
            None => String::new(),
        };
        let mut where_ = Vec::new();
        window_conditions(
            &self.project_id,
            self.since_ms,
            self.until_ms + self.window_seconds * 1000,
            &mut where_,
            &mut params,
        );
        let events = vec!["?"; n].join(", ");
        where_.push(format!("event IN ({events})"));
        params.extend(self.steps.iter().map(|s| Param::Str(s.event.clone())));
        // When every step names a different event, a row matches at most
        // one step, and a plain `multiIf` gives it without building an
        // array per row; otherwise one row per step it matches.
        let distinct = self
            .steps
            .iter()
            .enumerate()
            .all(|(i, s)| self.steps[..i].iter().all(|t| t.event != s.event));
        let inner = if distinct {
            let branches: Vec<String> = conds
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c}, {}", i + 1))
                .collect();
            format!(
                "SELECT * FROM (SELECT user_id, anonymous_id, ts_ms{breakdown_column}, \
                 multiIf({}, 0) AS step FROM {EVENTS_TABLE} WHERE {}) WHERE step > 0",
                branches.join(", "),
                where_.join(" AND ")
            )
        } else {
            let marks: Vec<String> = conds
                .iter()
                .enumerate()
                .map(|(i, c)| format!("if({c}, {}, 0)", i + 1))
                .collect();
            format!(
                "SELECT user_id, anonymous_id, ts_ms{breakdown_column}, \
                 arrayJoin(arrayFilter(x -> x > 0, [{}])) AS step \
                 FROM {EVENTS_TABLE} WHERE {}",
                marks.join(", "),
                where_.join(" AND ")
            )
        };

        let counts: Vec<String> = std::iter::once("count() AS entered_1".to_string())
            .chain((2..=n).map(|k| format!("countIf(level >= {k}) AS entered_{k}")))
            .collect();
        let counts = counts.join(", ");
        let text = if self.breakdown.is_some() {
            params.push(Param::Int(i64::from(self.breakdown_limit)));
            format!(
                "SELECT breakdown, {counts} FROM ({per_user} FROM ({inner}) GROUP BY who) \
                 WHERE level > 0 GROUP BY breakdown WITH TOTALS \
                 ORDER BY entered_1 DESC, breakdown LIMIT ?"
            )
        } else {
            format!("SELECT {counts} FROM ({per_user} FROM ({inner}) GROUP BY who) WHERE level > 0")
        };
        Ok(Sql { text, params })
    }
}

/// One step of an answer. See the module docs for the definitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelStepResult {
    pub event: String,
    /// Users who reached this step.
    pub entered: u64,
    /// Of those, users who went on to reach the next step; for the last
    /// step, `entered` (they completed the funnel).
    pub converted: u64,
    /// `entered - converted`.
    pub dropped: u64,
    /// `entered / entered of the previous step`; 1 for step 1.
    pub conversion_rate: f64,
    /// `entered / entered of step 1`.
    pub overall_conversion_rate: f64,
    /// `dropped / entered`; 0 for the last step.
    pub drop_off_rate: f64,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The per-step answer from the number of users who reached each step
/// (`entered[k]` users reached step k + 1; non-increasing).
pub fn funnel_steps(steps: &[FunnelStep], entered: &[u64]) -> Vec<FunnelStepResult> {
    let first = entered.first().copied().unwrap_or(0);
    steps
        .iter()
        .zip(entered)
        .enumerate()
        .map(|(k, (step, &here))| {
            let converted = entered.get(k + 1).copied().unwrap_or(here).min(here);
            let previous = if k == 0 { here } else { entered[k - 1] };
            FunnelStepResult {
                event: step.event.clone(),
                entered: here,
                converted,
                dropped: here - converted,
                conversion_rate: ratio(here, previous),
                overall_conversion_rate: ratio(here, first),
                drop_off_rate: ratio(here - converted, here),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
