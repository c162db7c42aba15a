//! The schema: the SQL files that create Spoor's tables, the migration
//! that applies them, and every table's name.
//!
//! [`apply`] creates the database if missing, then runs every statement of
//! `deploy/clickhouse/*.sql` in file-name order inside it. The SQL files
//! are embedded at compile time, so a binary always carries the schema it
//! reads and writes. Every statement must be idempotent: the relay re-runs
//! them all at each start (and `spoor-relay migrate` on demand). A `CREATE`
//! says `IF NOT EXISTS`; a new column is one `ALTER TABLE <table> ADD
//! COLUMN <column> <type> DEFAULT <value> AFTER <column>` per statement,
//! which [`apply`] runs only when `system.columns` does not list the column
//! yet (ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`). Nothing here
//! drops anything or alters an existing column.
//!
//! Table names are constants here and nowhere else; queries format them in
//! (they are this crate's own text, never a caller's).

use crate::ClickHouseConfig;

/// Raw events, one row per accepted event (`001_events.sql`): written by
/// the relay, `PARTITION BY event_date`, ReplacingMergeTree on `event_id`.
pub const EVENTS_TABLE: &str = "events";
/// One device's events by point lookup (`002_events_by_device.sql`), fed
/// from `events` by `events_by_device_mv`: `ORDER BY (project_id,
/// anonymous_id, ts_ms, event_id)`, `PARTITION BY event_date`.
pub const DEVICE_TABLE: &str = "events_by_device";
/// Which devices a user was seen on, and when (`002_events_by_device.sql`),
/// fed from `events` by `device_users_mv`: `ORDER BY (project_id, user_id,
/// ts_ms)`, `PARTITION BY event_date`.
pub const DEVICE_USERS_TABLE: &str = "device_users";
/// Per-minute rollup of `events` (`003_rollups.sql`), `PARTITION BY
/// toYYYYMM(event_date)`.
pub const ROLLUP_MINUTE_TABLE: &str = "events_rollup_minute";
/// Per-hour rollup of `events`.
pub const ROLLUP_HOUR_TABLE: &str = "events_rollup_hour";
/// Per-day rollup of `events`.
pub const ROLLUP_DAY_TABLE: &str = "events_rollup_day";
/// The rollup tables, finest bucket first.
pub const ROLLUP_TABLES: &[&str] = &[ROLLUP_MINUTE_TABLE, ROLLUP_HOUR_TABLE, ROLLUP_DAY_TABLE];
/// The device tables.
pub const DEVICE_TABLES: &[&str] = &[DEVICE_TABLE, DEVICE_USERS_TABLE];
/// Every (project, user, anonymous id) pair an identify or alias linked,
/// with first and last seen (`004_identity.sql`), fed from `events` by
/// `identity_links_mv` and `identity_aliases_mv`: AggregatingMergeTree
/// (`minState`/`maxState` of `ts_ms`), `ORDER BY (project_id, user_id,
/// anonymous_id)`, `PARTITION BY event_date`.
pub const IDENTITY_LINKS_TABLE: &str = "identity_links";
/// The latest traits per user (`004_identity.sql`, `user_traits_mv`):
/// `argMaxState(traits, ts_ms)`, `ORDER BY (project_id, user_id)`.
pub const USER_TRAITS_TABLE: &str = "user_traits";
/// The latest traits per group (`004_identity.sql`, `group_traits_mv`):
/// `ORDER BY (project_id, group_id)`.
pub const GROUP_TRAITS_TABLE: &str = "group_traits";
/// The identity tables, kept as long as the device tables.
pub const IDENTITY_TABLES: &[&str] = &[IDENTITY_LINKS_TABLE, USER_TRAITS_TABLE, GROUP_TRAITS_TABLE];

/// The schema files, in the order they are applied. Add new files here.
pub const SCHEMA_FILES: &[(&str, &str)] = &[
    (
        "001_events.sql",
        include_str!("../../deploy/clickhouse/001_events.sql"),
    ),
    (
        "002_events_by_device.sql",
        include_str!("../../deploy/clickhouse/002_events_by_device.sql"),
    ),
    (
        "003_rollups.sql",
        include_str!("../../deploy/clickhouse/003_rollups.sql"),
    ),
    (
        "004_identity.sql",
        include_str!("../../deploy/clickhouse/004_identity.sql"),
    ),
    (
        "005_campaign.sql",
        include_str!("../../deploy/clickhouse/005_campaign.sql"),
    ),
];

/// A statement that adds one column: `ALTER TABLE <table> ADD COLUMN
/// <column> ...`, plain identifiers, one column per statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddColumn<'a> {
    pub table: &'a str,
    pub column: &'a str,
}

impl<'a> AddColumn<'a> {
    /// The table and column `statement` adds, or `None` when it is not
    /// exactly one `ALTER TABLE ... ADD COLUMN`.
    pub fn parse(statement: &'a str) -> Option<AddColumn<'a>> {
        let mut words = statement.split_whitespace();
        let mut keyword = |k: &str| words.next().filter(|w| w.eq_ignore_ascii_case(k));
        keyword("ALTER")?;
        keyword("TABLE")?;
        let table = words.next()?;
        let mut keyword = |k: &str| words.next().filter(|w| w.eq_ignore_ascii_case(k));
        keyword("ADD")?;
        keyword("COLUMN")?;
        let column = words.next()?;
        // `IF NOT EXISTS` is not 18.16's syntax: left to fail, not parsed.
        let plain = |name: &str| check_identifier(name).is_ok() && !name.eq_ignore_ascii_case("IF");
        let one = statement.to_ascii_uppercase().matches("ADD COLUMN").count() == 1;
        (plain(table) && plain(column) && one).then_some(AddColumn { table, column })
    }
}

/// Whether the database's `table` has `column` (`system.columns`).
async fn has_column(
    db: &clickhouse::Client,
    database: &str,
    add: AddColumn<'_>,
) -> Result<bool, clickhouse::error::Error> {
    let n: u64 = db
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(database)
        .bind(add.table)
        .bind(add.column)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

/// Why the schema could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("`{0}` is not a valid ClickHouse database name (letters, digits, `_`; not starting with a digit)")]
    InvalidDatabaseName(String),
    #[error("applying schema {file} failed on `{statement}`: {source}")]
    Apply {
        file: &'static str,
        statement: String,
        #[source]
        source: clickhouse::error::Error,
    },
}

/// Creates the database and applies every schema statement.
pub async fn apply(config: &ClickHouseConfig) -> Result<(), SchemaError> {
    check_identifier(&config.database)?;
    // The database may not exist yet, so this one statement runs without it.
    let server = config.server_client();
    let create_db = format!("CREATE DATABASE IF NOT EXISTS `{}`", config.database);
    server
        .query(&create_db)
        .execute()
        .await
        .map_err(|source| SchemaError::Apply {
            file: "CREATE DATABASE",
            statement: create_db.clone(),
            source,
        })?;

    let db = config.client();
    for (file, sql) in SCHEMA_FILES {
        for statement in split_statements(sql) {
            let failed = |source| SchemaError::Apply {
                file,
                statement: statement.clone(),
                source,
            };
            let Some(add) = AddColumn::parse(&statement) else {
                db.query(&statement).execute().await.map_err(failed)?;
                continue;
            };
            if has_column(&db, &config.database, add)
                .await
                .map_err(failed)?
            {
                continue;
            }
            if let Err(e) = db.query(&statement).execute().await {
                // Another migrator (a second relay starting) may have
                // added it in between: then the column is there.
                if !has_column(&db, &config.database, add)
                    .await
                    .map_err(failed)?
                {
                    return Err(failed(e));
                }
            }
        }
    }
    tracing::info!(database = %config.database, files = SCHEMA_FILES.len(), "ClickHouse schema applied");
    Ok(())
}

/// Database names are spliced into DDL, so only plain identifiers pass.
pub fn check_identifier(name: &str) -> Result<(), SchemaError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(SchemaError::InvalidDatabaseName(name.to_string()))
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
    use super::{check_identifier, split_statements, AddColumn, SCHEMA_FILES};

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
                // A new column is guarded by `apply`, and must say what old
                // rows read and where it goes (`inserted_at` stays last).
                let guarded_add = AddColumn::parse(&s).is_some()
                    && s.contains(" DEFAULT ")
                    && s.contains(" AFTER ");
                assert!(
                    s.contains("IF NOT EXISTS") || guarded_add,
                    "{file}: statement is not idempotent: {s}"
                );
            }
        }
    }

    #[test]
    fn add_column_statements_are_recognised_exactly() {
        assert_eq!(
            AddColumn::parse(
                "ALTER TABLE events\n    ADD COLUMN utm_source String DEFAULT '' AFTER batch_id"
            ),
            Some(AddColumn {
                table: "events",
                column: "utm_source"
            })
        );
        for other in [
            "CREATE TABLE IF NOT EXISTS t (a String) ENGINE = Log",
            "ALTER TABLE events DROP COLUMN utm_source",
            "ALTER TABLE events ADD COLUMN a String, ADD COLUMN b String",
            "ALTER TABLE `ev` ADD COLUMN a String",
            "ALTER TABLE events ADD COLUMN IF NOT EXISTS a String",
            "ALTER TABLE events ADD",
        ] {
            assert_eq!(AddColumn::parse(other), None, "{other}");
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
