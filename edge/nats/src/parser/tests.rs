//! Table-driven tests of `parse_op`: every operation, every split point,
//! garbage, oversize, and a never-panics property over arbitrary bytes.

use super::*;
use proptest::prelude::*;

fn msg(
    subject: &str,
    sid: u64,
    reply: Option<&str>,
    headers: Option<Headers>,
    payload: &[u8],
) -> ServerOp {
    ServerOp::Msg(Message {
        subject: subject.into(),
        sid,
        reply: reply.map(Into::into),
        headers,
        payload: payload.to_vec(),
    })
}

fn status(code: u16, desc: &str) -> Headers {
    Headers {
        status: Some(code),
        description: desc.into(),
        entries: vec![],
    }
}

const INFO: &[u8] = br#"INFO {"server_id":"NABC","server_name":"n1","version":"2.15.1","proto":1,"headers":true,"max_payload":2097152,"jetstream":true,"client_id":7,"connect_urls":["a:1"]}"#;

/// Valid operations and what they parse to.
fn valid_cases() -> Vec<(Vec<u8>, ServerOp)> {
    let info = ServerInfo {
        server_id: "NABC".into(),
        server_name: "n1".into(),
        version: "2.15.1".into(),
        proto: 1,
        max_payload: 2_097_152,
        headers: true,
        jetstream: true,
        auth_required: false,
        client_id: Some(7),
        nonce: None,
    };
    let mut info_line = INFO.to_vec();
    info_line.extend_from_slice(b" \r\n");
    let ack = br#"{"stream":"S","seq":1}"#;
    let ack_msg = format!(
        "MSG _INBOX.t.0.0 1 {}\r\n{}\r\n",
        ack.len(),
        String::from_utf8_lossy(ack)
    );
    vec![
        (info_line, ServerOp::Info(Box::new(info))),
        (b"INFO {}\r\n".to_vec(), ServerOp::Info(Box::default())),
        (b"PING\r\n".to_vec(), ServerOp::Ping),
        (b"ping\r\n".to_vec(), ServerOp::Ping),
        (b"PONG\r\n".to_vec(), ServerOp::Pong),
        (b"PING\n".to_vec(), ServerOp::Ping),
        (b"+OK\r\n".to_vec(), ServerOp::Ok),
        (
            b"-ERR 'Authorization Violation'\r\n".to_vec(),
            ServerOp::Err("Authorization Violation".into()),
        ),
        (
            b"-ERR  Unquoted text \r\n".to_vec(),
            ServerOp::Err("Unquoted text".into()),
        ),
        (
            b"MSG foo 1 5\r\nhello\r\n".to_vec(),
            msg("foo", 1, None, None, b"hello"),
        ),
        (
            b"MSG foo 1 0\r\n\r\n".to_vec(),
            msg("foo", 1, None, None, b""),
        ),
        (
            b"msg foo\t 22   bar 3\r\na\r\n\r\n".to_vec(),
            msg("foo", 22, Some("bar"), None, b"a\r\n"),
        ),
        (
            ack_msg.into_bytes(),
            msg("_INBOX.t.0.0", 1, None, None, ack),
        ),
        (
            b"HMSG _INBOX.t.0.3 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\n".to_vec(),
            msg("_INBOX.t.0.3", 2, None, Some(status(503, "")), b""),
        ),
        (
            b"HMSG foo 3 reply.to 24 27\r\nNATS/1.0\r\nA: b\r\nC: d\r\n\r\nxyz\r\n".to_vec(),
            msg(
                "foo",
                3,
                Some("reply.to"),
                Some(Headers {
                    status: None,
                    description: String::new(),
                    entries: vec![("A".into(), "b".into()), ("C".into(), "d".into())],
                }),
                b"xyz",
            ),
        ),
    ]
}

#[test]
fn parses_each_op_whole_and_followed_by_more() {
    let limits = Limits::default();
    for (raw, want) in valid_cases() {
        let shown = String::from_utf8_lossy(&raw).into_owned();
        assert_eq!(
            parse_op(&raw, &limits),
            Ok(Some((want.clone(), raw.len()))),
            "{shown}"
        );
        let mut more = raw.clone();
        more.extend_from_slice(b"PING\r\nMSG x");
        assert_eq!(
            parse_op(&more, &limits),
            Ok(Some((want, raw.len()))),
            "{shown} + more"
        );
    }
}

#[test]
fn every_strict_prefix_is_incomplete() {
    let limits = Limits::default();
    for (raw, _) in valid_cases() {
        for k in 0..raw.len() {
            assert_eq!(
                parse_op(&raw[..k], &limits),
                Ok(None),
                "prefix {k} of {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }
}

/// The client's read loop in miniature: append chunks, pop operations.
fn feed(stream: &[u8], chunk: usize, limits: &Limits) -> Result<Vec<ServerOp>, ProtocolError> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some((op, n)) = parse_op(&buf, limits)? {
            out.push(op);
            buf.drain(..n);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    Ok(out)
}

#[test]
fn a_stream_split_at_any_chunk_size_yields_the_same_ops() {
    let limits = Limits::default();
    let cases = valid_cases();
    let stream: Vec<u8> = cases.iter().flat_map(|(raw, _)| raw.clone()).collect();
    let want: Vec<ServerOp> = cases.into_iter().map(|(_, op)| op).collect();
    for chunk in 1..=stream.len() {
        assert_eq!(
            feed(&stream, chunk, &limits).as_ref(),
            Ok(&want),
            "chunk size {chunk}"
        );
    }
}

#[test]
fn rejects_garbage() {
    let limits = Limits::default();
    let cases: &[&[u8]] = &[
        b"\r\n",
        b"HELLO\r\n",
        b"PINGX\r\n",
        b"PING extra\r\n",
        b"+OK now\r\n",
        b"INFO\r\n",
        b"INFO {\r\n",
        b"INFO []\r\n",
        b"INFO {\"max_payload\":-1}\r\n",
        b"MSG\r\n",
        b"MSG foo\r\n",
        b"MSG foo 1\r\n",
        b"MSG foo 1 a b c\r\n",
        b"MSG foo x 1\r\n",
        b"MSG foo 1 -1\r\n",
        b"MSG foo 1 +1\r\n",
        b"MSG foo 1 99999999999999999999\r\n",
        b"MSG foo 99999999999999999999 1\r\n",
        b"MSG \xff 1 1\r\na\r\n",
        b"MSG foo 1 3\r\nabcde",
        b"MSG foo 1 3\r\nabc\n\n",
        b"HMSG foo 1 3\r\n",
        b"HMSG foo 1 5 4\r\n",
        b"HMSG foo 1 2 4\r\nab\r\n\r\n",
        b"HMSG foo 1 12 12\r\nNATS/1.0\r\n\r\nX\r\n",
        b"HMSG foo 1 12 12\r\nNATS/9.9\r\n\r\n\r\n",
        b"\x00\x01\x02\n",
    ];
    for raw in cases {
        assert!(
            parse_op(raw, &limits).is_err(),
            "{:?} -> {:?}",
            String::from_utf8_lossy(raw),
            parse_op(raw, &limits)
        );
    }
    let unknown = parse_op(b"WHAT is this\r\n", &limits);
    assert_eq!(unknown, Err(ProtocolError::UnknownOp("WHAT".into())));
}

#[test]
fn bounds_line_length() {
    let limits = Limits {
        max_line: 16,
        max_payload: 1024,
    };
    // Without a newline the parser waits, but only until the line cannot fit.
    assert_eq!(parse_op(&[b'P'; 17], &limits), Ok(None));
    assert_eq!(
        parse_op(&[b'P'; 18], &limits),
        Err(ProtocolError::LineTooLong { max: 16 })
    );
    assert_eq!(
        parse_op(&vec![b'x'; 1 << 20], &limits),
        Err(ProtocolError::LineTooLong { max: 16 })
    );
    // A long line that does end is still too long.
    let mut long = vec![b'-'; 17];
    long.extend_from_slice(b"\r\n");
    assert_eq!(
        parse_op(&long, &limits),
        Err(ProtocolError::LineTooLong { max: 16 })
    );
    // Exactly max_line is fine.
    let mut ok = b"-ERR ".to_vec();
    ok.extend_from_slice(&[b'e'; 11]);
    ok.extend_from_slice(b"\r\n");
    assert!(matches!(
        parse_op(&ok, &limits),
        Ok(Some((ServerOp::Err(_), 18)))
    ));
}

#[test]
fn bounds_payload_before_it_arrives() {
    let limits = Limits {
        max_line: 1024,
        max_payload: 10,
    };
    assert!(matches!(parse_op(b"MSG a 1 10\r\n", &limits), Ok(None)));
    assert_eq!(
        parse_op(b"MSG a 1 11\r\n", &limits),
        Err(ProtocolError::PayloadTooLarge { size: 11, max: 10 })
    );
    assert_eq!(
        parse_op(b"HMSG a 1 2 11\r\n", &limits),
        Err(ProtocolError::PayloadTooLarge { size: 11, max: 10 })
    );
    // Whatever the caller sets, NATS's hard ceiling holds.
    let huge = Limits {
        max_line: 1024,
        max_payload: usize::MAX,
    };
    let line = format!("MSG a 1 {}\r\n", HARD_MAX_PAYLOAD + 1);
    assert!(matches!(
        parse_op(line.as_bytes(), &huge),
        Err(ProtocolError::PayloadTooLarge { .. })
    ));
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_op(&bytes, &Limits::default());
        let _ = parse_op(&bytes, &Limits { max_line: 8, max_payload: 4 });
        let _ = parse_op(&bytes, &Limits { max_line: 0, max_payload: 0 });
    }

    #[test]
    fn never_panics_on_mutated_valid_ops(
        case in 0usize..15,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let cases = valid_cases();
        let mut raw = cases[case % cases.len()].0.clone();
        for (at, byte) in edits {
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        let end = cut.index(raw.len() + 1);
        if let Ok(Some((_, n))) = parse_op(&raw[..end], &Limits::default()) {
            prop_assert!(n <= end);
            prop_assert!(n > 0);
        }
    }

    #[test]
    fn consumed_is_within_buffer_for_op_soup(
        parts in proptest::collection::vec(
            prop::sample::select(vec![
                &b"PING\r\n"[..], b"PONG\r\n", b"+OK\r\n", b"MSG a 1 2\r\nhi\r\n", b"-ERR 'x'\r\n",
                b"HMSG a 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n", b"\r", b"\n", b" ", b"MSG", b"9",
            ]),
            0..24,
        )
    ) {
        let bytes: Vec<u8> = parts.concat();
        let mut at = 0;
        while let Ok(Some((_, n))) = parse_op(&bytes[at..], &Limits::default()) {
            prop_assert!(n > 0 && at + n <= bytes.len());
            at += n;
        }
    }
}
