//! Where frames come from. One folder per source; today there is only NATS
//! JetStream, plus the dead-letter stream. Connecting to NATS (TLS, nkeys) is `spoor_runtime::nats`, shared
//! with the `spoor` CLI.
pub mod dead_letter;
pub mod nats;
