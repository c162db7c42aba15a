//! Where frames come from. One folder per source; today there is only NATS JetStream.
pub mod dead_letter;
pub mod nats;
