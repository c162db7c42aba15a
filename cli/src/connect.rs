//! Connections to NATS and ClickHouse, with errors that name what could not
//! be reached and how to point the CLI at it.

use std::time::Duration;

/// How long the first NATS connection may take before the CLI gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot reach NATS at {url}: {source} (is nats-server running? set --nats-url or SPOOR_NATS_URL)")]
pub struct NatsUnreachable {
    pub url: String,
    #[source]
    pub source: async_nats::ConnectError,
}

/// Connects once, without retrying in the background: a CLI should fail
/// fast and say so, not hang.
pub async fn nats(url: &str) -> Result<async_nats::Client, NatsUnreachable> {
    async_nats::ConnectOptions::new()
        .name("spoor-cli")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(|source| NatsUnreachable {
            url: url.to_string(),
            source,
        })
}

/// Where and as whom to query ClickHouse (its HTTP interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseOptions {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}
