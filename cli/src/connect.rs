//! Connections to NATS and ClickHouse, with errors that name what could not
//! be reached and how to point the CLI at it.

use std::time::Duration;

pub use spoor_runtime::nats::{NatsConnectError, NatsEndpoint};

/// How long the first NATS connection may take before the CLI gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// NATS could not be reached or refused us; the message says which flag
/// or environment variable to fix (`spoor_runtime::NatsEndpoint`'s errors).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct NatsUnreachable {
    pub url: String,
    #[source]
    pub source: NatsConnectError,
}

/// Connects once, without retrying in the background: a CLI should fail
/// fast and say so, not hang. TLS and the nkey come from `endpoint`, the
/// same connect code the relay uses (the CLI runs as the ops role).
pub async fn nats(endpoint: &NatsEndpoint) -> Result<async_nats::Client, NatsUnreachable> {
    endpoint
        .connect("spoor-cli", Some(CONNECT_TIMEOUT))
        .await
        .map_err(|source| NatsUnreachable {
            url: endpoint.url.clone(),
            source,
        })
}

/// Where and as whom to query ClickHouse (its HTTP interface): the store's
/// one connection config, under the name the CLI's options use.
pub use spoor_store::ClickHouseConfig as ClickHouseOptions;
