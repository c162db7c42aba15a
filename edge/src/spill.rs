//! The last resort of a fast ack and its way back: frames that no NATS
//! region took are written to the `SPILL` Cloudflare Queue (with their
//! subject and `Nats-Msg-Id`, split by spoor-core when too big), and the
//! queue consumer in this same worker republishes them, home then
//! secondary, under the same id.
//!
//! Nothing here may lose an accepted event silently: a spill that fails is
//! logged as an error and counted; a replay that fails is put back on the
//! queue with a delay, never dropped. A message that cannot be read at all
//! is the only thing acknowledged without a publish, and it is logged and
//! counted too.
//!
//! Why replay retries forever: a failed replay sends a fresh copy of the
//! message with a delay (`SPILL_RETRY_DELAY_S`) and acks the original, so a
//! long NATS outage cannot exhaust the queue's `max_retries` (100). The cost
//! is one queue write per retry and, if the ack after the re-send fails, a
//! duplicate queue message, which JetStream's duplicate window or the relay's
//! event-id dedup absorbs. A frame is split only when it does not fit in
//! `SPILL_MAX_BYTES` (96 KiB by default, under Queues' 128 KB); if a frame had
//! reached JetStream without its PubAck reaching the edge and is then split,
//! the pieces' events are stored under other message ids and the relay's
//! event-id dedup drops them.

use spoor_core::ingest::Outbound;
use spoor_core::spill::{spill_messages, SpillMessage};
use spoor_edge_nats::PublishMsg;
use worker::{console_error, console_warn, Env, MessageBatch, MessageBuilder, MessageExt, Result};

use crate::config::EdgeConfig;
use crate::publish::{deliver_via_link, durable_schedule, Frame};
use crate::state;
use spoor_core::link::link_name;

/// The producer binding's name in wrangler.toml.
pub const SPILL_BINDING: &str = "SPILL";

/// Writes `unacked` frames to the spill queue. Returns the events spilled.
pub async fn spill(env: &Env, cfg: &EdgeConfig, unacked: &[&Outbound], cause: &str) -> usize {
    let queue = match env.queue(SPILL_BINDING) {
        Ok(q) => Some(q),
        Err(e) => {
            console_error!("spoor-edge: no {SPILL_BINDING} queue binding: {e}");
            None
        }
    };
    let mut spilled = 0;
    for out in unacked {
        let sent = match (
            &queue,
            spill_messages(out, cfg.spill_max_bytes, cfg.limits.max_frame_bytes),
        ) {
            (None, _) => Err("the spill queue is not bound".to_string()),
            (Some(_), Err(e)) => Err(e.to_string()),
            (Some(q), Ok(msgs)) => {
                let mut result = Ok(msgs.len());
                for m in &msgs {
                    if let Err(e) = q.send(m).await {
                        result = Err(format!("queue send failed: {e}"));
                        break;
                    }
                }
                result
            }
        };
        match sent {
            Ok(n) => {
                spilled += out.events;
                state::count(|c| {
                    c.spilled_events += out.events as u64;
                    c.spill_messages += n as u64;
                });
            }
            Err(e) => {
                // Any piece that did reach the queue still replays; the rest is
                // lost unless the client resends. Loud on purpose.
                console_error!(
                    "spoor-edge: LOST {} accepted events of frame {} ({}): NATS failed ({cause}) and spilling failed ({e})",
                    out.events,
                    out.msg_id,
                    out.subject
                );
                state::count(|c| c.spill_failed_events += out.events as u64);
            }
        }
    }
    spilled
}

/// The queue consumer: republishes a batch of spilled messages in one round
/// (home, then secondary) and acknowledges each one JetStream took. The
/// others go back on the queue as fresh messages with a delay (then the
/// original is acknowledged), so a long NATS outage never exhausts the
/// queue's retry limit; if even that send fails, the original is retried.
pub async fn replay(batch: MessageBatch<SpillMessage>, env: Env) -> Result<()> {
    let cfg = match EdgeConfig::cached(&env) {
        Ok(c) => c,
        Err(e) => {
            console_error!(
                "spoor-edge: spill replay cannot read its config ({e}); retrying the batch"
            );
            batch.retry_all();
            return Ok(());
        }
    };
    let mut messages = Vec::new();
    let mut frames = Vec::new();
    for raw in batch.raw_iter() {
        let parsed = js_sys::JSON::stringify(&raw.body())
            .ok()
            .and_then(|s| s.as_string())
            .ok_or_else(|| "body is not JSON".to_string())
            .and_then(|text| serde_json::from_str::<SpillMessage>(&text).map_err(|e| e.to_string()))
            .and_then(|m| m.frame_bytes().map(|f| (m, f)).map_err(|e| e.to_string()));
        match parsed {
            Ok((body, frame)) => {
                frames.push(Frame {
                    msg: PublishMsg::new(body.subject.clone(), body.msg_id.clone(), frame),
                    events: body.events,
                });
                messages.push((raw, body));
            }
            Err(e) => {
                console_error!(
                    "spoor-edge: unreadable spill message {} dropped: {e}",
                    raw.id()
                );
                state::count(|c| c.replay_unreadable += 1);
                raw.ack();
            }
        }
    }
    // Through the link of the first frame's partition, like a request, but
    // each frame alone under its own id: a frame spilled twice is then
    // JetStream's duplicate.
    let link = frames
        .first()
        .and_then(|f| spoor_core::route::partition_of_subject(&f.msg.subject))
        .map(|p| link_name(&cfg.region, "", p, cfg.shards))
        .unwrap_or_default();
    let delivery = deliver_via_link(&env, &cfg, &link, &frames, durable_schedule(), true).await;
    let queue = env.queue(SPILL_BINDING).ok();
    for ((m, body), ok) in messages.iter().zip(&delivery.acked) {
        if *ok {
            state::count(|c| c.replayed_events += body.events as u64);
            m.ack();
            continue;
        }
        state::count(|c| c.replay_retries += 1);
        let requeued = match &queue {
            Some(q) => q
                .send(
                    MessageBuilder::new(body.clone())
                        .delay_seconds(cfg.spill_retry_delay_s)
                        .build(),
                )
                .await
                .is_ok(),
            None => false,
        };
        if requeued {
            m.ack();
        } else {
            m.retry_with_options(
                &worker::QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(cfg.spill_retry_delay_s)
                    .build(),
            );
        }
    }
    if let Some(e) = &delivery.last_error {
        if !delivery.all_acked() {
            console_warn!(
                "spoor-edge: spill replay will try again in {} s: {e}",
                cfg.spill_retry_delay_s
            );
        }
    }
    Ok(())
}
