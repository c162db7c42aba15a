//! The client against a scripted peer over an in-memory pipe: exact bytes on
//! the wire, server PINGs mid-batch, replies out of order, one-byte reads,
//! and every way a handshake or a batch can fail. The real-server tests are
//! in `tests/it/edge_nats.rs`.

use super::*;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, ReadBuf};

fn timer() -> impl Timer {
    |ms| tokio::time::sleep(Duration::from_millis(ms))
}

/// Hands the client at most one byte per read, so every frame arrives split
/// at every boundary.
struct OneByte(DuplexStream);

impl AsyncRead for OneByte {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one);
        match Pin::new(&mut self.0).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(small.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for OneByte {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The server side of the pipe.
struct Peer(BufReader<DuplexStream>);

struct Hpub {
    subject: String,
    reply: String,
    headers: Headers,
    payload: Vec<u8>,
}

impl Peer {
    async fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).await.unwrap();
        assert!(line.ends_with("\r\n"), "client line without CRLF: {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    async fn info(&mut self, max_payload: usize) {
        let info = format!(
            r#"INFO {{"server_id":"NTEST","version":"2.15.1","proto":1,"headers":true,"max_payload":{max_payload},"client_id":9}}"#
        );
        self.send(format!("{info}\r\n").as_bytes()).await;
    }

    /// INFO, then checks CONNECT and PING and answers PONG.
    async fn handshake(&mut self, max_payload: usize) -> serde_json::Value {
        self.info(max_payload).await;
        let connect = self.line().await;
        let json = connect.strip_prefix("CONNECT ").expect("CONNECT first");
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(self.line().await, "PING");
        self.send(b"PONG\r\n").await;
        json
    }

    async fn hpub(&mut self) -> Hpub {
        let line = self.line().await;
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 5, "{line}");
        assert_eq!(parts[0], "HPUB");
        let hdr: usize = parts[3].parse().unwrap();
        let total: usize = parts[4].parse().unwrap();
        let mut body = vec![0; total + 2];
        self.0.read_exact(&mut body).await.unwrap();
        assert_eq!(&body[total..], b"\r\n");
        Hpub {
            subject: parts[1].into(),
            reply: parts[2].into(),
            headers: parse_headers(&body[..hdr]).unwrap(),
            payload: body[hdr..total].to_vec(),
        }
    }

    async fn reply(&mut self, to: &str, sid: u64, json: &str) {
        self.send(format!("MSG {to} {sid} {}\r\n{json}\r\n", json.len()).as_bytes())
            .await;
    }
}

use crate::headers::parse_headers;
use crate::Headers;

fn pipe() -> (DuplexStream, Peer) {
    let (a, b) = tokio::io::duplex(1 << 20);
    (a, Peer(BufReader::new(b)))
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        inbox_token: Some("tok".into()),
        timeout_ms: 2_000,
        ..Default::default()
    }
}

#[tokio::test]
async fn publishes_with_split_reads_server_ping_and_out_of_order_replies() {
    let (io, mut peer) = pipe();
    let client = async {
        let o = ConnectOptions {
            auth: Auth::Token("s3cret".into()),
            ..opts()
        };
        let mut c = Client::connect(OneByte(io), timer(), &o).await.unwrap();
        assert_eq!(c.server_info().server_id, "NTEST");
        assert_eq!(c.max_payload(), 4096);
        let mut m0 = PublishMsg::new("spoor.events.0", "id-0", b"zero".to_vec());
        m0.headers.push(("Spoor-Batch".into(), "b1".into()));
        let msgs = [
            m0,
            PublishMsg::new("nostream.x", "id-1", b"one".to_vec()),
            PublishMsg::new("spoor.events.1", "id-2", b"two".to_vec()),
        ];
        let r = c.publish_all(&msgs, 2_000).await;
        assert!(!c.is_closed());
        c.ping(1_000).await.unwrap();
        r
    };
    let server = async {
        let connect = peer.handshake(4096).await;
        assert_eq!(connect["auth_token"], "s3cret");
        assert_eq!(connect["headers"], true);
        assert_eq!(connect["no_responders"], true);
        assert_eq!(connect["verbose"], false);
        assert_eq!(connect["pedantic"], false);
        assert_eq!(connect["lang"], "rust");
        assert_eq!(peer.line().await, "SUB _INBOX.tok.1.* 1");
        assert_eq!(peer.line().await, "UNSUB 1 3");
        let mut replies = Vec::new();
        for (i, subject) in ["spoor.events.0", "nostream.x", "spoor.events.1"]
            .into_iter()
            .enumerate()
        {
            let h = peer.hpub().await;
            assert_eq!(h.subject, subject);
            assert_eq!(h.reply, format!("_INBOX.tok.1.{i}"));
            assert_eq!(
                h.headers.get("Nats-Msg-Id"),
                Some(format!("id-{i}").as_str())
            );
            replies.push(h);
        }
        assert_eq!(replies[0].headers.get("Spoor-Batch"), Some("b1"));
        assert_eq!(replies[2].payload, b"two");
        // A server PING mid-batch must be answered before the acks come.
        peer.send(b"PING\r\n").await;
        assert_eq!(peer.line().await, "PONG");
        peer.send(b"+OK\r\n").await;
        // Strays: another sid, an unknown index.
        peer.reply("_INBOX.other.1", 77, r#"{"stream":"X","seq":99}"#)
            .await;
        peer.reply("_INBOX.tok.1.9", 1, r#"{"stream":"X","seq":98}"#)
            .await;
        peer.reply(
            "_INBOX.tok.1.2",
            1,
            r#"{"stream":"S","seq":8,"duplicate":true}"#,
        )
        .await;
        peer.send(b"HMSG _INBOX.tok.1.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
            .await;
        peer.reply(
            "_INBOX.tok.1.0",
            1,
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        )
        .await;
        assert_eq!(peer.line().await, "PING");
        peer.send(b"PONG\r\n").await;
    };
    let (r, ()) = tokio::join!(client, server);
    assert!(
        matches!(
            &r[0],
            Err(NatsError::StreamFull {
                err_code: 10077,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(
        matches!(&r[1], Err(NatsError::NoResponders { subject }) if subject == "nostream.x"),
        "{r:?}"
    );
    assert_eq!(
        r[2].as_ref().unwrap(),
        &PubAck {
            stream: "S".into(),
            seq: 8,
            duplicate: true,
            domain: None
        }
    );
}

#[tokio::test]
async fn oversize_messages_fail_alone_and_are_not_sent() {
    let (io, mut peer) = pipe();
    let client = async {
        let mut c = Client::connect(io, timer(), &opts()).await.unwrap();
        let big = vec![b'x'; 200];
        let msgs = [
            PublishMsg::new("a", "0", b"s".to_vec()),
            PublishMsg::new("a", "1", big.clone()),
            PublishMsg::new("a b", "2", b"s".to_vec()),
            PublishMsg::new("a", "3", b"s".to_vec()),
        ];
        let r = c.publish_all(&msgs, 1_000).await;
        // A batch with nothing sendable writes nothing at all.
        let none = c
            .publish_all(&[PublishMsg::new("a", "4", big)], 1_000)
            .await;
        c.ping(1_000).await.unwrap();
        let req = c.request("a", &[0; 101], 1_000).await;
        (r, none, req)
    };
    let server = async {
        peer.handshake(100).await;
        assert_eq!(peer.line().await, "SUB _INBOX.tok.1.* 1");
        assert_eq!(peer.line().await, "UNSUB 1 2");
        assert_eq!(peer.hpub().await.reply, "_INBOX.tok.1.0");
        assert_eq!(peer.hpub().await.reply, "_INBOX.tok.1.3");
        peer.reply("_INBOX.tok.1.3", 1, r#"{"stream":"S","seq":2}"#)
            .await;
        peer.reply("_INBOX.tok.1.0", 1, r#"{"stream":"S","seq":1}"#)
            .await;
        assert_eq!(peer.line().await, "PING");
        peer.send(b"PONG\r\n").await;
    };
    let ((r, none, req), ()) = tokio::join!(client, server);
    assert_eq!(r[0].as_ref().unwrap().seq, 1);
    assert!(
        matches!(r[1], Err(NatsError::PayloadTooLarge { max: 100, size }) if size > 200),
        "{r:?}"
    );
    assert!(matches!(r[2], Err(NatsError::InvalidInput(_))), "{r:?}");
    assert_eq!(r[3].as_ref().unwrap().seq, 2);
    assert!(matches!(none[..], [Err(NatsError::PayloadTooLarge { .. })]));
    assert!(matches!(
        req,
        Err(NatsError::PayloadTooLarge {
            size: 101,
            max: 100
        })
    ));
}

#[tokio::test]
async fn a_timeout_keeps_acks_already_received_and_closes_the_client() {
    let (io, mut peer) = pipe();
    let client = async {
        let mut c = Client::connect(io, timer(), &opts()).await.unwrap();
        let msgs = [
            PublishMsg::new("a", "0", b"0".to_vec()),
            PublishMsg::new("a", "1", b"1".to_vec()),
        ];
        let r = c.publish_all(&msgs, 300).await;
        assert!(c.is_closed());
        let again = c.publish_all(&msgs[..1], 300).await;
        let ping = c.ping(300).await;
        (r, again, ping)
    };
    let server = async {
        peer.handshake(1024).await;
        peer.line().await;
        peer.line().await;
        peer.hpub().await;
        peer.hpub().await;
        peer.reply("_INBOX.tok.1.0", 1, r#"{"stream":"S","seq":1}"#)
            .await;
        // Half a reply for message 1, then silence.
        peer.send(b"MSG _INBOX.tok.1.1 1 30\r\n{\"stream\"").await;
        peer
    };
    let ((r, again, ping), _peer) = tokio::join!(client, server);
    assert_eq!(r[0].as_ref().unwrap().seq, 1);
    assert!(
        matches!(
            r[1],
            Err(NatsError::Timeout {
                stage: Stage::PubAck
            })
        ),
        "{r:?}"
    );
    assert!(matches!(again[..], [Err(NatsError::Closed)]));
    assert!(matches!(ping, Err(NatsError::Closed)));
}

#[tokio::test]
async fn request_returns_the_reply_or_no_responders() {
    let (io, mut peer) = pipe();
    let client = async {
        let mut c = Client::connect(io, timer(), &opts()).await.unwrap();
        let ok = c.request("$JS.API.INFO", b"", 1_000).await.unwrap();
        let none = c.request("nobody.home", b"hi", 1_000).await;
        (ok, none, c.is_closed())
    };
    let server = async {
        peer.handshake(1024).await;
        assert_eq!(peer.line().await, "SUB _INBOX.tok.1 1");
        assert_eq!(peer.line().await, "UNSUB 1 1");
        assert_eq!(peer.line().await, "PUB $JS.API.INFO _INBOX.tok.1 0");
        assert_eq!(peer.line().await, "");
        peer.reply(
            "_INBOX.tok.1",
            1,
            r#"{"type":"io.nats.jetstream.api.v1.account_info_response"}"#,
        )
        .await;
        assert_eq!(peer.line().await, "SUB _INBOX.tok.2 2");
        assert_eq!(peer.line().await, "UNSUB 2 1");
        assert_eq!(peer.line().await, "PUB nobody.home _INBOX.tok.2 2");
        assert_eq!(peer.line().await, "hi");
        peer.send(b"HMSG _INBOX.tok.2 2 30 30\r\nNATS/1.0 503 No Responders\r\n\r\n\r\n")
            .await;
    };
    let ((ok, none, closed), ()) = tokio::join!(client, server);
    assert!(check_api_response(&ok.payload).is_ok());
    assert!(matches!(none, Err(NatsError::NoResponders { subject }) if subject == "nobody.home"));
    assert!(!closed, "no responders is not a connection failure");
}

use crate::check_api_response;

/// Runs a connect against a peer script and returns the connect result.
async fn connect_against<F, Fut>(timeout_ms: u64, script: F) -> Result<(), NatsError>
where
    F: FnOnce(Peer) -> Fut,
    Fut: Future<Output = Peer>,
{
    let (io, peer) = pipe();
    let o = ConnectOptions {
        timeout_ms,
        ..opts()
    };
    let (r, _peer) = tokio::join!(Client::connect(io, timer(), &o), script(peer));
    r.map(|_| ())
}

#[tokio::test]
async fn handshake_failures_are_typed() {
    let silent = connect_against(200, |p| async { p }).await;
    assert!(
        matches!(silent, Err(NatsError::Timeout { stage: Stage::Info })),
        "{silent:?}"
    );

    let no_pong = connect_against(200, |mut p| async {
        p.info(1024).await;
        p
    })
    .await;
    assert!(
        matches!(
            no_pong,
            Err(NatsError::Timeout {
                stage: Stage::Handshake
            })
        ),
        "{no_pong:?}"
    );

    let auth = connect_against(1_000, |mut p| async {
        p.info(1024).await;
        p.line().await;
        p.line().await;
        p.send(b"-ERR 'Authorization Violation'\r\n").await;
        p
    })
    .await;
    assert!(
        matches!(&auth, Err(NatsError::Server(m)) if m == "Authorization Violation"),
        "{auth:?}"
    );

    let err_first = connect_against(1_000, |mut p| async {
        p.send(b"-ERR 'Maximum Connections Exceeded'\r\n").await;
        p
    })
    .await;
    assert!(
        matches!(err_first, Err(NatsError::Server(_))),
        "{err_first:?}"
    );

    let eof = connect_against(1_000, |mut p| async {
        p.send(b"INFO {\"headers\":true}\r\n").await;
        p.0.get_mut().shutdown().await.unwrap();
        p
    })
    .await;
    assert!(matches!(eof, Err(NatsError::Closed)), "{eof:?}");

    for garbage in [
        &b"HTTP/1.1 400 Bad Request\r\n"[..],
        b"PONG\r\n",
        b"INFO {not json}\r\n",
    ] {
        let r = connect_against(1_000, |mut p| async move {
            p.send(garbage).await;
            p
        })
        .await;
        assert!(matches!(r, Err(NatsError::Protocol(_))), "{r:?}");
    }

    let no_headers = connect_against(1_000, |mut p| async {
        p.send(b"INFO {\"headers\":false}\r\n").await;
        p
    })
    .await;
    assert!(
        matches!(no_headers, Err(NatsError::Protocol(_))),
        "{no_headers:?}"
    );

    let (io, _peer) = pipe();
    let bad_token = ConnectOptions {
        inbox_token: Some("a.b".into()),
        ..opts()
    };
    let r = Client::connect(io, timer(), &bad_token).await;
    assert!(matches!(r, Err(NatsError::InvalidInput(_))));
}

#[tokio::test]
async fn default_inbox_token_is_the_client_id() {
    let (io, mut peer) = pipe();
    let o = ConnectOptions {
        inbox_token: None,
        ..opts()
    };
    let client = async {
        let mut c = Client::connect(io, timer(), &o).await.unwrap();
        c.publish_all(&[PublishMsg::new("a", "0", b"0".to_vec())], 1_000)
            .await
    };
    let server = async {
        peer.handshake(1024).await;
        assert_eq!(peer.line().await, "SUB _INBOX.c9.1.* 1");
        peer.line().await;
        peer.hpub().await;
        peer.reply("_INBOX.c9.1.0", 1, r#"{"stream":"S","seq":1}"#)
            .await;
    };
    let (r, ()) = tokio::join!(client, server);
    assert_eq!(r[0].as_ref().unwrap().seq, 1);
}

/// A user seed made once per test run (the crate itself never makes keys).
fn user_seed() -> (String, String) {
    let pair = nkeys::KeyPair::new_user();
    (pair.seed().unwrap(), pair.public_key())
}

#[tokio::test]
async fn nkey_auth_signs_the_nonce_and_sends_no_secret() {
    use base64::Engine as _;
    let (seed, public) = user_seed();
    let (io, mut peer) = pipe();
    let o = ConnectOptions {
        auth: Auth::NKey { seed: seed.clone() },
        inbox_prefix: "_INBOX_EDGE".into(),
        ..opts()
    };
    let client = async {
        let mut c = Client::connect(io, timer(), &o).await.unwrap();
        c.publish_all(
            &[PublishMsg::new("spoor.events.r.1", "m", b"x".to_vec())],
            1_000,
        )
        .await
    };
    let nonce = "kR3pxUh1Jq0yVrqS6DdHyQ";
    let server = async {
        peer.send(
            format!(
                "INFO {{\"server_id\":\"N\",\"headers\":true,\"max_payload\":1024,\"auth_required\":true,\"nonce\":\"{nonce}\"}}\r\n"
            )
            .as_bytes(),
        )
        .await;
        let line = peer.line().await;
        assert!(!line.contains(&seed), "the seed went on the wire: {line}");
        let connect: serde_json::Value =
            serde_json::from_str(line.strip_prefix("CONNECT ").unwrap()).unwrap();
        assert_eq!(peer.line().await, "PING");
        peer.send(b"PONG\r\n").await;
        assert_eq!(peer.line().await, "SUB _INBOX_EDGE.tok.1.* 1");
        peer.line().await;
        let h = peer.hpub().await;
        assert_eq!(h.reply, "_INBOX_EDGE.tok.1.0");
        peer.reply("_INBOX_EDGE.tok.1.0", 1, r#"{"stream":"S","seq":1}"#)
            .await;
        connect
    };
    let (r, connect) = tokio::join!(client, server);
    assert_eq!(r[0].as_ref().unwrap().seq, 1);
    assert_eq!(connect["nkey"], public.as_str());
    assert!(connect.get("auth_token").is_none() && connect.get("pass").is_none());
    // The signature is base64url without padding and verifies against the
    // public key alone, over exactly the nonce's bytes.
    let sig_text = connect["sig"].as_str().unwrap();
    assert!(!sig_text.contains(['=', '+', '/']), "{sig_text}");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig_text)
        .unwrap();
    let verifier = nkeys::KeyPair::from_public_key(&public).unwrap();
    verifier.verify(nonce.as_bytes(), &sig).unwrap();
    assert!(verifier.verify(b"another nonce", &sig).is_err());
}

#[tokio::test]
async fn nkey_auth_without_a_nonce_or_with_a_bad_seed_fails_before_connect() {
    let (seed, _) = user_seed();
    // The server sends no nonce: it has no nkey users, so refuse clearly
    // instead of sending an unsigned CONNECT.
    let (io, mut peer) = pipe();
    let o = ConnectOptions {
        auth: Auth::NKey { seed },
        ..opts()
    };
    let client = Client::connect(io, timer(), &o);
    let server = async {
        peer.info(1024).await;
        peer
    };
    let (r, peer) = tokio::join!(client, server);
    match r {
        Err(NatsError::Auth(text)) => assert!(text.contains("nonce"), "{text}"),
        other => panic!("expected an Auth error, got {:?}", other.err()),
    }
    drop(peer);

    // A seed that is not one: the error names the problem, not the seed.
    for bad in [
        "",
        "SUnot-a-seed",
        "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4",
    ] {
        let (io, mut peer) = pipe();
        let o = ConnectOptions {
            auth: Auth::NKey { seed: bad.into() },
            ..opts()
        };
        let client = Client::connect(io, timer(), &o);
        let server = async {
            peer.send(b"INFO {\"headers\":true,\"nonce\":\"abc\"}\r\n")
                .await;
            peer
        };
        let (r, _peer) = tokio::join!(client, server);
        match r {
            Err(NatsError::Auth(text)) => {
                assert!(text.contains("seed"), "{text}");
                assert!(bad.is_empty() || !text.contains(bad), "{text}");
            }
            other => panic!("{bad:?}: expected an Auth error, got {:?}", other.err()),
        }
    }
}

#[test]
fn sign_nonce_is_verifiable_and_debug_hides_secrets() {
    use base64::Engine as _;
    let (seed, public) = user_seed();
    let (key, sig) = sign_nonce(&format!("  {seed}\n"), Some("n0nce")).unwrap();
    assert_eq!(key, public);
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    nkeys::KeyPair::from_public_key(&public)
        .unwrap()
        .verify(b"n0nce", &sig)
        .unwrap();
    assert!(matches!(
        sign_nonce(&seed, Some("")),
        Err(NatsError::Auth(_))
    ));
    let shown = format!(
        "{:?} {:?} {:?}",
        Auth::NKey { seed: seed.clone() },
        Auth::Token("tok3n".into()),
        Auth::UserPass {
            user: "u".into(),
            pass: "pa55".into()
        }
    );
    assert!(
        !shown.contains(&seed) && !shown.contains("tok3n") && !shown.contains("pa55"),
        "{shown}"
    );
}

#[tokio::test]
async fn an_inbox_prefix_that_is_not_a_subject_is_refused() {
    for prefix in ["", "a b", "_INBOX.>", "a..b"] {
        let (io, _peer) = pipe();
        let o = ConnectOptions {
            inbox_prefix: prefix.into(),
            ..opts()
        };
        let r = Client::connect(io, timer(), &o).await;
        assert!(matches!(r, Err(NatsError::InvalidInput(_))), "{prefix:?}");
    }
}
