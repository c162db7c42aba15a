//! spoor-edge: the Cloudflare Worker that SDKs post events to.
//!
//! A thin shell around `spoor_core::ingest`: it reads the request, the clock
//! and the runtime's geo data, hands them to the core, publishes the encoded
//! frames to NATS JetStream and answers with per-event receipts. It holds no
//! validation or enrichment rule of its own and keeps no state between
//! requests (workerd binds sockets to the request that opened them).

mod config;
mod http;
mod publish;

use spoor_core::auth::write_key_from_headers;
use spoor_core::ingest::{error_body, ingest, Endpoint, RequestMeta};
use spoor_core::Geo;
use worker::{event, Context, Date, Env, Method, Request, Response, Result};

use crate::config::EdgeConfig;
use crate::http::{json_response, with_cors};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let origin = req.headers().get("Origin").ok().flatten();
    let resp = route(req, &env).await?;
    with_cors(resp, origin.as_deref())
}

async fn route(req: Request, env: &Env) -> Result<Response> {
    let path = req.path();
    match (req.method(), path.as_str()) {
        (Method::Options, _) => Ok(Response::empty()?.with_status(204)),
        (Method::Get, "/healthz") => {
            let region = EdgeConfig::from_env(env).map(|c| c.region).unwrap_or_default();
            json_response(200, &serde_json::json!({ "status": "ok", "region": region }).to_string())
        }
        (Method::Post, "/v1/batch") => handle(req, env, Endpoint::Batch).await,
        (Method::Post, "/v1/track") => handle(req, env, Endpoint::Track).await,
        (_, "/v1/batch" | "/v1/track" | "/healthz") => json_response(
            405,
            &error_body("method_not_allowed", "use POST for /v1/batch and /v1/track, GET for /healthz"),
        ),
        _ => json_response(404, &error_body("not_found", "endpoints: POST /v1/batch, POST /v1/track, GET /healthz")),
    }
}

async fn handle(mut req: Request, env: &Env, endpoint: Endpoint) -> Result<Response> {
    let received_at_ms = Date::now().as_millis() as i64;
    let cfg = match EdgeConfig::from_env(env) {
        Ok(c) => c,
        Err(e) => return json_response(500, &error_body("misconfigured", &e)),
    };
    let headers = req.headers();
    let key_header = headers.get("X-Spoor-Write-Key")?;
    let auth_header = headers.get("Authorization")?;
    let Some(key) = write_key_from_headers(key_header.as_deref(), auth_header.as_deref()) else {
        return json_response(
            401,
            &error_body("missing_write_key", "send your write key in the X-Spoor-Write-Key header"),
        );
    };
    let Some(project_id) = cfg.write_keys.project_for(key).map(str::to_owned) else {
        return json_response(401, &error_body("invalid_write_key", "the write key is not known"));
    };

    // Refuse obviously oversized bodies before reading them.
    if let Some(len) = headers.get("Content-Length")?.and_then(|v| v.parse::<usize>().ok()) {
        if len > cfg.limits.max_body_bytes.saturating_mul(4) {
            let msg = format!("request body of {len} bytes exceeds the limit of {}", cfg.limits.max_body_bytes);
            return json_response(413, &error_body("payload_too_large", &msg));
        }
    }
    let content_type = headers.get("Content-Type")?;
    let content_encoding = headers.get("Content-Encoding")?;
    let user_agent = headers.get("User-Agent")?.unwrap_or_default();
    let (geo, ip) = request_origin(&req, &cfg)?;
    let body = req.bytes().await?;

    let meta = RequestMeta {
        project_id: &project_id,
        region: &cfg.region,
        partitions: cfg.partitions,
        received_at_ms,
        content_type: content_type.as_deref(),
        content_encoding: content_encoding.as_deref(),
        user_agent: &user_agent,
        ip: &ip,
        geo,
    };
    let ingested = match ingest(endpoint, &body, &meta, &cfg.limits) {
        Ok(i) => i,
        Err(e) => return json_response(e.status(), &error_body(e.code(), &e.to_string())),
    };

    if let Err(e) = publish::publish(&cfg, &ingested.messages).await {
        // Nothing of this request is acknowledged; batch ids are deterministic,
        // so the client's retry cannot double-store what did get through.
        let mut resp = json_response(503, &error_body("unavailable", &e))?;
        resp.headers_mut().set("Retry-After", "1")?;
        return Ok(resp);
    }

    let ack_ms = Date::now().as_millis() as i64 - received_at_ms;
    let body = serde_json::to_string(&ingested.receipt).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let mut resp = json_response(202, &body)?;
    resp.headers_mut().set("X-Spoor-Ack-Ms", &ack_ms.to_string())?;
    Ok(resp)
}

/// Geo data and client IP. In production both come from Cloudflare (`cf`
/// and `CF-Connecting-IP`, which Cloudflare overwrites). With
/// `ALLOW_TEST_CF=true`, which only test configs set, a request may supply
/// them in `X-Spoor-Test-Cf` (the cf object as JSON) and `X-Spoor-Test-Ip`,
/// because local runtimes have no real cf data.
fn request_origin(req: &Request, cfg: &EdgeConfig) -> Result<(Geo, String)> {
    let headers = req.headers();
    if cfg.allow_test_cf {
        if let Some(cf) = headers.get("X-Spoor-Test-Cf")? {
            let ip = headers.get("X-Spoor-Test-Ip")?.unwrap_or_default();
            return Ok((Geo::from_cf_json(&cf), ip));
        }
    }
    let cf = js_sys::Reflect::get(req.inner(), &"cf".into())
        .ok()
        .filter(|v| v.is_object())
        .and_then(|v| js_sys::JSON::stringify(&v).ok())
        .and_then(|s| s.as_string());
    let geo = cf.map(|s| Geo::from_cf_json(&s)).unwrap_or_default();
    let ip = headers.get("CF-Connecting-IP")?.unwrap_or_default();
    Ok((geo, ip))
}
