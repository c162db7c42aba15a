//! Where frames come from. One folder per source; today there is only NATS
//! JetStream, plus the claims the relays share over it and the dead-letter
//! stream.
pub mod claims;
pub mod dead_letter;
pub mod endpoint;
pub mod nats;
