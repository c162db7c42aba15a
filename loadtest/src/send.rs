//! The sender: replays a plan's requests against the edge with a pool of
//! workers, optionally paced to a target event rate or to a schedule of due
//! times (a recording's arrivals), and checks every answer against the plan.
//!
//! Latency is measured per attempt, from the moment the request is handed to
//! the HTTP client to the moment the 202 and its receipt have been read.
//! Pacing is open-loop (request `i` is due at `cumulative events / rate`),
//! but a worker that falls behind sends late rather than recording the
//! wait, so under overload the histogram shows service time, not the queueing
//! a real SDK would see (coordinated omission). Throughput shows the overload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use tokio::time::Instant;

use crate::expect::{check_receipt, EdgeError, EdgeReceipt};
use crate::model::Plan;

/// Mismatch descriptions kept for the report; the count is always exact.
pub const MISMATCHES_KEPT: usize = 20;
/// Most 429 answers one request waits out before giving up.
const MAX_THROTTLES: u32 = 30;

#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Base URL; requests go to `{edge_url}/v1/batch`.
    pub edge_url: String,
    pub write_key: String,
    pub concurrency: usize,
    /// Target events per second; 0 sends as fast as the workers can.
    pub rate: f64,
    pub gzip: bool,
    pub request_timeout: Duration,
    /// Retries after a connection error or a 5xx (429s are waited out separately).
    pub max_retries: u32,
    pub progress: bool,
    /// Sent as `X-Spoor-Ack` when set (`durable` or `fast`).
    pub ack: Option<String>,
    /// When each request is due, from the start (a replay's recorded
    /// arrivals, scaled); overrides `rate`.
    pub schedule: Option<Vec<Duration>>,
}

/// What sending observed.
#[derive(Debug)]
pub struct SendStats {
    pub requests: usize,
    /// HTTP attempts, including retries.
    pub attempts: usize,
    pub retries: usize,
    pub throttled: usize,
    /// Requests never answered with a 202.
    pub failed_requests: usize,
    /// Events in every attempt made.
    pub events_sent: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub rejected_by_reason: BTreeMap<String, usize>,
    /// Final status of each request, by status code (0: no HTTP answer).
    pub statuses: BTreeMap<u16, usize>,
    /// Ack latency of each 202, in microseconds.
    pub latency_us: Histogram<u64>,
    /// The edge's own `X-Spoor-Ack-Ms` of each 202, in microseconds (the
    /// header has millisecond resolution; 0 ms is recorded as 1 µs).
    pub server_ack_us: Histogram<u64>,
    /// 202s by the ack mode the edge reported (`X-Spoor-Ack`).
    pub ack_modes: BTreeMap<String, usize>,
    /// Per batch: acknowledged at least once.
    pub acked: Vec<bool>,
    pub mismatch_count: usize,
    /// The first mismatches, in request order.
    pub mismatches: Vec<String>,
    pub elapsed: Duration,
    /// When the last answer arrived.
    pub finished_at: Instant,
}

struct Shared {
    plan: Arc<Plan>,
    bodies: Vec<Bytes>,
    /// Per batch: its full header set when it has headers of its own.
    batch_headers: Vec<Option<HeaderMap>>,
    /// Due time of each request relative to the start, when paced.
    due: Option<Vec<Duration>>,
    next: AtomicUsize,
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    cfg: SendConfig,
    progress: ProgressBar,
    start: Instant,
}

#[derive(Default)]
struct WorkerStats {
    attempts: usize,
    retries: usize,
    throttled: usize,
    failed_requests: usize,
    events_sent: usize,
    accepted: usize,
    rejected: usize,
    rejected_by_reason: BTreeMap<String, usize>,
    statuses: BTreeMap<u16, usize>,
    latency_us: Option<Histogram<u64>>,
    server_ack_us: Option<Histogram<u64>>,
    ack_modes: BTreeMap<String, usize>,
    acked: Vec<usize>,
    mismatch_count: usize,
    mismatches: Vec<(usize, String)>,
}

impl WorkerStats {
    fn mismatch(&mut self, request: usize, text: String) {
        self.mismatch_count += 1;
        if self.mismatches.len() < MISMATCHES_KEPT {
            self.mismatches.push((request, text));
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 h at 3 significant digits: a few tens of KB.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Sends every request of `plan` and checks the answers.
pub async fn send(plan: Arc<Plan>, cfg: SendConfig) -> anyhow::Result<SendStats> {
    anyhow::ensure!(cfg.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        cfg.rate >= 0.0 && cfg.rate.is_finite(),
        "--rate must be a non-negative number"
    );
    let bodies = plan
        .batches
        .iter()
        .map(|b| {
            if cfg.gzip {
                gzip(b.body.as_bytes())
            } else {
                Ok(Bytes::from(b.body.clone()))
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(schedule) = &cfg.schedule {
        anyhow::ensure!(
            schedule.len() == plan.requests.len(),
            "the schedule has {} due times for {} requests",
            schedule.len(),
            plan.requests.len()
        );
    }
    let due = cfg.schedule.clone().or_else(|| {
        (cfg.rate > 0.0).then(|| {
            let mut sum = 0usize;
            plan.requests
                .iter()
                .map(|r| {
                    let at = Duration::from_secs_f64(sum as f64 / cfg.rate);
                    sum += plan.batches[r.batch].events;
                    at
                })
                .collect()
        })
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.concurrency)
        .timeout(cfg.request_timeout)
        .build()
        .context("building the HTTP client")?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Empty when every batch carries its own (a replay with a keys file).
    if !cfg.write_key.is_empty() {
        headers.insert(
            "X-Spoor-Write-Key",
            HeaderValue::from_str(&cfg.write_key)
                .context("the write key is not a valid header value")?,
        );
    }
    if cfg.gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Some(ack) = &cfg.ack {
        headers.insert(
            "X-Spoor-Ack",
            HeaderValue::from_str(ack).context("--ack is not a valid header value")?,
        );
    }
    let batch_headers = plan
        .batches
        .iter()
        .enumerate()
        .map(|(b, batch)| {
            if batch.headers.is_empty() {
                return Ok(None);
            }
            let mut all = headers.clone();
            for (name, value) in &batch.headers {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .with_context(|| format!("batch {b}: header name {name:?}"))?;
                let value = HeaderValue::from_str(value)
                    .with_context(|| format!("batch {b}: header {name}'s value"))?;
                all.insert(name, value);
            }
            Ok(Some(all))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let progress = if cfg.progress {
        let pb = ProgressBar::new(plan.requests.len() as u64);
        let style = ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}, eta {eta}) {msg}",
        )
        .context("progress bar template")?
        .progress_chars("=> ");
        pb.set_style(style);
        pb
    } else {
        ProgressBar::hidden()
    };
    let url = format!("{}/v1/batch", cfg.edge_url.trim_end_matches('/'));
    let n_batches = plan.batches.len();
    let n_requests = plan.requests.len();
    let shared = Arc::new(Shared {
        plan,
        bodies,
        batch_headers,
        due,
        next: AtomicUsize::new(0),
        client,
        url,
        headers,
        progress: progress.clone(),
        start: Instant::now(),
        cfg,
    });

    let workers: Vec<_> = (0..shared.cfg.concurrency)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut stats = SendStats {
        requests: n_requests,
        attempts: 0,
        retries: 0,
        throttled: 0,
        failed_requests: 0,
        events_sent: 0,
        accepted: 0,
        rejected: 0,
        rejected_by_reason: BTreeMap::new(),
        statuses: BTreeMap::new(),
        latency_us: new_histogram(),
        server_ack_us: new_histogram(),
        ack_modes: BTreeMap::new(),
        acked: vec![false; n_batches],
        mismatch_count: 0,
        mismatches: Vec::new(),
        elapsed: Duration::ZERO,
        finished_at: Instant::now(),
    };
    let mut mismatches = Vec::new();
    for w in workers {
        let w = w.await.context("a sender worker panicked")?;
        stats.attempts += w.attempts;
        stats.retries += w.retries;
        stats.throttled += w.throttled;
        stats.failed_requests += w.failed_requests;
        stats.events_sent += w.events_sent;
        stats.accepted += w.accepted;
        stats.rejected += w.rejected;
        for (k, v) in w.rejected_by_reason {
            *stats.rejected_by_reason.entry(k).or_default() += v;
        }
        for (k, v) in w.statuses {
            *stats.statuses.entry(k).or_default() += v;
        }
        if let Some(h) = w.latency_us {
            stats
                .latency_us
                .add(h)
                .context("merging latency histograms")?;
        }
        if let Some(h) = w.server_ack_us {
            stats
                .server_ack_us
                .add(h)
                .context("merging server ack histograms")?;
        }
        for (k, v) in w.ack_modes {
            *stats.ack_modes.entry(k).or_default() += v;
        }
        for b in w.acked {
            stats.acked[b] = true;
        }
        stats.mismatch_count += w.mismatch_count;
        mismatches.extend(w.mismatches);
    }
    mismatches.sort_by_key(|(i, _)| *i);
    stats.mismatches = mismatches
        .into_iter()
        .take(MISMATCHES_KEPT)
        .map(|(_, m)| m)
        .collect();
    stats.finished_at = Instant::now();
    stats.elapsed = stats.finished_at - shared.start;
    progress.finish_and_clear();
    Ok(stats)
}

fn gzip(body: &[u8]) -> anyhow::Result<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body)?;
    Ok(Bytes::from(enc.finish()?))
}

async fn worker(shared: Arc<Shared>) -> WorkerStats {
    let mut stats = WorkerStats {
        latency_us: Some(new_histogram()),
        server_ack_us: Some(new_histogram()),
        ..WorkerStats::default()
    };
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(req) = shared.plan.requests.get(i).copied() else {
            break;
        };
        if let Some(due) = &shared.due {
            tokio::time::sleep_until(shared.start + due[i]).await;
        }
        send_one(&shared, i, req.batch, req.resend, &mut stats).await;
        shared.progress.inc(1);
    }
    stats
}

/// Sends request `i` (batch `b`) until it is answered for good.
async fn send_one(shared: &Shared, i: usize, b: usize, resend: bool, stats: &mut WorkerStats) {
    let batch = &shared.plan.batches[b];
    let what = format!(
        "request {i} (batch {b}{})",
        if resend { ", resend" } else { "" }
    );
    let mut failures = 0u32;
    let mut throttles = 0u32;
    loop {
        stats.attempts += 1;
        stats.events_sent += batch.events;
        let started = Instant::now();
        let mut request = shared.client.post(&shared.url);
        if !batch.user_agent.is_empty() {
            request = request.header(USER_AGENT, batch.user_agent);
        }
        let headers = shared.batch_headers[b].as_ref().unwrap_or(&shared.headers);
        let res = request
            .headers(headers.clone())
            .body(shared.bodies[b].clone())
            .send()
            .await;
        let resp = match res {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                if failures > shared.cfg.max_retries {
                    stats.failed_requests += 1;
                    *stats.statuses.entry(0).or_default() += 1;
                    stats.mismatch(
                        i,
                        format!("{what}: no answer after {failures} attempts: {}", chain(&e)),
                    );
                    return;
                }
                tracing::debug!(request = i, error = %chain(&e), "retrying after a connection error");
                stats.retries += 1;
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let server_ack_ms = resp
            .headers()
            .get("X-Spoor-Ack-Ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let ack_mode = resp
            .headers()
            .get("X-Spoor-Ack")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                failures += 1;
                if failures > shared.cfg.max_retries {
                    stats.failed_requests += 1;
                    *stats.statuses.entry(status).or_default() += 1;
                    stats.mismatch(
                        i,
                        format!(
                            "{what}: HTTP {status}, body unreadable after {failures} attempts: {}",
                            chain(&e)
                        ),
                    );
                    return;
                }
                stats.retries += 1;
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        match status {
            202 => {
                let took = started.elapsed();
                if let Some(h) = stats.latency_us.as_mut() {
                    h.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
                }
                if let (Some(ms), Some(h)) = (server_ack_ms, stats.server_ack_us.as_mut()) {
                    h.saturating_record(ms.saturating_mul(1000).max(1));
                }
                if let Some(mode) = ack_mode {
                    *stats.ack_modes.entry(mode).or_default() += 1;
                }
                *stats.statuses.entry(202).or_default() += 1;
                stats.acked.push(b);
                match serde_json::from_slice::<EdgeReceipt>(&body) {
                    Ok(receipt) => {
                        stats.accepted += receipt.accepted;
                        stats.rejected += receipt.rejected.len();
                        for r in &receipt.rejected {
                            *stats
                                .rejected_by_reason
                                .entry(r.reason.clone())
                                .or_default() += 1;
                        }
                        let problems = check_receipt(batch, &receipt);
                        if !problems.is_empty() {
                            stats.mismatch(i, format!("{what}: {}", problems.join("; ")));
                        }
                    }
                    Err(e) => {
                        stats.mismatch(i, format!("{what}: 202 with an unreadable receipt: {e}"))
                    }
                }
                return;
            }
            429 => {
                // Refused as a whole: none of its events count as sent; the
                // request goes again after Retry-After.
                stats.events_sent -= batch.events;
                throttles += 1;
                stats.throttled += 1;
                if retry_after.is_none() {
                    // The edge's contract: a 429 says when to come back.
                    stats.mismatch(i, format!("{what}: 429 without a Retry-After in seconds"));
                }
                if throttles > MAX_THROTTLES {
                    stats.failed_requests += 1;
                    *stats.statuses.entry(429).or_default() += 1;
                    stats.mismatch(
                        i,
                        format!("{what}: still throttled (429) after {throttles} waits"),
                    );
                    return;
                }
                tokio::time::sleep(retry_after.unwrap_or_else(|| backoff(throttles))).await;
            }
            500..=599 => {
                failures += 1;
                if failures > shared.cfg.max_retries {
                    stats.failed_requests += 1;
                    *stats.statuses.entry(status).or_default() += 1;
                    stats.mismatch(
                        i,
                        format!(
                            "{what}: HTTP {status} after {failures} attempts: {}",
                            describe(&body)
                        ),
                    );
                    return;
                }
                tracing::debug!(request = i, status, "retrying after a server error");
                stats.retries += 1;
                tokio::time::sleep(retry_after.unwrap_or_else(|| backoff(failures))).await;
            }
            _ => {
                stats.failed_requests += 1;
                *stats.statuses.entry(status).or_default() += 1;
                stats.mismatch(i, format!("{what}: HTTP {status}: {}", describe(&body)));
                return;
            }
        }
    }
}

/// Exponential backoff with jitter: about 100 ms, 200 ms, 400 ms, … capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(5_000);
    Duration::from_millis(base / 2 + rand::thread_rng().gen_range(0..=base / 2))
}

/// An error with its causes: reqwest's own message omits them.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

fn describe(body: &[u8]) -> String {
    match serde_json::from_slice::<EdgeError>(body) {
        Ok(e) => format!("{}: {}", e.error, e.message),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}
