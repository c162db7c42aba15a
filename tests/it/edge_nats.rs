//! spoor-edge-nats against a real nats-server started from the repository's
//! config: handshake, JetStream PubAcks, dedup by `Nats-Msg-Id`, no
//! responders, the size limit, `-ERR` on bad credentials, timeouts, large
//! batches, durability across a crash, and nkey authentication with the
//! edge role's inbox prefix. The client runs over TLS on tokio's
//! `TcpStream` (TLS first, as the server requires), as it runs over workers'
//! secure `Socket` on the edge. Set-up calls (stream creation) use the admin
//! role; the edge role may only read the events stream's info.

use crate::support::tls_socket;
use serde_json::{json, Value};
use spoor_edge_nats::{
    check_api_response, parse_stream_info, stream_info_subject, Auth, Client, ConnectOptions,
    NatsError, PubAck, PublishMsg, Stage,
};
use spoor_tests::nats::{NatsRole, NatsServer};
use spoor_tests::tools::workspace_root;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Sleep = fn(u64) -> tokio::time::Sleep;
type NatsClient = Client<TlsStream<TcpStream>, Sleep>;

fn sleep(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

const T: u64 = 10_000;

async fn connect_with(server: &NatsServer, opts: ConnectOptions) -> Result<NatsClient, NatsError> {
    let tls = tls_socket(server, "localhost")
        .await
        .expect("TLS connect to nats-server");
    Client::connect(tls, sleep as Sleep, &opts).await
}

/// Options for `role`: its seed, its inbox prefix.
pub(crate) fn role_options(server: &NatsServer, role: NatsRole) -> ConnectOptions {
    ConnectOptions {
        name: format!("spoor-it-{role:?}"),
        auth: Auth::NKey {
            seed: server.seed(role),
        },
        inbox_prefix: role.inbox_prefix().into(),
        timeout_ms: T,
        ..Default::default()
    }
}

/// The admin role: set-up and checks go through the JetStream API.
async fn connect(server: &NatsServer) -> NatsClient {
    connect_with(server, role_options(server, NatsRole::Admin))
        .await
        .unwrap()
}

/// A JetStream API call; panics on an API error.
async fn js_api(client: &mut NatsClient, subject: &str, body: &Value) -> Value {
    let reply = client
        .request(subject, body.to_string().as_bytes(), T)
        .await
        .unwrap();
    check_api_response(&reply.payload).unwrap_or_else(|e| panic!("{subject}: {e}"))
}

/// Creates the production stream from `deploy/nats/events-stream.json`.
async fn create_events_stream(client: &mut NatsClient) -> String {
    let path = workspace_root().join("deploy/nats/events-stream.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let name = config["name"].as_str().unwrap().to_string();
    let created = js_api(client, &format!("$JS.API.STREAM.CREATE.{name}"), &config).await;
    assert_eq!(created["config"]["name"], name.as_str(), "{created}");
    name
}

async fn stream_messages(client: &mut NatsClient, stream: &str) -> u64 {
    let info = js_api(client, &format!("$JS.API.STREAM.INFO.{stream}"), &json!({})).await;
    info["state"]["messages"].as_u64().unwrap()
}

fn msg(subject: &str, id: &str, payload: &[u8]) -> PublishMsg {
    PublishMsg::new(subject, id, payload.to_vec())
}

fn ack(r: &Result<PubAck, NatsError>) -> &PubAck {
    r.as_ref()
        .unwrap_or_else(|e| panic!("expected a PubAck, got {e}"))
}

#[tokio::test]
async fn handshake_reads_info_and_answers_ping() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    let info = client.server_info().clone();
    assert_eq!(
        info.max_payload,
        2 * 1024 * 1024,
        "deploy config sets max_payload: 2MB"
    );
    assert!(info.headers && info.jetstream, "{info:?}");
    assert_eq!(info.server_name, format!("spoor-test-{}", server.port()));
    assert!(!info.server_id.is_empty());
    client.ping(T).await.unwrap();
    client.close(T).await.unwrap();
}

#[tokio::test]
async fn publish_is_acked_with_a_sequence_and_stored_with_its_headers() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    let stream = create_events_stream(&mut client).await;

    let mut m = msg("spoor.events.7", "batch-1:p7", b"frame bytes");
    m.headers.push(("Spoor-Batch".into(), "batch-1".into()));
    let results = client.publish_all(&[m], T).await;
    assert_eq!(
        ack(&results[0]),
        &PubAck {
            stream: stream.clone(),
            seq: 1,
            duplicate: false,
            domain: None
        }
    );

    let got = js_api(
        &mut client,
        &format!("$JS.API.STREAM.MSG.GET.{stream}"),
        &json!({"seq": 1}),
    )
    .await;
    let stored = &got["message"];
    assert_eq!(stored["subject"], "spoor.events.7");
    assert_eq!(base64(stored["data"].as_str().unwrap()), b"frame bytes");
    let hdrs = String::from_utf8(base64(stored["hdrs"].as_str().unwrap())).unwrap();
    assert!(hdrs.contains("Nats-Msg-Id: batch-1:p7\r\n"), "{hdrs:?}");
    assert!(hdrs.contains("Spoor-Batch: batch-1\r\n"), "{hdrs:?}");
}

#[tokio::test]
async fn same_msg_id_twice_is_acked_as_duplicate() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    let stream = create_events_stream(&mut client).await;

    let first = client
        .publish_all(&[msg("spoor.events.1", "dup-id", b"a")], T)
        .await;
    assert_eq!(ack(&first[0]).seq, 1);
    assert!(!ack(&first[0]).duplicate);

    // A retry on a new connection, as the edge would do it.
    let mut retry_client = connect(&server).await;
    let again = retry_client
        .publish_all(&[msg("spoor.events.1", "dup-id", b"a")], T)
        .await;
    assert_eq!(
        ack(&again[0]).seq,
        1,
        "a duplicate reports the original's seq"
    );
    assert!(ack(&again[0]).duplicate);

    // Within one batch too.
    let batch = [
        msg("spoor.events.1", "x", b"1"),
        msg("spoor.events.1", "x", b"1"),
    ];
    let both = client.publish_all(&batch, T).await;
    assert_eq!(ack(&both[0]).seq, 2);
    assert!(!ack(&both[0]).duplicate);
    assert_eq!(ack(&both[1]).seq, 2);
    assert!(ack(&both[1]).duplicate);
    assert_eq!(stream_messages(&mut client, &stream).await, 2);
}

#[tokio::test]
async fn subject_without_a_stream_is_no_responders_and_the_connection_survives() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    create_events_stream(&mut client).await;

    let batch = [
        msg("spoor.events.0", "ok-1", b"x"),
        msg("not.a.stream", "lost-1", b"y"),
    ];
    let results = client.publish_all(&batch, T).await;
    assert_eq!(ack(&results[0]).seq, 1);
    match &results[1] {
        Err(NatsError::NoResponders { subject }) => assert_eq!(subject, "not.a.stream"),
        other => panic!("expected NoResponders, got {other:?}"),
    }
    assert!(!client.is_closed());
    client.ping(T).await.unwrap();
    let later = client
        .publish_all(&[msg("spoor.events.0", "ok-2", b"z")], T)
        .await;
    assert_eq!(ack(&later[0]).seq, 2);
}

#[tokio::test]
async fn payload_over_max_payload_is_refused_without_sending() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    let stream = create_events_stream(&mut client).await;
    let max = client.max_payload();

    let too_big = vec![0u8; max];
    let results = client
        .publish_all(&[msg("spoor.events.2", "big", &too_big)], T)
        .await;
    match &results[0] {
        // The header block counts too, as it does on the server.
        Err(NatsError::PayloadTooLarge { size, max: m }) => {
            assert_eq!(*m, max);
            assert!(*size > max);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    // Nothing reached the server, and the connection is intact (the server
    // would have closed it had the oversized HPUB been sent).
    assert!(!client.is_closed());
    assert_eq!(stream_messages(&mut client, &stream).await, 0);

    // Just under the limit goes through.
    let fits = vec![7u8; max - 64];
    let results = client
        .publish_all(&[msg("spoor.events.2", "fits", &fits)], T)
        .await;
    assert_eq!(ack(&results[0]).seq, 1);
}

#[tokio::test]
async fn bad_credentials_fail_the_handshake_with_the_server_error() {
    // Token auth (still TLS first): the client's handling of a refused CONNECT.
    let server = NatsServer::start_with_token("right-token").unwrap();
    let with = |auth| ConnectOptions {
        auth,
        timeout_ms: T,
        ..Default::default()
    };

    for auth in [Auth::Token("wrong-token".into()), Auth::None] {
        match connect_with(&server, with(auth.clone())).await {
            Err(NatsError::Server(text)) => {
                assert!(text.contains("Authorization Violation"), "{auth:?}: {text}")
            }
            Err(other) => panic!("{auth:?}: expected a Server error, got {other:?}"),
            Ok(_) => panic!("{auth:?}: connected with bad credentials"),
        }
    }
    let mut ok = connect_with(&server, with(Auth::Token("right-token".into())))
        .await
        .unwrap();
    assert!(ok.server_info().auth_required);
    ok.ping(T).await.unwrap();
}

#[tokio::test]
async fn a_server_that_never_greets_times_out() {
    // Accepts the TCP connection and then says nothing, like a black-holed peer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let opts = ConnectOptions {
        timeout_ms: 300,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let result = Client::connect(tcp, sleep as Sleep, &opts).await;
    assert!(
        matches!(result, Err(NatsError::Timeout { stage: Stage::Info })),
        "{:?}",
        result.err()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    holder.abort();
}

#[tokio::test]
async fn a_large_batch_is_acked_in_order_with_distinct_sequences() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    let stream = create_events_stream(&mut client).await;

    let batch: Vec<PublishMsg> = (0..500)
        .map(|i| {
            msg(
                &format!("spoor.events.{}", i % 16),
                &format!("bulk-{i}"),
                format!("payload {i}").as_bytes(),
            )
        })
        .collect();
    let results = client.publish_all(&batch, 30_000).await;
    assert_eq!(results.len(), 500);
    let seqs: Vec<u64> = results.iter().map(|r| ack(r).seq).collect();
    // One connection's messages are stored in the order they were sent.
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    assert!(results
        .iter()
        .all(|r| !ack(r).duplicate && ack(r).stream == stream));
    assert_eq!(stream_messages(&mut client, &stream).await, 500);
}

#[tokio::test]
async fn jetstream_rejections_come_back_as_jetstream_errors() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    create_events_stream(&mut client).await;
    let mut m = msg("spoor.events.3", "expect-other", b"x");
    m.headers
        .push(("Nats-Expected-Stream".into(), "SOME_OTHER_STREAM".into()));
    let results = client
        .publish_all(&[m, msg("spoor.events.3", "fine", b"y")], T)
        .await;
    match &results[0] {
        Err(NatsError::JetStream {
            code,
            err_code,
            description,
        }) => {
            assert_eq!(*code, 400, "{description}");
            assert!(*err_code > 0, "{description}");
        }
        other => panic!("expected a JetStream error, got {other:?}"),
    }
    assert_eq!(ack(&results[1]).seq, 1);
}

/// The deployed events stream shrunk to a few KB: with `discard: new` a
/// publish that does not fit is refused as `StreamFull` (nats-server's
/// 10077 "maximum bytes exceeded"), not stored, and the stream info the
/// edge reads for its health says how full it is.
#[tokio::test]
async fn a_full_stream_refuses_with_stream_full_and_keeps_what_it_stored() {
    let server = NatsServer::start().unwrap();
    let mut client = connect(&server).await;
    let path = workspace_root().join("deploy/nats/events-stream.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        config["discard"], "new",
        "the deployed stream discards nothing it stored"
    );
    config["max_bytes"] = json!(4096);
    let name = config["name"].as_str().unwrap().to_string();
    js_api(
        &mut client,
        &format!("$JS.API.STREAM.CREATE.{name}"),
        &config,
    )
    .await;
    let payload = vec![7u8; 1000];
    let batch: Vec<PublishMsg> = (0..8)
        .map(|i| msg("spoor.events.1", &format!("full-{i}"), &payload))
        .collect();
    let results = client.publish_all(&batch, T).await;
    let stored = results.iter().take_while(|r| r.is_ok()).count();
    assert!((1..8).contains(&stored), "{results:?}");
    for r in &results[stored..] {
        match r {
            Err(NatsError::StreamFull {
                err_code,
                description,
            }) => assert_eq!(
                (*err_code, description.as_str()),
                (10077, "maximum bytes exceeded")
            ),
            other => panic!("expected StreamFull, got {other:?}"),
        }
    }
    assert_eq!(stream_messages(&mut client, &name).await, stored as u64);
    let reply = client
        .request(&stream_info_subject(&name), b"", T)
        .await
        .unwrap();
    let fill = parse_stream_info(&reply.payload).unwrap();
    assert_eq!((fill.messages, fill.max_bytes), (stored as u64, 4096));
    assert!(fill.bytes > 3000 && fill.bytes <= 4096, "{fill:?}");
}

#[tokio::test]
async fn acked_messages_survive_a_crash_and_restart_on_the_same_port() {
    let server = NatsServer::start().unwrap();
    let port = server.port();
    let mut client = connect(&server).await;
    let stream = create_events_stream(&mut client).await;
    let batch: Vec<PublishMsg> = (0..20)
        .map(|i| msg("spoor.events.5", &format!("crash-{i}"), b"durable"))
        .collect();
    assert!(client
        .publish_all(&batch, T)
        .await
        .iter()
        .all(|r| r.is_ok()));

    server.kill();
    assert!(!server.is_running());
    // The old connection notices, and is closed for good.
    let after = client
        .publish_all(&[msg("spoor.events.5", "lost", b"x")], T)
        .await;
    assert!(
        matches!(after[0], Err(NatsError::Closed | NatsError::Io(_))),
        "{after:?}"
    );
    assert!(client.is_closed());
    assert!(
        TcpStream::connect(server.host_port()).await.is_err(),
        "server is down"
    );

    server.restart().unwrap();
    assert_eq!(server.port(), port);
    let mut client = connect(&server).await;
    assert_eq!(
        stream_messages(&mut client, &stream).await,
        20,
        "{}",
        server.log_tail(20)
    );
    // Ids from before the crash are still deduplicated.
    let retry = client.publish_all(&batch[..1], T).await;
    assert!(ack(&retry[0]).duplicate);
    let next = client
        .publish_all(&[msg("spoor.events.5", "crash-new", b"x")], T)
        .await;
    assert_eq!(ack(&next[0]).seq, 21);

    // A clean stop and restart works too.
    server.stop();
    server.restart().unwrap();
    let mut client = connect(&server).await;
    assert_eq!(stream_messages(&mut client, &stream).await, 21);
}

/// Standard base64 with padding, as JetStream's message-get API uses.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test]
async fn the_edge_role_publishes_with_its_nkey_and_inbox_prefix() {
    let server = NatsServer::start().unwrap();
    let mut admin = connect(&server).await;
    let stream = create_events_stream(&mut admin).await;

    let mut edge = connect_with(&server, role_options(&server, NatsRole::Edge))
        .await
        .unwrap();
    assert!(edge.server_info().auth_required);
    assert!(edge.server_info().nonce.is_some());
    let results = edge
        .publish_all(&[msg("spoor.events.eu-west.3", "edge-1", b"frame")], T)
        .await;
    assert_eq!(ack(&results[0]).stream, stream);
    assert_eq!(stream_messages(&mut admin, &stream).await, 1);

    // With the default `_INBOX` prefix the edge may not subscribe to its
    // PubAck inbox: the server says so instead of acking.
    let mut wrong_inbox = connect_with(
        &server,
        ConnectOptions {
            inbox_prefix: "_INBOX".into(),
            ..role_options(&server, NatsRole::Edge)
        },
    )
    .await
    .unwrap();
    let results = wrong_inbox
        .publish_all(&[msg("spoor.events.eu-west.3", "edge-2", b"frame")], T)
        .await;
    match &results[0] {
        Err(NatsError::Server(text)) => {
            assert!(
                text.contains("Permissions Violation for Subscription"),
                "{text}"
            )
        }
        other => panic!("expected a permissions violation, got {other:?}"),
    }

    // A key the server does not know is refused at the handshake.
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    match connect_with(
        &server,
        ConnectOptions {
            auth: Auth::NKey { seed: stranger },
            ..role_options(&server, NatsRole::Edge)
        },
    )
    .await
    {
        Err(NatsError::Server(text)) => assert!(text.contains("Authorization Violation"), "{text}"),
        Err(other) => panic!("expected Authorization Violation, got {other:?}"),
        Ok(_) => panic!("an unknown nkey was accepted"),
    }
}

#[test]
fn a_server_that_cannot_start_fails_with_its_log() {
    let err = match NatsServer::start_with_args(&["--no-such-flag"]) {
        Ok(_) => panic!("nats-server started with a bogus flag"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("did not start") && err.contains("exited during start-up"),
        "{err}"
    );
    // nats-server answers an unknown flag with its usage text; the tail quotes it.
    assert!(
        err.contains("last lines of") && err.contains("--trace"),
        "{err}"
    );
}
