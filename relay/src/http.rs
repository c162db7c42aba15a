//! The relay's HTTP endpoints over hyper 1: `GET /healthz` and
//! `GET /metrics`.
//!
//! Read-only views of `Health` and `Metrics`; nothing here may change the
//! pipeline's state. Connections are served until the relay stops, then
//! dropped (there is nothing in flight worth a graceful close).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::stopped;

#[derive(Clone)]
pub(crate) struct HttpState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    state: HttpState,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(route(&state, req)) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                    });
                }
                // Accept errors (EMFILE, a reset before accept) are transient;
                // back off briefly so a busy loop cannot starve the pipeline.
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

fn route(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => match state.health.check() {
            Ok(()) => text(
                StatusCode::OK,
                "ok\n".to_string(),
                "text/plain; charset=utf-8",
            ),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{reason}\n"),
                "text/plain; charset=utf-8",
            ),
        },
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
            "not found; try /healthz or /metrics\n".into(),
            "text/plain; charset=utf-8",
        ),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
