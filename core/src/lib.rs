//! Spoor's platform-neutral core: the event model, validation, enrichment
//! rules, routing, the wire codec and the NATS contract (stream, subject
//! and header names) shared by the edge (wasm32) and the
//! relay (native).
//!
//! Everything here is a pure function of its arguments. This crate must never
//! do I/O, read a clock, draw randomness or start a runtime: the caller passes
//! `received_at_ms`, the request's geo data and its limits in. That is what
//! lets the same code run inside workerd and inside tokio, and be fuzzed.

pub mod auth;
pub mod campaign;
pub mod codec;
pub mod contract;
pub mod counters;
pub mod debug;
pub mod delivery;
pub mod enrich;
pub mod event;
pub mod fullness;
pub mod head;
pub mod ingest;
pub mod limits;
pub mod link;
pub mod prometheus;
pub mod ratelimit;
pub mod route;
pub mod sample;
pub mod segment;
pub mod spill;
pub mod timestamp;
mod validate;

pub use codec::{
    decode_batch, decode_message, encode_batch, encode_bundle, split_message, DecodeError,
    FrameHeader,
};
pub use enrich::{Device, Geo};
pub use event::{Campaign, Context, Event, WireBatch};
pub use ingest::{ingest, Endpoint, Ingested, Receipt, Rejection, RequestError, RequestMeta};
pub use limits::Limits;
