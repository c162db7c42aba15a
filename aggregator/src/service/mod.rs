//! The aggregator's HTTP service (hyper 1): the query API under
//! `/v1/projects/<project>/…`, `/openapi.json`, `/healthz`, `/metrics` and
//! the dashboard.
//!
//! Every query request goes through the same steps, in [`Service::query`]:
//! 1. the bearer token must open the project named in the path (401/403);
//! 2. the body (at most [`MAX_BODY`]) must parse and validate (400 with the
//!    reason);
//! 3. it takes a slot in its lane, `dashboard` (header
//!    `X-Spoor-Lane: dashboard`) or `adhoc`, each with its own concurrency
//!    limit, waiting at most the lane's queue wait (503 + `Retry-After`
//!    otherwise), so ad-hoc work can never hold the dashboard's slots;
//! 4. it runs on ClickHouse with the lane's timeout, sent as
//!    `max_execution_time` so the server stops too, and `max_result_rows`
//!    (504 on timeout, 413 past the row limit);
//! 5. the answer carries `freshness_seconds`: the age of the newest event
//!    stored for the project.

mod assets;
mod lanes;
mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use spoor_runtime::shell::serve_http;
use spoor_runtime::supervise::{stopped, Supervisor, TaskExit};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::{Metrics, QueryServed};
use crate::query::{self, Param, RequestError, Sql};
use crate::store::{self, StoreError};

pub use lanes::Lane;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Why the service could not start, or stopped before its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach ClickHouse at {url}: {source}")]
    Unreachable {
        url: String,
        source: clickhouse::error::Error,
    },
    #[error(
        "ClickHouse user `{user}` can write (readonly = 0); the aggregator reads with a read-only \
         user (profile setting readonly = 2, as spoor_readonly in deploy/clickhouse/users.xml), or \
         pass --allow-writable-user for a throwaway local setup"
    )]
    WritableUser { user: String },
    #[error("no read tokens: give each project one with --read-tokens PROJECT=TOKEN")]
    NoTokens,
    /// The HTTP server ended or panicked before the shutdown signal.
    #[error(transparent)]
    Stopped(TaskExit<Infallible>),
}

/// An error answer: status, a stable machine-readable code and a sentence.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<store::ReadError> for ApiError {
    fn from(e: store::ReadError) -> ApiError {
        match e {
            store::ReadError::Request(e) => e.into(),
            store::ReadError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let text = e.to_string();
        // ClickHouse error codes: 159 TIMEOUT_EXCEEDED, 158 TOO_MANY_ROWS,
        // 396 TOO_MANY_ROWS_OR_BYTES, 241 MEMORY_LIMIT_EXCEEDED.
        let code = clickhouse_code(&text);
        match code {
            Some(159) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the query ran past its time limit; narrow the time range or the filters",
            ),
            Some(158 | 396) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_rows",
                "the answer is larger than the row limit; use a coarser granularity, fewer \
                 group-by dimensions or a shorter range",
            ),
            Some(241) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_much_memory",
                "the query needs more memory than ClickHouse allows; narrow it",
            ),
            _ => {
                tracing::warn!(error = %text, "ClickHouse query failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "clickhouse",
                    format!("ClickHouse could not answer: {}", first_line(&text)),
                )
            }
        }
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    &line[..line.len().min(300)]
}

/// The numeric code in a ClickHouse error text (`Code: 159, e.displayText()…`).
fn clickhouse_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What every successful query answer looks like.
#[derive(Debug, Serialize)]
pub struct Answer<T: Serialize> {
    /// Seconds since the newest stored event of the project was received
    /// at the edge; `null` if the project has no events.
    pub freshness_seconds: Option<f64>,
    /// Milliseconds the aggregator spent, queueing included.
    pub elapsed_ms: f64,
    #[serde(flatten)]
    pub body: T,
}

struct Freshness {
    ttl: Duration,
    by_project: Mutex<HashMap<String, (Instant, Option<i64>)>>,
}

/// Shared state of one running aggregator.
pub(crate) struct Service {
    config: Config,
    /// Default settings, no lane limits: health and freshness.
    base: clickhouse::Client,
    lanes: lanes::Lanes,
    freshness: Freshness,
    pub(crate) metrics: Metrics,
}

/// Wall-clock milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Service {
    async fn start(config: Config) -> Result<Service, StartError> {
        if config.tokens.is_empty() {
            return Err(StartError::NoTokens);
        }
        let base = config.clickhouse.connection.client();
        let readonly = store::fetch_rows(
            &base,
            &Sql {
                text: "SELECT value FROM system.settings WHERE name = ?".into(),
                params: vec![Param::Str("readonly".into())],
            },
        )
        .await
        .map_err(|e| match e {
            StoreError::Query(source) => StartError::Unreachable {
                url: config.clickhouse.connection.url.clone(),
                source,
            },
            StoreError::Unreadable(msg) => StartError::Unreachable {
                url: config.clickhouse.connection.url.clone(),
                source: clickhouse::error::Error::Custom(msg),
            },
        })?;
        let writable = readonly
            .first()
            .and_then(|row| row.first())
            .map(store::cell_text)
            .is_none_or(|v| v == "0");
        if writable {
            let user = config
                .clickhouse
                .connection
                .user
                .clone()
                .unwrap_or_else(|| "default".into());
            if config.clickhouse.allow_writable_user {
                tracing::warn!(
                    user,
                    "ClickHouse user can write; allowed by --allow-writable-user"
                );
            } else {
                return Err(StartError::WritableUser { user });
            }
        }
        let lanes = lanes::Lanes::new(&config, &base);
        Ok(Service {
            freshness: Freshness {
                ttl: config.freshness_ttl,
                by_project: Mutex::new(HashMap::new()),
            },
            lanes,
            base,
            metrics: Metrics::new(),
            config,
        })
    }

    /// Age in seconds of the newest event stored for `project`, from the
    /// minute rollup's `last_received_ms` (recent partitions first, then
    /// all), reused for `freshness_ttl`.
    async fn freshness_seconds(&self, project: &str) -> Option<f64> {
        let now = now_ms();
        let cached = self
            .freshness
            .by_project
            .lock()
            .ok()
            .and_then(|m| m.get(project).copied());
        let newest = match cached {
            Some((at, newest)) if at.elapsed() < self.freshness.ttl => newest,
            _ => {
                let newest = self.newest_received_ms(project).await;
                if let Ok(mut m) = self.freshness.by_project.lock() {
                    if m.len() > 10_000 {
                        m.clear();
                    }
                    m.insert(project.to_string(), (Instant::now(), newest));
                }
                newest
            }
        };
        newest.map(|ms| ((now - ms).max(0) as f64) / 1000.0)
    }

    async fn newest_received_ms(&self, project: &str) -> Option<i64> {
        for recent_only in [true, false] {
            let sql = query::freshness_sql(project, recent_only.then(now_ms));
            let rows = match store::fetch_rows(&self.base, &sql).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, project, "freshness query failed");
                    return None;
                }
            };
            let newest = rows
                .first()
                .and_then(|r| r.first())
                .and_then(|v| store::cell_number(v).ok())
                .map(|v| v as i64)
                .filter(|&v| v > 0);
            if newest.is_some() {
                return newest;
            }
        }
        None
    }

    /// Runs `work` in `lane` within its limits and wraps its result in an
    /// [`Answer`] with the project's freshness.
    pub(crate) async fn query<T, F, Fut>(
        &self,
        route: &'static str,
        lane: Lane,
        project: &str,
        work: F,
    ) -> Response<Full<Bytes>>
    where
        T: Serialize,
        F: FnOnce(clickhouse::Client) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let started = Instant::now();
        let result = self.lanes.run(lane, &self.metrics, work).await;
        let response = match result {
            Ok(body) => {
                let freshness_seconds = self.freshness_seconds(project).await;
                json(
                    StatusCode::OK,
                    &Answer {
                        freshness_seconds,
                        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
                        body,
                    },
                )
            }
            Err(e) => error_response(&e),
        };
        QueryServed {
            route,
            lane: lane.name(),
            outcome: outcome(response.status()),
            elapsed: started.elapsed(),
        }
        .emit(&self.metrics);
        response
    }
}

fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "ok",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        413 => "too_large",
        503 => "busy",
        504 => "timeout",
        _ => "error",
    }
}

pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(body) {
        Ok(bytes) => with_type(status, bytes, "application/json"),
        Err(e) => error_response(&ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding",
            e.to_string(),
        )),
    }
}

pub(crate) fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": e.code, "message": e.message });
    let mut response = with_type(e.status, body.to_string(), "application/json");
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Reads a body of at most [`MAX_BODY`] bytes.
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!("reading the body: {e}"))),
    }
}

/// Serves the API on `listener` until `shutdown` resolves. Fails before
/// serving if ClickHouse cannot be reached, the user can write (unless
/// allowed) or no project has a read token; fails after if the HTTP server
/// stops by itself (it runs under a `spoor_runtime` supervisor).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let service = Arc::new(Service::start(config).await?);
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        projects = ?service.config.tokens.projects(),
        "aggregator serving"
    );
    let mut tasks = Supervisor::<Infallible>::new();
    let mut stop = tasks.stop_signal();
    let handler = move |req: Request<Incoming>| {
        let service = service.clone();
        async move { routes::route(&service, req).await }
    };
    tasks.spawn_service(
        "the HTTP server",
        serve_http(listener, handler, async move { stopped(&mut stop).await }),
    );
    tasks.run_until(shutdown).await.map_err(StartError::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_clickhouse_error_codes() {
        assert_eq!(
            clickhouse_code(
                "bad response: Code: 159, e.displayText() = DB::Exception: Timeout exceeded"
            ),
            Some(159)
        );
        assert_eq!(clickhouse_code("connection refused"), None);
        let e: ApiError = StoreError::Unreadable("Code: 396, too many rows".into()).into();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
