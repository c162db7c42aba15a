//! Where frames come from. One folder per source; today there is only NATS
//! JetStream, plus the claims the relays share over it.
pub mod claims;
pub mod nats;
