//! spoor-edge-nats' pipelined publisher (the edge link's connection)
//! against a real nats-server: many publishes in flight on one connection,
//! each resolved by its own PubAck; duplicates by `Nats-Msg-Id`; a server
//! that goes away fails every waiting publish and every later one at once.
//! The publisher runs over TLS (tokio-rustls) in a `LocalSet` with the edge
//! role's nkey, as it runs over workers' `Socket` inside a Durable Object.

use futures_util::future::join_all;
use serde_json::Value;
use spoor_edge_nats::{
    check_api_response, Client, ConnectOptions, Connected, NatsError, Pipeline, PublishMsg,
};
use spoor_tests::nats::{NatsRole, NatsServer};
use spoor_tests::tools::workspace_root;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::task::LocalSet;

use crate::edge_nats::role_options;
use crate::support::tls_socket;

type Sleep = fn(u64) -> tokio::time::Sleep;

fn sleep(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

const T: u64 = 10_000;

/// The edge role, as a link connects.
fn opts(server: &NatsServer) -> ConnectOptions {
    ConnectOptions {
        inbox_token: Some("pipe".into()),
        ..role_options(server, NatsRole::Edge)
    }
}

/// Creates the production events stream with a request/reply admin client.
async fn create_events_stream(server: &NatsServer) {
    let tls = tls_socket(server, "localhost").await.unwrap();
    let mut client = Client::connect(tls, sleep as Sleep, &role_options(server, NatsRole::Admin))
        .await
        .unwrap();
    let path = workspace_root().join("deploy/nats/events-stream.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let name = config["name"].as_str().unwrap().to_string();
    let reply = client
        .request(
            &format!("$JS.API.STREAM.CREATE.{name}"),
            config.to_string().as_bytes(),
            T,
        )
        .await
        .unwrap();
    check_api_response(&reply.payload).unwrap();
}

/// A pipelined connection with its reader and writer spawned on the
/// current `LocalSet`.
async fn pipeline(server: &NatsServer) -> Pipeline<Sleep> {
    let tls = tls_socket(server, "localhost").await.unwrap();
    let Connected {
        pipeline,
        reader,
        writer,
    } = Pipeline::connect(tls, sleep as Sleep, &opts(server))
        .await
        .unwrap();
    tokio::task::spawn_local(reader);
    tokio::task::spawn_local(writer);
    pipeline
}

fn connections(server: &NatsServer) -> u64 {
    let url = format!("http://127.0.0.1:{}/connz", server.monitor_port());
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    body["num_connections"].as_u64().unwrap()
}

#[tokio::test]
async fn many_publishes_in_flight_share_one_connection() {
    let server = NatsServer::start().unwrap();
    create_events_stream(&server).await;
    LocalSet::new()
        .run_until(async {
            let p = pipeline(&server).await;
            let msgs: Vec<PublishMsg> = (0..500)
                .map(|i| {
                    PublishMsg::new(
                        format!("spoor.events.local.{}", i % 16),
                        format!("pipe-{i}"),
                        vec![i as u8; 100 + i],
                    )
                })
                .collect();
            let results = join_all(msgs.iter().map(|m| p.publish(m, T))).await;
            let seqs: BTreeSet<u64> = results
                .iter()
                .map(|r| r.as_ref().expect("every publish acked").seq)
                .collect();
            assert_eq!(seqs.len(), 500, "each publish got its own PubAck");
            assert_eq!(p.in_flight(), 0);
            assert_eq!(p.published(), 500);
            assert_eq!(connections(&server), 1, "one connection carried them all");

            // The same id again is JetStream's duplicate, matched to this publish.
            let again = p.publish(&msgs[7], T).await.unwrap();
            assert!(again.duplicate);
            assert_eq!(again.seq, results[7].as_ref().unwrap().seq);

            // Too large for the server: refused before anything is sent.
            let big = PublishMsg::new("spoor.events.local.0", "big", vec![0u8; 3 << 20]);
            assert!(matches!(
                p.publish(&big, T).await,
                Err(NatsError::PayloadTooLarge { .. })
            ));
            assert!(
                !p.is_closed(),
                "a refused message does not break the connection"
            );
            p.close();
            assert!(matches!(
                p.publish(&msgs[0], T).await,
                Err(NatsError::Closed)
            ));
        })
        .await;
}

#[tokio::test]
async fn a_server_that_goes_away_fails_waiting_and_later_publishes() {
    let server = NatsServer::start().unwrap();
    create_events_stream(&server).await;
    LocalSet::new()
        .run_until(async {
            let p = pipeline(&server).await;
            let m = PublishMsg::new("spoor.events.local.1", "before", b"x".to_vec());
            p.publish(&m, T).await.unwrap();
            server.stop();
            // The reader sees EOF; nothing is reported as stored.
            let m2 = PublishMsg::new("spoor.events.local.1", "after", b"y".to_vec());
            let r = p.publish(&m2, T).await;
            assert!(r.is_err(), "{r:?}");
            assert!(p.is_closed());
            assert!(p.error().is_some());
            let r = tokio::time::timeout(Duration::from_secs(1), p.publish(&m2, T))
                .await
                .expect("a closed pipeline fails at once");
            assert!(r.is_err());
        })
        .await;
}
