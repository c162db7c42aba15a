//! spoor-aggregator: the read path over ClickHouse.
//!
//! The query layer: a validated metrics request turned into parameterized
//! SQL over the smallest table that answers it exactly, a rollup or the raw
//! events (`query`; pure: no I/O, no clock), and the runner (`store`). The
//! HTTP service, funnels, timelines, sessions and the dashboard build on
//! it.

pub mod query;
pub mod store;
