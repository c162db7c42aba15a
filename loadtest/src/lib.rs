//! spoor-loadtest: drives the pipeline with realistic, checkable traffic.
//!
//! A run generates a seeded clickstream (`model`), sends it to the edge with
//! a pool of paced workers (`send`), checks every receipt against what the
//! model says the edge must answer (`expect`) and, when given ClickHouse,
//! waits until exactly the acknowledged valid events are stored, once each
//! (`verify`). `run` is the whole thing as a library call, so end-to-end
//! tests drive it directly; the binary only parses flags and prints.
//!
//! Real traffic can be played instead: `record` saves a time range of the
//! events stream as a `recording` (JSON lines of requests with their
//! arrival offsets) and `replay` sends it again at a chosen speed, through
//! the same `send` and `verify`.
//!
//! The model and the recording format are pure; everything that touches
//! the network, the clock or OS randomness lives in `send`, `verify`,
//! `record`, `replay` and `run`.

pub mod expect;
pub mod model;
pub mod record;
pub mod recording;
pub mod replay;
pub mod send;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;
use uuid::Uuid;

pub use model::{generate, ModelConfig, Plan};
pub use record::{record, RecordConfig, Recorded};
pub use replay::{replay, ReplayInfo, ReplayOptions};

/// The traffic to generate (shared by `run` and `generate`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TrafficArgs {
    /// Unique events to generate, valid and invalid, before resends.
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Simulated users (each with one or two devices).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Most events per request (the edge allows 500).
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Share of generated events that are invalid, each with one known defect.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_ratio: f64,
    /// Resent requests per original request (verbatim copies, same event ids).
    #[arg(long, default_value_t = 0.0)]
    pub resend_ratio: f64,
    /// Seeds the traffic's shape; ids also depend on the run id.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The run id tagged into every event (`properties.run_id`); random by default.
    #[arg(long)]
    pub run_id: Option<Uuid>,
}

impl Default for TrafficArgs {
    fn default() -> Self {
        TrafficArgs {
            events: 10_000,
            users: 200,
            batch_size: 50,
            invalid_ratio: 0.0,
            resend_ratio: 0.0,
            seed: 42,
            run_id: None,
        }
    }
}

impl TrafficArgs {
    pub fn model(&self, run_id: Uuid, now_ms: i64) -> ModelConfig {
        ModelConfig {
            seed: self.seed,
            run_id,
            now_ms,
            events: self.events,
            users: self.users,
            batch_size: self.batch_size,
            invalid_ratio: self.invalid_ratio,
            resend_ratio: self.resend_ratio,
        }
    }
}

/// Everything `run` needs; the `run` subcommand's flags.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct RunOptions {
    /// The edge's base URL, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    pub edge_url: String,
    /// Sent as `X-Spoor-Write-Key`.
    #[arg(long)]
    pub write_key: String,
    /// The project id the write key maps to (used to find stored rows).
    #[arg(long)]
    pub project: String,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Target events per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Gzip request bodies (`Content-Encoding: gzip`).
    #[arg(long)]
    pub gzip: bool,
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Retries per request after connection errors or 5xx answers.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// ClickHouse HTTP URL; when set, the run waits for its events to be stored.
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
    /// Ask the edge for this ack mode (`X-Spoor-Ack: durable|fast`); unset
    /// leaves the edge's default (fast, unless an event is critical).
    #[arg(long, value_parser = ["fast", "durable"])]
    pub ack: Option<String>,
    /// Write the machine-readable summary here.
    #[arg(long)]
    pub json_summary: Option<PathBuf>,
    /// Show a progress bar (the binary turns it on when stderr is a terminal).
    #[arg(skip)]
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            edge_url: String::new(),
            write_key: String::new(),
            project: String::new(),
            traffic: TrafficArgs::default(),
            concurrency: 8,
            rate: 0.0,
            gzip: false,
            request_timeout_secs: 30,
            max_retries: 5,
            clickhouse_url: None,
            clickhouse_db: "spoor".into(),
            clickhouse_user: None,
            clickhouse_password: None,
            verify_timeout_secs: 120,
            settle_ms: 1000,
            ack: None,
            json_summary: None,
            progress: false,
        }
    }
}

/// The outcome of a run. Serialized as the `--json-summary` file.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run_id: Uuid,
    pub seed: u64,
    /// Planned requests, resends included, retries not.
    pub requests: usize,
    pub resends: usize,
    pub retries: usize,
    /// 429 answers waited out.
    pub throttled: usize,
    pub failed_requests: usize,
    /// Events in every attempt, resends, retries and invalid events included.
    pub sent: usize,
    /// Sum of the edge's `accepted`.
    pub accepted: usize,
    /// Sum of the edge's rejections.
    pub rejected: usize,
    pub rejected_by_reason: BTreeMap<String, usize>,
    /// Distinct valid events in acknowledged requests: what storage must hold.
    pub unique_valid: usize,
    /// Rows found in ClickHouse, when verified.
    pub stored: Option<u64>,
    pub stored_unique: Option<u64>,
    pub p50_ack_ms: f64,
    pub p90_ack_ms: f64,
    pub p99_ack_ms: f64,
    pub max_ack_ms: f64,
    /// The edge's own ack time (`X-Spoor-Ack-Ms`, whole ms) over the 202s.
    pub server_p50_ack_ms: f64,
    pub server_p99_ack_ms: f64,
    pub server_max_ack_ms: f64,
    /// 202s by the ack mode the edge reported.
    pub ack_modes: BTreeMap<String, usize>,
    pub send_secs: f64,
    pub events_per_sec: f64,
    pub requests_per_sec: f64,
    /// From the last answer until every acknowledged event was stored.
    pub store_delay_ms: Option<f64>,
    pub ok: bool,
    pub mismatch_count: usize,
    /// The first mismatches (receipts, HTTP failures, then storage).
    pub mismatches: Vec<String>,
    /// Set for a replay of a recording (then `seed` and `resends` are 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayInfo>,
}

/// Generates, sends and (with ClickHouse configured) verifies one run.
pub async fn run(opts: &RunOptions) -> anyhow::Result<Summary> {
    let run_id = opts.traffic.run_id.unwrap_or_else(Uuid::new_v4);
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let plan = generate(&opts.traffic.model(run_id, now_ms)).map_err(anyhow::Error::msg)?;
    tracing::info!(
        %run_id,
        batches = plan.batches.len(),
        requests = plan.requests.len(),
        unique_valid = plan.unique_valid(),
        invalid = plan.invalid(),
        "plan generated"
    );
    let plan = Arc::new(plan);
    let stats = send::send(
        plan.clone(),
        send::SendConfig {
            edge_url: opts.edge_url.clone(),
            write_key: opts.write_key.clone(),
            concurrency: opts.concurrency,
            rate: opts.rate,
            gzip: opts.gzip,
            request_timeout: Duration::from_secs(opts.request_timeout_secs),
            max_retries: opts.max_retries,
            progress: opts.progress,
            ack: opts.ack.clone(),
            schedule: None,
        },
    )
    .await?;

    let (must, may) = expect::expected_ids(&plan, &stats.acked);
    let verification = match &opts.clickhouse_url {
        None => None,
        Some(url) => {
            let cfg = verify::VerifyConfig {
                clickhouse: spoor_store::ClickHouseConfig {
                    url: url.clone(),
                    database: opts.clickhouse_db.clone(),
                    user: opts.clickhouse_user.clone(),
                    password: opts.clickhouse_password.clone(),
                },
                project: opts.project.clone(),
                timeout: Duration::from_secs(opts.verify_timeout_secs),
                poll_interval: Duration::from_millis(200),
                settle: Duration::from_millis(opts.settle_ms),
            };
            Some(verify::verify(&cfg, run_id, &must, &may, stats.finished_at).await)
        }
    };
    let summary = summarize(
        run_id,
        opts.traffic.seed,
        plan.resends(),
        &stats,
        must.len(),
        verification,
        None,
    );
    if let Some(path) = &opts.json_summary {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

/// The summary of a send and its verification (`run` and `replay`).
pub(crate) fn summarize(
    run_id: Uuid,
    seed: u64,
    resends: usize,
    stats: &send::SendStats,
    unique_valid: usize,
    verification: Option<verify::Verification>,
    replay: Option<ReplayInfo>,
) -> Summary {
    let ms = |us: u64| us as f64 / 1000.0;
    let h = &stats.latency_us;
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    let mut mismatches = stats.mismatches.clone();
    let mut mismatch_count = stats.mismatch_count;
    if let Some(v) = &verification {
        mismatch_count += v.problems.len();
        mismatches.extend(v.problems.iter().cloned());
    }
    Summary {
        run_id,
        seed,
        requests: stats.requests,
        resends,
        retries: stats.retries,
        throttled: stats.throttled,
        failed_requests: stats.failed_requests,
        sent: stats.events_sent,
        accepted: stats.accepted,
        rejected: stats.rejected,
        rejected_by_reason: stats.rejected_by_reason.clone(),
        unique_valid,
        stored: verification.as_ref().map(|v| v.stored),
        stored_unique: verification.as_ref().map(|v| v.stored_unique),
        p50_ack_ms: ms(h.value_at_quantile(0.50)),
        p90_ack_ms: ms(h.value_at_quantile(0.90)),
        p99_ack_ms: ms(h.value_at_quantile(0.99)),
        max_ack_ms: ms(h.max()),
        server_p50_ack_ms: ms(stats.server_ack_us.value_at_quantile(0.50)),
        server_p99_ack_ms: ms(stats.server_ack_us.value_at_quantile(0.99)),
        server_max_ack_ms: ms(stats.server_ack_us.max()),
        ack_modes: stats.ack_modes.clone(),
        send_secs: stats.elapsed.as_secs_f64(),
        events_per_sec: stats.events_sent as f64 / secs,
        requests_per_sec: stats.attempts as f64 / secs,
        store_delay_ms: verification
            .as_ref()
            .and_then(|v| v.store_delay)
            .map(|d| d.as_secs_f64() * 1000.0),
        ok: mismatch_count == 0,
        mismatch_count,
        mismatches,
        replay,
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.replay {
            None => writeln!(f, "spoor-loadtest run {} (seed {})", self.run_id, self.seed)?,
            Some(r) => writeln!(
                f,
                "spoor-loadtest replay {} at {}x ({} ids{}; {:.1} s recorded{}), replay {}",
                r.file,
                r.speed,
                r.ids,
                if r.shift_time { ", times shifted" } else { "" },
                r.recorded_span_ms as f64 / 1000.0,
                if r.skipped_lines > 0 {
                    format!(", {} bad lines skipped", r.skipped_lines)
                } else {
                    String::new()
                },
                self.run_id
            )?,
        }
        writeln!(
            f,
            "  requests    {} ({} resends), {} retries, {} throttled, {} failed",
            self.requests, self.resends, self.retries, self.throttled, self.failed_requests
        )?;
        writeln!(
            f,
            "  events      {} sent: {} accepted, {} rejected",
            self.sent, self.accepted, self.rejected
        )?;
        if !self.rejected_by_reason.is_empty() {
            let by: Vec<String> = self
                .rejected_by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "  rejected    {}", by.join(", "))?;
        }
        writeln!(
            f,
            "  throughput  {:.0} events/s, {:.1} requests/s over {:.2} s",
            self.events_per_sec, self.requests_per_sec, self.send_secs
        )?;
        if self.accepted + self.rejected == 0 {
            writeln!(f, "  ack latency n/a (no request was acknowledged)")?;
        } else {
            writeln!(
                f,
                "  ack latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                self.p50_ack_ms, self.p90_ack_ms, self.p99_ack_ms, self.max_ack_ms
            )?;
            let modes: Vec<String> = self
                .ack_modes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(
                f,
                "  server ack  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (X-Spoor-Ack-Ms; modes: {})",
                self.server_p50_ack_ms,
                self.server_p99_ack_ms,
                self.server_max_ack_ms,
                if modes.is_empty() { "none reported".into() } else { modes.join(", ") }
            )?;
        }
        match (self.stored, self.stored_unique) {
            (Some(n), Some(u)) => {
                write!(
                    f,
                    "  stored      {n} rows, {u} unique of {} expected",
                    self.unique_valid
                )?;
                match self.store_delay_ms {
                    Some(d) => writeln!(f, ", all stored {:.2} s after the last ack", d / 1000.0)?,
                    None => writeln!(f, ", not all stored")?,
                }
            }
            _ => writeln!(
                f,
                "  stored      not verified ({} unique valid events acknowledged)",
                self.unique_valid
            )?,
        }
        if self.ok {
            write!(f, "  verdict     OK")
        } else {
            writeln!(f, "  verdict     FAIL: {} mismatches", self.mismatch_count)?;
            for m in &self.mismatches {
                writeln!(f, "    - {m}")?;
            }
            if self.mismatch_count > self.mismatches.len() {
                writeln!(
                    f,
                    "    … and {} more",
                    self.mismatch_count - self.mismatches.len()
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunOptions,
    }

    /// The library's defaults and the CLI's defaults must not drift apart.
    #[test]
    fn defaults_agree_with_the_cli() {
        let cli = Cli::parse_from([
            "x",
            "--edge-url",
            "http://e",
            "--write-key",
            "wk",
            "--project",
            "p",
        ]);
        let want = RunOptions {
            edge_url: "http://e".into(),
            write_key: "wk".into(),
            project: "p".into(),
            ..RunOptions::default()
        };
        assert_eq!(cli.run, want);
    }

    #[test]
    fn demo_flags_parse() {
        let cli = Cli::parse_from(
            "x --edge-url http://127.0.0.1:1 --write-key wk_demo --project demo --events 10000 --users 200 \
             --batch-size 50 --concurrency 8 --rate 0 --invalid-ratio 0.02 --resend-ratio 0.1 --seed 42 \
             --clickhouse-url http://127.0.0.1:2 --clickhouse-db spoor --verify-timeout-secs 120 \
             --json-summary /tmp/s.json --gzip"
                .split_whitespace(),
        );
        assert_eq!(cli.run.traffic.invalid_ratio, 0.02);
        assert_eq!(cli.run.traffic.resend_ratio, 0.1);
        assert_eq!(
            cli.run.clickhouse_url.as_deref(),
            Some("http://127.0.0.1:2")
        );
        assert!(cli.run.gzip);
    }
}
