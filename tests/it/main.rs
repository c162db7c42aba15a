//! End-to-end and integration tests against real servers.

mod edge_nats;
mod harness;
mod e2e;
mod edge_delivery;
mod relay;
mod support;
