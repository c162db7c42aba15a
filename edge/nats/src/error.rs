//! The errors a caller of this crate sees, one variant per thing the caller
//! can do about it (retry elsewhere, fix its input, give up on a message).
//! It must never carry a variant that only says "something failed": every
//! failure is sorted here so the edge can answer 503 vs 400 vs 500 correctly.

use std::fmt;
use std::sync::Arc;

/// What the client was waiting for when a timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The server's greeting (`INFO`) after the socket opened.
    Info,
    /// The `PONG` that confirms `CONNECT` was accepted.
    Handshake,
    /// Writing or flushing our own bytes (a stuck socket).
    Write,
    /// JetStream's PubAck replies to a `publish_all`.
    PubAck,
    /// The reply to a `request`.
    Reply,
    /// The `PONG` answering a `ping`.
    Pong,
    /// Shutting the socket down.
    Close,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Info => "waiting for the server's INFO",
            Stage::Handshake => "waiting for the PONG after CONNECT",
            Stage::Write => "writing to the socket",
            Stage::PubAck => "waiting for JetStream PubAcks",
            Stage::Reply => "waiting for a request's reply",
            Stage::Pong => "waiting for PONG",
            Stage::Close => "closing the socket",
        })
    }
}

/// Every failure of a NATS operation.
///
/// It is `Clone` because one connection-level failure becomes the result of
/// every message of a batch that was still waiting for its ack.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NatsError {
    /// The socket failed. The connection is unusable; retry on a new one.
    #[error("I/O error talking to nats-server: {0}")]
    Io(#[source] Arc<std::io::Error>),

    /// Nothing arrived in time. Whether a write went through is unknown, so
    /// a publish must be retried (with the same `Nats-Msg-Id`, which makes
    /// the retry idempotent) on a new connection.
    #[error("timed out {stage}")]
    Timeout { stage: Stage },

    /// The server sent `-ERR` (e.g. `Authorization Violation`). Usually a
    /// configuration problem (credentials, permissions); the server closes
    /// the connection after most of these.
    #[error("nats-server error: {0}")]
    Server(String),

    /// The configured credentials cannot be used: an invalid nkey seed, or
    /// nkey auth against a server whose INFO has no nonce to sign. Nothing
    /// was sent; fix the configuration (retrying cannot help).
    #[error("NATS credentials unusable: {0}")]
    Auth(String),

    /// The server sent bytes that are not the NATS protocol, or a reply that
    /// is not the JSON JetStream promises. Retrying on a new connection may
    /// work; it is worth an alert either way.
    #[error("NATS protocol error: {0}")]
    Protocol(String),

    /// No JetStream stream (nor anything else) listens on the subject: the
    /// message was not stored. A deployment problem; retry later.
    #[error("no responders for subject {subject:?}: no JetStream stream is bound to it")]
    NoResponders { subject: String },

    /// JetStream refused the message because the stream is at its
    /// `max_bytes` / `max_msgs` (`discard: new`: err_code 10077 "maximum
    /// bytes exceeded", "maximum messages exceeded") or the server's store
    /// is out of room (10047). The message was not stored; the stream
    /// frees room only as frames age out or its limits are raised, so a
    /// retry on a new connection does not help, another region or a spill
    /// may.
    #[error(
        "JetStream stream full (err_code {err_code}): {description}; the message was not stored"
    )]
    StreamFull { err_code: u32, description: String },

    /// JetStream refused the message for another reason (e.g. a wrong
    /// expected stream, a store failure). The message was not stored.
    #[error("JetStream error {code} (err_code {err_code}): {description}")]
    JetStream {
        code: u16,
        err_code: u32,
        description: String,
    },

    /// The message (headers + payload) exceeds the server's `max_payload`; it
    /// was not sent. Retrying cannot help: split or reject it.
    #[error("message of {size} bytes exceeds the server's max_payload of {max} bytes; not sent")]
    PayloadTooLarge { size: usize, max: usize },

    /// The caller passed something that cannot go on the wire (a subject with
    /// whitespace, a header with CR/LF). Nothing was sent; fix the caller.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The server closed the connection, or an earlier failure (timeout, I/O,
    /// `-ERR`) left it in an unknown state. Open a new connection.
    #[error("NATS connection closed")]
    Closed,
}

impl From<std::io::Error> for NatsError {
    fn from(e: std::io::Error) -> Self {
        NatsError::Io(Arc::new(e))
    }
}
