//! How full the home region's events stream is, for `/healthz`.
//!
//! `SPOOR_EVENTS` is `discard: new`: once full, JetStream refuses frames
//! (durable acks answer 503 `stream_full`, fast acks spill). `/healthz`
//! turns "degraded" before that, while there is room, and stays so while
//! refusals are recent. It learns both ways:
//!
//! - **Asking JetStream**: `$JS.API.STREAM.INFO.<STREAM>` (the one API
//!   subject the edge role may publish), over a socket of the isolate's
//!   own, at most once per `STREAM_INFO_TTL_MS` (5 s) per isolate; the
//!   answer (or the failure to get one) is cached meanwhile. This is what
//!   warns early: the stream's bytes and messages against its limits,
//!   judged by `spoor_core::fullness` with `STREAM_FULLNESS_DEGRADED`
//!   (0.8), the relay's rule.
//! - **PubAcks**: every refusal the isolate's deliveries see
//!   ([`refused_full`]) degrades health for [`REFUSAL_MEMORY_MS`] whatever
//!   the cached info says, so a stream that filled between two asks is
//!   reported at once.
//!
//! Why not ask over a link's connection: a link's socket carries every
//! frame of its shard, and `-ERR` (a permissions violation, say, on a
//! server whose config lacks the STREAM.INFO rule) fails that connection
//! and every publish in flight on it. A socket opened for the question
//! costs one handshake per TTL on a probe path, risks nothing in flight,
//! and answers even before any traffic has made a link connect. Why not
//! PubAck errors alone: they come only once the stream is full, too late
//! to warn.
//!
//! A failed ask does not degrade health by itself: NATS being unreachable
//! is what the links' `last_error` reports, and the stream may be fine.
//! The state is per isolate, like the counters; nothing here is needed
//! for correctness.

use std::cell::RefCell;
use std::time::Duration;

use serde_json::{json, Value};
use spoor_core::counters::Target;
use spoor_core::fullness::StreamUsage;
use spoor_edge_nats::{parse_stream_info, stream_info_subject, Client, ConnectOptions};
use worker::{Date, Delay, SecureTransport, Socket};

use crate::config::EdgeConfig;

/// How long a refusal keeps `/healthz` degraded after it was seen.
pub const REFUSAL_MEMORY_MS: i64 = 60_000;
/// Bound on one ask (handshake, then the reply), whatever the publish timeout.
const ASK_TIMEOUT_MS: u64 = 2_000;

#[derive(Default)]
struct Known {
    /// The last ask: when, and the usage or why there was none.
    asked: Option<(i64, Result<StreamUsage, String>)>,
    /// Refusals for lack of room, by target: frames, and when the last one was.
    refused: [(u64, Option<i64>); 2],
}

thread_local! {
    static KNOWN: RefCell<Known> = RefCell::new(Known::default());
}

fn slot(target: Target) -> usize {
    match target {
        Target::Home => 0,
        Target::Secondary => 1,
    }
}

/// Records `frames` refused by `target`'s stream for lack of room.
pub fn refused_full(target: Target, frames: u64) {
    let now = Date::now().as_millis() as i64;
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        let s = &mut k.refused[slot(target)];
        s.0 += frames;
        s.1 = Some(now);
    });
}

/// The stream's part of `/healthz`: reasons to degrade (empty when fine)
/// and the JSON describing what is known.
pub async fn health(cfg: &EdgeConfig) -> (Vec<String>, Value) {
    let now = Date::now().as_millis() as i64;
    let cached = KNOWN.with(|k| {
        k.borrow()
            .asked
            .clone()
            .filter(|(at, _)| now.saturating_sub(*at) < cfg.stream_info_ttl_ms as i64)
    });
    let (at, usage) = match cached {
        Some(c) => c,
        None => {
            let usage = ask(cfg).await;
            let at = Date::now().as_millis() as i64;
            KNOWN.with(|k| k.borrow_mut().asked = Some((at, usage.clone())));
            (at, usage)
        }
    };
    let now = Date::now().as_millis() as i64;
    let mut reasons = Vec::new();
    let mut report = json!({
        "name": cfg.stream,
        "degraded_at": cfg.stream_degraded_at,
        "age_ms": now.saturating_sub(at),
    });
    match &usage {
        Ok(u) => {
            report["fullness"] = json!(u.ratio());
            report["bytes"] = json!(u.bytes);
            report["max_bytes"] = json!(u.max_bytes);
            report["messages"] = json!(u.messages);
            report["max_msgs"] = json!(u.max_msgs);
            reasons.extend(u.degraded(&cfg.stream, cfg.stream_degraded_at));
        }
        Err(e) => report["error"] = json!(e),
    }
    let refused = KNOWN.with(|k| k.borrow().refused);
    for target in [Target::Home, Target::Secondary] {
        let (frames, last) = refused[slot(target)];
        report[format!("refused_full_frames_{}", target.as_str())] = json!(frames);
        if let Some(last) = last {
            let ago = now.saturating_sub(last);
            if ago < REFUSAL_MEMORY_MS {
                reasons.push(format!(
                    "the {} region's stream refused frames as full {:.1} s ago ({frames} frames refused by this isolate so far)",
                    target.as_str(),
                    ago as f64 / 1000.0
                ));
            }
        }
    }
    (reasons, report)
}

fn sleep(ms: u64) -> Delay {
    Delay::from(Duration::from_millis(ms))
}

/// Asks the home region for the stream's info over a socket of its own.
async fn ask(cfg: &EdgeConfig) -> Result<StreamUsage, String> {
    let target = &cfg.home;
    let timeout_ms = cfg.publish_timeout_ms.min(ASK_TIMEOUT_MS);
    let socket = Socket::builder()
        .secure_transport(if cfg.nats_tls {
            SecureTransport::On
        } else {
            SecureTransport::Off
        })
        .connect(target.host.clone(), target.port)
        .map_err(|e| format!("cannot reach NATS at {}:{}: {e}", target.host, target.port))?;
    let opts = ConnectOptions {
        name: format!("spoor-edge-health-{}", cfg.region),
        auth: cfg.nats_auth(),
        timeout_ms,
        inbox_token: Some(crate::link::inbox_token()),
        inbox_prefix: crate::config::INBOX_PREFIX.into(),
    };
    let mut client = Client::connect(socket, sleep as fn(u64) -> Delay, &opts)
        .await
        .map_err(|e| {
            format!(
                "NATS handshake with {}:{} failed: {e}",
                target.host, target.port
            )
        })?;
    let reply = client
        .request(&stream_info_subject(&cfg.stream), b"", timeout_ms)
        .await;
    let _ = client.close(200).await;
    let reply = reply.map_err(|e| format!("stream info of {} not answered: {e}", cfg.stream))?;
    let fill = parse_stream_info(&reply.payload)
        .map_err(|e| format!("stream info of {}: {e}", cfg.stream))?;
    Ok(StreamUsage {
        bytes: fill.bytes,
        max_bytes: fill.max_bytes,
        messages: fill.messages,
        max_msgs: fill.max_msgs,
    })
}
