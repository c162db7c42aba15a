//! spoor-aggregator: the read path over ClickHouse.
//!
//! This first slice is the query layer: a validated metrics request turned
//! into parameterized SQL (`query`). Pure: no I/O, no clock; the HTTP
//! service, rollups, funnels, timelines, sessions and the dashboard build
//! on it.

pub mod query;
pub mod store;
