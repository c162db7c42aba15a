//! End-to-end and integration tests against real servers.

mod edge_nats;
mod harness;
mod e2e;
mod relay;
mod support;
