//! The aggregator's command line: flags with `SPOOR_*` environment
//! fallbacks, turned into a [`Config`] by [`Args::into_config`]. `main.rs`
//! parses them with [`Args::from_env`]; tests parse them from a list.
//!
//! Environment names are spelled as in every Spoor binary; a name this
//! binary used to read under another spelling is still read, with a
//! warning ([`RENAMED_ENV`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use spoor_runtime::env::Renamed;

use crate::config::{ClickHouseRead, Config, LaneLimits, TokenError, Tokens};

/// Environment variables this binary read under another name.
pub const RENAMED_ENV: &[Renamed] = &[Renamed {
    old: "SPOOR_CLICKHOUSE_DATABASE",
    new: "SPOOR_CLICKHOUSE_DB",
}];

/// Serves Spoor's read path: metrics, funnels, timelines, sessions and the
/// live dashboard, over ClickHouse.
#[derive(clap::Parser)]
#[command(name = "spoor-aggregator", version)]
pub struct Args {
    /// Where to serve the API and the dashboard.
    #[arg(
        long,
        env = "SPOOR_AGGREGATOR_LISTEN",
        default_value = "127.0.0.1:8686"
    )]
    pub listen: SocketAddr,
    /// ClickHouse's HTTP interface.
    #[arg(
        long,
        env = "SPOOR_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    /// ClickHouse database, `--clickhouse-db` as for the relay and the CLI
    /// (`--clickhouse-database` and SPOOR_CLICKHOUSE_DATABASE, its former
    /// names, are still read).
    #[arg(
        long = "clickhouse-db",
        alias = "clickhouse-database",
        env = "SPOOR_CLICKHOUSE_DB",
        default_value = "spoor"
    )]
    pub clickhouse_database: String,
    /// A read-only ClickHouse user (profile setting readonly = 2).
    #[arg(
        long,
        env = "SPOOR_CLICKHOUSE_READ_USER",
        default_value = "spoor_readonly"
    )]
    pub clickhouse_user: String,
    #[arg(long, env = "SPOOR_CLICKHOUSE_READ_PASSWORD")]
    pub clickhouse_password: Option<String>,
    /// Start even if the ClickHouse user can write (local experiments only).
    #[arg(long)]
    pub allow_writable_user: bool,
    /// Read tokens, PROJECT=TOKEN, comma-separated; each project its own.
    #[arg(long, env = "SPOOR_READ_TOKENS")]
    pub read_tokens: Option<String>,
    /// A file of PROJECT=TOKEN lines (`#` comments), added to --read-tokens.
    #[arg(long, env = "SPOOR_READ_TOKENS_FILE")]
    pub read_tokens_file: Option<PathBuf>,
    /// Dashboard queries running at once.
    #[arg(long, default_value_t = 8)]
    pub dashboard_concurrency: usize,
    /// Ad-hoc (API) queries running at once.
    #[arg(long, default_value_t = 2)]
    pub adhoc_concurrency: usize,
    /// Seconds a dashboard query may run.
    #[arg(long, default_value_t = 5.0)]
    pub dashboard_timeout_secs: f64,
    /// Seconds an ad-hoc query may run.
    #[arg(long, default_value_t = 30.0)]
    pub adhoc_timeout_secs: f64,
    /// Seconds a query may wait for a slot in its lane before a 503.
    #[arg(long, default_value_t = 2.0)]
    pub queue_wait_secs: f64,
    /// Most rows ClickHouse may return for one query.
    #[arg(long, default_value_t = 100_000)]
    pub max_result_rows: u64,
    /// Days the raw events are kept (the relay's --retention-days; 0:
    /// forever): unique-user questions inside them read the raw events.
    #[arg(long, env = "SPOOR_RETENTION_DAYS", default_value_t = 90)]
    pub raw_retention_days: u32,
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("reading read tokens from {}", path.display())]
    TokensFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--read-tokens")]
    Tokens(#[source] TokenError),
    #[error("--{0} must be a positive number of seconds")]
    Seconds(&'static str),
}

fn secs(what: &'static str, s: f64) -> Result<Duration, ArgsError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or(ArgsError::Seconds(what))
}

impl Args {
    /// The command line and the environment, renamed variables included
    /// (exits with clap's message on a bad flag).
    pub fn from_env() -> Args {
        spoor_runtime::env::parse(RENAMED_ENV)
    }

    /// The service's configuration; reads `--read-tokens-file`.
    pub fn into_config(self) -> Result<Config, ArgsError> {
        let mut spec = self.read_tokens.clone().unwrap_or_default();
        if let Some(path) = &self.read_tokens_file {
            let file = std::fs::read_to_string(path).map_err(|source| ArgsError::TokensFile {
                path: path.clone(),
                source,
            })?;
            spec.push('\n');
            spec.push_str(&file);
        }
        let tokens = Tokens::parse(&spec).map_err(ArgsError::Tokens)?;
        let mut config = Config::new(
            ClickHouseRead {
                connection: spoor_store::ClickHouseConfig {
                    url: self.clickhouse_url,
                    database: self.clickhouse_database,
                    user: Some(self.clickhouse_user),
                    password: self.clickhouse_password,
                },
                allow_writable_user: self.allow_writable_user,
            },
            tokens,
        );
        let queue_wait = secs("queue-wait-secs", self.queue_wait_secs)?;
        config.dashboard = LaneLimits {
            concurrency: self.dashboard_concurrency.max(1),
            queue_wait,
            timeout: secs("dashboard-timeout-secs", self.dashboard_timeout_secs)?,
        };
        config.adhoc = LaneLimits {
            concurrency: self.adhoc_concurrency.max(1),
            queue_wait,
            timeout: secs("adhoc-timeout-secs", self.adhoc_timeout_secs)?,
        };
        config.max_result_rows = self.max_result_rows;
        config.raw_retention_days = self.raw_retention_days;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        spoor_runtime::env::try_parse_from(RENAMED_ENV, args).unwrap()
    }

    /// The one test in this crate that changes the process environment (no
    /// other reads these variables).
    #[test]
    fn the_database_is_read_under_its_old_name_and_the_new_one_wins() {
        std::env::remove_var("SPOOR_CLICKHOUSE_DB");
        std::env::remove_var("SPOOR_CLICKHOUSE_DATABASE");
        assert_eq!(parse(&["agg"]).clickhouse_database, "spoor");
        std::env::set_var("SPOOR_CLICKHOUSE_DATABASE", "old_name");
        assert_eq!(parse(&["agg"]).clickhouse_database, "old_name");
        std::env::set_var("SPOOR_CLICKHOUSE_DB", "new_name");
        assert_eq!(parse(&["agg"]).clickhouse_database, "new_name");
        // A flag beats both, under its name and its former name.
        let flag = parse(&["agg", "--clickhouse-db", "flag"]);
        assert_eq!(flag.clickhouse_database, "flag");
        let old_flag = parse(&["agg", "--clickhouse-database", "old_flag"]);
        assert_eq!(old_flag.clickhouse_database, "old_flag");
        std::env::remove_var("SPOOR_CLICKHOUSE_DB");
        std::env::remove_var("SPOOR_CLICKHOUSE_DATABASE");
    }

    #[test]
    fn flags_reach_the_config_and_bad_seconds_are_refused() {
        let c = parse(&[
            "agg",
            "--read-tokens",
            "shop=0123456789abcdef",
            "--adhoc-timeout-secs",
            "7",
        ])
        .into_config()
        .unwrap();
        assert_eq!(c.adhoc.timeout, Duration::from_secs(7));
        assert_eq!(c.dashboard.timeout, Duration::from_secs(5));
        assert_eq!(c.raw_retention_days, 90);
        let zero = parse(&[
            "agg",
            "--read-tokens",
            "shop=0123456789abcdef",
            "--queue-wait-secs",
            "0",
        ])
        .into_config()
        .unwrap_err();
        assert_eq!(
            zero.to_string(),
            "--queue-wait-secs must be a positive number of seconds"
        );
    }
}
