//! Publishing frames to JetStream from inside workerd, with failover: each
//! round tries the home region, then the secondary for whatever is still
//! unacknowledged; rounds repeat on the schedule spoor-core decides. One TCP
//! socket per target per round (workerd ties I/O objects to the request or
//! queue batch that opened them). It never decides what to do with frames
//! that no region took: the caller answers 503 (durable) or spills (fast).

use std::time::Duration;

use spoor_core::delivery::RetrySchedule;
use spoor_core::ingest::Outbound;
use spoor_core::link::{encode_handoff, Handoff, HandoffAnswer, HandoffFrame};
use spoor_edge_nats::{Client, ConnectOptions, PublishMsg};
use worker::{
    console_warn, Date, Delay, Env, Method, Request, RequestInit, SecureTransport, Socket,
};

use crate::config::{EdgeConfig, NatsTarget};
use crate::link::{LINK_BINDING, LINK_NAME_HEADER};
use crate::state;

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

/// Which targets a per-request delivery may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Home, then the secondary.
    All,
    /// The secondary only: the home region was just tried through its link.
    SecondaryOnly,
}

/// Delivers `frames` through the link `link_name` (the home region over its
/// long-lived connection), then whatever the link could not store through
/// per-request sockets following `schedule`: the secondary only when the
/// link answered (it already tried home), home and secondary when the link
/// could not be reached at all. The per-request fallback is counted.
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
    if frames.is_empty() {
        return Delivery { acked, last_error };
    }
    let handed = if cfg.links {
        hand_off(env, link_name, frames, alone).await
    } else {
        Err(String::new())
    };
    let targets = match handed {
        Ok(answer) => {
            let mut stored_events = 0;
            for (i, r) in answer.results.iter().enumerate().take(frames.len()) {
                if r.is_stored() {
                    acked[i] = true;
                    stored_events += frames[i].events as u64;
                } else if let Some(e) = &r.error {
                    last_error = Some(e.clone());
                }
            }
            state::count(|c| {
                *c.published
                    .entry(spoor_core::counters::Target::Home)
                    .or_default() += stored_events;
                if stored_events < frames.iter().map(|f| f.events as u64).sum() {
                    *c.publish_failures
                        .entry(spoor_core::counters::Target::Home)
                        .or_default() += 1;
                }
            });
            Targets::SecondaryOnly
        }
        Err(_) if !cfg.links => Targets::All,
        Err(e) => {
            console_warn!("spoor-edge: link {link_name} unreachable, publishing per request: {e}");
            state::count(|c| c.link_fallback_requests += 1);
            last_error = Some(e);
            Targets::All
        }
    };
    if acked.iter().all(|a| *a) {
        return Delivery { acked, last_error };
    }
    let pending: Vec<usize> = (0..frames.len()).filter(|i| !acked[*i]).collect();
    let rest: Vec<Frame> = pending
        .iter()
        .map(|i| Frame {
            msg: frames[*i].msg.clone(),
            events: frames[*i].events,
        })
        .collect();
    let fallback = deliver_to(cfg, &rest, schedule, targets).await;
    for (i, ok) in pending.iter().zip(fallback.acked) {
        acked[*i] = ok;
    }
    Delivery {
        acked,
        last_error: fallback.last_error.or(last_error),
    }
}

/// Posts the frames to the link and reads its per-frame answer.
async fn hand_off(
    env: &Env,
    link_name: &str,
    frames: &[Frame],
    alone: bool,
) -> Result<HandoffAnswer, String> {
    let body = encode_handoff(&Handoff {
        alone,
        frames: frames
            .iter()
            .map(|f| HandoffFrame {
                subject: f.msg.subject.clone(),
                msg_id: f.msg.msg_id.clone(),
                events: f.events as u32,
                frame: f.msg.payload.clone(),
            })
            .collect(),
    });
    let stub = env
        .durable_object(LINK_BINDING)
        .and_then(|ns| ns.id_from_name(link_name)?.get_stub())
        .map_err(|e| format!("no {LINK_BINDING} Durable Object binding: {e}"))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    let mut req = Request::new_with_init("https://link/publish", &init)
        .map_err(|e| format!("building the link request: {e}"))?;
    req.headers_mut()
        .and_then(|h| h.set(LINK_NAME_HEADER, link_name))
        .map_err(|e| e.to_string())?;
    let mut resp = stub
        .fetch_with_request(req)
        .await
        .map_err(|e| format!("link {link_name} did not answer: {e}"))?;
    if resp.status_code() != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!(
            "link {link_name} answered {}: {text}",
            resp.status_code()
        ));
    }
    let answer: HandoffAnswer = resp
        .json()
        .await
        .map_err(|e| format!("link {link_name} answered unreadable JSON: {e}"))?;
    if answer.results.len() != frames.len() {
        return Err(format!(
            "link {link_name} answered {} results for {} frames",
            answer.results.len(),
            frames.len()
        ));
    }
    Ok(answer)
}

/// Publishes `frames` following `schedule` through per-request sockets,
/// home first (unless `which` leaves it out), then the secondary.
async fn deliver_to(
    cfg: &EdgeConfig,
    frames: &[Frame],
    schedule: RetrySchedule,
    which: Targets,
) -> Delivery {
    let mut acked = vec![false; frames.len()];
    let mut last_error = None;
    if frames.is_empty() {
        return Delivery { acked, last_error };
    }
    let mut targets = cfg.targets();
    if which == Targets::SecondaryOnly {
        targets.retain(|(role, _)| *role != spoor_core::counters::Target::Home);
        if targets.is_empty() {
            return Delivery { acked, last_error };
        }
    }
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
            match publish_to(cfg, target, frames, &pending).await {
                Ok(results) => {
                    let mut events_ok = 0;
                    let mut failed = 0;
                    for (i, r) in pending.iter().zip(results) {
                        match r {
                            Ok(()) => {
                                acked[*i] = true;
                                events_ok += frames[*i].events as u64;
                            }
                            Err(e) => {
                                failed += 1;
                                last_error = Some(e);
                            }
                        }
                    }
                    state::count(|c| {
                        *c.published.entry(*role).or_default() += events_ok;
                        if failed > 0 {
                            *c.publish_failures.entry(*role).or_default() += 1;
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
    Delivery { acked, last_error }
}

/// One round on one target: the per-frame results for `pending`, or an
/// error when the connection itself failed (then nothing was acknowledged).
async fn publish_to(
    cfg: &EdgeConfig,
    target: &NatsTarget,
    frames: &[Frame],
    pending: &[usize],
) -> Result<Vec<Result<(), String>>, String> {
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
            r.map(|_| ())
                .map_err(|e| format!("JetStream did not acknowledge a frame: {e}"))
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
