//! Runs rendered queries on ClickHouse and reads their rows.
//!
//! Values are bound by the `clickhouse` crate (it escapes them into the
//! text it sends); results come back as `JSONCompact`, which both 18.16 and
//! current releases write, so one reader serves any column list.

use clickhouse::Client;
use serde::Serialize;

use crate::query::{MetricsRequest, Param, RequestError, Source, Sql};

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

#[derive(serde::Deserialize)]
struct JsonCompact {
    data: Vec<Vec<serde_json::Value>>,
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
    let mut query = client.query(&sql.text);
    for p in &sql.params {
        query = match p {
            Param::Str(s) => query.bind(s.as_str()),
            Param::Int(i) => query.bind(*i),
        };
    }
    let bytes = query.fetch_bytes("JSONCompact")?.collect().await?;
    let parsed: JsonCompact =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Unreadable(e.to_string()))?;
    Ok(parsed.data)
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

/// Why [`metrics`] failed: the request (the caller's to fix) or the store.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Plans a metrics request (the smallest table that answers it exactly,
/// `MetricsRequest::plan`) and runs it; says which table answered.
pub async fn metrics(
    client: &Client,
    request: &MetricsRequest,
) -> Result<(Source, Vec<MetricsRow>), MetricsError> {
    let plan = request.plan()?;
    let rows = run_metrics(client, &plan.sql).await?;
    Ok((plan.source, rows))
}
