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

use spoor_core::ingest::Outbound;
use worker::{console_error, Date, Env};

use crate::config::EdgeConfig;
use crate::publish::{deliver_via_link, Frame};
use crate::spill;

/// How long one request leads before it hands over (it still finishes the
/// round it took).
const LEAD_MAX_MS: u64 = 2_000;
/// Most frame bytes one hand-off carries; the rest waits for the next round.
const ROUND_MAX_BYTES: usize = 1 << 20;

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

/// The next round for `link`: up to `ROUND_MAX_BYTES` of gathered frames
/// (at least one). With nothing gathered the leader steps down (`None`).
/// With `last`, everything left is taken and the leader steps down.
fn take(link: &str, last: bool) -> Option<Vec<Outbound>> {
    GATHER.with(|g| {
        let mut g = g.borrow_mut();
        let entry = g.get_mut(link)?;
        if entry.frames.is_empty() {
            g.remove(link);
            return None;
        }
        if last {
            let frames = std::mem::take(&mut entry.frames);
            g.remove(link);
            return Some(frames);
        }
        let mut bytes = 0;
        let mut n = 0;
        for f in &entry.frames {
            if n > 0 && bytes + f.frame.len() > ROUND_MAX_BYTES {
                break;
            }
            bytes += f.frame.len();
            n += 1;
        }
        Some(entry.frames.drain(..n).collect())
    })
}

/// Delivers everything gathered for `link`, round by round, until nothing
/// is left or the lead has lasted `LEAD_MAX_MS`.
pub async fn lead(env: Env, cfg: Rc<EdgeConfig>, link: String) {
    let started = Date::now().as_millis();
    loop {
        let last = Date::now().as_millis().saturating_sub(started) >= LEAD_MAX_MS;
        let Some(round) = take(&link, last) else {
            return;
        };
        deliver_round(&env, &cfg, &link, round).await;
        if last {
            return;
        }
    }
}

/// One round: the link, then bounded retries home → secondary over
/// per-request sockets, then the spill queue for whatever no region took.
async fn deliver_round(env: &Env, cfg: &EdgeConfig, link: &str, round: Vec<Outbound>) {
    let frames: Vec<Frame> = round.iter().map(Frame::of).collect();
    let delivery = deliver_via_link(env, cfg, link, &frames, cfg.fast_retry, false).await;
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
    let spilled = spill::spill(env, cfg, &unacked, &cause).await;
    let total: usize = unacked.iter().map(|m| m.events).sum();
    if spilled < total {
        console_error!(
            "spoor-edge: {} of {total} events neither published nor spilled",
            total - spilled
        );
    }
}
