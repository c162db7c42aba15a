//! spoor-store: everything Spoor knows about ClickHouse, in one crate.
//!
//! - [`schema`]: the schema files (`deploy/clickhouse/*.sql`, embedded) and
//!   the migration that applies them; every table's name and the column
//!   lists the reads select.
//! - [`row`]: one row type per table Spoor reads or writes row by row:
//!   [`EventRow`] (`events`, written by the relay) and [`DeviceRow`]
//!   (`events_by_device`, read by device lookups), whose columns are a
//!   subset of the event row's plus the server's `inserted_at`.
//! - [`row_binary`]: an `events` row written as RowBinary straight from a
//!   decoded event, and ClickHouse's compressed-block framing, so the relay
//!   encodes rows beside its loop rather than inside the insert.
//! - [`connection`]: one connection config ([`ClickHouseConfig`]) and one
//!   builder of the `clickhouse` crate's client that works on every
//!   release Spoor supports, 18.16 included.
//! - [`date`]: ClickHouse `Date`/`DateTime` values from epoch milliseconds.
//! - [`device`]: one device's (or user's devices') events from the device
//!   tables, windowed on the edge's receive time, as the relays' rings are.
//! - [`retention`]: how long each family of tables keeps its rows, enforced
//!   by partition drops.
//! - [`text`]: a plain-text (TabSeparated) query client over HTTP, for
//!   callers that read a few columns as text.
//!
//! Invariants: no caller string is ever spliced into SQL (ids are bound;
//! only typed values and this crate's own names are formatted in); the
//! schema is applied idempotently and never dropped or altered by Spoor;
//! retention drops only whole partitions of the tables it lists. The crate
//! runs on the caller's tokio runtime and reads no environment: binaries
//! turn their flags into a [`ClickHouseConfig`].

pub mod connection;
pub mod date;
pub mod device;
pub mod retention;
pub mod row;
pub mod row_binary;
pub mod schema;
pub mod text;

pub use connection::ClickHouseConfig;
pub use row::{DeviceRow, EventRow, RequestFields, Shared, EVENT_COLUMNS};
pub use schema::SchemaError;
