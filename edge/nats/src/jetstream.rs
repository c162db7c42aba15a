//! JetStream's replies: the PubAck that proves a message is stored, and the
//! `{"error":{...}}` form every JetStream API answer may take instead.
//!
//! Pure JSON interpretation. It must never report success for a reply that
//! does not name a stream and a sequence: the edge acknowledges clients on
//! the strength of `Ok(PubAck)`.

use crate::error::NatsError;
use serde::Deserialize;

/// JetStream's acknowledgement of a stored (or deduplicated) message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PubAck {
    pub stream: String,
    pub seq: u64,
    /// True when the `Nats-Msg-Id` was already in the stream's duplicate
    /// window: nothing new was stored, and `seq` is the original's.
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct ErrorOnly {
    error: Option<ApiError>,
}

/// Interprets a reply to a JetStream publish.
pub fn parse_pub_ack(payload: &[u8]) -> Result<PubAck, NatsError> {
    check_api_response(payload)?;
    serde_json::from_slice::<PubAck>(payload).map_err(|e| {
        NatsError::Protocol(format!(
            "PubAck is not {{stream, seq}} JSON ({e}): {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ))
    })
}

/// Turns a JetStream API reply into its JSON, or `NatsError::JetStream` if
/// it is the error form.
pub fn check_api_response(payload: &[u8]) -> Result<serde_json::Value, NatsError> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        NatsError::Protocol(format!(
            "JetStream reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ))
    })?;
    if let Ok(ErrorOnly { error: Some(err) }) = ErrorOnly::deserialize(&value) {
        return Err(NatsError::JetStream {
            code: err.code,
            err_code: err.err_code,
            description: err.description,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_acks_and_errors() {
        let ack = parse_pub_ack(br#"{"stream":"S","seq":42}"#).unwrap();
        assert_eq!(
            ack,
            PubAck {
                stream: "S".into(),
                seq: 42,
                duplicate: false,
                domain: None
            }
        );
        let dup =
            parse_pub_ack(br#"{"stream":"S","seq":42,"duplicate":true,"domain":"d"}"#).unwrap();
        assert!(dup.duplicate);
        assert_eq!(dup.domain.as_deref(), Some("d"));

        let err = parse_pub_ack(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}"#,
        );
        match err {
            Err(NatsError::JetStream {
                code: 503,
                err_code: 10077,
                description,
            }) => {
                assert_eq!(description, "maximum messages exceeded")
            }
            other => panic!("{other:?}"),
        }
        for garbage in [
            &b""[..],
            b"null",
            b"{}",
            b"{\"stream\":\"S\"}",
            b"{\"seq\":1}",
            b"\xff",
            b"[1]",
        ] {
            assert!(
                matches!(parse_pub_ack(garbage), Err(NatsError::Protocol(_))),
                "{garbage:?}"
            );
        }
    }
}
