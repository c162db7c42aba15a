//! spoor-edge: the Cloudflare Worker that SDKs post events to.
//!
//! A thin shell around spoor-core: it reads the request, the clock and the
//! runtime's geo data, hands them to `ingest`, asks `delivery` for the ack
//! mode and `ratelimit` for a verdict, then either publishes before
//! answering (durable) or answers at once and publishes in `wait_until`
//! (fast; `gather` lets one request's `wait_until` carry the frames of the
//! requests answered meanwhile). Publishing goes through a **link**
//! (`link`), a Durable Object per (region, colo, shard) that owns one
//! long-lived NATS connection and coalesces frames; what the link cannot
//! store fails over to per-request sockets (home, secondary), then the
//! spill queue (fast) or a 503 (durable). Segment's Tracking API paths
//! go the same way through `spoor_core::segment` (read, key, translate),
//! answered Segment's way (200 `{"success": true}`). It holds no validation,
//! enrichment or delivery rule of its own. Its only state is per isolate:
//! counters and rate-limit buckets (`state`), the parsed config (`config`)
//! and fast acks' frames on their way (`gather`); an isolate's own sockets
//! are never shared (workerd binds them to the request that opened them),
//! which is why the link exists.

mod config;
mod gather;
mod http;
mod link;
mod publish;
mod spill;
mod state;
mod stream;

use spoor_core::auth::{write_key_from_basic, write_key_from_headers};
use spoor_core::delivery::{ack_mode, AckMode};
use spoor_core::ingest::{error_body, ingest, Endpoint, Ingested, RequestMeta};
use spoor_core::ratelimit::Verdict;
use spoor_core::segment::{self, Call};
use spoor_core::spill::SpillMessage;
use spoor_core::Geo;
use worker::{event, web_sys, Context, Date, Env, MessageBatch, Request, Result};

use crate::config::EdgeConfig;
use crate::http::{cors, json_response, respond, Extra};
use crate::publish::{deliver_via_link, durable_schedule, Frame};
use futures_util::StreamExt as _;
use spoor_core::head::RequestHead;
use spoor_core::link::{link_name, LinkHealth};

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<web_sys::Response> {
    let head = http::read_head(&req);
    let resp = route(req, &head, &env, &ctx).await?;
    cors(&resp, head.origin.as_deref(), head.method == "OPTIONS")?;
    Ok(resp)
}

/// Republishes frames that were spilled to the `SPILL` queue.
#[event(queue)]
async fn queue(batch: MessageBatch<SpillMessage>, env: Env, _ctx: Context) -> Result<()> {
    spill::replay(batch, env).await
}

async fn route(
    req: Request,
    head: &RequestHead,
    env: &Env,
    ctx: &Context,
) -> Result<web_sys::Response> {
    if head.method == "POST" {
        let call = Call::for_request(
            &head.path,
            head.write_key.as_deref(),
            head.authorization.as_deref(),
        );
        if let Some(call) = call {
            return handle(req, head, env, ctx, Api::Segment(call)).await;
        }
    }
    match (head.method.as_str(), head.path.as_str()) {
        ("OPTIONS", _) => respond(204, None, "", Extra::default()),
        ("GET", "/healthz") => {
            let cfg = match EdgeConfig::cached(env) {
                Ok(c) => c,
                Err(e) => return refuse(500, "misconfigured", &e),
            };
            let (geo, _) = request_origin(head, &cfg);
            let links: Vec<serde_json::Value> = links_health(env, &cfg, &geo.colo)
                .await
                .into_iter()
                .map(|l| match l {
                    Ok(h) => serde_json::to_value(h).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                })
                .collect();
            // Degraded is still 200: the edge takes requests and stores or
            // spills them; a probe that pulled it out of rotation would turn
            // a filling stream into an outage of the whole edge.
            let (reasons, stream) = stream::health(&cfg).await;
            let status = if reasons.is_empty() { "ok" } else { "degraded" };
            json_response(
                200,
                &serde_json::json!({
                    "status": status,
                    "reasons": reasons,
                    "region": cfg.region,
                    "stream": stream,
                    "links": links,
                })
                .to_string(),
            )
        }
        ("GET", "/metrics") => {
            let cfg = match EdgeConfig::cached(env) {
                Ok(c) => c,
                Err(e) => return refuse(500, "misconfigured", &e),
            };
            if let Some(token) = &cfg.metrics_token {
                let auth = head.authorization.as_deref().unwrap_or_default();
                if auth.strip_prefix("Bearer ").map(str::trim) != Some(token.as_str()) {
                    return json_response(
                        401,
                        &error_body(
                            "metrics_token",
                            "send METRICS_TOKEN as Authorization: Bearer <token>",
                        ),
                    );
                }
            }
            let (geo, _) = request_origin(head, &cfg);
            let links: Vec<LinkHealth> = links_health(env, &cfg, &geo.colo)
                .await
                .into_iter()
                .filter_map(|l| l.ok())
                .collect();
            let mut text = state::count(|c| c.render(&cfg.region));
            text.push_str(&spoor_core::counters::render_links(&cfg.region, &links));
            respond(
                200,
                Some(&text),
                "text/plain; version=0.0.4",
                Extra::default(),
            )
        }
        ("POST", "/v1/batch") => handle(req, head, env, ctx, Api::Spoor(Endpoint::Batch)).await,
        ("POST", "/v1/track") => handle(req, head, env, ctx, Api::Spoor(Endpoint::Track)).await,
        (_, "/healthz" | "/metrics") => json_response(
            405,
            &error_body(
                "method_not_allowed",
                "use POST for /v1/batch, /v1/track and Segment's paths, GET for /healthz and /metrics",
            ),
        ),
        (_, path) if Call::from_path(path).is_some() => json_response(
            405,
            &error_body(
                "method_not_allowed",
                "use POST for /v1/batch, /v1/track and Segment's paths, GET for /healthz and /metrics",
            ),
        ),
        _ => json_response(
            404,
            &error_body(
                "not_found",
                "endpoints: POST /v1/batch, POST /v1/track, Segment's POST /v1/{track,identify,page,screen,group,alias,batch} (and /v1/t … /v1/b, /b), GET /healthz, GET /metrics",
            ),
        ),
    }
}

/// `Retry-After` of a durable ack refused because the stream is full.
const STREAM_FULL_RETRY_AFTER_S: &str = "10";

/// A refused request: its counter and its JSON error answer.
fn refuse(status: u16, code: &str, message: &str) -> Result<web_sys::Response> {
    refuse_with(status, code, message, Extra::default())
}

fn refuse_with(
    status: u16,
    code: &str,
    message: &str,
    extra: Extra<'_>,
) -> Result<web_sys::Response> {
    state::count(|c| *c.requests_rejected.entry(code.to_string()).or_default() += 1);
    respond(
        status,
        Some(&error_body(code, message)),
        "application/json",
        extra,
    )
}

/// The protocol a request speaks: Spoor's own, or Segment's Tracking API
/// (`segment::Call::for_request` tells them apart).
#[derive(Clone, Copy)]
enum Api {
    Spoor(Endpoint),
    Segment(Call),
}

/// A request's body as far as it is read before the write key is known.
enum Read {
    Spoor(Endpoint),
    Segment(segment::SegmentRequest),
}

async fn handle(
    mut req: Request,
    head: &RequestHead,
    env: &Env,
    ctx: &Context,
    api: Api,
) -> Result<web_sys::Response> {
    let received_at_ms = Date::now().as_millis() as i64;
    let cfg = match EdgeConfig::cached(env) {
        Ok(c) => c,
        Err(e) => return refuse(500, "misconfigured", &e),
    };
    // Spoor's key comes in a header; Segment's as Basic auth or, read
    // with the body below, as `writeKey` in it.
    let header_key = match api {
        Api::Spoor(_) => {
            write_key_from_headers(head.write_key.as_deref(), head.authorization.as_deref())
                .map(str::to_owned)
        }
        Api::Segment(_) => write_key_from_basic(head.authorization.as_deref()).or_else(|| {
            write_key_from_headers(head.write_key.as_deref(), head.authorization.as_deref())
                .map(str::to_owned)
        }),
    };
    if let (Api::Spoor(_), None) = (api, &header_key) {
        return refuse(
            401,
            "missing_write_key",
            "send your write key in the X-Spoor-Write-Key header",
        );
    }
    if let Some(key) = &header_key {
        if cfg.write_keys.project_for(key).is_none() {
            return refuse(401, "invalid_write_key", "the write key is not known");
        }
    }

    // Refuse obviously oversized bodies before reading them.
    let declared_len = head
        .content_length
        .as_deref()
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared_len {
        if len > cfg.limits.max_body_bytes.saturating_mul(4) {
            let msg = format!(
                "request body of {len} bytes exceeds the limit of {}",
                cfg.limits.max_body_bytes
            );
            return refuse(413, "payload_too_large", &msg);
        }
    }
    let user_agent = head.user_agent.as_deref().unwrap_or_default();
    let (geo, ip) = request_origin(head, &cfg);
    // A body with a Content-Length within the limit (checked above; the
    // runtime holds the body to its declared length) is read in one call.
    // Bodies without one (chunked) are streamed and cut off at the limit:
    // a 50 MB stream costs the isolate nothing past it. Streaming every
    // body instead costs about a tenth of the isolate's CPU in per-chunk
    // calls across the JS boundary (measured with a V8 CPU profile).
    let read_limit = cfg.limits.max_body_bytes.saturating_mul(4);
    let body = if declared_len.is_some() {
        req.bytes().await?
    } else {
        match read_bounded(&mut req, read_limit).await? {
            Some(b) => b,
            None => {
                let msg = format!("request body exceeds the limit of {read_limit} bytes");
                return refuse(413, "payload_too_large", &msg);
            }
        }
    };
    let colo = geo.colo.clone();

    let read = match api {
        Api::Spoor(endpoint) => Read::Spoor(endpoint),
        Api::Segment(call) => match segment::read(
            call,
            &body,
            head.content_type.as_deref(),
            head.content_encoding.as_deref(),
        ) {
            Ok(r) => Read::Segment(r),
            Err(e) => return refuse(segment::status(&e), e.code(), &e.to_string()),
        },
    };
    let body_key = match &read {
        Read::Segment(r) => r.write_key.clone(),
        Read::Spoor(_) => None,
    };
    let Some(key) = header_key.or(body_key) else {
        return refuse(
            401,
            "missing_write_key",
            "send your write key as the user name of HTTP Basic auth, or as `writeKey` in the body",
        );
    };
    let Some(project_id) = cfg.write_keys.project_for(&key).map(str::to_owned) else {
        return refuse(401, "invalid_write_key", "the write key is not known");
    };
    let meta = RequestMeta {
        project_id: &project_id,
        region: &cfg.region,
        partitions: cfg.partitions,
        received_at_ms,
        content_type: head.content_type.as_deref(),
        content_encoding: head.content_encoding.as_deref(),
        user_agent,
        ip: &ip,
        geo,
    };
    let ingested = match &read {
        Read::Spoor(endpoint) => {
            ingest(*endpoint, &body, &meta, &cfg.limits).map_err(|e| (e.status(), e))
        }
        Read::Segment(r) => {
            segment::ingest(r, &meta, &cfg.limits).map_err(|e| (segment::status(&e), e))
        }
    };
    let ingested = match ingested {
        Ok(i) => i,
        Err((status, e)) => return refuse(status, e.code(), &e.to_string()),
    };

    // Every event in the request costs a token, valid or not: a client
    // flooding malformed events is throttled like any other.
    let receipt = &ingested.receipt;
    let cost = (receipt.accepted + receipt.rejected.len() + receipt.duplicates.len()).max(1) as u64;
    let rate = cfg.rate_limits.rate_for(&key);
    if let Verdict::Limited { retry_after_s } =
        state::buckets(|b| b.take(&key, rate, cost, received_at_ms))
    {
        state::count(|c| {
            c.rate_limited_requests += 1;
            c.rate_limited_events += cost;
        });
        let msg = format!(
            "this write key is limited to {} events/s (bursts of {}); nothing of this request was accepted, retry after {retry_after_s} s",
            rate.events_per_sec, rate.burst
        );
        let retry_after = retry_after_s.to_string();
        return refuse_with(
            429,
            "rate_limited",
            &msg,
            Extra {
                retry_after: &retry_after,
                ..Extra::default()
            },
        );
    }

    let mode = ack_mode(
        head.ack.as_deref(),
        head.query.as_deref(),
        &project_id,
        &ingested.event_names,
        &cfg.critical,
    );
    if cfg.discard_frames {
        // Benchmarks only: the isolate's work without any publishing.
        count_receipt(&ingested, mode);
        let (status, body) = answer(api, &ingested)?;
        let ack = Extra {
            ack: mode.as_str(),
            ..Extra::default()
        };
        return respond(status, Some(&body), "application/json", ack);
    }
    // One link per request, chosen by its first partition, so one
    // partition's frames meet (and coalesce) in one link.
    let link = ingested
        .messages
        .first()
        .and_then(|m| spoor_core::route::partition_of_subject(&m.subject))
        .map(|p| link_name(&cfg.region, &colo, p, cfg.shards))
        .unwrap_or_default();
    if mode == AckMode::Durable {
        state::count(|c| c.link_requests += 1);
        let frames: Vec<Frame> = ingested.messages.iter().map(Frame::of).collect();
        let delivery = deliver_via_link(env, &cfg, &link, &frames, durable_schedule(), false).await;
        if !delivery.all_acked() {
            // Nothing of this request is acknowledged; batch ids are
            // deterministic, so the client's retry cannot double-store what
            // did get through. A full stream is named: it makes room only as
            // frames age out or its limits are raised, so the client is told
            // to wait longer than for a blip.
            let e = delivery
                .last_error
                .unwrap_or_else(|| "no region acknowledged the batch".into());
            let (code, retry_after) = if delivery.stream_full {
                ("stream_full", STREAM_FULL_RETRY_AFTER_S)
            } else {
                ("unavailable", "1")
            };
            let retry = Extra {
                retry_after,
                ..Extra::default()
            };
            return refuse_with(503, code, &e, retry);
        }
    }
    count_receipt(&ingested, mode);
    let ack_ms = Date::now().as_millis() as i64 - received_at_ms;
    let (status, body) = answer(api, &ingested)?;
    if mode == AckMode::Fast && !ingested.messages.is_empty() {
        // Publishing after the answer: gathered with other requests' frames
        // for the same link, delivered by whichever request leads (`gather`).
        state::count(|c| c.link_requests += 1);
        if gather::join(&link, ingested.messages) {
            let env = env.clone();
            ctx.wait_until(gather::lead(env, cfg, link));
        }
    }
    let ack_ms = ack_ms.to_string();
    let extra = Extra {
        ack: mode.as_str(),
        ack_ms: &ack_ms,
        ..Extra::default()
    };
    respond(status, Some(&body), "application/json", extra)
}

/// A valid request's answer: Spoor's 202 with the receipt, or Segment's
/// 200 `{"success": true}` with the receipt beside it.
fn answer(api: Api, ingested: &Ingested) -> Result<(u16, String)> {
    match api {
        Api::Spoor(_) => serde_json::to_string(&ingested.receipt)
            .map(|b| (202, b))
            .map_err(|e| worker::Error::RustError(e.to_string())),
        Api::Segment(_) => Ok((200, segment::success_body(&ingested.receipt))),
    }
}

fn count_receipt(ingested: &Ingested, mode: AckMode) {
    state::count(|c| {
        *c.accepted.entry(mode.as_str()).or_default() += ingested.receipt.accepted as u64;
        for r in &ingested.receipt.rejected {
            *c.events_rejected.entry(r.reason.clone()).or_default() += 1;
        }
        c.duplicate_events += ingested.receipt.duplicates.len() as u64;
    });
}

/// Reads the body, or `None` once it passes `limit` bytes (the rest is
/// never read).
async fn read_bounded(req: &mut Request, limit: usize) -> Result<Option<Vec<u8>>> {
    let mut stream = req.stream()?;
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Every link of this colo's shards, as each reports itself (or why it
/// could not be asked). Asking does not make a link connect.
async fn links_health(
    env: &Env,
    cfg: &EdgeConfig,
    colo: &str,
) -> Vec<std::result::Result<LinkHealth, String>> {
    let mut out = Vec::new();
    for k in 0..cfg.shards {
        let name = link_name(&cfg.region, colo, k, cfg.shards);
        out.push(
            link_health(env, &name)
                .await
                .map_err(|e| format!("{name}: {e}")),
        );
    }
    out
}

async fn link_health(env: &Env, name: &str) -> std::result::Result<LinkHealth, String> {
    let (status, text) = http::link_call(
        env,
        link::LINK_BINDING,
        name,
        link::LINK_NAME_HEADER,
        "/health",
        None,
    )
    .await?;
    if status != 200 {
        return Err(format!("answered {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Geo data and client IP. In production both come from Cloudflare (`cf`
/// and `CF-Connecting-IP`, which Cloudflare overwrites). With
/// `ALLOW_TEST_CF=true`, which only test configs set, a request may supply
/// them in `X-Spoor-Test-Cf` (the cf object as JSON) and `X-Spoor-Test-Ip`,
/// because local runtimes have no real cf data.
fn request_origin(head: &RequestHead, cfg: &EdgeConfig) -> (Geo, String) {
    if cfg.allow_test_cf {
        if let Some(cf) = &head.test_cf {
            return (
                Geo::from_cf_json(cf),
                head.test_ip.clone().unwrap_or_default(),
            );
        }
    }
    let geo = head
        .cf_json
        .as_deref()
        .map(Geo::from_cf_json)
        .unwrap_or_default();
    (geo, head.cf_connecting_ip.clone().unwrap_or_default())
}
