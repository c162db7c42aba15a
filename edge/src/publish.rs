//! Publishing frames to JetStream from inside workerd, with failover: each
//! round tries the home region through its link (`crate::link`, one
//! long-lived connection), then the secondary for whatever is still
//! unacknowledged; rounds repeat on the schedule spoor-core decides. A
//! socket of the request's own (workerd ties I/O objects to the request or
//! queue batch that opened them) serves the secondary, and home only when
//! the link cannot be reached or links are off. It never decides what to do
//! with frames that no region took: the caller answers 503 (durable) or
//! spills (fast). A frame JetStream refused because its stream is full
//! (`discard: new`) is not stored like any other failure, and is told
//! apart: counted by reason (`spoor_edge_publish_refused_total{reason=
//! "stream_full"}`), remembered for `/healthz` (`crate::stream`), and
//! reported in [`Delivery::stream_full`] so a durable ack's 503 says so.

use std::time::Duration;

use spoor_core::delivery::RetrySchedule;
use spoor_core::ingest::Outbound;
use spoor_core::link::{encode_handoff_refs, FrameRef, HandoffAnswer};
use spoor_edge_nats::{Client, ConnectOptions, NatsError, PublishMsg};
use worker::{console_warn, Date, Delay, Env, SecureTransport, Socket};

use crate::config::{EdgeConfig, NatsTarget};
use crate::link::{LINK_BINDING, LINK_NAME_HEADER};
use crate::state;
use spoor_core::counters::{Target, REFUSED_STREAM_FULL};

fn sleep(ms: u64) -> Delay {
    Delay::from(Duration::from_millis(ms))
}

/// One frame to publish and the events it carries (for counters).
pub struct Frame {
    pub msg: PublishMsg,
    pub events: usize,
}

/// What a delivery achieved: which frames have a PubAck, and the last error
/// as a sentence for logs and 503 bodies.
pub struct Delivery {
    pub acked: Vec<bool>,
    pub last_error: Option<String>,
    /// Some attempt was refused because the stream was full.
    pub stream_full: bool,
}

/// Why one frame was not stored by one attempt.
pub struct FrameFailure {
    pub message: String,
    /// JetStream refused it for lack of room.
    pub stream_full: bool,
}

impl Delivery {
    pub fn all_acked(&self) -> bool {
        self.acked.iter().all(|a| *a)
    }
}

impl Frame {
    pub fn of(out: &Outbound) -> Frame {
        Frame {
            msg: PublishMsg::new(out.subject.clone(), out.msg_id.clone(), out.frame.clone()),
            events: out.events,
        }
    }
}

/// Delivers `frames` in rounds following `schedule`. Each round offers
/// the still unacknowledged frames to the home region through the link
/// `link_name` (its long-lived connection), or over a socket of their own
/// when the link cannot be reached (counted: `link_fallback_requests`) or
/// links are off, then to the secondary region over a socket of their own.
/// A link that answers with errors is retried in the next round, never
/// bypassed: sockets per request under load would take the CPU the link
/// needs to reconnect.
pub async fn deliver_via_link(
    env: &Env,
    cfg: &EdgeConfig,
    link_name: &str,
    frames: &[Frame],
    schedule: RetrySchedule,
    alone: bool,
) -> Delivery {
    let mut acked = vec![false; frames.len()];
    let mut last_error = None;
    let mut stream_full = false;
    if frames.is_empty() {
        return Delivery {
            acked,
            last_error,
            stream_full,
        };
    }
    let targets = cfg.targets();
    // A hung server costs a handshake timeout plus a PubAck timeout per target.
    let worst_round_ms = cfg
        .publish_timeout_ms
        .saturating_mul(2 * targets.len() as u64);
    let started = Date::now().as_millis();
    let mut attempt = 0;
    loop {
        let elapsed = Date::now().as_millis().saturating_sub(started);
        let Some(delay) = schedule.delay_before(attempt, elapsed, worst_round_ms) else {
            break;
        };
        if delay > 0 {
            sleep(delay).await;
        }
        for (role, target) in &targets {
            let pending: Vec<usize> = (0..frames.len()).filter(|i| !acked[*i]).collect();
            if pending.is_empty() {
                break;
            }
            let via_link = *role == Target::Home && cfg.links;
            let outcome = if via_link {
                match hand_off(env, link_name, frames, &pending, alone).await {
                    Ok(results) => Ok(results),
                    Err(e) => {
                        console_warn!(
                            "spoor-edge: link {link_name} unreachable, publishing per request: {e}"
                        );
                        state::count(|c| c.link_fallback_requests += 1);
                        last_error = Some(e);
                        publish_to(cfg, target, frames, &pending).await
                    }
                }
            } else {
                publish_to(cfg, target, frames, &pending).await
            };
            match outcome {
                Ok(results) => {
                    let mut events_ok = 0;
                    let mut failed = 0;
                    let mut full = 0;
                    for (i, r) in pending.iter().zip(results) {
                        match r {
                            Ok(()) => {
                                acked[*i] = true;
                                events_ok += frames[*i].events as u64;
                            }
                            Err(e) => {
                                failed += 1;
                                if e.stream_full {
                                    full += 1;
                                }
                                last_error = Some(e.message);
                            }
                        }
                    }
                    if full > 0 {
                        stream_full = true;
                        crate::stream::refused_full(*role, full);
                    }
                    state::count(|c| {
                        *c.published.entry(*role).or_default() += events_ok;
                        if failed > 0 {
                            *c.publish_failures.entry(*role).or_default() += 1;
                        }
                        if full > 0 {
                            *c.publish_refused
                                .entry((*role, REFUSED_STREAM_FULL))
                                .or_default() += full;
                        }
                    });
                }
                Err(e) => {
                    console_warn!(
                        "spoor-edge: publish to {} ({}:{}) failed: {e}",
                        role.as_str(),
                        target.host,
                        target.port
                    );
                    state::count(|c| *c.publish_failures.entry(*role).or_default() += 1);
                    last_error = Some(e);
                }
            }
        }
        if acked.iter().all(|a| *a) {
            break;
        }
        attempt += 1;
    }
    Delivery {
        acked,
        last_error,
        stream_full,
    }
}

/// Posts the `pending` frames to the link and reads its answer: a result
/// per pending frame, or an error when the link could not be asked.
async fn hand_off(
    env: &Env,
    link_name: &str,
    frames: &[Frame],
    pending: &[usize],
    alone: bool,
) -> Result<Vec<Result<(), FrameFailure>>, String> {
    let refs: Vec<FrameRef<'_>> = pending
        .iter()
        .map(|i| {
            let f = &frames[*i];
            FrameRef {
                subject: &f.msg.subject,
                msg_id: &f.msg.msg_id,
                events: f.events as u32,
                frame: &f.msg.payload,
            }
        })
        .collect();
    let body = encode_handoff_refs(alone, &refs);
    state::count(|c| c.link_handoffs += 1);
    let (status, text) = crate::http::link_call(
        env,
        LINK_BINDING,
        link_name,
        LINK_NAME_HEADER,
        "/publish",
        Some(&body),
    )
    .await
    .map_err(|e| format!("link {link_name} did not answer: {e}"))?;
    if status != 200 {
        return Err(format!("link {link_name} answered {status}: {text}"));
    }
    let answer: HandoffAnswer = serde_json::from_str(&text)
        .map_err(|e| format!("link {link_name} answered unreadable JSON: {e}"))?;
    if answer.results.len() != pending.len() {
        return Err(format!(
            "link {link_name} answered {} results for {} frames",
            answer.results.len(),
            pending.len()
        ));
    }
    Ok(answer
        .results
        .into_iter()
        .map(|r| match (r.seq, r.error) {
            (Some(_), _) => Ok(()),
            (None, e) => Err(FrameFailure {
                message: e.unwrap_or_else(|| "the link stored nothing".into()),
                stream_full: r.stream_full,
            }),
        })
        .collect())
}

/// One round on one target: the per-frame results for `pending`, or an
/// error when the connection itself failed (then nothing was acknowledged).
async fn publish_to(
    cfg: &EdgeConfig,
    target: &NatsTarget,
    frames: &[Frame],
    pending: &[usize],
) -> Result<Vec<Result<(), FrameFailure>>, String> {
    let socket = Socket::builder()
        .secure_transport(if cfg.nats_tls {
            SecureTransport::On
        } else {
            SecureTransport::Off
        })
        .connect(target.host.clone(), target.port)
        .map_err(|e| format!("cannot reach NATS at {}:{}: {e}", target.host, target.port))?;
    let first = &frames[pending[0]].msg;
    let opts = ConnectOptions {
        name: format!("spoor-edge-{}", cfg.region),
        auth: cfg.nats_auth(),
        timeout_ms: cfg.publish_timeout_ms,
        // Batch ids are unique per content, so the first one names the inbox.
        inbox_token: Some(first.msg_id.clone()),
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
    let msgs: Vec<PublishMsg> = pending.iter().map(|i| frames[*i].msg.clone()).collect();
    let results = client.publish_all(&msgs, cfg.publish_timeout_ms).await;
    let _ = client.close(200).await;
    Ok(results
        .into_iter()
        .map(|r| {
            r.map(|_| ()).map_err(|e| FrameFailure {
                stream_full: matches!(e, NatsError::StreamFull { .. }),
                message: format!("JetStream did not acknowledge a frame: {e}"),
            })
        })
        .collect())
}

/// The schedule of a durable ack: one round (home, then secondary) while
/// the client waits; the client's own retry after a 503 is the next round.
pub fn durable_schedule() -> RetrySchedule {
    RetrySchedule {
        attempts: 1,
        base_delay_ms: 0,
        max_delay_ms: 0,
        budget_ms: 0,
    }
}
