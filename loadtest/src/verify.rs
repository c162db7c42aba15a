//! The verifier: polls ClickHouse until a run's events are stored, then
//! checks that exactly the expected event ids are there, each once.
//!
//! Rows are found by `project_id` and `properties.run_id`, always through the
//! crate's `?` binding, never by splicing strings into SQL. The client is
//! `spoor_store`'s (the settings that work on ClickHouse 18.16).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clickhouse::Client;
use spoor_store::schema::EVENTS_TABLE;
use spoor_store::ClickHouseConfig;
use tokio::time::Instant;
use uuid::Uuid;

/// Rows of one run: the project's events whose properties carry its `run_id`.
const RUN_ROWS: &str = "WHERE project_id = ? AND visitParamExtractString(properties, 'run_id') = ?";
/// Missing or unexpected ids listed in the report.
const IDS_LISTED: usize = 5;

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Where the events are stored.
    pub clickhouse: ClickHouseConfig,
    pub project: String,
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// After the expected count is reached, wait this long and count again
    /// so that late duplicates are caught too.
    pub settle: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Rows found (`count()`).
    pub stored: u64,
    /// Distinct event ids found.
    pub stored_unique: u64,
    /// From the end of sending until every expected event was found.
    pub store_delay: Option<Duration>,
    pub problems: Vec<String>,
}

pub fn client(cfg: &VerifyConfig) -> Client {
    cfg.clickhouse.client()
}

async fn counts(c: &Client, project: &str, run_id: &str) -> clickhouse::error::Result<(u64, u64)> {
    c.query(&format!(
        "SELECT count(), uniqExact(event_id) FROM {EVENTS_TABLE} {RUN_ROWS}"
    ))
    .bind(project)
    .bind(run_id)
    .fetch_one::<(u64, u64)>()
    .await
}

/// Waits for `must` to be stored and checks what is stored; `may` are ids
/// that were sent but never acknowledged, so they may or may not be there.
pub async fn verify(
    cfg: &VerifyConfig,
    run_id: Uuid,
    must: &HashSet<Uuid>,
    may: &HashSet<Uuid>,
    sending_finished: Instant,
) -> Verification {
    let c = client(cfg);
    let run = run_id.to_string();
    let expected = must.len() as u64;
    let deadline = Instant::now() + cfg.timeout;
    let mut v = Verification::default();
    let mut last_error: Option<String> = None;
    loop {
        match counts(&c, &cfg.project, &run).await {
            Ok((n, uniq)) => {
                v.stored = n;
                v.stored_unique = uniq;
                if uniq >= expected {
                    v.store_delay =
                        Some(Instant::now().saturating_duration_since(sending_finished));
                    break;
                }
            }
            Err(e) => {
                if last_error.is_none() {
                    tracing::warn!(error = %e, "counting stored events failed; retrying until the timeout");
                }
                last_error = Some(e.to_string());
            }
        }
        if Instant::now() >= deadline {
            let mut msg = format!(
                "timed out after {:.0?}: {} of {expected} expected events stored",
                cfg.timeout, v.stored_unique
            );
            if let Some(e) = last_error {
                msg.push_str(&format!(" (last ClickHouse error: {e})"));
            }
            v.problems.push(msg);
            break;
        }
        tokio::time::sleep(cfg.poll_interval).await;
    }

    if v.store_delay.is_some() && !cfg.settle.is_zero() {
        tokio::time::sleep(cfg.settle).await;
        match counts(&c, &cfg.project, &run).await {
            Ok((n, uniq)) => {
                v.stored = n;
                v.stored_unique = uniq;
            }
            Err(e) => v
                .problems
                .push(format!("recounting after settling failed: {e}")),
        }
    }

    let ids = match c
        .query(&format!(
            "SELECT toString(event_id) FROM {EVENTS_TABLE} {RUN_ROWS}"
        ))
        .bind(cfg.project.as_str())
        .bind(run.as_str())
        .fetch_all::<String>()
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            v.problems
                .push(format!("fetching stored event ids failed: {e}"));
            return v;
        }
    };
    v.problems.extend(compare_ids(&ids, must, may));
    if v.stored != v.stored_unique {
        v.problems.push(format!(
            "{} duplicate rows: count() = {} but uniqExact(event_id) = {}",
            v.stored - v.stored_unique.min(v.stored),
            v.stored,
            v.stored_unique
        ));
    }
    if v.stored_unique != expected && !v.problems.iter().any(|p| p.starts_with("timed out")) {
        v.problems.push(format!(
            "{} unique events stored, expected {expected}",
            v.stored_unique
        ));
    }
    v
}

/// Event ids asked of ClickHouse per query (about 40 bytes each in the
/// query text, well under its 256 KiB `max_query_size`).
const IDS_PER_QUERY: usize = 2_000;

/// Rows per stored id among `ids` (only ids found), for one project.
async fn rows_of(
    c: &Client,
    project: &str,
    ids: &[Uuid],
) -> clickhouse::error::Result<HashMap<Uuid, u64>> {
    let mut rows = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let list: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
        let found = c
            .query(&format!(
                "SELECT toString(event_id), count() FROM {EVENTS_TABLE} \
                 WHERE project_id = ? AND has(?, toString(event_id)) GROUP BY event_id"
            ))
            .bind(project)
            .bind(list)
            .fetch_all::<(String, u64)>()
            .await?;
        for (id, n) in found {
            if let Ok(id) = Uuid::try_parse(&id) {
                rows.insert(id, n);
            }
        }
    }
    Ok(rows)
}

/// As [`verify`], for events known by id rather than by run (a replay):
/// waits until every id of `must` is stored in `cfg.project`, then checks
/// that each is stored once. Ids of `may` (sent, never acknowledged) may
/// be there or not, but also at most once.
pub async fn verify_ids(
    cfg: &VerifyConfig,
    must: &HashSet<Uuid>,
    may: &HashSet<Uuid>,
    sending_finished: Instant,
) -> Verification {
    let c = client(cfg);
    let ids: Vec<Uuid> = must.iter().chain(may).copied().collect();
    let expected = must.len() as u64;
    let deadline = Instant::now() + cfg.timeout;
    let mut v = Verification::default();
    let mut rows = HashMap::new();
    let mut last_error: Option<String> = None;
    let tally = |rows: &HashMap<Uuid, u64>, v: &mut Verification| {
        v.stored = rows.values().sum();
        v.stored_unique = rows.len() as u64;
    };
    loop {
        match rows_of(&c, &cfg.project, &ids).await {
            Ok(found) => {
                rows = found;
                tally(&rows, &mut v);
                if must.iter().all(|id| rows.contains_key(id)) {
                    v.store_delay =
                        Some(Instant::now().saturating_duration_since(sending_finished));
                    break;
                }
            }
            Err(e) => {
                if last_error.is_none() {
                    tracing::warn!(error = %e, "counting stored events failed; retrying until the timeout");
                }
                last_error = Some(e.to_string());
            }
        }
        if Instant::now() >= deadline {
            let found = must.iter().filter(|id| rows.contains_key(id)).count();
            let mut msg = format!(
                "timed out after {:.0?}: {found} of {expected} expected events stored",
                cfg.timeout
            );
            if let Some(e) = last_error {
                msg.push_str(&format!(" (last ClickHouse error: {e})"));
            }
            v.problems.push(msg);
            break;
        }
        tokio::time::sleep(cfg.poll_interval).await;
    }
    if v.store_delay.is_some() && !cfg.settle.is_zero() {
        tokio::time::sleep(cfg.settle).await;
        match rows_of(&c, &cfg.project, &ids).await {
            Ok(found) => {
                rows = found;
                tally(&rows, &mut v);
            }
            Err(e) => v
                .problems
                .push(format!("recounting after settling failed: {e}")),
        }
    }
    let mut missing: Vec<Uuid> = must
        .iter()
        .filter(|id| !rows.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() && v.store_delay.is_some() {
        missing.sort();
        v.problems.push(format!(
            "{} acknowledged events are missing, e.g. {}",
            missing.len(),
            list(&missing)
        ));
    }
    let mut doubled: Vec<Uuid> = rows
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    if !doubled.is_empty() {
        doubled.sort();
        v.problems.push(format!(
            "{} events stored more than once ({} duplicate rows), e.g. {}",
            doubled.len(),
            v.stored - v.stored_unique,
            list(&doubled)
        ));
    }
    v
}

/// Compares the stored ids with the expectation.
pub fn compare_ids(stored: &[String], must: &HashSet<Uuid>, may: &HashSet<Uuid>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::with_capacity(stored.len());
    let mut unparsable = 0usize;
    let mut unexpected = Vec::new();
    for s in stored {
        match Uuid::try_parse(s) {
            Ok(id) => {
                if seen.insert(id) && !must.contains(&id) && !may.contains(&id) {
                    unexpected.push(id);
                }
            }
            Err(_) => unparsable += 1,
        }
    }
    if unparsable > 0 {
        problems.push(format!("{unparsable} stored event ids are not UUIDs"));
    }
    if !unexpected.is_empty() {
        unexpected.sort();
        problems.push(format!(
            "{} stored events were never sent as valid, e.g. {}",
            unexpected.len(),
            list(&unexpected)
        ));
    }
    let mut missing: Vec<Uuid> = must
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        missing.sort();
        problems.push(format!(
            "{} acknowledged events are missing, e.g. {}",
            missing.len(),
            list(&missing)
        ));
    }
    problems
}

fn list(ids: &[Uuid]) -> String {
    ids.iter()
        .take(IDS_LISTED)
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_comparison() {
        let must: HashSet<Uuid> = [1, 2, 3].map(Uuid::from_u128).into();
        let may: HashSet<Uuid> = [4].map(Uuid::from_u128).into();
        let s = |n: u128| Uuid::from_u128(n).to_string();
        assert!(compare_ids(&[s(1), s(2), s(3), s(4)], &must, &may).is_empty());
        assert!(compare_ids(&[s(3), s(2), s(1)], &must, &may).is_empty());
        let p = compare_ids(&[s(1), s(5), "x".into()], &must, &may);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("1 stored event ids are not UUIDs"));
        assert!(p[1].starts_with("1 stored events were never sent as valid"));
        assert!(p[2].starts_with("2 acknowledged events are missing"));
    }
}
