//! The device lookup's ClickHouse fallback at 10M rows: latency of
//! `spoor_store::device::device_events` (the crate, RowBinary, the
//! store's client) against the very same SQL text sent straight to
//! ClickHouse's HTTP interface, interleaved in one run so the ratio means
//! something on a shared, noisy machine.
//!
//! Setup: a private clickhouse-server (the tests' harness: Debian's 18.16),
//! the schema from `deploy/clickhouse`, then `ROWS` events inserted into
//! `events` with `INSERT … SELECT … FROM numbers(…)` in chunks of 1M, so the
//! views fill `events_by_device` and `device_users` as the relay's inserts
//! would. Rows spread evenly over the 7 days before now, over 200,000
//! devices; one target device gets every 10,000th row (1,000 events at 10M
//! rows), half of them with `user_id = 'user-target'`.
//!
//! Lookups measured (each `SAMPLES` times, crate and raw alternating):
//! - the target device over 7 days (all its 1,000 events, limit 1,000);
//! - the target device over its last hour;
//! - the target user over 7 days (devices from `device_users`).
//!
//! Not a test: nothing is asserted; the figures go to BENCHMARKS.md. Run:
//! `cargo bench -p spoor-relay --bench device_lookup` (needs
//! clickhouse-server: `cargo xtask setup`). `SPOOR_BENCH_ROWS` overrides
//! the row count for a quick try.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use spoor_core::debug::{DeviceQuery, Subject, MAX_LIMIT};
use spoor_store::device::{bound, device_events, lookup_client, DEFAULT_TIMEOUT};
use spoor_store::schema;
use spoor_store::ClickHouseConfig;
use spoor_tests::bench::{env_or, histogram, quantile_ms, record};
use spoor_tests::clickhouse::ClickHouseServer;

const CHUNK: u64 = 1_000_000;
const DEVICES: u64 = 200_000;
const TARGET_EVERY: u64 = 10_000;
/// Lookups per case; `SPOOR_BENCH_SAMPLES` overrides it.
const SAMPLES: usize = 1_000;
const WARMUP: usize = 50;
const DAY_MS: i64 = 86_400_000;

struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn figures(h: &Histogram<u64>) -> Figures {
    Figures {
        p50_ms: quantile_ms(h, 0.50),
        p99_ms: quantile_ms(h, 0.99),
        max_ms: h.max() as f64 / 1000.0,
    }
}

/// Fills `events` (and, through the views, the device tables).
fn generate(ch: &ClickHouseServer, db: &str, rows: u64, start_ms: i64) {
    let span_ms = 7 * DAY_MS;
    let mut offset = 0;
    while offset < rows {
        let n = CHUNK.min(rows - offset);
        let started = Instant::now();
        let sql = format!(
            "INSERT INTO {db}.events (project_id, event_date, event_time, ts_ms, event_id, \
               event, user_id, anonymous_id, session_id, client_ts_ms, sent_at_ms, received_at_ms, \
               properties, page_url, page_path, app_name, app_version, library_name, \
               library_version, country, city, colo, browser, browser_version, os, os_version, \
               device_type, edge_region, batch_id) \
             SELECT 'bench', toDate(toDateTime(intDiv(ts, 1000))), toDateTime(intDiv(ts, 1000)), \
               ts, generateUUIDv4(), \
               ['page_view', 'add_to_cart', 'purchase', 'click'][n % 4 + 1], \
               if(target, if(n % (2 * {TARGET_EVERY}) = 0, 'user-target', ''), \
                  if(n % 2 = 0, concat('user-', toString(dev % 100000)), '')), \
               if(target, 'device-target', concat('device-', toString(dev))), \
               concat('session-', toString(intDiv(n, 50))), ts - 40, ts + 900, ts + 1000, \
               concat('{{\"path\":\"/products/', toString(n % 1000), '\",\"price\":19.99,\"currency\":\"EUR\"}}'), \
               concat('https://shop.example/products/', toString(n % 1000)), \
               concat('/products/', toString(n % 1000)), 'shop', '2.3.4', 'spoor-js', '0.1.0', \
               'DE', 'Berlin', 'FRA', 'Chrome', '122.0.0.0', 'Mac OSX', '10.15.7', 'pc', \
               'eu-west', concat('batch-', toString(intDiv(n, 50))) \
             FROM (SELECT number + {offset} AS n, n % {TARGET_EVERY} = 0 AS target, \
                          intHash32(n) % {DEVICES} AS dev, \
                          {start_ms} + intDiv(n * {span_ms}, {rows}) AS ts \
                   FROM numbers({n}))"
        );
        ch.query(&sql).expect("generating rows");
        offset += n;
        eprintln!(
            "inserted {offset} / {rows} rows ({:.1} s for this chunk)",
            started.elapsed().as_secs_f64()
        );
    }
}

fn scalar(ch: &ClickHouseServer, sql: &str) -> String {
    ch.query(sql).expect("query").trim().to_string()
}

struct Case<'a> {
    name: &'a str,
    query: DeviceQuery,
}

/// `subject` in the bench's project, received in `[since_ms, until_ms)`.
fn received(subject: Subject, since_ms: i64, until_ms: i64, limit: usize) -> DeviceQuery {
    DeviceQuery {
        subject,
        project_id: Some("bench".into()),
        since_ms,
        until_ms,
        limit,
    }
}

fn main() {
    let rows: u64 = env_or("SPOOR_BENCH_ROWS", 10_000_000);
    let samples: usize = env_or("SPOOR_BENCH_SAMPLES", SAMPLES);
    let ch =
        ClickHouseServer::start().expect("clickhouse-server (install with `cargo xtask setup`)");
    let db = ch.fresh_database("bench_device");
    let config = ClickHouseConfig {
        url: ch.http_url(),
        database: db.clone(),
        user: None,
        password: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(schema::apply(&config)).expect("schema");

    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit i64");
    let start_ms = now_ms - 7 * DAY_MS;
    let generating = Instant::now();
    generate(&ch, &db, rows, start_ms);
    let gen_secs = generating.elapsed().as_secs_f64();
    // Let background merges settle a little, as on a server that has been up.
    std::thread::sleep(Duration::from_secs(10));
    let version = scalar(&ch, "SELECT version()");
    for table in ["events", "events_by_device", "device_users"] {
        eprintln!(
            "{table}: {} rows, {} active parts, {} bytes on disk",
            scalar(&ch, &format!("SELECT count() FROM {db}.{table}")),
            scalar(&ch, &format!("SELECT count() FROM system.parts WHERE database = '{db}' AND table = '{table}' AND active")),
            scalar(&ch, &format!("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{db}' AND table = '{table}' AND active")),
        );
    }
    eprintln!(
        "target device: {} events; ClickHouse {version}; generated in {gen_secs:.1} s",
        scalar(&ch, &format!("SELECT count() FROM {db}.events_by_device WHERE project_id = 'bench' AND anonymous_id = 'device-target'")),
    );

    let client = lookup_client(&config);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let raw_url = format!("{}/?database={db}&max_execution_time=5", ch.http_url());
    let until = now_ms + 60_000;
    let cases = [
        Case {
            name: "device, 7 days (1,000 events)",
            query: received(
                Subject::Device("device-target".into()),
                start_ms - 60_000,
                until,
                MAX_LIMIT,
            ),
        },
        Case {
            name: "device, last hour",
            query: received(
                Subject::Device("device-target".into()),
                now_ms - 3_600_000,
                until,
                1_000,
            ),
        },
        Case {
            name: "user, 7 days",
            query: received(
                Subject::User("user-target".into()),
                start_ms - 60_000,
                until,
                MAX_LIMIT,
            ),
        },
    ];

    println!("| lookup | rows returned | device_events p50 / p99 / max | raw HTTP p50 / p99 / max | ratio p50 / p99 |");
    println!("|---|---|---|---|---|");
    for case in &cases {
        let sql = format!(
            "{} FORMAT RowBinary",
            bound(&client, &case.query)
                .expect("valid query")
                .sql_display()
        );
        let (mut lib, mut raw) = (histogram(), histogram());
        let mut returned = 0;
        let mut raw_bytes = 0;
        for i in 0..WARMUP + samples {
            let t = Instant::now();
            let rows = rt
                .block_on(device_events(&client, &case.query, DEFAULT_TIMEOUT))
                .expect("device_events");
            let lib_took = t.elapsed();
            returned = rows.len();

            let t = Instant::now();
            let body = agent.post(&raw_url).send_string(&sql).expect("raw query");
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut body.into_reader(), &mut bytes).expect("raw body");
            let raw_took = t.elapsed();
            raw_bytes = bytes.len();
            if i >= WARMUP {
                record(&mut lib, lib_took);
                record(&mut raw, raw_took);
            }
        }
        let (l, r) = (figures(&lib), figures(&raw));
        println!(
            "| {} | {returned} ({raw_bytes} bytes) | {:.2} / {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} ms | {:.2}× / {:.2}× |",
            case.name,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            l.p50_ms / r.p50_ms,
            l.p99_ms / r.p99_ms,
        );
    }
}
