//! A small NATS client for Spoor's edge: connect, publish to JetStream with
//! `Nats-Msg-Id` and wait for each message's PubAck, over any
//! `AsyncRead + AsyncWrite` (workers-rs `Socket` on wasm32, tokio's
//! `TcpStream` natively). async-nats does not build for wasm32; this crate
//! covers only what the edge needs.
//!
//! It must never start a runtime, read a clock or draw randomness (the edge
//! has none of them natively; time comes in through [`Timer`], unique inbox
//! tokens through [`ConnectOptions::inbox_token`]), and never panic on
//! anything the server sends: the wire parser ([`parse_op`]) is a pure,
//! bounded function over bytes.
//!
//! ```text
//! let mut client = Client::connect(socket, timer, &ConnectOptions::default()).await?;
//! let results = client.publish_all(&[PublishMsg::new("spoor.events.3", "id-1", frame)], 5_000).await;
//! ```

mod client;
mod error;
mod headers;
mod jetstream;
mod parser;
mod pipeline;
mod timer;
mod wire;

pub use client::{sign_nonce, Auth, Client, ConnectOptions, PublishMsg, DEFAULT_INBOX_PREFIX};
pub use error::{NatsError, Stage};
pub use headers::{parse_headers, Headers};
pub use jetstream::{
    check_api_response, is_stream_full, parse_pub_ack, parse_stream_info, stream_info_subject,
    PubAck, StreamFill,
};
pub use parser::{
    parse_op, Limits, Message, ProtocolError, ServerInfo, ServerOp, HARD_MAX_PAYLOAD,
};
pub use pipeline::{Connected, Pipeline};
pub use timer::Timer;
