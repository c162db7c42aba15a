//! Where frames come from. One folder per source; today there is only NATS JetStream.
pub mod nats;
