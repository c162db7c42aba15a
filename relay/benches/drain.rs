//! The relay's drain rate against raw ClickHouse inserts of the same rows,
//! in one run, on a private nats-server and clickhouse-server.
//!
//! 1. Fill: `--events` realistic events (`spoor_core::sample::batch_body`,
//!    one device per 50-event request, ingested by `spoor_core::ingest` as
//!    the edge does: one frame per request on its device's partition,
//!    `spoor.events.eu.<p>` of 16, `Nats-Msg-Id` = batch id) are published
//!    to `SPOOR_EVENTS` with no relay running. The frames are kept in
//!    memory for the raw inserts.
//! 2. Phases, in `--phases` order, `--rounds` times, each into a fresh
//!    database that is dropped afterwards:
//!    - `raw-views`: the rows of the same frames (decoded, `EventRow::with`,
//!      untimed) inserted in `--batch-rows` chunks through the `clickhouse`
//!      crate as the relay's sink does (RowBinary, LZ4, `spoor_store`'s
//!      client) into the full schema, five materialized views on; rate =
//!      rows / time inside the inserts;
//!    - `raw-bare`: the same into a database holding only `events`;
//!    - `raw-encoded`: the same rows into the full schema, encoded as the
//!      relay's partition pullers encode them (`EncodedFrame::encode`,
//!      untimed) and sent as the relay's sink sends them
//!      (`ClickHouseSink::insert_encoded`): the relay's own insert with
//!      nothing else running;
//!    - `relay:K`: K release relays as processes (`$SPOOR_RELAY_BIN`) on a
//!      fresh durable consumer name, so they read the whole stream as a
//!      backlog; rate = rows / (the first relay ready → `count()` = N and
//!      every partition consumer's pending and ack-pending = 0);
//!    - `relay-b:K`: the same with `$SPOOR_RELAY_BIN_B` (a second build,
//!      for before/after figures in one run).
//!
//!    CPU seconds per 100K events from `/proc/<pid>/stat` over each phase:
//!    the relays', clickhouse-server's and nats-server's. A relay phase
//!    also reports its rate over the middle half of its rows (25% to 75%
//!    stored: the steady state, without start-up and the tail), the rows
//!    stored every 5 s, each relay's rows and CPU, each CPU's busy and
//!    stolen share, and the relays' errors by label, lease losses,
//!    messages received and presence checks.
//! 3. The ratios: one relay ÷ raw with views, two relays ÷ one relay.
//!
//! Not a test: nothing is asserted beyond every phase storing N rows; the
//! figures go to BENCHMARKS.md ("Relay drain vs raw ClickHouse inserts").
//! Run (needs the tools of `cargo xtask setup`):
//!
//! ```sh
//! cargo build --release -p spoor-relay
//! SPOOR_RELAY_BIN=$CARGO_TARGET_DIR/release/spoor-relay \
//!   cargo bench -p spoor-relay --bench drain -- --events 5000000
//! ```
//!
//! The servers keep their state under `$TMPDIR`. On a root filesystem
//! mounted with online `discard`, every file ClickHouse deletes (a dropped
//! phase's database, merged-away parts) waits for a synchronous TRIM and
//! stalls the inserts of whatever phase runs next; `TMPDIR=/dev/shm/...`
//! keeps that out of the ratios. `--pin` gives ClickHouse a core of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use spoor_core::contract::partition_consumer;
use spoor_core::{sample, Endpoint, Limits};
use spoor_relay::sink::clickhouse::encoded::{EncodedFrame, EncodedRow};
use spoor_relay::sink::clickhouse::ClickHouseSink;
use spoor_relay::source::nats::StreamLimits;
use spoor_store::schema::{self, EVENTS_TABLE, SCHEMA_FILES};
use spoor_store::{ClickHouseConfig, EventRow};
use spoor_tests::bench::process_cpu_secs;
use spoor_tests::clickhouse::ClickHouseServer;
use spoor_tests::metrics::{sample_value, sum};
use spoor_tests::nats::{NatsRole, NatsServer};
use spoor_tests::relay::{RelayProcess, RelayProcessConfig};

const EVENTS_PER_FRAME: usize = 50;
const PARTITIONS: u32 = 16;
const STREAM: &str = "SPOOR_EVENTS";
const PROJECT: &str = "shop";
/// PubAcks awaited at once while filling.
const FILL_IN_FLIGHT: usize = 256;
/// How often a relay phase checks whether everything is stored and acked.
const POLL: Duration = Duration::from_millis(200);
/// Longest a relay phase may take before the bench gives up on it.
const PHASE_TIMEOUT: Duration = Duration::from_secs(1800);

/// The bench's flags (`cargo bench -p spoor-relay --bench drain -- ...`).
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Relay drain rate against raw ClickHouse inserts of the same rows")]
struct Args {
    /// Events to fill the stream with (rounded down to whole 50-event frames).
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Rows per insert, for the relays (`--batch-max-rows`) and the raw inserts.
    #[arg(long, default_value_t = 50_000)]
    batch_rows: usize,
    /// How many times to run the phases.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Phases in order: raw-views, raw-bare, raw-encoded, relay:K,
    /// relay-b:K (the build in SPOOR_RELAY_BIN_B).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw-views,relay:1,relay:2,raw-bare"
    )]
    phases: Vec<String>,
    /// `--ring-window-secs` of the relays: 1 keeps the debug ring's start-up
    /// replay of the stream (the whole backlog, at 3600) out of the drain.
    #[arg(long, default_value_t = 1)]
    ring_window_secs: u64,
    /// Give clickhouse-server CPU 0 to itself and put everything else
    /// (nats-server, the relays, this process) on CPU 1, as if ClickHouse
    /// ran on its own host: the raw inserts and the relays then feed the
    /// same one-core ClickHouse, and what the relays do beside it cannot
    /// slow it down (`taskset -a -p`; needs two CPUs).
    #[arg(long)]
    pin: bool,
    /// JetStream's `sync_interval` for the bench's nats-server, when it
    /// should differ from the deployed `always` (fsync after every write,
    /// acks included): e.g. `2m`, the server's default, to see what the
    /// fsyncs cost ClickHouse on a disk they share.
    #[arg(long)]
    nats_sync_interval: Option<String>,
    /// Extra `spoor-relay run` flags, e.g. `--relay-arg=--flush-interval-ms=2000`.
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// Passed by `cargo bench` to `harness = false` targets; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// ClickHouse's CPU and everyone else's, with `--pin`.
const CLICKHOUSE_CPU: &str = "0";
const OTHERS_CPU: &str = "1";

/// Sets the CPU affinity of every thread of `pid` (threads it starts later
/// inherit it).
fn pin(what: &str, pid: Option<u32>, cpus: &str) {
    let pid = pid.unwrap_or_else(|| panic!("--pin: no pid for {what}"));
    let out = std::process::Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &pid.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("--pin needs taskset (util-linux): {e}"));
    assert!(
        out.status.success(),
        "taskset for {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn parse_args() -> Args {
    let mut args = <Args as clap::Parser>::parse();
    let frames = args.events / EVENTS_PER_FRAME as u64;
    assert!(frames > 0, "--events must be at least {EVENTS_PER_FRAME}");
    args.events = frames * EVENTS_PER_FRAME as u64;
    args
}

/// One phase's figures.
#[derive(Debug, Clone, Default)]
struct Figures {
    phase: String,
    load: String,
    secs: f64,
    rows_per_sec: f64,
    /// A relay phase's rate over the middle half of its rows (25% to 75%
    /// stored): the steady state, without start-up (leases, windows, the
    /// ring's rebuild) and the last frames' tail.
    mid_rows_per_sec: Option<f64>,
    relay_cpu: f64,
    clickhouse_cpu: f64,
    nats_cpu: f64,
    /// The bench's own CPU inside the raw inserts (serialising the rows).
    client_cpu: f64,
    notes: String,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit i64")
}

fn pid_cpu(pid: Option<u32>) -> f64 {
    pid.map_or(0.0, process_cpu_secs)
}

/// Each CPU's jiffies from `/proc/stat`: (busy, steal, total), busy being
/// user, nice, system, irq and softirq.
fn cpu_jiffies() -> Vec<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            let busy = at(0) + at(1) + at(2) + at(5) + at(6);
            (busy, at(7), v.iter().take(8).sum())
        })
        .collect()
}

/// Each CPU's busy and stolen share between two `cpu_jiffies` readings:
/// "CPU0 busy 97% steal 0%, CPU1 ...".
fn cpu_shares(before: &[(u64, u64, u64)], after: &[(u64, u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, (b, a))| {
            let total = a.2.saturating_sub(b.2).max(1) as f64;
            format!(
                "CPU{i} busy {:.0}% steal {:.0}%",
                100.0 * a.0.saturating_sub(b.0) as f64 / total,
                100.0 * a.1.saturating_sub(b.1) as f64 / total
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Generates the frames as the edge would and publishes them, `FILL_IN_FLIGHT`
/// PubAcks outstanding. Returns the frames.
async fn fill(js: &jetstream::Context, frames: usize, at_ms: i64) -> Vec<Bytes> {
    let meta = sample::request_meta(at_ms);
    let limits = Limits::default();
    let mut out = Vec::with_capacity(frames);
    let mut acks = VecDeque::with_capacity(FILL_IN_FLIGHT);
    let started = Instant::now();
    for i in 0..frames {
        let tag = format!("{i:08x}");
        let body = sample::batch_body(EVENTS_PER_FRAME, at_ms, &tag);
        let ingested = spoor_core::ingest(Endpoint::Batch, body.as_bytes(), &meta, &limits)
            .expect("the sample batch ingests");
        assert_eq!(
            ingested.receipt.accepted, EVENTS_PER_FRAME,
            "every event accepted"
        );
        assert_eq!(ingested.messages.len(), 1, "one device, one frame");
        let message = ingested.messages.into_iter().next().expect("one frame");
        let frame = Bytes::from(message.frame);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", message.msg_id.as_str());
        if acks.len() == FILL_IN_FLIGHT {
            let ack: jetstream::context::PublishAckFuture = acks.pop_front().expect("full");
            ack.await.expect("PubAck");
        }
        acks.push_back(
            js.publish_with_headers(message.subject, headers, frame.clone())
                .await
                .expect("publish"),
        );
        out.push(frame);
        if (i + 1) % 20_000 == 0 {
            eprintln!(
                "filled {} / {frames} frames ({:.0} frames/s)",
                i + 1,
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    for ack in acks {
        ack.await.expect("PubAck");
    }
    out
}

/// The rows of `frames`, as the relay builds them.
fn rows_of(frames: &[Bytes]) -> Vec<EventRow> {
    let max = Limits::default().max_frame_bytes;
    let mut rows = Vec::with_capacity(frames.len() * EVENTS_PER_FRAME);
    for frame in frames {
        for mut batch in spoor_core::decode_message(frame, max).expect("our own frame decodes") {
            let events = std::mem::take(&mut batch.events);
            // As the relay makes them: the frame's request fields shared.
            let fields = spoor_store::RequestFields::of(&batch);
            rows.extend(
                events
                    .into_iter()
                    .map(|e| EventRow::with(&fields, &batch, e)),
            );
        }
    }
    rows
}

/// The rows of `frames`, as the relay's partition pullers encode them.
fn encoded_rows_of(frames: &[Bytes]) -> Vec<EncodedRow> {
    let max = Limits::default().max_frame_bytes;
    let mut rows = Vec::with_capacity(frames.len() * EVENTS_PER_FRAME);
    for frame in frames {
        let batches = spoor_core::decode_message(frame, max).expect("our own frame decodes");
        for (i, batch) in batches.iter().enumerate() {
            rows.extend(EncodedFrame::encode(frame, i, batch));
        }
    }
    rows
}

/// Only the events table (no views) in `config`'s (existing) database.
async fn bare_events_table(config: &ClickHouseConfig) {
    let client = config.client();
    // `events` and the columns later files add to it; no views.
    for (file, sql) in SCHEMA_FILES {
        for statement in schema::split_statements(sql) {
            let adds_to_events =
                schema::AddColumn::parse(&statement).is_some_and(|add| add.table == EVENTS_TABLE);
            if *file == "001_events.sql" || adds_to_events {
                client
                    .query(&statement)
                    .execute()
                    .await
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        }
    }
}

fn count(ch: &ClickHouseServer, db: &str) -> u64 {
    ch.query(&format!("SELECT count() FROM {db}.{EVENTS_TABLE}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Active parts of `db`'s tables at the end of a phase: how far
/// ClickHouse's background merges got.
fn active_parts(ch: &ClickHouseServer, db: &str) -> String {
    ch.query(&format!(
        "SELECT count() FROM system.parts WHERE database = '{db}' AND active"
    ))
    .map(|s| s.trim().to_string())
    .unwrap_or_default()
}

/// How a raw phase writes its rows.
#[derive(Clone, Copy, PartialEq)]
enum Raw {
    /// `EventRow`s through the crate, views on.
    Views,
    /// The same, into `events` alone.
    Bare,
    /// The relay's encoded rows and insert, views on.
    Encoded,
}

/// Inserts the frames' rows in chunks of `batch_rows`, timing only the inserts.
async fn raw_phase(
    name: &str,
    ch: &ClickHouseServer,
    nats: &NatsServer,
    kind: Raw,
    frames: &[Bytes],
    batch_rows: usize,
) -> Figures {
    let with_views = kind != Raw::Bare;
    let db = ch.fresh_database(&format!("drain_{}", name.replace('-', "_")));
    let config = ClickHouseConfig {
        url: ch.http_url(),
        database: db.clone(),
        user: None,
        password: None,
    };
    if with_views {
        schema::apply(&config).await.expect("schema");
    } else {
        bare_events_table(&config).await;
    }
    // The relay's insert client: RowBinary over HTTP, LZ4 request bodies.
    let client = config
        .client()
        .with_compression(clickhouse::Compression::Lz4);
    let load = load_average();
    let me = std::process::id();
    let (ch0, nats0) = (pid_cpu(ch.pid()), pid_cpu(nats.pid()));
    let (mut inside, mut client_cpu, mut rows_total) = (Duration::ZERO, 0.0, 0u64);
    let per_chunk = (batch_rows / EVENTS_PER_FRAME).max(1);
    let mut inserts = 0u32;
    let sink = ClickHouseSink::new(&config, Duration::from_secs(60));
    for chunk in frames.chunks(per_chunk) {
        if kind == Raw::Encoded {
            let rows = encoded_rows_of(chunk);
            let (t, c) = (Instant::now(), process_cpu_secs(me));
            sink.insert_encoded(&rows).await.expect("insert");
            inside += t.elapsed();
            client_cpu += process_cpu_secs(me) - c;
            rows_total += rows.len() as u64;
            inserts += 1;
            continue;
        }
        let rows = rows_of(chunk);
        let (t, c) = (Instant::now(), process_cpu_secs(me));
        let mut insert = client
            .insert::<EventRow>(EVENTS_TABLE)
            .await
            .expect("insert");
        for row in &rows {
            insert.write(row).await.expect("write row");
        }
        insert.end().await.expect("insert end");
        inside += t.elapsed();
        client_cpu += process_cpu_secs(me) - c;
        rows_total += rows.len() as u64;
        inserts += 1;
    }
    let (ch_cpu, nats_cpu) = (pid_cpu(ch.pid()) - ch0, pid_cpu(nats.pid()) - nats0);
    let stored = count(ch, &db);
    assert_eq!(stored, rows_total, "{name}: every row stored");
    let parts = active_parts(ch, &db);
    ch.query(&format!("DROP DATABASE {db}")).expect("drop");
    let secs = inside.as_secs_f64();
    Figures {
        phase: name.to_string(),
        load,
        secs,
        rows_per_sec: rows_total as f64 / secs,
        mid_rows_per_sec: None,
        relay_cpu: 0.0,
        clickhouse_cpu: ch_cpu,
        nats_cpu,
        client_cpu,
        notes: format!(
            "{inserts} inserts of {} rows, {:.0} ms each on average; {parts} active parts at the end",
            rows_total / u64::from(inserts.max(1)),
            secs * 1000.0 / f64::from(inserts.max(1))
        ),
    }
}

/// Sum of `name` over every relay's page.
fn total(pages: &[String], name: &str) -> f64 {
    pages.iter().map(|p| sum(p, name)).sum()
}

/// The non-zero series of `name` over every relay, summed by labels:
/// `{stage="lease",error_type="renew"} 2, ...`, or "none".
fn by_labels(pages: &[String], name: &str) -> String {
    let mut series = std::collections::BTreeMap::<String, f64>::new();
    for line in pages.iter().flat_map(|p| p.lines()) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            if v > 0.0 {
                *series.entry(labels.to_string()).or_default() += v;
            }
        }
    }
    if series.is_empty() {
        return "none".into();
    }
    series
        .iter()
        .map(|(labels, v)| format!("{labels} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every partition consumer's pending + ack-pending, or None if one cannot be read.
async fn unfinished(js: &jetstream::Context, consumer: &str) -> Option<u64> {
    let stream = js.get_stream(STREAM).await.ok()?;
    let mut left = 0;
    for p in 0..PARTITIONS {
        let info = stream
            .consumer_info(partition_consumer(consumer, p))
            .await
            .ok()?;
        left += info.num_pending + info.num_ack_pending as u64;
    }
    Some(left)
}

#[allow(clippy::too_many_arguments)]
async fn relay_phase(
    name: &str,
    relays: usize,
    consumer: &str,
    ch: &ClickHouseServer,
    nats: &NatsServer,
    js: &jetstream::Context,
    expected: u64,
    relay_flags: &[String],
) -> Figures {
    let db = ch.fresh_database(&format!("drain_{consumer}").replace('-', "_"));
    let config = ClickHouseConfig {
        url: ch.http_url(),
        database: db.clone(),
        user: None,
        password: None,
    };
    // The schema first, so the relays' own (idempotent) apply is quick.
    schema::apply(&config).await.expect("schema");
    let mut args = vec!["--consumer".to_string(), consumer.to_string()];
    args.extend(relay_flags.iter().cloned());
    let process_config = RelayProcessConfig {
        nats_url: nats.url(),
        nats_ca: Some(nats.ca_pem_path().to_path_buf()),
        nats_nkey_file: Some(nats.seed_path(NatsRole::Relay)),
        clickhouse_url: ch.http_url(),
        database: db.clone(),
        projects: vec![PROJECT.to_string()],
        args,
    };
    let load = load_average();
    let (ch0, nats0) = (pid_cpu(ch.pid()), pid_cpu(nats.pid()));
    let cpus0 = cpu_jiffies();
    let started = Instant::now();
    // Started together, so the second does not find the first's partitions
    // already busy.
    let handles: Vec<_> = (0..relays)
        .map(|_| {
            let c = process_config.clone();
            std::thread::spawn(move || {
                let r = RelayProcess::start(c).expect("relay starts");
                (r, Instant::now())
            })
        })
        .collect();
    let mut procs = Vec::new();
    let mut first_ready: Option<Instant> = None;
    for h in handles {
        let (r, ready) = h.join().expect("relay start thread");
        first_ready = Some(first_ready.map_or(ready, |f: Instant| f.min(ready)));
        procs.push(r);
    }
    let first_ready = first_ready.expect("at least one relay");
    let ready_secs = (first_ready - started).as_secs_f64();
    // CPU from spawn; the start-up (schema no-op, consumers, leases) is small.
    let mut first_row: Option<Instant> = None;
    // Rows stored at every 5 s of the drain, to tell a steady rate from stalls.
    let mut trace: Vec<u64> = Vec::new();
    let (mut quarter, mut three_quarters) = (None::<Instant>, None::<Instant>);
    let done = loop {
        tokio::time::sleep(POLL).await;
        let stored = count(ch, &db);
        if stored > 0 && first_row.is_none() {
            first_row = Some(Instant::now());
        }
        if started.elapsed() >= Duration::from_secs(5 * (trace.len() as u64 + 1)) {
            trace.push(stored);
        }
        if stored * 4 >= expected && quarter.is_none() {
            quarter = Some(Instant::now());
        }
        if stored * 4 >= expected * 3 && three_quarters.is_none() {
            three_quarters = Some(Instant::now());
        }
        if stored >= expected && unfinished(js, consumer).await == Some(0) {
            break Instant::now();
        }
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "{name}: {stored} of {expected} rows after {PHASE_TIMEOUT:?}"
        );
        for r in &procs {
            assert!(r.is_running(), "{name}: a relay died: {}", r.log_tail(30));
        }
    };
    let cpus = cpu_shares(&cpus0, &cpu_jiffies());
    let each_cpu: Vec<f64> = procs.iter().map(|r| pid_cpu(r.pid())).collect();
    let relay_cpu: f64 = each_cpu.iter().sum();
    let (ch_cpu, nats_cpu) = (pid_cpu(ch.pid()) - ch0, pid_cpu(nats.pid()) - nats0);
    let pages: Vec<String> = procs
        .iter()
        .map(|r| r.metrics().expect("relay metrics"))
        .collect();
    let each = pages
        .iter()
        .zip(&each_cpu)
        .map(|(p, cpu)| {
            format!(
                "{:.0} rows, {cpu:.1} CPU s",
                sum(p, "spoor_relay_rows_inserted_total")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let parts = active_parts(ch, &db);
    for r in &procs {
        r.stop();
    }
    let stored = count(ch, &db);
    let unique: u64 = ch
        .query(&format!(
            "SELECT uniqExact(event_id) FROM {db}.{EVENTS_TABLE}"
        ))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    ch.query(&format!("DROP DATABASE {db}")).expect("drop");
    let inserts = total(&pages, "spoor_relay_insert_duration_seconds_count");
    let insert_secs = total(&pages, "spoor_relay_insert_duration_seconds_sum");
    let secs = (done - first_ready).as_secs_f64();
    let batch_rows = total(&pages, "spoor_relay_insert_batch_rows_sum");
    let stage = |name: &str| -> f64 {
        let selector = format!("spoor_relay_pipeline_seconds_total{{stage=\"{name}\"}}");
        let spent: f64 = pages.iter().map(|p| sample_value(p, &selector)).sum();
        100.0 * spent / (secs * relays as f64)
    };
    let (receive, wait_insert, decode, inserting, acknowledge) = (
        stage("receive"),
        stage("wait_insert"),
        stage("decode"),
        stage("insert"),
        stage("acknowledge"),
    );
    let errors = total(&pages, "spoor_relay_errors_total");
    let errors_by = by_labels(&pages, "spoor_relay_errors_total");
    let lease_losses = total(&pages, "spoor_relay_lease_losses_total");
    let received = total(&pages, "spoor_relay_messages_received_total");
    let presence = total(&pages, "spoor_relay_presence_checks_total");
    let trace = trace
        .iter()
        .map(|n| format!("{:.0}K", *n as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(" ");
    let deduped = total(&pages, "spoor_relay_events_deduped_total");
    Figures {
        phase: name.to_string(),
        load,
        secs,
        rows_per_sec: expected as f64 / secs,
        mid_rows_per_sec: quarter
            .zip(three_quarters)
            .map(|(a, b)| (expected as f64 / 2.0) / (b - a).as_secs_f64().max(f64::EPSILON)),
        relay_cpu,
        clickhouse_cpu: ch_cpu,
        nats_cpu,
        client_cpu: 0.0,
        notes: format!(
            "ready {ready_secs:.1} s, first row {:.1} s after; {inserts:.0} inserts of {:.0} rows, \
             {:.0} ms each; time per relay (% of the drain): the loop's receive {receive:.0}% \
             and wait_insert {wait_insert:.0}%, the pullers' decode {decode:.0}%, the flush's \
             insert {inserting:.0}% and acknowledge {acknowledge:.0}% (a serial build's loop \
             does insert and acknowledge itself, and has no wait_insert); {parts} active parts \
             at the end; stored {stored} ({unique} unique); {deduped:.0} deduped, {errors:.0} \
             errors ({errors_by}), {lease_losses:.0} lease losses; {received:.0} messages \
             received, {presence:.0} presence checks; each relay: {each}; {cpus}; stored every \
             5 s: {trace}",
            first_row.map_or(f64::NAN, |f| (f - first_ready).as_secs_f64()),
            batch_rows / inserts.max(1.0),
            insert_secs * 1000.0 / inserts.max(1.0),
        ),
    }
}

fn per_100k(cpu: f64, events: u64) -> f64 {
    cpu * 100_000.0 / events as f64
}

fn main() {
    let args = parse_args();
    let frames_n = usize::try_from(args.events / EVENTS_PER_FRAME as u64).expect("fits");
    let nats = match &args.nats_sync_interval {
        Some(value) => NatsServer::start_with_sync_interval(value),
        None => NatsServer::start(),
    }
    .expect("nats-server (install with `cargo xtask setup`)");
    let ch =
        ClickHouseServer::start().expect("clickhouse-server (install with `cargo xtask setup`)");
    if args.pin {
        pin("clickhouse-server", ch.pid(), CLICKHOUSE_CPU);
        pin("nats-server", nats.pid(), OTHERS_CPU);
        pin("the bench", Some(std::process::id()), OTHERS_CPU);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // 32 KB a frame at most (they are about a tenth of that), and never
    // below the deployed 10 GiB.
    let max_bytes = (frames_n as i64 * 32_768).max(10 << 30);
    let mut relay_flags = vec![
        "--batch-max-rows".to_string(),
        args.batch_rows.to_string(),
        "--stream-max-bytes".to_string(),
        max_bytes.to_string(),
        "--ring-window-secs".to_string(),
        args.ring_window_secs.to_string(),
    ];
    relay_flags.extend(args.relay_args.iter().cloned());
    let version = ch.query("SELECT version()").unwrap_or_default();
    eprintln!(
        "events {} ({frames_n} frames of {EVENTS_PER_FRAME}), batches of {} rows, relay flags {relay_flags:?}, \
         ClickHouse {}, load {}, JetStream sync_interval {}, {}",
        args.events,
        args.batch_rows,
        version.trim(),
        load_average(),
        args.nats_sync_interval.as_deref().unwrap_or("always (deployed)"),
        if args.pin {
            "pinned: clickhouse-server on CPU 0, the rest on CPU 1"
        } else {
            "not pinned"
        }
    );

    let (admin, frames) = rt.block_on(async {
        let admin = jetstream::new(nats.connect(NatsRole::Admin).await.expect("admin"));
        spoor_relay::source::streams::ensure_all(
            &admin,
            STREAM,
            1,
            &StreamLimits {
                max_bytes: Some(max_bytes),
                max_msgs: None,
            },
        )
        .await
        .expect("stream");
        let edge = jetstream::new(nats.connect(NatsRole::Edge).await.expect("edge"));
        let started = Instant::now();
        let load = load_average();
        let frames = fill(&edge, frames_n, now_ms()).await;
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        eprintln!(
            "fill: {frames_n} frames, {bytes} bytes ({:.0} bytes/frame) in {:.1} s (load {load})",
            bytes as f64 / frames_n as f64,
            started.elapsed().as_secs_f64()
        );
        (admin, frames)
    });

    let binaries: std::collections::HashMap<&str, Option<std::ffi::OsString>> =
        ["SPOOR_RELAY_BIN", "SPOOR_RELAY_BIN_B"]
            .into_iter()
            .map(|v| (v, std::env::var_os(v)))
            .collect();
    let mut results: Vec<(usize, Figures)> = Vec::new();
    for round in 0..args.rounds {
        for (index, phase) in args.phases.iter().enumerate() {
            eprintln!("round {round}: {phase} (load {})", load_average());
            let figures = match phase.as_str() {
                "raw-views" | "raw-bare" | "raw-encoded" => {
                    let kind = match phase.as_str() {
                        "raw-views" => Raw::Views,
                        "raw-bare" => Raw::Bare,
                        _ => Raw::Encoded,
                    };
                    rt.block_on(raw_phase(phase, &ch, &nats, kind, &frames, args.batch_rows))
                }
                other => {
                    let (bin, relays) = other.split_once(':').unwrap_or_else(|| {
                        panic!(
                            "unknown phase {other}: raw-views, raw-bare, raw-encoded, relay:K, \
                             relay-b:K"
                        )
                    });
                    let relays: usize = relays.parse().expect("relay:K");
                    let var = match bin {
                        "relay" => "SPOOR_RELAY_BIN",
                        "relay-b" => "SPOOR_RELAY_BIN_B",
                        _ => panic!("unknown phase {other}"),
                    };
                    let path = binaries.get(var).cloned().flatten().unwrap_or_else(|| {
                        panic!("{other} needs {var} (a release build of spoor-relay)")
                    });
                    // RelayProcess reads SPOOR_RELAY_BIN; no other thread
                    // runs here.
                    std::env::set_var("SPOOR_RELAY_BIN", &path);
                    // A fresh consumer per phase, even for a phase named twice
                    // in a round: a used one has nothing left to deliver.
                    let consumer = format!("bench-r{round}-{index}-{}", other.replace(':', "-"));
                    let f = rt.block_on(relay_phase(
                        other,
                        relays,
                        &consumer,
                        &ch,
                        &nats,
                        &admin,
                        args.events,
                        &relay_flags,
                    ));
                    f
                }
            };
            eprintln!(
                "  {:.0} rows/s over {:.1} s{}; {}",
                figures.rows_per_sec,
                figures.secs,
                figures
                    .mid_rows_per_sec
                    .map(|m| format!(", {m:.0} rows/s over the middle half"))
                    .unwrap_or_default(),
                figures.notes
            );
            results.push((round, figures));
            // Let the dropped database's files go and the box settle.
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    println!(
        "\nevents {} in {frames_n} frames; batches of {} rows; relay flags {}",
        args.events,
        args.batch_rows,
        relay_flags.join(" ")
    );
    println!("| round | phase | load (1/5/15 min) | rows/s | middle half rows/s | seconds | relay CPU s/100K | ClickHouse CPU s/100K | nats-server CPU s/100K | inserting client CPU s/100K | notes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (round, f) in &results {
        println!(
            "| {round} | {} | {} | {:.0} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            f.phase,
            f.load,
            f.rows_per_sec,
            f.mid_rows_per_sec
                .map_or("-".to_string(), |m| format!("{m:.0}")),
            f.secs,
            per_100k(f.relay_cpu, args.events),
            per_100k(f.clickhouse_cpu, args.events),
            per_100k(f.nats_cpu, args.events),
            per_100k(f.client_cpu, args.events),
            f.notes
        );
    }
    println!();
    for round in 0..args.rounds {
        let rate = |phase: &str| {
            results
                .iter()
                .find(|(r, f)| *r == round && f.phase == phase)
                .map(|(_, f)| f.rows_per_sec)
        };
        let ratio = |a: &str, b: &str| match (rate(a), rate(b)) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        let mid = |phase: &str| {
            results
                .iter()
                .find(|(r, f)| *r == round && f.phase == phase)
                .and_then(|(_, f)| f.mid_rows_per_sec)
        };
        let mid_ratio = match (mid("relay:2"), mid("relay:1")) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        println!(
            "round {round}: relay:1 / raw-views {} (goal >= 0.6); relay:2 / relay:1 {} (goal >= 1.6 \
             where ClickHouse is not the bottleneck), over the middle half {mid_ratio}; raw-bare / raw-views {}; \
             raw-encoded / raw-views {}; relay:1 / raw-encoded {}; \
             relay-b:1 / raw-views {}; relay-b:2 / relay-b:1 {}; relay-b:1 / relay:1 {}",
            ratio("relay:1", "raw-views"),
            ratio("relay:2", "relay:1"),
            ratio("raw-bare", "raw-views"),
            ratio("raw-encoded", "raw-views"),
            ratio("relay:1", "raw-encoded"),
            ratio("relay-b:1", "raw-views"),
            ratio("relay-b:2", "relay-b:1"),
            ratio("relay-b:1", "relay:1"),
        );
    }
}
