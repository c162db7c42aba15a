//! The relay's HTTP endpoints over hyper 1: `GET /healthz`,
//! `GET /metrics` and `GET /debug/device/<id>` (a region-wide device
//! lookup: this relay asks every relay, itself included, over NATS).
//!
//! Read-only views of `Health`, `Metrics` and the debug rings; nothing here
//! may change the pipeline's state. Connections are served until the relay stops, then
//! dropped (there is nothing in flight worth a graceful close).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::stopped;

#[derive(Clone)]
pub(crate) struct HttpState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Set once NATS is connected; until then lookups answer 503.
    pub debug: Arc<std::sync::OnceLock<DebugHttp>>,
}

/// What a debug lookup over HTTP needs.
pub(crate) struct DebugHttp {
    pub client: async_nats::Client,
    pub stream: String,
    pub timeout: std::time::Duration,
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    state: HttpState,
    mut stop: watch::Receiver<bool>,
) {
    let handler = move |req| {
        let state = state.clone();
        async move { route(&state, req).await }
    };
    spoor_runtime::shell::serve_http(listener, handler, async move { stopped(&mut stop).await })
        .await;
}

async fn route(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/debug/device" || path.starts_with("/debug/device/") {
        if req.method() != Method::GET {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            );
        }
        let id = path
            .strip_prefix("/debug/device")
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or("");
        return debug_device(state, id, req.uri().query().unwrap_or("")).await;
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => {
            let (status, body) = healthz_body(&state.health.report());
            text(status, body, "text/plain; charset=utf-8")
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            state.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (_, "/healthz" | "/metrics") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET\n".into(),
            "text/plain; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /metrics or /debug/device/<id>\n".into(),
            "text/plain; charset=utf-8",
        ),
    }
}

/// `/healthz`: `ok` (200); a `degraded: <reason>` line per reason (200:
/// working, needs attention); or the failure (503), with any degradation
/// on the lines after it.
fn healthz_body(report: &crate::health::Report) -> (StatusCode, String) {
    let mut body = String::new();
    let status = match &report.failing {
        Some(reason) => {
            body.push_str(reason);
            body.push('\n');
            StatusCode::SERVICE_UNAVAILABLE
        }
        None => StatusCode::OK,
    };
    for reason in &report.degraded {
        body.push_str("degraded: ");
        body.push_str(reason);
        body.push('\n');
    }
    if body.is_empty() {
        body.push_str("ok\n");
    }
    (status, body)
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `GET /debug/device/<id>?last=1h&project=p&limit=n` or
/// `GET /debug/device?user_id=u`: the region's answer as JSON.
async fn debug_device(state: &HttpState, id: &str, query: &str) -> Response<Full<Bytes>> {
    use crate::internal_events::{DebugLookupServed, InternalEvent as _};
    let started = std::time::Instant::now();
    let served = |outcome: &'static str, relays: usize, events: usize| {
        DebugLookupServed {
            outcome,
            relays,
            events,
            latency: started.elapsed(),
        }
        .emit(&state.metrics)
    };
    let query = match spoor_core::debug::DeviceQuery::from_http(id, query, crate::debug::wall_ms())
    {
        Ok(q) => q,
        Err(e) => {
            served(e.kind(), 0, 0);
            return json_error(StatusCode::BAD_REQUEST, e.kind(), &e.to_string());
        }
    };
    let Some(debug) = state.debug.get() else {
        served("unavailable", 0, 0);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "the relay is still connecting to NATS",
        );
    };
    match spoor_runtime::debug::lookup(&debug.client, &debug.stream, &query, debug.timeout).await {
        Ok(lookup) => {
            served("ok", lookup.relays.len(), lookup.events.len());
            match serde_json::to_string(&lookup) {
                Ok(body) => text(StatusCode::OK, body, "application/json"),
                Err(e) => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding",
                    &e.to_string(),
                ),
            }
        }
        Err(spoor_runtime::debug::LookupError::Query(e)) => {
            served(e.kind(), 0, 0);
            json_error(StatusCode::BAD_REQUEST, e.kind(), &e.to_string())
        }
        Err(e) => {
            served("unavailable", 0, 0);
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &e.to_string(),
            )
        }
    }
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    text(status, body, "application/json")
}

#[cfg(test)]
mod tests {
    use super::healthz_body;
    use crate::health::Report;
    use hyper::StatusCode;

    #[test]
    fn healthz_says_ok_degraded_or_failing() {
        let ok = Report {
            failing: None,
            degraded: vec![],
        };
        assert_eq!(healthz_body(&ok), (StatusCode::OK, "ok\n".into()));
        let degraded = Report {
            failing: None,
            degraded: vec!["stream S is 85.0% full".into()],
        };
        assert_eq!(
            healthz_body(&degraded),
            (StatusCode::OK, "degraded: stream S is 85.0% full\n".into())
        );
        let both = Report {
            failing: Some("last ClickHouse insert failed: refused".into()),
            ..degraded
        };
        assert_eq!(
            healthz_body(&both),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "last ClickHouse insert failed: refused\ndegraded: stream S is 85.0% full\n".into()
            )
        );
    }
}
