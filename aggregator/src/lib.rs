//! spoor-aggregator: the read path over ClickHouse.
//!
//! - `query`: validated requests rendered to parameterized SQL over the
//!   smallest table that answers exactly, a rollup or the raw events (pure:
//!   no I/O, no clock);
//! - `store`: runs that SQL on ClickHouse and shapes the rows;
//! - `service`: the HTTP API, its limits and the dashboard;
//! - `args`: the command line, turned into a `config::Config`;
//! - `config`, `metrics`: settings and Prometheus metrics of one service.

pub mod args;
pub mod config;
pub mod metrics;
pub mod query;
pub mod service;
pub mod store;
