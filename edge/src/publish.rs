//! Publishing a request's frames to JetStream from inside workerd: one TCP
//! socket per request (workerd ties I/O objects to the request that opened
//! them), the `spoor-edge-nats` handshake, `HPUB` per frame and a wait for
//! every PubAck. Any failure fails the request as a whole.

use std::time::Duration;

use spoor_core::ingest::Outbound;
use spoor_edge_nats::{Auth, Client, ConnectOptions, PublishMsg};
use worker::{Delay, Socket};

use crate::config::EdgeConfig;

fn sleep(ms: u64) -> Delay {
    Delay::from(Duration::from_millis(ms))
}

/// Publishes every frame and returns once each has its PubAck, or the first
/// error as a sentence for the 503 body.
pub async fn publish(cfg: &EdgeConfig, messages: &[Outbound]) -> Result<(), String> {
    if messages.is_empty() {
        return Ok(());
    }
    let socket = Socket::builder()
        .connect(cfg.nats_host.clone(), cfg.nats_port)
        .map_err(|e| format!("cannot reach NATS at {}:{}: {e}", cfg.nats_host, cfg.nats_port))?;
    let opts = ConnectOptions {
        name: format!("spoor-edge-{}", cfg.region),
        auth: cfg.nats_token.clone().map(Auth::Token).unwrap_or_default(),
        timeout_ms: cfg.publish_timeout_ms,
        // Batch ids are unique per content, so the first one names the inbox.
        inbox_token: Some(messages[0].msg_id.clone()),
    };
    let mut client = Client::connect(socket, sleep as fn(u64) -> Delay, &opts)
        .await
        .map_err(|e| format!("NATS handshake failed: {e}"))?;
    let msgs: Vec<PublishMsg> = messages
        .iter()
        .map(|m| PublishMsg::new(m.subject.clone(), m.msg_id.clone(), m.frame.clone()))
        .collect();
    let results = client.publish_all(&msgs, cfg.publish_timeout_ms).await;
    let _ = client.close(200).await;
    match results.into_iter().find_map(Result::err) {
        None => Ok(()),
        Some(e) => Err(format!("JetStream did not acknowledge the batch: {e}")),
    }
}
