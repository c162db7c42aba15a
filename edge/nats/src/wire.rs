//! The client-to-server side of the protocol: encoding `CONNECT`, `SUB`,
//! `UNSUB`, `PUB`, `HPUB` and `PING`/`PONG` into a byte buffer, and checking
//! caller-supplied subjects and headers first.
//!
//! Pure functions over `Vec<u8>`; they do no I/O. They must never emit a
//! frame from unchecked input: a space or CR/LF in a subject or header would
//! let one message's data be read by the server as another command.

use crate::error::NatsError;
use crate::headers::{encode_headers, invalid_header};
use serde::Serialize;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// The `CONNECT` options this client sends.
#[derive(Debug, Serialize)]
pub struct ConnectInfo<'a> {
    pub verbose: bool,
    pub pedantic: bool,
    pub tls_required: bool,
    pub name: &'a str,
    pub lang: &'a str,
    pub version: &'a str,
    pub protocol: u8,
    pub headers: bool,
    pub no_responders: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<&'a str>,
    /// An nkey user's public key (`U...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey: Option<&'a str>,
    /// base64url (no padding) ed25519 signature of INFO's `nonce`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<&'a str>,
}

/// Appends `CONNECT {json}\r\n`.
pub fn connect(info: &ConnectInfo<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"CONNECT ");
    // Serialising a struct of strings and bools into a Vec cannot fail, and
    // serde_json escapes any control characters in the strings.
    let _ = serde_json::to_writer(&mut *out, info);
    out.extend_from_slice(b"\r\n");
}

/// Checks a subject we publish to or subscribe on: non-empty, no whitespace
/// or control bytes (which would split the command), no empty tokens.
/// Wildcards are allowed only when `wildcards` (i.e. for `SUB`).
pub fn check_subject(subject: &str, wildcards: bool) -> Result<(), NatsError> {
    let bad = |why: &str| {
        Err(NatsError::InvalidInput(format!(
            "subject {subject:?} {why}"
        )))
    };
    if subject.is_empty() {
        return bad("is empty");
    }
    if subject
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad("contains whitespace or control characters");
    }
    if subject.split('.').any(str::is_empty) {
        return bad("has an empty token");
    }
    if !wildcards && subject.split('.').any(|t| t == "*" || t == ">") {
        return bad("has a wildcard, which cannot be published to");
    }
    Ok(())
}

/// Appends `SUB subject sid\r\n`.
pub fn sub(subject: &str, sid: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

/// Appends `UNSUB sid max\r\n`: the server drops the subscription by itself
/// after `max` deliveries, so a completed batch costs no extra round trip.
pub fn unsub_after(sid: u64, max: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("UNSUB {sid} {max}\r\n").as_bytes());
}

/// Appends `PUB subject reply len\r\npayload\r\n`.
pub fn publish(subject: &str, reply: Option<&str>, payload: &[u8], out: &mut Vec<u8>) {
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    out.extend_from_slice(format!("PUB {subject}{reply} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `HPUB subject reply hdr_len total_len\r\n<headers><payload>\r\n`
/// with `Nats-Msg-Id: msg_id` first, then `extra` headers, after checking the
/// subject, the headers and the size against `max_payload`. Nothing is
/// appended on error.
pub fn hpub(
    subject: &str,
    reply: &str,
    msg_id: &str,
    extra: &[(String, String)],
    payload: &[u8],
    max_payload: usize,
    out: &mut Vec<u8>,
) -> Result<(), NatsError> {
    check_subject(subject, false)?;
    let entries = std::iter::once(("Nats-Msg-Id", msg_id))
        .chain(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (k, v) in entries.clone() {
        if let Some(why) = invalid_header(k, v) {
            return Err(NatsError::InvalidInput(why));
        }
    }
    if msg_id.is_empty() {
        return Err(NatsError::InvalidInput("empty Nats-Msg-Id".into()));
    }
    let mut block = Vec::new();
    encode_headers(entries, &mut block);
    let total = block.len() + payload.len();
    if total > max_payload {
        return Err(NatsError::PayloadTooLarge {
            size: total,
            max: max_payload,
        });
    }
    out.extend_from_slice(format!("HPUB {subject} {reply} {} {total}\r\n", block.len()).as_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_connect_without_absent_credentials() {
        let info = ConnectInfo {
            verbose: false,
            pedantic: false,
            tls_required: false,
            name: "n\"1",
            lang: "rust",
            version: "0.1.0",
            protocol: 1,
            headers: true,
            no_responders: true,
            user: None,
            pass: None,
            auth_token: Some("t\r\nPING"),
            nkey: None,
            sig: None,
        };
        let mut out = Vec::new();
        connect(&info, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("CONNECT {") && text.ends_with("}\r\n"),
            "{text}"
        );
        // The only CRLF is the terminator: JSON escapes the token's.
        assert_eq!(text.matches("\r\n").count(), 1);
        let json: serde_json::Value = serde_json::from_str(&text[8..text.len() - 2]).unwrap();
        assert_eq!(json["headers"], true);
        assert_eq!(json["no_responders"], true);
        assert_eq!(json["verbose"], false);
        assert_eq!(json["auth_token"], "t\r\nPING");
        assert!(json.get("user").is_none());
    }

    #[test]
    fn encodes_hpub_with_exact_sizes() {
        let mut out = Vec::new();
        let extra = vec![("Spoor-Batch".to_string(), "b1".to_string())];
        hpub(
            "spoor.events.0",
            "_INBOX.t.1.0",
            "m1",
            &extra,
            b"hello",
            1024,
            &mut out,
        )
        .unwrap();
        let hdr = "NATS/1.0\r\nNats-Msg-Id: m1\r\nSpoor-Batch: b1\r\n\r\n";
        let want = format!(
            "HPUB spoor.events.0 _INBOX.t.1.0 {} {}\r\n{hdr}hello\r\n",
            hdr.len(),
            hdr.len() + 5
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn refuses_what_would_break_framing_or_limits() {
        type Extra = Vec<(String, String)>;
        let none: Extra = vec![];
        let cases: Vec<(&str, &str, Extra, usize)> = vec![
            ("a b", "m", none.clone(), 1024),
            ("", "m", none.clone(), 1024),
            ("a..b", "m", none.clone(), 1024),
            ("a.>", "m", none.clone(), 1024),
            ("a.*", "m", none.clone(), 1024),
            ("a\r\nPING", "m", none.clone(), 1024),
            ("a", "m\r\nX: y", none.clone(), 1024),
            ("a", "", none.clone(), 1024),
            ("a", "m", vec![("Bad Name".into(), "v".into())], 1024),
            ("a", "m", vec![("N".into(), "v\n".into())], 1024),
        ];
        for (subject, id, extra, max) in cases {
            let mut out = Vec::new();
            let r = hpub(subject, "r", id, &extra, b"x", max, &mut out);
            assert!(
                matches!(r, Err(NatsError::InvalidInput(_))),
                "{subject:?} {id:?} {r:?}"
            );
            assert!(out.is_empty());
        }
        let mut out = Vec::new();
        let r = hpub("a", "r", "m", &none, &[0; 100], 100, &mut out);
        // The header block counts against max_payload, as on the server.
        assert!(matches!(r, Err(NatsError::PayloadTooLarge { size, max: 100 }) if size > 100));
        assert!(out.is_empty());
    }

    #[test]
    fn subscribe_subjects_may_have_wildcards() {
        assert!(check_subject("_INBOX.t.1.*", true).is_ok());
        assert!(check_subject("_INBOX.t.1.*", false).is_err());
        assert!(check_subject("$JS.API.STREAM.CREATE.S", false).is_ok());
    }
}
