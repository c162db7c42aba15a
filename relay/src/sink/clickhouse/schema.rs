//! Applies the events schema: creates the database if missing, then runs
//! every statement of `deploy/clickhouse/*.sql` in file-name order inside it.
//!
//! The SQL files are embedded at compile time, so a relay binary always
//! carries the schema it writes. Every statement must be idempotent
//! (`CREATE ... IF NOT EXISTS`); this module re-runs them all at each start
//! and never drops or alters anything by itself.

use super::SinkError;
use crate::config::ClickHouseConfig;

/// The schema files, in the order they are applied. Add new files here.
pub const SCHEMA_FILES: &[(&str, &str)] = &[
    (
        "001_events.sql",
        include_str!("../../../../deploy/clickhouse/001_events.sql"),
    ),
    (
        "002_events_by_device.sql",
        include_str!("../../../../deploy/clickhouse/002_events_by_device.sql"),
    ),
    (
        "003_rollups.sql",
        include_str!("../../../../deploy/clickhouse/003_rollups.sql"),
    ),
];

/// Creates the database and applies every schema statement.
pub async fn apply(config: &ClickHouseConfig) -> Result<(), SinkError> {
    check_identifier(&config.database)?;
    // The database may not exist yet, so this one statement runs without it.
    let server = super::base_client(config);
    let create_db = format!("CREATE DATABASE IF NOT EXISTS `{}`", config.database);
    server
        .query(&create_db)
        .execute()
        .await
        .map_err(|source| SinkError::Schema {
            file: "CREATE DATABASE",
            statement: create_db.clone(),
            source,
        })?;

    let db = super::base_client(config).with_database(&config.database);
    for (file, sql) in SCHEMA_FILES {
        for statement in split_statements(sql) {
            db.query(&statement)
                .execute()
                .await
                .map_err(|source| SinkError::Schema {
                    file,
                    statement: statement.clone(),
                    source,
                })?;
        }
    }
    tracing::info!(database = %config.database, files = SCHEMA_FILES.len(), "ClickHouse schema applied");
    Ok(())
}

/// Database names are spliced into DDL, so only plain identifiers pass.
pub fn check_identifier(name: &str) -> Result<(), SinkError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(SinkError::InvalidDatabaseName(name.to_string()))
    }
}

/// Splits a SQL file into statements on `;`, dropping `--` comments and
/// blank statements. Quotes (`'…'`, `"…"`, `` `…` ``) are respected, so a `;`
/// or `--` inside a string literal or quoted name does not split.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        current.push(escaped);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' | '`' => {
                    quote = Some(c);
                    current.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    // Skip to the end of the line, keeping the newline as whitespace.
                    for c in chars.by_ref() {
                        if c == '\n' {
                            current.push('\n');
                            break;
                        }
                    }
                }
                ';' => push_statement(&mut statements, &mut current),
                _ => current.push(c),
            },
        }
    }
    push_statement(&mut statements, &mut current);
    statements
}

fn push_statement(statements: &mut Vec<String>, current: &mut String) {
    let trimmed = current.trim();
    if !trimmed.is_empty() {
        statements.push(trimmed.to_string());
    }
    current.clear();
}

#[cfg(test)]
mod tests {
    use super::{check_identifier, split_statements, SCHEMA_FILES};

    #[test]
    fn splits_on_semicolons_outside_quotes_and_drops_comments() {
        let sql = "-- header; with a semicolon\nCREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Log;\n\n\
                   -- between\nSELECT 1 -- trailing; comment\n;\n  ;\nSELECT '--not a comment', `we;ird`";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Log".to_string(),
                "SELECT 1".to_string(),
                "SELECT '--not a comment', `we;ird`".to_string(),
            ]
        );
    }

    #[test]
    fn escaped_quotes_stay_inside_the_literal() {
        assert_eq!(
            split_statements(r"SELECT 'it\'s; fine'; SELECT 2"),
            vec![r"SELECT 'it\'s; fine'".to_string(), "SELECT 2".to_string()]
        );
    }

    #[test]
    fn embedded_schema_has_statements_and_no_comments() {
        for (file, sql) in SCHEMA_FILES {
            let statements = split_statements(sql);
            assert!(!statements.is_empty(), "{file} has no statements");
            for s in statements {
                assert!(!s.contains("--"), "{file}: comment left in {s}");
                assert!(
                    s.contains("IF NOT EXISTS"),
                    "{file}: statement is not idempotent: {s}"
                );
            }
        }
    }

    #[test]
    fn database_names() {
        for ok in ["spoor", "spoor_test_1", "_x"] {
            assert!(check_identifier(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "a-b", "a`b", "a b", "db; DROP"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
