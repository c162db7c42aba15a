//! Spoor's test harness: handles that start real servers (nats-server,
//! clickhouse-server, workerd running the edge) on free ports with state in a
//! temporary directory, and stop them on drop. The environment is passed to
//! children explicitly; nothing here mutates the test process's environment,
//! so tests run in parallel. A missing binary is an error naming the set-up
//! command (`cargo xtask setup`), never a skip.

pub mod bench;
pub mod clickhouse;
pub mod edge;
pub mod fixtures;
pub mod metrics;
pub mod nats;
pub mod nats_cluster;
pub mod pki;
pub mod relay;
pub mod tools;
