//! The three-node JetStream cluster (`deploy/nats/nats-server-r3.conf`)
//! and the relay's `--stream-replicas`: the harness's cluster elects a meta
//! leader, the relay's stream definitions scale to R3 in place, and an R3
//! stream keeps every acknowledged message through its leader's kill -9 and
//! restart. The whole pipeline on a cluster is in `faults.rs` (h) and (i).

use std::time::Duration;

use spoor_core::contract::{DEAD_STREAM, DEFAULT_EVENTS_STREAM};
use spoor_tests::nats::NatsRole;
use spoor_tests::nats_cluster::NatsCluster;

const WAIT: Duration = Duration::from_secs(60);

/// Publishes `n` messages with ids `<prefix>-<i>`, each retried until its
/// PubAck (a stream without a leader answers "no responders" meanwhile).
async fn publish_acked(js: &async_nats::jetstream::Context, prefix: &str, n: usize) {
    for i in 0..n {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{prefix}-{i}").as_str());
            let sent = js
                .publish_with_headers("spoor.events.r3.0", headers, format!("{i}").into())
                .await;
            let acked = match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("publish {prefix}-{i}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("publish {prefix}-{i} never acknowledged: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_keeps_acknowledged_messages_through_its_leaders_kill() {
    let cluster = tokio::task::block_in_place(NatsCluster::start).unwrap();
    assert!(cluster.meta_leader().is_some());
    let client = cluster.connect(NatsRole::Admin).await.unwrap();
    let js = async_nats::jetstream::new(client);

    // The relay's streams, first as on a single node, then scaled to R3 in
    // place by the same definitions with --stream-replicas 3.
    spoor_relay::source::streams::ensure_all(&js, DEFAULT_EVENTS_STREAM, 1, &Default::default())
        .await
        .unwrap();
    publish_acked(&js, "r1", 50).await;
    spoor_relay::source::streams::ensure_all(&js, DEFAULT_EVENTS_STREAM, 3, &Default::default())
        .await
        .unwrap();
    for stream in [DEFAULT_EVENTS_STREAM, DEAD_STREAM] {
        let info = cluster.stream_info(stream).await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
    }
    let leader = cluster
        .wait_stream_current(DEFAULT_EVENTS_STREAM, 3, WAIT)
        .await
        .unwrap();
    publish_acked(&js, "before", 100).await;

    // kill -9 the leader: the other two elect a new one and keep taking
    // messages.
    tokio::task::block_in_place(|| cluster.node(leader).kill());
    eprintln!("killed the stream leader, node {leader}");
    publish_acked(&js, "during", 100).await;
    let new_leader = cluster
        .wait_stream_current(DEFAULT_EVENTS_STREAM, 2, WAIT)
        .await
        .unwrap();
    assert_ne!(new_leader, leader);

    // Back up, the node catches up; every acknowledged message is there.
    tokio::task::block_in_place(|| cluster.node(leader).start()).unwrap();
    cluster
        .wait_stream_current(DEFAULT_EVENTS_STREAM, 3, WAIT)
        .await
        .unwrap();
    let info = cluster.stream_info(DEFAULT_EVENTS_STREAM).await.unwrap();
    assert_eq!(info.state.messages, 250, "{info:?}");
    // Applying the definitions again changes nothing.
    spoor_relay::source::streams::ensure_all(&js, DEFAULT_EVENTS_STREAM, 3, &Default::default())
        .await
        .unwrap();
    let again = cluster.stream_info(DEFAULT_EVENTS_STREAM).await.unwrap();
    assert_eq!(again.config.num_replicas, 3);
    assert_eq!(again.state.messages, 250);
}
