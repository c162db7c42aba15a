//! A minimal ClickHouse HTTP client for SELECTs: the query goes in the POST
//! body, the answer comes back as TabSeparated text. The `spoor` CLI's
//! reconciliation reads with it.
//!
//! Plain HTTP rather than the `clickhouse` crate: its callers read a couple
//! of columns as text and splice only [`quote`]d literals, and it asks for
//! nothing 18.16 answers wrongly (it never asks for compression). It must
//! never write. Its errors say what to fix: the URL and its flag when the
//! server cannot be reached, the database and `spoor-relay migrate` when
//! `events` is missing.

use std::time::Duration;

use crate::schema::EVENTS_TABLE;
use crate::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("cannot reach ClickHouse at {url}: {source} (is clickhouse-server running? set --clickhouse-url or SPOOR_CLICKHOUSE_URL)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("ClickHouse at {url} answered {status}: {message}")]
    Query {
        url: String,
        status: u16,
        message: String,
    },
    #[error("ClickHouse at {url} has no table {database}.events (wrong --clickhouse-db? run `spoor-relay migrate`)")]
    NoEventsTable { url: String, database: String },
    #[error("unexpected answer from ClickHouse: {0}")]
    Parse(String),
}

/// A connection to one database; reuse it (it pools connections).
pub struct TextClient {
    http: reqwest::Client,
    options: ClickHouseConfig,
}

impl TextClient {
    pub fn new(options: &ClickHouseConfig) -> TextClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        TextClient {
            http,
            options: options.clone(),
        }
    }

    /// Runs one query in the configured database; returns the body.
    pub async fn query(&self, sql: &str) -> Result<String, TextError> {
        let url = &self.options.url;
        let mut request = self
            .http
            .post(url)
            .query(&[("database", self.options.database.as_str())])
            .body(sql.to_string());
        if let Some(user) = &self.options.user {
            request = request.basic_auth(user, self.options.password.as_ref());
        }
        let unreachable = |source| TextError::Unreachable {
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(unreachable)?;
        if status != 200 {
            return Err(TextError::Query {
                url: url.clone(),
                status,
                message: body.lines().next().unwrap_or_default().to_string(),
            });
        }
        Ok(body)
    }

    /// Fails with a clear error unless `<database>.events` exists.
    pub async fn check_events_table(&self) -> Result<(), TextError> {
        let sql = format!(
            "SELECT count() FROM system.tables WHERE database = {} AND name = {}",
            quote(&self.options.database),
            quote(EVENTS_TABLE)
        );
        let answer = self.query(&sql).await?;
        if answer.trim() == "0" {
            return Err(TextError::NoEventsTable {
                url: self.options.url.clone(),
                database: self.options.database.clone(),
            });
        }
        Ok(())
    }
}

/// A ClickHouse string literal.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(super::quote("demo"), "'demo'");
        assert_eq!(super::quote(r"a'b\c"), r"'a\'b\\c'");
    }
}
