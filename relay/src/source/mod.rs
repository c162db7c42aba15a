//! Where frames come from. One folder per source; today there is only NATS
//! JetStream, plus the dead-letter stream. Connecting to NATS (TLS, nkeys)
//! is `spoor_runtime::nats`, shared with the `spoor` CLI. `streams` applies
//! every stream definition at start, with the operator's replica count.
pub mod dead_letter;
pub mod nats;
pub mod streams;
