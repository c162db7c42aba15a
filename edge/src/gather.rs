//! Fast acks' frames, gathered per link across the isolate's requests, so
//! that one hand-off to a link carries the frames of every request that
//! answered while the previous hand-off was on its way.
//!
//! A call to a link cost the isolate more than ingesting the batch (0.3 to
//! 0.9 ms per request above the edge with publishing off, in the edge
//! bench's `handoff` case before gathering): a `fetch` to the Durable
//! Object, its answer, the promise machinery, almost all of it per call
//! rather than per byte. Under load, gathering makes that cost per group
//! of requests instead of per request; with one request at a time, a
//! group is that request and nothing waits.
//!
//! Ownership, which is what makes this safe in workerd (where I/O belongs
//! to the request that started it): the request that finds no leader for
//! its link becomes the **leader** and delivers, in its own `wait_until`,
//! everything gathered for the link, round after round, until nothing is
//! left. Every later request only adds its frames and returns: it does no
//! I/O and waits on no one. Invariant: frames are gathered only while a
//! leader exists, and a leader gives up only by taking what is left, so no
//! frame is stranded. A leader stops taking new rounds after
//! `LEAD_MAX_MS`, so one request's `wait_until` stays short; the next
//! request to arrive then leads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_util::future::join_all;
use spoor_core::delivery::RetrySchedule;
use spoor_core::ingest::Outbound;
use worker::{console_error, Date, Env};

use crate::config::EdgeConfig;
use crate::publish::{deliver_via_link, Frame};
use crate::spill;

/// How long one request leads before it hands over (it still finishes the
/// round it took).
const LEAD_MAX_MS: u64 = 2_000;
/// Workers let `wait_until` work run 30 s after the answer; a lead plans
/// every round, spill included, to end within this.
const WAIT_UNTIL_MS: u64 = 25_000;
/// Most frame bytes one call to a link carries; a larger round is split
/// into several calls made at once.
const HANDOFF_MAX_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Gathered {
    frames: Vec<Outbound>,
    led: bool,
}

thread_local! {
    static GATHER: RefCell<HashMap<String, Gathered>> = RefCell::new(HashMap::new());
}

/// Adds a fast ack's frames to `link`'s next hand-off. True when the
/// caller must lead (run `lead` in its `wait_until`).
pub fn join(link: &str, frames: Vec<Outbound>) -> bool {
    GATHER.with(|g| {
        let mut g = g.borrow_mut();
        let entry = g.entry(link.to_string()).or_default();
        entry.frames.extend(frames);
        let lead = !entry.led;
        entry.led = true;
        lead
    })
}

/// The next round for `link`: everything gathered. With nothing gathered
/// the leader steps down (`None`); with `last`, it steps down after taking.
fn take(link: &str, last: bool) -> Option<Vec<Outbound>> {
    GATHER.with(|g| {
        let mut g = g.borrow_mut();
        let entry = g.get_mut(link)?;
        if entry.frames.is_empty() {
            g.remove(link);
            return None;
        }
        let frames = std::mem::take(&mut entry.frames);
        if last {
            g.remove(link);
        }
        Some(frames)
    })
}

/// A round cut into hand-offs of at most `HANDOFF_MAX_BYTES` of frames
/// (each at least one frame).
fn chunks(round: Vec<Outbound>) -> Vec<Vec<Outbound>> {
    let mut out: Vec<Vec<Outbound>> = Vec::new();
    let mut bytes = 0;
    for f in round {
        match out.last_mut() {
            Some(last) if bytes + f.frame.len() <= HANDOFF_MAX_BYTES => {
                bytes += f.frame.len();
                last.push(f);
            }
            _ => {
                bytes = f.frame.len();
                out.push(vec![f]);
            }
        }
    }
    out
}

/// Delivers everything gathered for `link`, round by round, until nothing
/// is left or the lead has lasted `LEAD_MAX_MS`. A round takes everything
/// gathered and delivers its hand-offs concurrently. Every round is
/// planned to end, spill included, within `WAIT_UNTIL_MS` of the lead's
/// start: its retry budget is cut to the time left, and a round that
/// could not try NATS even once in that time (after an outage held the
/// previous round for its whole budget) goes to the spill queue at once.
pub async fn lead(env: Env, cfg: Rc<EdgeConfig>, link: String) {
    let started = Date::now().as_millis();
    let worst_attempt_ms = cfg
        .publish_timeout_ms
        .saturating_mul(2 * cfg.targets().len() as u64);
    loop {
        let elapsed = Date::now().as_millis().saturating_sub(started);
        let last = elapsed >= LEAD_MAX_MS;
        let Some(round) = take(&link, last) else {
            return;
        };
        if elapsed.saturating_add(worst_attempt_ms) > WAIT_UNTIL_MS {
            let refs: Vec<&Outbound> = round.iter().collect();
            spill_unacked(
                &env,
                &cfg,
                &refs,
                "the request delivering this link's gathered frames ran out of time",
            )
            .await;
        } else {
            let schedule = RetrySchedule {
                budget_ms: cfg.fast_retry.budget_ms.min(WAIT_UNTIL_MS - elapsed),
                ..cfg.fast_retry
            };
            join_all(
                chunks(round)
                    .into_iter()
                    .map(|c| deliver_round(&env, &cfg, &link, c, schedule)),
            )
            .await;
        }
        if last {
            return;
        }
    }
}

/// One round: the link, then bounded retries home → secondary over
/// per-request sockets, then the spill queue for whatever no region took.
async fn deliver_round(
    env: &Env,
    cfg: &EdgeConfig,
    link: &str,
    round: Vec<Outbound>,
    schedule: RetrySchedule,
) {
    let frames: Vec<Frame> = round.iter().map(Frame::of).collect();
    let delivery = deliver_via_link(env, cfg, link, &frames, schedule, false).await;
    if delivery.all_acked() {
        return;
    }
    let unacked: Vec<&Outbound> = round
        .iter()
        .zip(&delivery.acked)
        .filter(|(_, ok)| !**ok)
        .map(|(m, _)| m)
        .collect();
    let cause = delivery.last_error.unwrap_or_default();
    spill_unacked(env, cfg, &unacked, &cause).await;
}

/// Parks frames no region took on the spill queue.
async fn spill_unacked(env: &Env, cfg: &EdgeConfig, unacked: &[&Outbound], cause: &str) {
    let spilled = spill::spill(env, cfg, unacked, cause).await;
    let total: usize = unacked.iter().map(|m| m.events).sum();
    if spilled < total {
        console_error!(
            "spoor-edge: {} of {total} events neither published nor spilled",
            total - spilled
        );
    }
}
