//! spoor-cli: the operator's `spoor` command as a library, so tests and the
//! fault-injection suite call the same code the binary runs.
//!
//! - [`dead_letters`]: list the `SPOOR_DEAD` stream and replay dead letters
//!   to their original subjects once their cause is fixed.
//! - [`debug`]: one device's recent events from every relay's ring, with
//!   the path each took, and older ones from the device table.
//! - [`reconcile`]: prove for a time window that every event the edge
//!   accepted is in ClickHouse once, deduped, or in a dead-lettered frame.
//! - [`relays`]: the region's relays, the partitions each holds, their lag
//!   and last insert, from the relays' leases bucket.
//!
//! It only reads what the pipeline wrote (the events stream through
//! ephemeral ordered consumers, never the relays' durable consumer;
//! ClickHouse with SELECTs; the leases bucket and consumer info), except for `replay`, which publishes to the
//! events stream and deletes the dead letters it replayed. It never reads
//! the process environment itself: `main.rs` (clap) does.

pub mod clickhouse;
pub mod connect;
pub mod dead_letters;
pub mod debug;
pub mod reconcile;
pub mod relays;
/// Time arguments, shared with `spoor-loadtest record`.
pub use spoor_runtime::window;

pub use connect::ClickHouseOptions;
pub use reconcile::{reconcile, ReconcileError, ReconcileOptions, ReconcileReport};
