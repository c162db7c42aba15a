//! NATS is locked down as deployed (deploy/nats/nats-server.conf): TLS
//! first, nkey users only, and each role confined to what it needs. Against
//! the real nats-server: who is refused at the door (no credentials, no TLS,
//! an unknown CA or a certificate for another name), and what each role is
//! refused once inside. Permission violations arrive as asynchronous
//! `-ERR 'Permissions Violation ...'`; the tests assert on those (and on
//! the state of the streams), never on a timeout alone.

use crate::edge_nats::role_options;
use crate::support::{nats_endpoint, tls_socket};
use async_nats::jetstream;
use spoor_edge_nats::{Auth, Client, ConnectOptions, NatsError, PublishMsg};
use spoor_tests::nats::{NatsRole, NatsServer};
use spoor_tests::pki::Pki;
use spoor_tests::tools::workspace_root;
use std::time::Duration;
use tokio::sync::mpsc;

type Sleep = fn(u64) -> tokio::time::Sleep;

fn sleep(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

const T: u64 = 10_000;
const STREAM: &str = "SPOOR_EVENTS";

/// Creates the events stream as the admin would (`spoor-relay migrate`).
async fn events_stream(nats: &NatsServer) -> jetstream::Context {
    let js = jetstream::new(nats.connect(NatsRole::Admin).await.unwrap());
    let config = spoor_relay::source::nats::stream_config(STREAM).unwrap();
    js.create_stream(config).await.unwrap();
    js
}

/// The edge's own client, over TLS, as `role`.
async fn edge_client(
    nats: &NatsServer,
    opts: ConnectOptions,
) -> Result<Client<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Sleep>, NatsError> {
    let tls = tls_socket(nats, "localhost").await.unwrap();
    Client::connect(tls, sleep as Sleep, &opts).await
}

/// An async-nats client as `role` whose server errors (`-ERR ...`) come out
/// of the returned channel.
async fn watched(
    nats: &NatsServer,
    role: NatsRole,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = nats
        .connect_options(role)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    (client, rx)
}

/// The next server error mentioning `subject`, within 10 s.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) -> String {
    let wait = async {
        while let Some(e) = errors.recv().await {
            if e.contains(subject) {
                return e;
            }
        }
        panic!("the client closed without an error about {subject}");
    };
    let text = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no server error about {subject} within 10 s"));
    assert!(text.contains("Permissions Violation"), "{text}");
    text
}

#[tokio::test]
async fn a_client_without_credentials_is_refused() {
    let nats = NatsServer::start().unwrap();
    // async-nats with TLS and the right CA, but no nkey.
    let err = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_first()
        .add_root_certificates(nats.ca_pem_path().to_path_buf())
        .connect(nats.url())
        .await
        .expect_err("connected without credentials");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    // The relay's and the CLI's connect path says which flag is missing.
    let message = spoor_runtime::NatsEndpoint::new(nats.url())
        .with_ca(nats.ca_pem_path())
        .connect("t", Some(Duration::from_secs(5)))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("SPOOR_NATS_NKEY_FILE"), "{message}");
    // The edge's client with no auth, and with a token.
    for auth in [Auth::None, Auth::Token("guess".into())] {
        let opts = ConnectOptions {
            auth: auth.clone(),
            timeout_ms: T,
            ..Default::default()
        };
        match edge_client(&nats, opts).await {
            Err(NatsError::Server(text)) => {
                assert!(text.contains("Authorization Violation"), "{auth:?}: {text}")
            }
            Err(other) => panic!("{auth:?}: expected Authorization Violation, got {other}"),
            Ok(_) => panic!("{auth:?}: connected without an nkey"),
        }
    }
}

#[tokio::test]
async fn a_client_that_does_not_speak_tls_first_is_refused() {
    let nats = NatsServer::start().unwrap();
    // The edge's client on plain TCP: the server sends no INFO in plain text
    // and drops the connection once its TLS timeout passes.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", nats.port()))
        .await
        .unwrap();
    let opts = ConnectOptions {
        auth: Auth::NKey {
            seed: nats.seed(NatsRole::Edge),
        },
        timeout_ms: 8_000,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    match Client::connect(tcp, sleep as Sleep, &opts).await {
        Err(NatsError::Closed | NatsError::Io(_)) => {}
        Err(other) => panic!("expected the server to close the connection, got {other}"),
        Ok(_) => panic!("a plain-text client completed the handshake"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // async-nats without TLS, with a valid nkey.
    let plain = format!("nats://127.0.0.1:{}", nats.port());
    let err = async_nats::ConnectOptions::new()
        .nkey(nats.seed(NatsRole::Relay))
        .connection_timeout(Duration::from_secs(5))
        .connect(plain.as_str())
        .await
        .expect_err("connected without TLS");
    assert_ne!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "the server got as far as checking credentials in plain text: {err}"
    );
    // The relay's connect path, no CA given: the error points at --nats-ca.
    let message = spoor_runtime::NatsEndpoint::new(plain)
        .with_nkey_seed(nats.seed(NatsRole::Relay))
        .connect("t", Some(Duration::from_secs(5)))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("--nats-ca"), "{message}");
}

#[tokio::test]
async fn a_wrong_ca_or_a_certificate_for_another_name_fails_closed() {
    let nats = NatsServer::start().unwrap();
    let other = tempfile::tempdir().unwrap();
    let other_pki = Pki::generate(other.path(), &Pki::LOCAL_NAMES).unwrap();

    // Relay/CLI path: a CA that did not sign the server's certificate.
    let endpoint = nats_endpoint(&nats, NatsRole::Relay).with_ca(other_pki.ca_path());
    let err = endpoint
        .connect("t", Some(Duration::from_secs(5)))
        .await
        .expect_err("connected with the wrong CA");
    let text = err.to_string();
    assert!(
        text.contains("TLS failed") && text.contains("--nats-ca"),
        "{text}"
    );
    // The right CA still works.
    nats_endpoint(&nats, NatsRole::Relay)
        .connect("t", Some(Duration::from_secs(5)))
        .await
        .unwrap();

    // The edge path: a name that is not in the certificate.
    let err = tls_socket(&nats, "nats.elsewhere.example")
        .await
        .expect_err("TLS accepted a certificate for other names");
    assert!(err.to_string().contains("certificate"), "{err}");

    // A server whose certificate (from the right CA) names another host:
    // dialling it by 127.0.0.1 fails.
    let misnamed = NatsServer::start_with_cert_names(&["nats.elsewhere.example"]).unwrap();
    let err = nats_endpoint(&misnamed, NatsRole::Relay)
        .connect("t", Some(Duration::from_secs(5)))
        .await
        .expect_err("connected to a server whose certificate names another host");
    assert!(err.to_string().contains("TLS failed"), "{err}");
}

#[tokio::test]
async fn the_edge_role_can_only_publish_events_and_read_their_stream_info() {
    let nats = NatsServer::start().unwrap();
    let js = events_stream(&nats).await;

    // Allowed: an event frame, acked by JetStream on the edge's own inbox.
    let mut edge = edge_client(&nats, role_options(&nats, NatsRole::Edge))
        .await
        .unwrap();
    let acked = edge
        .publish_all(
            &[PublishMsg::new(
                "spoor.events.eu-west.7",
                "sec-1",
                b"frame".to_vec(),
            )],
            T,
        )
        .await;
    assert_eq!(acked[0].as_ref().unwrap().stream, STREAM);
    // Allowed: the events stream's info, which tells the edge's /healthz
    // how full the stream is.
    let info = edge
        .request(&format!("$JS.API.STREAM.INFO.{STREAM}"), b"", T)
        .await
        .unwrap();
    let fill = spoor_edge_nats::parse_stream_info(&info.payload).unwrap();
    assert_eq!(fill.messages, 1);

    // Refused: the rest of the JetStream API (deleting, purging or changing
    // the stream, other streams' info, consumers), debug queries, partition
    // leases and dead letters. The edge client treats `-ERR` as fatal, so
    // each attempt gets its own connection.
    let refused = [
        format!("$JS.API.STREAM.DELETE.{STREAM}"),
        format!("$JS.API.STREAM.PURGE.{STREAM}"),
        format!("$JS.API.STREAM.UPDATE.{STREAM}"),
        "$JS.API.STREAM.INFO.SPOOR_DEAD".to_string(),
        format!("$JS.API.STREAM.MSG.GET.{STREAM}"),
        format!("$JS.API.CONSUMER.INFO.{STREAM}.spoor-relay-p0"),
        format!("spoor.debug.{STREAM}.device"),
        format!("$KV.{STREAM}_LEASES.partition.0"),
        "spoor.dead.undecodable".to_string(),
    ];
    for subject in &refused {
        let mut edge = edge_client(&nats, role_options(&nats, NatsRole::Edge))
            .await
            .unwrap();
        let result = edge.request(subject, b"{}", T).await;
        match result {
            Err(NatsError::Server(text)) => assert!(
                text.contains("Permissions Violation for Publish")
                    && text.contains(subject.as_str()),
                "{subject}: {text}"
            ),
            other => panic!("{subject}: expected a permissions violation, got {other:?}"),
        }
    }
    // The stream is still there, with the one allowed frame.
    let mut stream = js.get_stream(STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // Reading events: a subscription on the events subjects is refused.
    let (client, mut errors) = watched(&nats, NatsRole::Edge).await;
    let _sub = client.subscribe("spoor.events.>").await.unwrap();
    client.flush().await.unwrap();
    let text = violation(&mut errors, "spoor.events.>").await;
    assert!(text.contains("Subscription"), "{text}");
}

#[tokio::test]
async fn the_relay_role_cannot_publish_events_or_delete_streams() {
    let nats = NatsServer::start().unwrap();
    let js = events_stream(&nats).await;
    let (client, mut errors) = watched(&nats, NatsRole::Relay).await;

    client
        .publish("spoor.events.eu-west.1", "forged".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let text = violation(&mut errors, "spoor.events.eu-west.1").await;
    assert!(text.contains("Publish"), "{text}");

    let subject = format!("$JS.API.STREAM.DELETE.{STREAM}");
    client.publish(subject.clone(), "".into()).await.unwrap();
    client.flush().await.unwrap();
    violation(&mut errors, &subject).await;
    let purge = format!("$JS.API.STREAM.PURGE.{STREAM}");
    client.publish(purge.clone(), "".into()).await.unwrap();
    client.flush().await.unwrap();
    violation(&mut errors, &purge).await;

    let mut stream = js.get_stream(STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);

    // What the relay does need still works: it reads its stream.
    let relay_js = jetstream::new(client);
    relay_js.get_stream(STREAM).await.unwrap();
}

#[tokio::test]
async fn the_ops_role_cannot_change_stream_definitions() {
    let nats = NatsServer::start().unwrap();
    let js = events_stream(&nats).await;
    let (client, mut errors) = watched(&nats, NatsRole::Ops).await;
    for subject in [
        format!("$JS.API.STREAM.DELETE.{STREAM}"),
        format!("$JS.API.STREAM.UPDATE.{STREAM}"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.spoor-relay-p0"),
        format!("$KV.{STREAM}_LEASES.partition.0"),
    ] {
        client.publish(subject.clone(), "{}".into()).await.unwrap();
        client.flush().await.unwrap();
        violation(&mut errors, &subject).await;
    }
    assert!(js.get_stream(STREAM).await.is_ok());
}

#[test]
fn the_deployed_config_names_every_role_and_tls_first() {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/nats/nats-server.conf")).unwrap();
    for role in NatsRole::ALL {
        assert!(
            text.contains(&format!("nkey: ${}", role.public_key_env())),
            "{role:?} missing"
        );
    }
    assert!(text.contains("handshake_first: true"));
}
