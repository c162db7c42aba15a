//! End-to-end and integration tests against real servers.

mod aggregator;
mod aggregator_api;
mod current_clickhouse;
mod dashboard;
mod dead_letters;
mod debug_cli;
mod debug_ring;
mod device_table;
mod e2e;
mod edge_delivery;
mod edge_link;
mod edge_nats;
mod edge_pipeline;
mod edge_tls;
mod faults;
mod funnels;
mod harness;
mod nats_security;
mod reconcile;
mod relay;
mod relay_dedup;
mod retention;
mod rollups;
mod sessions;
mod support;
mod timeline;
