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

/// A stream's limits and state from `$JS.API.STREAM.INFO.<stream>`: what
/// the edge needs to tell how full the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFill {
    pub bytes: u64,
    pub messages: u64,
    /// -1 (or 0) when unlimited.
    pub max_bytes: i64,
    pub max_msgs: i64,
}

#[derive(Deserialize)]
struct InfoReply {
    config: InfoConfig,
    state: InfoState,
}

#[derive(Deserialize)]
struct InfoConfig {
    #[serde(default = "unlimited")]
    max_bytes: i64,
    #[serde(default = "unlimited")]
    max_msgs: i64,
}

#[derive(Deserialize)]
struct InfoState {
    bytes: u64,
    messages: u64,
}

fn unlimited() -> i64 {
    -1
}

/// The subject that asks JetStream for `stream`'s info.
pub fn stream_info_subject(stream: &str) -> String {
    format!("$JS.API.STREAM.INFO.{stream}")
}

/// Interprets a reply to `$JS.API.STREAM.INFO.<stream>`.
pub fn parse_stream_info(payload: &[u8]) -> Result<StreamFill, NatsError> {
    let value = check_api_response(payload)?;
    let info: InfoReply = serde_json::from_value(value).map_err(|e| {
        NatsError::Protocol(format!(
            "stream info is not {{config, state}} JSON ({e}): {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ))
    })?;
    Ok(StreamFill {
        bytes: info.state.bytes,
        messages: info.state.messages,
        max_bytes: info.config.max_bytes,
        max_msgs: info.config.max_msgs,
    })
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

/// err_code of JetStream's `JSStreamStoreFailedF`: a store refused the
/// message; its description says why ("maximum bytes exceeded", ...).
pub const ERR_STORE_FAILED: u32 = 10077;
/// err_code of `JSStorageResourcesExceededErr`: the account's or server's
/// file store (`max_file_store`) has no room.
pub const ERR_STORAGE_EXCEEDED: u32 = 10047;

/// True when a publish's JetStream error means "no room": the stream hit a
/// limit under `discard: new`, or the server's store is exhausted. Other
/// 10077 store failures (an I/O error opening a block) are not "full".
pub fn is_stream_full(err_code: u32, description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    match err_code {
        ERR_STORAGE_EXCEEDED => true,
        ERR_STORE_FAILED => d.starts_with("maximum") && d.ends_with("exceeded"),
        _ => false,
    }
}

/// Interprets a reply to a JetStream publish. A refusal for lack of room
/// is [`NatsError::StreamFull`]; any other JetStream error is
/// [`NatsError::JetStream`].
pub fn parse_pub_ack(payload: &[u8]) -> Result<PubAck, NatsError> {
    match check_api_response(payload) {
        Err(NatsError::JetStream {
            err_code,
            description,
            ..
        }) if is_stream_full(err_code, &description) => {
            return Err(NatsError::StreamFull {
                err_code,
                description,
            })
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
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

        // A full stream (discard: new) or store is told apart from other
        // refusals.
        for (reply, err_code, text) in [
            (&br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}"#[..], 10077, "maximum messages exceeded"),
            (br#"{"error":{"code":503,"err_code":10077,"description":"maximum bytes exceeded"}}"#, 10077, "maximum bytes exceeded"),
            (br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages per subject exceeded"}}"#, 10077, "maximum messages per subject exceeded"),
            (br#"{"error":{"code":500,"err_code":10047,"description":"insufficient storage resources available"}}"#, 10047, "insufficient storage resources available"),
        ] {
            match parse_pub_ack(reply) {
                Err(NatsError::StreamFull {
                    err_code: code,
                    description,
                }) => assert_eq!((code, description.as_str()), (err_code, text)),
                other => panic!("{other:?}"),
            }
        }
        for reply in [
            &br#"{"error":{"code":503,"err_code":10077,"description":"error opening msg block file"}}"#[..],
            br#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#,
        ] {
            assert!(
                matches!(parse_pub_ack(reply), Err(NatsError::JetStream { .. })),
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
        let info = parse_stream_info(
            br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"S","max_bytes":1000,"max_msgs":-1,"discard":"new"},"state":{"messages":3,"bytes":420,"first_seq":1}}"#,
        )
        .unwrap();
        assert_eq!(
            info,
            StreamFill {
                bytes: 420,
                messages: 3,
                max_bytes: 1000,
                max_msgs: -1
            }
        );
        assert!(matches!(
            parse_stream_info(
                br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#
            ),
            Err(NatsError::JetStream {
                err_code: 10059,
                ..
            })
        ));
        assert!(matches!(
            parse_stream_info(br#"{"config":{}}"#),
            Err(NatsError::Protocol(_))
        ));
        assert_eq!(stream_info_subject("S"), "$JS.API.STREAM.INFO.S");
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
