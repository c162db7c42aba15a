//! Metrics requests and the SQL they become.
//!
//! A [`MetricsRequest`] (measure, event filter, time range, granularity,
//! timezone, up to three group-by dimensions, property filters) is checked
//! by [`MetricsRequest::validate`] and rendered by [`MetricsRequest::sql`]
//! into a [`Sql`]: a text with `?` placeholders and the values to bind, in
//! order. Nothing a caller sends is spliced into the text: dimensions and
//! measures come from closed enums, property names and values, the project,
//! the event names and the timezone are bound (the client escapes them), and
//! numbers are typed. That is the invariant the hostile-parameter tests
//! check.
//!
//! [`MetricsRequest::plan`] (in `rollup`) answers from the smallest rollup
//! table that gives the same answer, and from `events` otherwise.
//!
//! The SQL runs on ClickHouse 18.16 and current releases: only
//! `toStartOf*`, `uniqExact`, `visitParamExtract*` and plain aggregates.

use serde::{Deserialize, Serialize};
use spoor_store::schema::{EVENTS_TABLE, ROLLUP_MINUTE_TABLE};

mod rollup;
pub use rollup::{Misfit, Plan, Source};

/// Longest window a metrics request may cover.
pub const MAX_RANGE_MS: i64 = 400 * 86_400_000;
/// Most buckets × groups a request may return.
pub const MAX_ROWS: u32 = 10_000;
/// Longest property name, property value, event name or project id.
pub const MAX_TEXT: usize = 256;
/// Most property filters and event names in one request.
pub const MAX_FILTERS: usize = 16;

/// What to compute per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "property")]
pub enum Measure {
    /// Events.
    Count,
    /// Distinct users: the `user_id`, or the device (`anonymous_id`) for
    /// events without one.
    UniqueUsers,
    /// Sum of a numeric property (events without it count as 0).
    Sum(String),
    /// Mean of a numeric property over the events that carry it.
    Avg(String),
}

/// A stored dimension a request may filter or group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Event,
    Country,
    Region,
    City,
    DeviceType,
    Browser,
    Os,
    AppName,
    AppVersion,
    PagePath,
    EdgeRegion,
    /// The campaign columns (`deploy/clickhouse/005_campaign.sql`): the
    /// client's `context.campaign`, else the page URL's `utm_*`
    /// parameters; '' for events without one. Not kept in the rollups, so
    /// a request using them reads `events`.
    UtmSource,
    UtmMedium,
    /// `utm_campaign` (Segment's `context.campaign.name`).
    UtmCampaign,
    UtmTerm,
    UtmContent,
}

impl Dimension {
    /// The column; from a closed set, so safe to splice.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Event => "event",
            Dimension::Country => "country",
            Dimension::Region => "region",
            Dimension::City => "city",
            Dimension::DeviceType => "device_type",
            Dimension::Browser => "browser",
            Dimension::Os => "os",
            Dimension::AppName => "app_name",
            Dimension::AppVersion => "app_version",
            Dimension::PagePath => "page_path",
            Dimension::EdgeRegion => "edge_region",
            Dimension::UtmSource => "utm_source",
            Dimension::UtmMedium => "utm_medium",
            Dimension::UtmCampaign => "utm_campaign",
            Dimension::UtmTerm => "utm_term",
            Dimension::UtmContent => "utm_content",
        }
    }
}

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    fn function(self) -> &'static str {
        match self {
            Granularity::Minute => "toStartOfMinute",
            Granularity::Hour => "toStartOfHour",
            Granularity::Day => "toStartOfDay",
        }
    }

    fn ms(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }
}

/// `properties.<name> = <value>` (string comparison of the JSON value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyFilter {
    pub name: String,
    pub value: String,
}

/// `<dimension> = <value>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimensionFilter {
    pub dimension: Dimension,
    pub value: String,
}

/// One metrics question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsRequest {
    /// Filled from the URL by the service; a body need not carry it.
    #[serde(default)]
    pub project_id: String,
    pub measure: Measure,
    /// Only these event names (any of them); empty means every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// Event time window, ms since the epoch: `since_ms <= t < until_ms`.
    pub since_ms: i64,
    pub until_ms: i64,
    pub granularity: Granularity,
    /// An IANA name such as `Europe/Berlin`; buckets start at its midnight.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Up to three dimensions.
    #[serde(default)]
    pub group_by: Vec<Dimension>,
    #[serde(default)]
    pub filters: Vec<DimensionFilter>,
    #[serde(default)]
    pub properties: Vec<PropertyFilter>,
}

fn utc() -> String {
    "UTC".to_string()
}

/// Why a request was refused: all the caller's to fix (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("`{field}` is empty")]
    Empty { field: &'static str },
    #[error("`{field}` is {len} bytes; at most {MAX_TEXT}")]
    TooLong { field: &'static str, len: usize },
    #[error("`{field}` contains a control character")]
    ControlCharacter { field: &'static str },
    #[error("the time range is empty or inverted ({since_ms} .. {until_ms})")]
    BadRange { since_ms: i64, until_ms: i64 },
    #[error("the time range is longer than 400 days")]
    RangeTooLong,
    #[error(
        "{buckets} buckets of this granularity; at most {MAX_ROWS} (use a coarser granularity)"
    )]
    TooManyBuckets { buckets: i64 },
    #[error("at most 3 group_by dimensions, got {0}")]
    TooManyGroups(usize),
    #[error("group_by lists `{0}` twice")]
    RepeatedGroup(&'static str),
    #[error("at most {MAX_FILTERS} {what}, got {got}")]
    TooManyFilters { what: &'static str, got: usize },
    #[error("`{0}` is not a known timezone name like Europe/Berlin or UTC")]
    BadTimezone(String),
    #[error("property name `{0}` must be letters, digits, `_`, `-` or `.`")]
    BadPropertyName(String),
    /// A table was asked for (`sql_from`) that cannot answer exactly.
    #[error("{table} cannot answer this request: {misfit}")]
    Rollup {
        table: &'static str,
        misfit: rollup::Misfit,
    },
    /// Any other refusal, with the field and what is wrong with it.
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Param {
    Str(String),
    Int(i64),
}

/// SQL text with `?` placeholders and the values for them, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Param>,
}

pub(crate) fn check_text(field: &'static str, value: &str) -> Result<(), RequestError> {
    if value.is_empty() {
        return Err(RequestError::Empty { field });
    }
    if value.len() > MAX_TEXT {
        return Err(RequestError::TooLong {
            field,
            len: value.len(),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(RequestError::ControlCharacter { field });
    }
    Ok(())
}

/// A name in the IANA database compiled into `chrono-tz` (`UTC`,
/// `Europe/Berlin`, `America/Argentina/Buenos_Aires`, `Etc/GMT+3`), matched
/// exactly.
pub(crate) fn check_timezone(tz: &str) -> Result<(), RequestError> {
    match tz.parse::<chrono_tz::Tz>() {
        Ok(_) => Ok(()),
        Err(_) => Err(RequestError::BadTimezone(tz.chars().take(64).collect())),
    }
}

pub(crate) fn check_property_name(name: &str) -> Result<(), RequestError> {
    check_text("property name", name)?;
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Ok(())
    } else {
        Err(RequestError::BadPropertyName(
            name.chars().take(64).collect(),
        ))
    }
}

impl MetricsRequest {
    /// Checks every field against the limits above.
    pub fn validate(&self) -> Result<(), RequestError> {
        check_text("project_id", &self.project_id)?;
        if let Measure::Sum(p) | Measure::Avg(p) = &self.measure {
            check_property_name(p)?;
        }
        if self.events.len() > MAX_FILTERS {
            return Err(RequestError::TooManyFilters {
                what: "event names",
                got: self.events.len(),
            });
        }
        for e in &self.events {
            check_text("event", e)?;
        }
        if self.since_ms >= self.until_ms {
            return Err(RequestError::BadRange {
                since_ms: self.since_ms,
                until_ms: self.until_ms,
            });
        }
        let range = self.until_ms.saturating_sub(self.since_ms);
        if range > MAX_RANGE_MS {
            return Err(RequestError::RangeTooLong);
        }
        let width = self.granularity.ms();
        let buckets = (range + width - 1) / width;
        if buckets > i64::from(MAX_ROWS) {
            return Err(RequestError::TooManyBuckets { buckets });
        }
        check_timezone(&self.timezone)?;
        if self.group_by.len() > 3 {
            return Err(RequestError::TooManyGroups(self.group_by.len()));
        }
        for (i, d) in self.group_by.iter().enumerate() {
            if self.group_by[..i].contains(d) {
                return Err(RequestError::RepeatedGroup(d.column()));
            }
        }
        let filters = self.filters.len() + self.properties.len();
        if filters > MAX_FILTERS {
            return Err(RequestError::TooManyFilters {
                what: "filters",
                got: filters,
            });
        }
        for f in &self.filters {
            check_text("filter value", &f.value)?;
        }
        for p in &self.properties {
            check_property_name(&p.name)?;
            check_text("property value", &p.value)?;
        }
        Ok(())
    }

    /// The query over the raw `events` table, validated first. Columns:
    /// `bucket` (DateTime in the request's timezone), one column per
    /// group-by dimension in order, then `value`.
    pub fn sql(&self) -> Result<Sql, RequestError> {
        self.validate()?;
        let mut params = Vec::new();
        let tz = Param::Str(self.timezone.clone());
        let value = match &self.measure {
            Measure::Count => "toFloat64(count())".to_string(),
            Measure::UniqueUsers => {
                "toFloat64(uniqExact(if(user_id != '', user_id, anonymous_id)))".to_string()
            }
            Measure::Sum(_) => "sum(visitParamExtractFloat(properties, ?))".to_string(),
            Measure::Avg(_) => {
                "avgIf(visitParamExtractFloat(properties, ?), visitParamHas(properties, ?))"
                    .to_string()
            }
        };
        // Placeholders are bound in text order: bucket tz, measure, where.
        params.push(tz);
        match &self.measure {
            Measure::Sum(p) => params.push(Param::Str(p.clone())),
            Measure::Avg(p) => {
                params.push(Param::Str(p.clone()));
                params.push(Param::Str(p.clone()));
            }
            _ => {}
        }
        let groups: Vec<&str> = self.group_by.iter().map(|d| d.column()).collect();
        let mut select = format!("{}(event_time, ?) AS bucket", self.granularity.function());
        for g in &groups {
            select.push_str(", ");
            select.push_str(g);
        }
        let mut conditions = Vec::new();
        window_conditions(
            &self.project_id,
            self.since_ms,
            self.until_ms,
            &mut conditions,
            &mut params,
        );
        if !self.events.is_empty() {
            let marks = vec!["?"; self.events.len()].join(", ");
            conditions.push(format!("event IN ({marks})"));
            params.extend(self.events.iter().cloned().map(Param::Str));
        }
        for f in &self.filters {
            conditions.push(format!("{} = ?", f.dimension.column()));
            params.push(Param::Str(f.value.clone()));
        }
        for p in &self.properties {
            property_condition(p, &mut conditions, &mut params);
        }
        let mut group = "bucket".to_string();
        for g in &groups {
            group.push_str(", ");
            group.push_str(g);
        }
        let text = format!(
            "SELECT {select}, {value} AS value FROM {EVENTS_TABLE} WHERE {} GROUP BY {group} ORDER BY {group} LIMIT {MAX_ROWS}",
            conditions.join(" AND ")
        );
        Ok(Sql { text, params })
    }
}

/// The project and the event-time window `since_ms <= ts_ms < until_ms`,
/// for any table with `project_id`, `event_date` (UTC day) and `ts_ms`:
/// partition pruning by day first, then the exact window.
pub(crate) fn window_conditions(
    project_id: &str,
    since_ms: i64,
    until_ms: i64,
    conditions: &mut Vec<String>,
    params: &mut Vec<Param>,
) {
    conditions.push("project_id = ?".to_string());
    conditions.push(
        "event_date >= toDate(toDateTime(intDiv(?, 1000)), 'UTC') \
         AND event_date <= toDate(toDateTime(intDiv(?, 1000)), 'UTC')"
            .to_string(),
    );
    conditions.push("ts_ms >= ? AND ts_ms < ?".to_string());
    params.push(Param::Str(project_id.to_string()));
    params.push(Param::Int(since_ms));
    params.push(Param::Int(until_ms - 1));
    params.push(Param::Int(since_ms));
    params.push(Param::Int(until_ms));
}

/// `properties.<name> = <value>`, both bound. The raw JSON text of a string
/// value is quoted and of a number or boolean is not; either spelling
/// matches.
pub(crate) fn property_condition(
    p: &PropertyFilter,
    conditions: &mut Vec<String>,
    params: &mut Vec<Param>,
) {
    conditions.push("visitParamExtractRaw(properties, ?) IN (?, ?)".to_string());
    params.push(Param::Str(p.name.clone()));
    params.push(Param::Str(p.value.clone()));
    params.push(Param::Str(
        serde_json::to_string(&p.value).unwrap_or_default(),
    ));
}

/// The newest edge receipt time (ms) of a project's events, for the
/// `freshness_seconds` of every answer: `last_received_ms` of the minute
/// rollup. With `now_ms`, only event days from two days before it on (a
/// few partitions; the usual case), else every day. One row, one column;
/// 0 when nothing matches.
pub fn freshness_sql(project_id: &str, now_ms: Option<i64>) -> Sql {
    let mut text = format!(
        "SELECT maxMerge(last_received_ms) FROM {ROLLUP_MINUTE_TABLE} WHERE project_id = ?"
    );
    let mut params = vec![Param::Str(project_id.to_string())];
    if let Some(now_ms) = now_ms {
        text.push_str(" AND event_date >= toDate(intDiv(?, 1000) - 2 * 86400)");
        params.push(Param::Int(now_ms));
    }
    Sql { text, params }
}

pub mod funnel;
pub mod sessions;
pub mod timeline;

#[cfg(test)]
mod tests;
