//! Request routing: which path and method reach which handler, and the
//! checks every project route shares (token, lane, body).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::lanes::{Lane, LANE_HEADER};
use super::{assets, error_response, json, read_body, with_type, ApiError, Service};
use crate::query::funnel::FunnelRequest;
use crate::query::sessions::SessionsRequest;
use crate::query::timeline::TimelineRequest;
use crate::query::{self, MetricsRequest};
use crate::store;

/// The OpenAPI description served at `/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// A route under `/v1/projects/<project>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProjectRoute {
    Metrics,
    Funnel,
    Timeline,
    Sessions,
    Freshness,
}

/// The project routes: `/v1/projects/<project>/<name>`, with their method.
pub(crate) const PROJECT_ROUTES: &[(&str, Method, ProjectRoute)] = &[
    ("metrics", Method::POST, ProjectRoute::Metrics),
    ("funnel", Method::POST, ProjectRoute::Funnel),
    ("timeline", Method::POST, ProjectRoute::Timeline),
    ("sessions", Method::POST, ProjectRoute::Sessions),
    ("freshness", Method::GET, ProjectRoute::Freshness),
];

pub(crate) async fn route(service: &Service, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/v1/projects/") {
        return match project_route(service, rest, req).await {
            Ok(response) => response,
            Err(e) => error_response(&e),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error_response(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        ));
    }
    match path.as_str() {
        "/healthz" => healthz(service).await,
        "/metrics" => with_type(
            StatusCode::OK,
            service.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/openapi.json" => with_type(StatusCode::OK, OPENAPI, "application/json"),
        other => match assets::find(other) {
            Some((content_type, body)) => {
                let mut r = with_type(StatusCode::OK, body, content_type);
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                r
            }
            None => error_response(&ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path; the API is described at /openapi.json",
            )),
        },
    }
}

async fn healthz(service: &Service) -> Response<Full<Bytes>> {
    let ping = service.base.query("SELECT 1").fetch_bytes("TabSeparated");
    let ok = match ping {
        Ok(mut cursor) => tokio::time::timeout(std::time::Duration::from_secs(2), cursor.collect())
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false),
        Err(_) => false,
    };
    if ok {
        with_type(StatusCode::OK, "ok\n", "text/plain; charset=utf-8")
    } else {
        with_type(
            StatusCode::SERVICE_UNAVAILABLE,
            "ClickHouse does not answer\n",
            "text/plain; charset=utf-8",
        )
    }
}

/// The project a bearer token opens, which must be `project`.
fn authorize(service: &Service, req: &Request<Incoming>, project: &str) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the project's read token as `Authorization: Bearer <token>`",
            )
        })?;
    match service.config.tokens.project_of(token) {
        Some(p) if p == project => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token does not open project `{project}`"),
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown read token",
        )),
    }
}

async fn body_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = read_body(req.into_body()).await?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("request body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("request body: `{path}`: {}", e.inner()))
        }
    })
}

async fn project_route(
    service: &Service,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (project, name) = rest.split_once('/').ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "use /v1/projects/<project>/<metrics|funnel|sessions|timeline|freshness>",
        )
    })?;
    let project = percent_decode(project)?;
    query::check_text("project", &project)?;
    let Some((_, method, route)) = PROJECT_ROUTES.iter().find(|(r, _, _)| *r == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route `{}`; the API is described at /openapi.json",
                name.chars().take(64).collect::<String>()
            ),
        ));
    };
    if req.method() != method {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("use {method}"),
        ));
    }
    authorize(service, &req, &project)?;
    let lane = Lane::from_header(req.headers().get(LANE_HEADER).map(|v| v.as_bytes()))?;
    match route {
        ProjectRoute::Metrics => {
            let mut request: MetricsRequest = body_json(req).await?;
            request.project_id = project.clone();
            // The smallest table that answers exactly: a rollup or `events`.
            let plan =
                request.plan_for_service(service.config.raw_kept_since_ms(super::now_ms()))?;
            Ok(service
                .query("metrics", lane, &project, |client| async move {
                    let rows = store::run_metrics(&client, &plan.sql).await?;
                    Ok(MetricsAnswer {
                        source: plan.source.table(),
                        truncated: rows.len() >= query::MAX_ROWS as usize,
                        rows,
                    })
                })
                .await)
        }
        ProjectRoute::Funnel => {
            let mut request: FunnelRequest = body_json(req).await?;
            request.project_id = project.clone();
            request.validate()?;
            Ok(service
                .query("funnel", lane, &project, |client| async move {
                    Ok(store::funnel::run_funnel(&client, &request).await?)
                })
                .await)
        }
        ProjectRoute::Timeline => {
            let mut request: TimelineRequest = body_json(req).await?;
            request.project_id = project.clone();
            let now = super::now_ms();
            request.plan(now)?;
            Ok(service
                .query("timeline", lane, &project, |client| async move {
                    Ok(store::timeline::run_timeline(&client, &request, now).await?)
                })
                .await)
        }
        ProjectRoute::Sessions => {
            let mut request: SessionsRequest = body_json(req).await?;
            request.project_id = project.clone();
            request.validate()?;
            Ok(service
                .query("sessions", lane, &project, |client| async move {
                    Ok(store::sessions::run_sessions(&client, &request).await?)
                })
                .await)
        }
        ProjectRoute::Freshness => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "freshness_seconds": service.freshness_seconds(&project).await }),
        )),
    }
}

#[derive(Serialize)]
struct MetricsAnswer {
    /// The table that answered: `events` or a rollup.
    source: &'static str,
    /// True when the answer stopped at the row limit.
    truncated: bool,
    rows: Vec<store::MetricsRow>,
}

/// Decodes `%XX` escapes in a path segment (UTF-8 only).
fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::bad_request("bad percent-escape in the project name"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the project name is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/openapi.json` describes exactly the routes the service has.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().unwrap();
        for (name, method, _) in PROJECT_ROUTES {
            let path = format!("/v1/projects/{{project}}/{name}");
            let entry = paths
                .get(&path)
                .unwrap_or_else(|| panic!("{path} is not in openapi.json"));
            let m = method.as_str().to_ascii_lowercase();
            assert!(entry.get(&m).is_some(), "{path} has no {m} in openapi.json");
        }
        for path in paths.keys() {
            if let Some(name) = path.strip_prefix("/v1/projects/{project}/") {
                assert!(
                    PROJECT_ROUTES.iter().any(|(n, _, _)| *n == name),
                    "openapi.json describes {path}, which the service does not serve"
                );
            } else {
                assert!(
                    matches!(path.as_str(), "/healthz" | "/metrics" | "/openapi.json")
                        || assets::find(path).is_some(),
                    "openapi.json describes {path}, which the service does not serve"
                );
            }
        }
        // Every schema reference resolves.
        let text = OPENAPI;
        for part in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref {name}"
            );
        }
    }
}
