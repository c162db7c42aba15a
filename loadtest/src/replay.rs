//! `spoor-loadtest replay`: sends a recording again, keeping its
//! inter-arrival times (scaled by `--speed`), through the same sender and
//! verifier as `run` (`send`, `verify`): HDR latency, throughput, every
//! receipt checked (each replayed event must be accepted), and storage
//! checked by event id (each acknowledged event stored exactly once).
//!
//! Ids: `--fresh-ids` gives every event a new id (copies in the recording
//! keep sharing one, so they stay resends), for load on top of what is
//! stored; `--keep-ids` sends the recorded ids, which the pipeline must
//! store only once (a dedup test). `--shift-time` moves each request's
//! event times by the distance between its recorded arrival and its replay
//! (the events keep their age relative to their request), so an old
//! recording is not refused as `timestamp_out_of_range`.
//!
//! The write key never comes from the recording: `--write-key` for every
//! project, or `--write-keys-file` with `PROJECT=KEY` lines.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;
use uuid::Uuid;

use crate::model::{Batch, Plan, PlannedRequest};
use crate::recording::{self, BadLines, Ids, RecordedRequest, TRANSPORT_HEADERS};
use crate::{send, summarize, verify, Summary};

/// The `replay` subcommand's flags.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(group(clap::ArgGroup::new("ids").required(true).args(["fresh_ids", "keep_ids"])))]
#[command(group(clap::ArgGroup::new("keys").required(true).args(["write_key", "write_keys_file"])))]
pub struct ReplayOptions {
    /// The recording: JSON lines from `spoor-loadtest record`.
    pub file: PathBuf,
    /// The edge's base URL, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    pub target: String,
    /// Replay this many times faster than recorded (0.5 is half speed).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// The write key for every project in the recording.
    #[arg(long)]
    pub write_key: Option<String>,
    /// `PROJECT=WRITE_KEY` lines, one per project in the recording.
    #[arg(long)]
    pub write_keys_file: Option<PathBuf>,
    /// Give every event a new id (copies in the recording share theirs).
    #[arg(long)]
    pub fresh_ids: bool,
    /// Send the recorded ids: the pipeline must store each event once.
    #[arg(long)]
    pub keep_ids: bool,
    /// Move event times so that each request's events are as old, at its
    /// replay, as they were at its recorded arrival.
    #[arg(long)]
    pub shift_time: bool,
    /// Replay the good lines of a recording with bad ones (listed) instead
    /// of refusing it.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Gzip request bodies (`Content-Encoding: gzip`).
    #[arg(long)]
    pub gzip: bool,
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Retries per request after connection errors or 5xx answers.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// Ask the edge for this ack mode (`X-Spoor-Ack`).
    #[arg(long, value_parser = ["fast", "durable"])]
    pub ack: Option<String>,
    /// ClickHouse HTTP URL; when set, the replay waits for its events to be stored.
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    #[arg(long, default_value = "spoor")]
    pub clickhouse_db: String,
    #[arg(long)]
    pub clickhouse_user: Option<String>,
    #[arg(long)]
    pub clickhouse_password: Option<String>,
    /// How long to wait for every acknowledged event to be stored.
    #[arg(long, default_value_t = 120)]
    pub verify_timeout_secs: u64,
    /// After everything is stored, wait this long and count again to catch late duplicates.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Write the machine-readable summary here.
    #[arg(long)]
    pub json_summary: Option<PathBuf>,
    /// Show a progress bar (the binary turns it on when stderr is a terminal).
    #[arg(skip)]
    pub progress: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            file: PathBuf::new(),
            target: String::new(),
            speed: 1.0,
            write_key: None,
            write_keys_file: None,
            fresh_ids: false,
            keep_ids: false,
            shift_time: false,
            skip_bad_lines: false,
            concurrency: 16,
            gzip: false,
            request_timeout_secs: 30,
            max_retries: 5,
            ack: None,
            clickhouse_url: None,
            clickhouse_db: "spoor".into(),
            clickhouse_user: None,
            clickhouse_password: None,
            verify_timeout_secs: 120,
            settle_ms: 1000,
            json_summary: None,
            progress: false,
        }
    }
}

/// What the summary says about a replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayInfo {
    pub file: String,
    pub speed: f64,
    /// `fresh` or `keep`.
    pub ids: &'static str,
    pub shift_time: bool,
    /// Recording lines not replayed (`--skip-bad-lines`).
    pub skipped_lines: usize,
    /// The recording's span, first to last request, in ms.
    pub recorded_span_ms: u64,
}

/// Reads `PROJECT=KEY` lines (blank lines and `#` comments skipped).
pub fn parse_keys_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut keys = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (project, key) = line
            .split_once('=')
            .map(|(p, k)| (p.trim(), k.trim()))
            .filter(|(p, k)| !p.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("line {}: expected PROJECT=WRITE_KEY", i + 1))?;
        if keys.insert(project.to_string(), key.to_string()).is_some() {
            return Err(format!("line {}: project {project} is listed twice", i + 1));
        }
    }
    Ok(keys)
}

/// A replay built from a recording: the plan the sender runs, the schedule
/// and each batch's project.
struct Built {
    plan: Plan,
    schedule: Vec<Duration>,
    projects: Vec<String>,
    bad: BadLines,
    span_ms: u64,
}

fn build(
    requests: &[RecordedRequest],
    opts: &ReplayOptions,
    keys: &dyn Fn(&str) -> Option<String>,
    run_id: Uuid,
    now_ms: i64,
) -> anyhow::Result<Built> {
    let ids = if opts.keep_ids { Ids::Keep } else { Ids::Fresh };
    let first = requests.first().map_or(0, |r| r.offset_ms);
    let span_ms = requests
        .last()
        .map_or(0, |r| r.offset_ms.saturating_sub(first));
    let missing: BTreeSet<&str> = requests
        .iter()
        .map(|r| r.project.as_str())
        .filter(|p| keys(p).is_none())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "no write key for project(s) {} (give --write-key, or list them in --write-keys-file)",
        missing.into_iter().collect::<Vec<_>>().join(", ")
    );
    let mut map = recording::IdMap::new();
    let mut fresh = Uuid::new_v4;
    let mut bad = BadLines::default();
    let mut plan = Plan {
        run_id,
        batches: Vec::new(),
        requests: Vec::new(),
    };
    let mut schedule = Vec::new();
    let mut projects = Vec::new();
    for r in requests {
        let secs = r.offset_ms.saturating_sub(first) as f64 / 1000.0 / opts.speed;
        let due = Duration::try_from_secs_f64(secs).map_err(|_| {
            anyhow::anyhow!(
                "line {}: offset_ms {} at --speed {} is not a time one can wait for",
                r.line,
                r.offset_ms,
                opts.speed
            )
        })?;
        let shift = if opts.shift_time {
            recording::arrival_ms(r).map(|arrival| {
                let replay_at = now_ms.saturating_add(i64::try_from(due.as_millis()).unwrap_or(0));
                replay_at.saturating_sub(arrival)
            })
        } else {
            None
        };
        let (body, accepted) = match recording::rewrite(r, ids, &mut map, &mut fresh, shift) {
            Ok(x) => x,
            Err(reason) => {
                bad.push_line(r.line, reason);
                continue;
            }
        };
        let mut unique = HashSet::new();
        let valid_ids: Vec<Uuid> = accepted
            .into_iter()
            .filter(|id| unique.insert(*id))
            .collect();
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !TRANSPORT_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(key) = keys(&r.project) {
            headers.push(("x-spoor-write-key".into(), key));
        }
        plan.requests.push(PlannedRequest {
            batch: plan.batches.len(),
            resend: false,
        });
        plan.batches.push(Batch {
            anonymous_id: String::new(),
            user_agent: "",
            events: body["batch"].as_array().map_or(0, Vec::len),
            body: body.to_string(),
            sent_at_ms: 0,
            valid_ids,
            rejections: Vec::new(),
            headers,
        });
        schedule.push(due);
        projects.push(r.project.clone());
    }
    Ok(Built {
        plan,
        schedule,
        projects,
        bad,
        span_ms,
    })
}

/// Reads the recording, refusing one with bad lines unless told to skip
/// them (then they are logged and counted).
pub fn load(path: &Path, skip_bad_lines: bool) -> anyhow::Result<(Vec<RecordedRequest>, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (recording, bad) = recording::parse(&text);
    check_bad(path, &bad, skip_bad_lines)?;
    anyhow::ensure!(
        !recording.requests.is_empty(),
        "{} holds no requests to replay",
        path.display()
    );
    Ok((recording.requests, bad.count))
}

fn check_bad(path: &Path, bad: &BadLines, skip: bool) -> anyhow::Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    if skip {
        tracing::warn!(file = %path.display(), "skipping {bad}");
        return Ok(());
    }
    anyhow::bail!(
        "{}: {bad}\nnothing was sent; fix the lines, or pass --skip-bad-lines to replay the good ones",
        path.display()
    )
}

/// Replays a recording against the edge and (with ClickHouse configured)
/// verifies storage.
pub async fn replay(opts: &ReplayOptions) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        opts.speed.is_finite() && opts.speed > 0.0,
        "--speed must be a positive number, got {}",
        opts.speed
    );
    anyhow::ensure!(
        opts.fresh_ids != opts.keep_ids,
        "choose one of --fresh-ids and --keep-ids"
    );
    let keys: BTreeMap<String, String> = match (&opts.write_key, &opts.write_keys_file) {
        (Some(_), Some(_)) => anyhow::bail!("give --write-key or --write-keys-file, not both"),
        (None, None) => anyhow::bail!("give --write-key or --write-keys-file"),
        (Some(_), None) => BTreeMap::new(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse_keys_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    let lookup = |project: &str| {
        opts.write_key
            .clone()
            .or_else(|| keys.get(project).cloned())
    };

    let (requests, mut skipped) = load(&opts.file, opts.skip_bad_lines)?;
    let run_id = Uuid::new_v4();
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let built = build(&requests, opts, &lookup, run_id, now_ms)?;
    check_bad(&opts.file, &built.bad, opts.skip_bad_lines)?;
    skipped += built.bad.count;
    anyhow::ensure!(
        !built.plan.requests.is_empty(),
        "{} holds no requests to replay",
        opts.file.display()
    );
    tracing::info!(
        %run_id,
        requests = built.plan.requests.len(),
        span_ms = built.span_ms,
        speed = opts.speed,
        "replaying"
    );
    let plan = Arc::new(built.plan);
    let stats = send::send(
        plan.clone(),
        send::SendConfig {
            edge_url: opts.target.clone(),
            // Each batch carries its project's key.
            write_key: String::new(),
            concurrency: opts.concurrency,
            rate: 0.0,
            gzip: opts.gzip,
            request_timeout: Duration::from_secs(opts.request_timeout_secs),
            max_retries: opts.max_retries,
            progress: opts.progress,
            ack: opts.ack.clone(),
            schedule: Some(built.schedule),
        },
    )
    .await?;

    // What storage must hold, by project.
    let mut expected: BTreeMap<&str, (HashSet<Uuid>, HashSet<Uuid>)> = BTreeMap::new();
    for ((batch, project), acked) in plan.batches.iter().zip(&built.projects).zip(&stats.acked) {
        let (must, may) = expected.entry(project).or_default();
        let set = if *acked { must } else { may };
        set.extend(batch.valid_ids.iter().copied());
    }
    for (must, may) in expected.values_mut() {
        may.retain(|id| !must.contains(id));
    }
    let unique_valid = expected.values().map(|(must, _)| must.len()).sum();
    let verification = match &opts.clickhouse_url {
        None => None,
        Some(url) => {
            let mut all: Option<verify::Verification> = None;
            let several = expected.len() > 1;
            for (project, (must, may)) in &expected {
                let cfg = verify::VerifyConfig {
                    clickhouse: spoor_store::ClickHouseConfig {
                        url: url.clone(),
                        database: opts.clickhouse_db.clone(),
                        user: opts.clickhouse_user.clone(),
                        password: opts.clickhouse_password.clone(),
                    },
                    project: project.to_string(),
                    timeout: Duration::from_secs(opts.verify_timeout_secs),
                    poll_interval: Duration::from_millis(200),
                    settle: Duration::from_millis(opts.settle_ms),
                };
                let v = verify::verify_ids(&cfg, must, may, stats.finished_at).await;
                all = Some(merge(all, v, several.then_some(*project)));
            }
            all
        }
    };
    let info = ReplayInfo {
        file: opts.file.display().to_string(),
        speed: opts.speed,
        ids: if opts.keep_ids { "keep" } else { "fresh" },
        shift_time: opts.shift_time,
        skipped_lines: skipped,
        recorded_span_ms: built.span_ms,
    };
    let summary = summarize(run_id, 0, 0, &stats, unique_valid, verification, Some(info));
    if let Some(path) = &opts.json_summary {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

/// One verification for several projects: counts add up, storage is
/// complete when it is for every project, problems name their project.
fn merge(
    all: Option<verify::Verification>,
    v: verify::Verification,
    project: Option<&str>,
) -> verify::Verification {
    let problems = v.problems.into_iter().map(|p| match project {
        Some(project) => format!("project {project}: {p}"),
        None => p,
    });
    match all {
        None => verify::Verification {
            problems: problems.collect(),
            ..v
        },
        Some(mut a) => {
            a.stored += v.stored;
            a.stored_unique += v.stored_unique;
            a.store_delay = match (a.store_delay, v.store_delay) {
                (Some(x), Some(y)) => Some(x.max(y)),
                _ => None,
            };
            a.problems.extend(problems);
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_files_name_their_bad_line() {
        let keys = parse_keys_file("# keys\nshop = wk_shop\n\nblog=wk_blog\n").unwrap();
        assert_eq!(keys["shop"], "wk_shop");
        assert_eq!(keys["blog"], "wk_blog");
        assert_eq!(
            parse_keys_file("shop=a\nblog\n").unwrap_err(),
            "line 2: expected PROJECT=WRITE_KEY"
        );
        assert_eq!(
            parse_keys_file("shop=a\nshop=b").unwrap_err(),
            "line 2: project shop is listed twice"
        );
    }

    fn request(
        line: usize,
        offset_ms: u64,
        project: &str,
        events: serde_json::Value,
    ) -> RecordedRequest {
        RecordedRequest {
            offset_ms,
            project: project.into(),
            received_at_ms: Some(1_000_000 + offset_ms as i64),
            headers: [
                ("content-type".to_string(), "application/json".to_string()),
                ("content-length".to_string(), "12".to_string()),
            ]
            .into(),
            body: json!({ "batch": events }),
            line,
        }
    }

    #[test]
    fn a_plan_keeps_arrivals_scaled_and_each_projects_key() {
        let id = |n: u128| Uuid::from_u128(n).to_string();
        let requests = vec![
            request(
                2,
                1_000,
                "shop",
                json!([{"event": "a", "event_id": id(1), "timestamp": 999_000}]),
            ),
            request(
                3,
                3_000,
                "blog",
                json!([{"event": "b", "event_id": id(2)}, {"event": "b", "event_id": id(2)}]),
            ),
            request(4, 21_000, "shop", json!([{"event": "c"}])),
        ];
        let opts = ReplayOptions {
            speed: 10.0,
            keep_ids: true,
            shift_time: true,
            ..ReplayOptions::default()
        };
        let keys = |p: &str| Some(format!("wk_{p}"));
        let built = build(&requests, &opts, &keys, Uuid::nil(), 5_000_000).unwrap();
        // Offsets from the first request, divided by the speed.
        assert_eq!(
            built.schedule,
            vec![Duration::ZERO, Duration::from_millis(200)]
        );
        assert_eq!(built.projects, vec!["shop", "blog"]);
        assert_eq!(built.span_ms, 20_000);
        // --keep-ids needs an id: line 4 is named and left out.
        assert_eq!(built.bad.count, 1);
        assert!(
            built.bad.first[0]
                .to_string()
                .starts_with("line 4: event 0 has no event_id"),
            "{}",
            built.bad
        );
        let b0 = &built.plan.batches[0];
        assert!(b0
            .headers
            .contains(&("x-spoor-write-key".into(), "wk_shop".into())));
        assert!(b0
            .headers
            .contains(&("content-type".into(), "application/json".into())));
        assert!(!b0.headers.iter().any(|(k, _)| k == "content-length"));
        // Arrived at 1,001,000 and replayed at 5,000,000: moved by the difference.
        let body: serde_json::Value = serde_json::from_str(&b0.body).unwrap();
        assert_eq!(
            body["batch"][0]["timestamp"],
            999_000 + 5_000_000 - 1_001_000
        );
        // An id repeated within one request is one event to store.
        assert_eq!(built.plan.batches[1].valid_ids, vec![Uuid::from_u128(2)]);
        assert_eq!(built.plan.batches[1].events, 2);
        assert!(built.plan.batches[1]
            .headers
            .contains(&("x-spoor-write-key".into(), "wk_blog".into())));

        let no_keys = |_: &str| None;
        let err = build(&requests, &opts, &no_keys, Uuid::nil(), 0)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("no write key for project(s) blog, shop"),
            "{err}"
        );
    }
}
