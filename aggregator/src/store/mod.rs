//! Runs rendered queries on ClickHouse and reads their rows.
//!
//! Values are bound by the `clickhouse` crate (it escapes them into the
//! text it sends); results come back as `JSONCompact`, which both 18.16 and
//! current releases write, so one reader serves any column list.

pub mod funnel;
pub mod sessions;
pub mod timeline;

use clickhouse::Client;
use serde::Serialize;

use crate::query::{Param, RequestError, Sql};

/// One row of a metrics answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsRow {
    /// The bucket's start, as ClickHouse prints it in the request's timezone.
    pub bucket: String,
    /// The group-by values, in the request's order.
    pub groups: Vec<String>,
    pub value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ClickHouse query failed: {0}")]
    Query(#[from] clickhouse::error::Error),
    #[error("ClickHouse answered something unreadable: {0}")]
    Unreadable(String),
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Runs any rendered query and returns its rows as JSON values, columns in
/// the query's order. The other runners build on this.
pub async fn fetch_rows(
    client: &Client,
    sql: &Sql,
) -> Result<Vec<Vec<serde_json::Value>>, StoreError> {
    Ok(fetch_with_totals(client, sql).await?.0)
}

#[derive(serde::Deserialize)]
struct WithTotals {
    data: Vec<Vec<serde_json::Value>>,
    #[serde(default)]
    totals: Option<Vec<serde_json::Value>>,
}

/// Like [`fetch_rows`], and also returns the `WITH TOTALS` row if
/// the query has one.
pub async fn fetch_with_totals(
    client: &Client,
    sql: &Sql,
) -> Result<(Vec<Vec<serde_json::Value>>, Option<Vec<serde_json::Value>>), StoreError> {
    let mut query = client.query(&sql.text);
    for p in &sql.params {
        query = match p {
            Param::Str(s) => query.bind(s.as_str()),
            Param::Int(i) => query.bind(*i),
        };
    }
    let bytes = query.fetch_bytes("JSONCompact")?.collect().await?;
    let parsed: WithTotals =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Unreadable(e.to_string()))?;
    Ok((parsed.data, parsed.totals))
}

/// A cell holding a non-negative integer (quoted or not: ClickHouse quotes
/// 64-bit integers in JSON by default).
pub fn cell_u64(v: &serde_json::Value) -> Result<u64, StoreError> {
    let parsed = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| StoreError::Unreadable(format!("not a count: {v}")))
}

/// A cell holding a 64-bit integer, quoted or not.
pub fn cell_i64(v: &serde_json::Value) -> Result<i64, StoreError> {
    let parsed = match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| StoreError::Unreadable(format!("not an integer: {v}")))
}

/// A cell holding a float; `null` (ClickHouse's NaN, an average of
/// nothing) reads as 0.
pub(crate) fn cell_f64_or_zero(v: &serde_json::Value) -> Result<f64, StoreError> {
    if v.is_null() {
        Ok(0.0)
    } else {
        cell_number(v)
    }
}

/// A cell as text (strings unquoted, numbers as printed).
pub fn cell_text(v: &serde_json::Value) -> String {
    text(v)
}

/// A cell as a number (ClickHouse quotes 64-bit integers in JSON).
pub fn cell_number(v: &serde_json::Value) -> Result<f64, StoreError> {
    number(v).ok_or_else(|| StoreError::Unreadable(format!("not a number: {v}")))
}

/// Runs a metrics query (columns: bucket, groups..., value).
pub async fn run_metrics(client: &Client, sql: &Sql) -> Result<Vec<MetricsRow>, StoreError> {
    fetch_rows(client, sql)
        .await?
        .into_iter()
        .map(|row| {
            let (first, rest) = row
                .split_first()
                .ok_or_else(|| StoreError::Unreadable("an empty row".into()))?;
            let (last, groups) = rest
                .split_last()
                .ok_or_else(|| StoreError::Unreadable("a row without a value".into()))?;
            Ok(MetricsRow {
                bucket: text(first),
                groups: groups.iter().map(text).collect(),
                value: cell_number(last)?,
            })
        })
        .collect()
}

/// Why a read gave no answer: the request (the caller's to fix, a 400) or
/// ClickHouse (a 5xx).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
