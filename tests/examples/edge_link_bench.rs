//! Benchmark (not a test): the edge's throughput, latency and CPU per
//! request through its NATS links, against the runtime's own floor, in one
//! run on one machine.
//!
//! Everything runs here: nats-server (TLS first, nkey users, JetStream with
//! `sync_interval: always`), the edge's WASM build in plain workerd (the
//! runtime Cloudflare runs), and wrk (2 threads, 16 connections) posting
//! 50-event batches of realistic events (page context, user agent, a
//! property bag; about 600 bytes each) with unique ids and a new device per
//! request. Cases, each on a fresh runtime, after a warm-up:
//!
//! - `trivial`: a JS worker in the same runtime that parses the same body
//!   and answers 202 (the runtime's ceiling);
//! - `discard`: the edge with publishing switched off (its own CPU);
//! - `handoff`: frames handed to the link, which answers without
//!   publishing (the hand-off's cost);
//! - `fast`, `durable`: the edge publishing through its links;
//! - `fast-nolink`, `durable-nolink`: `LINKS=off`, a socket per request.
//!
//! Reported per case: requests/s, events/s, client p50/p99 (wrk),
//! server p50/p99 (`X-Spoor-Ack-Ms`), workerd CPU per request, and NATS
//! messages per request (stream growth over requests).
//!
//! ```sh
//! SPOOR_NATS_SERVER=... SPOOR_WORKERD=... SPOOR_EDGE_BUILD=$PWD/edge/build \
//!   cargo run --release -p spoor-tests --example edge_link_bench -- --secs 10 --rounds 2
//! ```

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::{json, Value};
use spoor_tests::bench::{self, busiest_thread_delta, process_cpu_secs, thread_cpu_secs};
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::{NatsRole, NatsServer};

#[derive(Parser)]
struct Args {
    /// Seconds each case is measured (after a 3 s warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u32,
    /// Times the whole list of cases runs.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Connections wrk keeps open (requests in flight).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Cases, comma-separated.
    #[arg(
        long,
        default_value = "trivial,discard,handoff,fast,durable,fast-nolink,durable-nolink"
    )]
    cases: String,
    /// SHARDS for the link cases, comma-separated (each value runs them all).
    #[arg(long, default_value = "2")]
    shards: String,
    /// Events per request.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// After each case's measured run, run it again as long under V8's CPU
    /// profiler (edge/bench/profile.mjs through workerd's inspector) and
    /// print where the isolate's time went per request.
    #[arg(long)]
    profile: bool,
    /// After each case's measured run, send open-loop traffic paced at this
    /// fraction of the requests/s it just reached (e.g. 0.8), on the same
    /// number of connections, and report latency from each request's
    /// scheduled time (so queueing counts).
    #[arg(long)]
    paced: Option<f64>,
}

const WRITE_KEY: &str = "wk_bench";
const STREAM: &str = "SPOOR_EVENTS";

const TRIVIAL_JS: &str = r#"
export default {
  async fetch(request) {
    if (request.method !== "POST") return new Response("ok");
    const body = await request.json();
    const n = Array.isArray(body.batch) ? body.batch.length : 0;
    return new Response(JSON.stringify({ accepted: n, rejected: [] }), {
      status: 202,
      headers: { "content-type": "application/json" },
    });
  },
};
"#;

/// wrk's script: a tag unique per request (run, thread, counter) replaces
/// every `@@@@@@@@` in the body (event ids, the device), so no request
/// repeats one of an earlier run (JetStream and the links would answer
/// those as duplicates, which is cheaper than the real thing); the server's
/// `X-Spoor-Ack-Ms` is collected per thread; `done` prints one JSON line.
const LUA: &str = r#"
local threads = {}
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local template
local counter = 0
local run = tonumber(os.getenv("SPOOR_BENCH_RUN") or "0")
acks = {}
non202 = 0
function init(args)
  local f = assert(io.open(args[1], "r"))
  template = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Spoor-Write-Key"] = "wk_bench"
  wrk.headers["User-Agent"] = args[3]
  if args[2] == "durable" then wrk.headers["X-Spoor-Ack"] = "durable" end
end

function request()
  counter = counter + 1
  local tag = string.format("%02x%02x%04x", run % 256, tid, counter % 65536)
  local body = string.gsub(template, "@@@@@@@@", tag)
  return wrk.format("POST", "/v1/batch", nil, body)
end

function response(status, headers, body)
  if status ~= 202 then non202 = non202 + 1 end
  local ms = tonumber(headers["X-Spoor-Ack-Ms"] or headers["x-spoor-ack-ms"])
  if ms then acks[ms] = (acks[ms] or 0) + 1 end
end

function done(summary, latency, requests)
  local hist, total, bad = {}, 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non202")
    for ms, n in pairs(t:get("acks")) do
      hist[ms] = (hist[ms] or 0) + n
      total = total + n
    end
  end
  local function pct(p)
    if total == 0 then return -1 end
    local keys = {}
    for ms in pairs(hist) do table.insert(keys, ms) end
    table.sort(keys)
    local need, seen = math.ceil(total * p), 0
    for _, ms in ipairs(keys) do
      seen = seen + hist[ms]
      if seen >= need then return ms end
    end
    return keys[#keys]
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non202":%d,"p50_us":%d,"p99_us":%d,"ack_p50_ms":%d,"ack_p99_ms":%d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    bad, latency:percentile(50), latency:percentile(99), pct(0.5), pct(0.99)))
end
"#;

/// One batch of `n` realistic events from one device (the sample every
/// edge bench uses); `@@@@@@@@` marks what wrk makes unique per request.
fn body_template(n: usize) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    spoor_core::sample::batch_body(n, now_ms, "@@@@@@@@")
}

struct Outcome {
    requests: f64,
    secs: f64,
    errors: u64,
    non202: u64,
    p50_ms: f64,
    p99_ms: f64,
    ack_p50: i64,
    ack_p99: i64,
}

/// Runs of wrk so far: each gets its own tag prefix.
static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn wrk(url: &str, script: &str, body: &str, mode: &str, secs: u32, conns: u32) -> Result<Outcome> {
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if run >= 256 {
        bail!("more than 256 wrk runs would repeat event ids");
    }
    let out = Command::new("wrk")
        .env("SPOOR_BENCH_RUN", run.to_string())
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "30s",
        ])
        .args([
            "-s",
            script,
            url,
            "--",
            body,
            mode,
            spoor_core::sample::USER_AGENT,
        ])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| {
            format!(
                "wrk printed no summary: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Value = serde_json::from_str(line)?;
    let n = |k: &str| v[k].as_f64().unwrap_or(-1.0);
    Ok(Outcome {
        requests: n("requests"),
        secs: n("duration_us") / 1e6,
        errors: n("errors") as u64,
        non202: n("non202") as u64,
        p50_ms: n("p50_us") / 1e3,
        p99_ms: n("p99_us") / 1e3,
        ack_p50: n("ack_p50_ms") as i64,
        ack_p99: n("ack_p99_ms") as i64,
    })
}

/// Events the edge accepted so far (its /metrics), 0 for the JS worker.
fn accepted(url: &str) -> f64 {
    metric_sum(url, "spoor_edge_events_accepted_total")
}

fn metric_sum(url: &str, name: &str) -> f64 {
    let Ok(page) = spoor_tests::metrics::fetch(url) else {
        return 0.0;
    };
    spoor_tests::metrics::sum(&page, name)
}

async fn stream_messages(js: &async_nats::jetstream::Context) -> u64 {
    js.get_stream(STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if Command::new("wrk").arg("-v").output().is_err() {
        bail!("wrk is not installed: apt-get install wrk");
    }
    let nats = NatsServer::start()?;
    let js = async_nats::jetstream::new(nats.connect(NatsRole::Admin).await?);
    spoor_relay::source::nats::ensure_stream(&js, STREAM).await?;

    let dir = tempfile::tempdir()?;
    let script = dir.path().join("bench.lua");
    std::fs::write(&script, LUA)?;
    let body = dir.path().join("body.json");
    let template = body_template(args.events);
    std::fs::write(&body, &template)?;
    let (script, body) = (script.to_string_lossy(), body.to_string_lossy());
    println!(
        "body: {} events, {} bytes ({} per event); wrk -t2 -c{} for {} s per case",
        args.events,
        template.len(),
        template.len() / args.events,
        args.connections,
        args.secs
    );
    println!(
        "\n| round | case | shards | requests/s | events/s | client p50 / p99 ms | server p50 / p99 ms | workerd CPU ms/request | isolate thread ms/request | NATS msgs/request | non-202 | stored/accepted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");

    let mut paced_rows = Vec::new();
    for round in 0..args.rounds {
        for case in args.cases.split(',') {
            let link_case = !matches!(case, "trivial" | "discard" | "handoff");
            let shard_values: Vec<&str> = if link_case && !case.ends_with("nolink") {
                args.shards.split(',').collect()
            } else {
                vec!["-"]
            };
            for shards in shard_values {
                let inspector = spoor_tests::tools::free_port()?;
                let edge = if case == "trivial" {
                    Edge::start_js_with(
                        TRIVIAL_JS,
                        &[],
                        &EdgeConfig::default().inspector(inspector),
                    )?
                } else {
                    let mut config = EdgeConfig::for_nats(&nats)
                        .inspector(inspector)
                        .var("WRITE_KEYS", json!({ WRITE_KEY: "bench" }).to_string())
                        .var("REGION", "bench")
                        .var("RATE_LIMIT_EVENTS_PER_SEC", "0");
                    if shards != "-" {
                        config = config.var("SHARDS", shards);
                    }
                    if case == "discard" {
                        config = config.var("DISCARD_FRAMES_FOR_BENCHMARKS", "true");
                    }
                    if case == "handoff" {
                        config = config.var("DISCARD_FRAMES_FOR_BENCHMARKS", "link");
                    }
                    if case.ends_with("nolink") {
                        config = config.var("LINKS", "off");
                    }
                    Edge::start(&config)?
                };
                let url = edge.url();
                let mode = if case.starts_with("durable") {
                    "durable"
                } else {
                    "fast"
                };
                // Warm-up: the isolate compiles, links connect.
                wrk(&url, &script, &body, mode, 3, args.connections)?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let pid = edge.pid().context("workerd's pid")?;
                let (cpu0, msgs0) = (process_cpu_secs(pid), stream_messages(&js).await);
                let threads0 = thread_cpu_secs(pid);
                let accepted0 = accepted(&url);
                let published0 = metric_sum(&url, "spoor_edge_events_published_total");
                let o = wrk(&url, &script, &body, mode, args.secs, args.connections)?;
                let cpu1 = process_cpu_secs(pid);
                let isolate = busiest_thread_delta(&threads0, &thread_cpu_secs(pid));
                // Let fast acks' publishing finish before counting messages.
                let mut msgs1 = stream_messages(&js).await;
                loop {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let now = stream_messages(&js).await;
                    if now == msgs1 {
                        break;
                    }
                    msgs1 = now;
                }
                let cpu_all = process_cpu_secs(pid);
                let accepted_n = accepted(&url) - accepted0;
                let stored = if matches!(case, "trivial" | "discard" | "handoff") {
                    "-".to_string()
                } else {
                    let published =
                        metric_sum(&url, "spoor_edge_events_published_total") - published0;
                    format!("{:.3}", published / accepted_n)
                };
                let rps = o.requests / o.secs;
                let msgs = if matches!(case, "trivial" | "discard" | "handoff") {
                    "-".to_string()
                } else {
                    format!("{:.3}", (msgs1 - msgs0) as f64 / o.requests)
                };
                let server = if o.ack_p50 < 0 {
                    "-".to_string()
                } else {
                    format!("{} / {}", o.ack_p50, o.ack_p99)
                };
                println!(
                    "| {round} | {case} | {shards} | {rps:.0} | {:.0} | {:.1} / {:.1} | {server} | {:.3} (+{:.3} after) | {:.3} | {msgs} | {} | {stored} |",
                    rps * args.events as f64,
                    o.p50_ms,
                    o.p99_ms,
                    (cpu1 - cpu0) * 1e3 / o.requests,
                    (cpu_all - cpu1) * 1e3 / o.requests,
                    isolate * 1e3 / o.requests,
                    o.non202 + o.errors,
                );
                if let Some(fraction) = args.paced {
                    let rate = fraction * o.requests / o.secs;
                    let p = paced(&url, &template, mode, rate, args.secs, args.connections).await?;
                    paced_rows.push(format!(
                        "| {round} | {case} | {shards} | {fraction:.2} × {:.0} = {rate:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                        o.requests / o.secs,
                        p.achieved,
                        p.p50_ms,
                        p.p99_ms,
                        p.p999_ms,
                        p.max_ms,
                        p.failed
                    ));
                }
                if args.profile {
                    let profile = profile_run(inspector, args.secs, || {
                        wrk(&url, &script, &body, mode, args.secs, args.connections)
                    })?;
                    print_profile(case, &profile);
                }
                drop(edge);
            }
        }
    }
    if !paced_rows.is_empty() {
        println!(
            "\nOpen-loop, paced: latency from each request's scheduled send time, {} connections\n",
            args.connections
        );
        println!("| round | case | shards | target requests/s | achieved | p50 ms | p99 ms | p99.9 ms | max ms | failed |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in paced_rows {
            println!("{r}");
        }
    }
    Ok(())
}

struct Paced {
    achieved: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    failed: u64,
}

/// Open-loop load: request `i` is due at `i / rate` seconds; at most
/// `conns` are in flight (a request due while all are busy waits, and its
/// wait counts in its latency, as a client's would).
async fn paced(
    url: &str,
    template: &str,
    mode: &str,
    rate: f64,
    secs: u32,
    conns: u32,
) -> Result<Paced> {
    use std::sync::Arc;
    use tokio::sync::{Mutex, Semaphore};
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if run >= 256 {
        bail!("more than 256 runs would repeat event ids");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns as usize)
        .http1_only()
        .build()?;
    let hist = Arc::new(Mutex::new(bench::histogram()));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(conns as usize));
    let total = (rate * secs as f64) as u64;
    // Bodies made beforehand, so the sender spends its time sending.
    let bodies: Vec<bytes::Bytes> = (0..total)
        .map(|i| {
            template
                .replace("@@@@@@@@", &format!("{run:02x}{i:06x}"))
                .into()
        })
        .collect();
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + std::time::Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let permit = permits.clone().acquire_owned().await?;
        let body = bodies[i as usize].clone();
        let mut req = client
            .post(format!("{url}/v1/batch"))
            .header("Content-Type", "application/json")
            .header("X-Spoor-Write-Key", WRITE_KEY)
            .header("User-Agent", spoor_core::sample::USER_AGENT)
            .body(body);
        if mode == "durable" {
            req = req.header("X-Spoor-Ack", "durable");
        }
        let (hist, failed) = (hist.clone(), failed.clone());
        tasks.spawn(async move {
            // The body is read to its end so the connection is kept.
            let ok = match req.send().await {
                Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let latency = due.elapsed();
            drop(permit);
            if !ok {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            bench::record(&mut *hist.lock().await, latency);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let h = hist.lock().await;
    Ok(Paced {
        achieved: total as f64 / elapsed,
        p50_ms: bench::quantile_ms(&h, 0.5),
        p99_ms: bench::quantile_ms(&h, 0.99),
        p999_ms: bench::quantile_ms(&h, 0.999),
        max_ms: h.max() as f64 / 1e3,
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Runs `load` while edge/bench/profile.mjs samples the isolate through
/// the inspector at `port`; returns the profile's summary with the
/// requests the load made.
fn profile_run(
    port: u16,
    secs: u32,
    load: impl FnOnce() -> Result<Outcome>,
) -> Result<(Value, f64)> {
    let script = spoor_tests::tools::workspace_root().join("edge/bench/profile.mjs");
    let child = Command::new("node")
        .arg(&script)
        .arg(format!("127.0.0.1:{port}"))
        .arg(secs.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running node edge/bench/profile.mjs")?;
    let o = load()?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "profile.mjs printed no profile: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((v, o.requests))
}

/// The profile per request: each category's µs, then the top functions.
fn print_profile(case: &str, (v, requests): &(Value, f64)) {
    let per_req = |ms: f64| ms * 1e3 / requests;
    let cats = &v["categories"];
    let c = |k: &str| per_req(cats[k].as_f64().unwrap_or(0.0));
    println!(
        "\nprofile {case}: {requests:.0} requests; isolate busy {:.0} µs/request = wasm {:.0} + js {:.0} + runtime {:.0} + gc {:.0} (idle {:.0})",
        per_req(v["busy_ms"].as_f64().unwrap_or(0.0)),
        c("wasm"),
        c("js"),
        c("runtime"),
        c("gc"),
        c("idle"),
    );
    for f in v["top"].as_array().into_iter().flatten().take(25) {
        println!(
            "  {:>7.1} µs/request {:>5.1}%  {:<7} {}",
            per_req(f["ms"].as_f64().unwrap_or(0.0)),
            f["pct_busy"].as_f64().unwrap_or(0.0),
            f["cat"].as_str().unwrap_or(""),
            f["name"].as_str().unwrap_or("")
        );
    }
    println!();
}
