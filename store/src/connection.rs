//! Where ClickHouse is and as whom, and the one way Spoor builds a client
//! of the `clickhouse` crate for it.
//!
//! Every Spoor client is built by [`ClickHouseConfig::server_client`] or
//! [`ClickHouseConfig::client`], with settings that work on ClickHouse
//! 18.16 (the only server installable here) as on current releases:
//! validation is off, because 18.16 cannot answer the schema query the
//! crate's row validation needs; answers are uncompressed, because 18.16's
//! LZ4-compressed SELECT answers break the crate. A writer may turn LZ4 on
//! for its inserts (request bodies), which 18.16 accepts.

use clickhouse::{Client, Compression};

/// Where and as whom to talk to ClickHouse (its HTTP interface). Each
/// binary fills it from its own flags; `user` and `password` are sent only
/// when given (ClickHouse's `default` user otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// The HTTP URL, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl ClickHouseConfig {
    /// A client with the connection settings but no database: for
    /// statements that run before the database exists, and queries of
    /// `system` tables. Build it once and reuse it; it pools connections.
    pub fn server_client(&self) -> Client {
        let mut client = Client::default()
            .with_url(&self.url)
            .with_validation(false)
            .with_compression(Compression::None);
        if let Some(user) = &self.user {
            client = client.with_user(user);
        }
        if let Some(password) = &self.password {
            client = client.with_password(password);
        }
        client
    }

    /// [`ClickHouseConfig::server_client`] in the configured database: what
    /// every read and insert uses.
    pub fn client(&self) -> Client {
        self.server_client().with_database(&self.database)
    }
}
