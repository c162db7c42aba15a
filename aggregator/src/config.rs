//! The aggregator's configuration: where ClickHouse is and as whom, which
//! token reads which project, and the limits that keep one heavy question
//! from starving the dashboard.

use std::collections::HashMap;
use std::time::Duration;

use spoor_store::ClickHouseConfig;

/// ClickHouse, read side. The user must be read-only (`readonly` 1 or 2);
/// the service refuses to start otherwise unless told it may write.
#[derive(Debug, Clone)]
pub struct ClickHouseRead {
    /// Where, which database, as whom.
    pub connection: ClickHouseConfig,
    /// Start even if the user could write (for a throwaway local setup).
    pub allow_writable_user: bool,
}

/// How many queries of one kind run at once, how long one may wait for a
/// slot, and how long one may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneLimits {
    pub concurrency: usize,
    pub queue_wait: Duration,
    pub timeout: Duration,
}

/// Every setting of one aggregator.
#[derive(Debug, Clone)]
pub struct Config {
    pub clickhouse: ClickHouseRead,
    pub tokens: Tokens,
    /// Queries sent with `X-Spoor-Lane: dashboard` (the dashboard's own).
    pub dashboard: LaneLimits,
    /// Everything else: analysts' and scripts' questions.
    pub adhoc: LaneLimits,
    /// ClickHouse's `max_result_rows` for every query (it throws past it).
    pub max_result_rows: u64,
    /// How long a project's freshness is reused before it is asked again.
    pub freshness_ttl: Duration,
    /// Days the raw `events` table keeps (the relay's `--retention-days`);
    /// 0 means forever. Unique-user questions inside it read raw events,
    /// older ones the rollups.
    pub raw_retention_days: u32,
}

impl Config {
    /// Defaults for everything but where ClickHouse is and the tokens.
    pub fn new(clickhouse: ClickHouseRead, tokens: Tokens) -> Config {
        Config {
            clickhouse,
            tokens,
            dashboard: LaneLimits {
                concurrency: 8,
                queue_wait: Duration::from_secs(2),
                timeout: Duration::from_secs(5),
            },
            adhoc: LaneLimits {
                concurrency: 2,
                queue_wait: Duration::from_secs(5),
                timeout: Duration::from_secs(30),
            },
            max_result_rows: 100_000,
            freshness_ttl: Duration::from_secs(1),
            raw_retention_days: 90,
        }
    }
}

/// Per-project read tokens: a token opens exactly one project.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, String>,
}

/// A token specification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("`{0}` is not PROJECT=TOKEN")]
    Malformed(String),
    #[error("the token for project `{0}` is shorter than 16 characters")]
    TooShort(String),
    #[error("token for project `{0}` has characters outside [A-Za-z0-9._~-]")]
    BadCharacters(String),
    #[error("one token is given to both `{0}` and `{1}`; each project needs its own")]
    Shared(String, String),
}

impl Config {
    /// The first millisecond the raw table still holds at `now_ms`.
    pub fn raw_kept_since_ms(&self, now_ms: i64) -> i64 {
        if self.raw_retention_days == 0 {
            i64::MIN
        } else {
            // Retention drops whole UTC days before (today - days).
            let today = now_ms - now_ms.rem_euclid(86_400_000);
            today - i64::from(self.raw_retention_days) * 86_400_000
        }
    }
}

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Parses `project=token` pairs, separated by commas, whitespace or
    /// newlines (the form of `--read-tokens` and a tokens file; `#` starts
    /// a comment line in a file).
    pub fn parse(spec: &str) -> Result<Tokens, TokenError> {
        let mut tokens = Tokens::default();
        for line in spec.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            for pair in line.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
                let (project, token) = pair
                    .split_once('=')
                    .ok_or_else(|| TokenError::Malformed(pair.chars().take(64).collect()))?;
                tokens.add(project, token)?;
            }
        }
        Ok(tokens)
    }

    /// Gives `project` one more token.
    pub fn add(&mut self, project: &str, token: &str) -> Result<(), TokenError> {
        if project.is_empty() || token.is_empty() {
            return Err(TokenError::Malformed(format!("{project}=…")));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort(project.to_string()));
        }
        if !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'))
        {
            return Err(TokenError::BadCharacters(project.to_string()));
        }
        if let Some(other) = self.by_token.get(token) {
            if other != project {
                return Err(TokenError::Shared(other.clone(), project.to_string()));
            }
        }
        self.by_token.insert(token.to_string(), project.to_string());
        Ok(())
    }

    /// The project a token opens. Compares every known token in full, so
    /// the time taken does not depend on how much of a guess was right.
    pub fn project_of(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (known, project) in &self.by_token {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(project.as_str());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// The projects that have at least one token, sorted.
    pub fn projects(&self) -> Vec<&str> {
        let mut p: Vec<&str> = self.by_token.values().map(String::as_str).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_finds_projects() {
        let t = Tokens::parse(
            "# read tokens\nshop=shop-token-0123456789\ndemo=demo-token-0123456789, shop=shop-second-token-01",
        )
        .unwrap();
        assert_eq!(t.project_of("shop-token-0123456789"), Some("shop"));
        assert_eq!(t.project_of("shop-second-token-01"), Some("shop"));
        assert_eq!(t.project_of("demo-token-0123456789"), Some("demo"));
        assert_eq!(t.project_of("demo-token-012345678"), None);
        assert_eq!(t.project_of(""), None);
        assert_eq!(t.projects(), vec!["demo", "shop"]);
    }

    #[test]
    fn refuses_bad_specs() {
        assert!(matches!(
            Tokens::parse("shop"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            Tokens::parse("shop=short"),
            Err(TokenError::TooShort(_))
        ));
        assert!(matches!(
            Tokens::parse("shop=0123456789abcdef\"'"),
            Err(TokenError::BadCharacters(_))
        ));
        assert!(matches!(
            Tokens::parse("a=0123456789abcdef b=0123456789abcdef"),
            Err(TokenError::Shared(_, _))
        ));
    }
}
