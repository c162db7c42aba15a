//! What JetStream's `sync_interval: always` (fsync before every PubAck, as
//! deployed) costs against the server default (`2m`), measured in one run on
//! two nats-servers started from the same repository config, so the ratio
//! means something on a shared, noisy machine.
//!
//! Each server gets the events stream from `deploy/`, then `FRAMES` real
//! frames (50 events each, encoded with spoor-core, about the size the edge
//! publishes) with `CONCURRENCY` publishes awaiting their PubAck at once.
//! Reports frames/s and PubAck latency p50/p99/max. Not a test: nothing is
//! asserted; the figures go to BENCHMARKS.md.
//!
//! Run: `cargo bench -p spoor-tests --bench jetstream_sync`
//! (needs nats-server: `cargo xtask setup`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spoor_core::{encode_batch, Context, Device, Event, Geo, WireBatch};
use spoor_tests::nats::NatsServer;
use tokio::sync::Mutex;

const FRAMES: usize = 4_000;
const WARMUP: usize = 200;

fn frame(n: usize) -> Vec<u8> {
    let events = (0..50)
        .map(|i| Event {
            event_id: uuid::Uuid::from_u128(((n as u128) << 16) | i as u128),
            event_id_derived: false,
            event: "page_view".into(),
            user_id: format!("user-{}", n % 500),
            anonymous_id: format!("device-{}", n % 700),
            session_id: format!("session-{}", n % 900),
            client_ts_ms: Some(1_700_000_000_000 + i as i64),
            ts_ms: 1_700_000_000_000 + i as i64,
            properties: r#"{"path":"/products/42","price":19.99,"currency":"EUR","ab":"b"}"#.into(),
            context: Context::default(),
        })
        .collect();
    encode_batch(&WireBatch {
        batch_id: format!("bench-{n}"),
        project_id: "bench".into(),
        region: "bench".into(),
        received_at_ms: 1_700_000_000_000,
        sent_at_ms: None,
        geo: Geo::default(),
        device: Device::default(),
        ip_prefix: String::new(),
        events,
    })
    .expect("encodable")
}

struct Figures {
    frames_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn measure(server: &NatsServer, frames: &[Vec<u8>], concurrency: usize) -> Figures {
    let client = server
        .connect(spoor_tests::nats::NatsRole::Admin)
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    spoor_relay::source::nats::ensure_stream(&js, spoor_core::contract::DEFAULT_EVENTS_STREAM)
        .await
        .expect("stream");
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let frames = Arc::new(frames.to_vec());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (js, hist, next, frames) = (js.clone(), hist.clone(), next.clone(), frames.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= frames.len() {
                    break;
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("bench-{n}").as_str());
                let t = Instant::now();
                js.publish_with_headers("spoor.events.bench.0", headers, frames[n].clone().into())
                    .await
                    .expect("publish")
                    .await
                    .expect("PubAck");
                if n >= WARMUP {
                    let us = t.elapsed().as_micros().max(1) as u64;
                    hist.lock().await.record(us).expect("in range");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    let secs = started.elapsed().as_secs_f64();
    let h = hist.lock().await;
    Figures {
        frames_per_sec: frames.len() as f64 / secs,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: h.max() as f64 / 1000.0,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let frames: Vec<Vec<u8>> = (0..FRAMES).map(frame).collect();
    let avg = frames.iter().map(Vec::len).sum::<usize>() / frames.len();
    println!("jetstream_sync: {FRAMES} frames of 50 events, {avg} bytes each on average");
    for concurrency in [1usize, 16] {
        // Alternate the two servers, twice each, so drift on a shared
        // machine hits both equally.
        let mut rows = Vec::new();
        for round in 0..2 {
            for setting in ["always", "2m"] {
                let server = if setting == "always" {
                    NatsServer::start().expect("nats-server (cargo xtask setup)")
                } else {
                    NatsServer::start_with_sync_interval(setting).expect("nats-server")
                };
                let f = rt.block_on(measure(&server, &frames, concurrency));
                println!(
                    "  concurrency {concurrency:>2}  sync_interval {setting:<6}  round {round}: \
                     {:>7.0} frames/s  PubAck p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
                    f.frames_per_sec, f.p50_ms, f.p99_ms, f.max_ms
                );
                rows.push((setting, f));
                drop(server);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let mean = |s: &str, pick: fn(&Figures) -> f64| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.0 == s)
                .map(|r| pick(&r.1))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        println!(
            "  concurrency {concurrency:>2}: always/2m throughput ratio {:.2}, p50 ratio {:.2}, p99 ratio {:.2}",
            mean("always", |f| f.frames_per_sec) / mean("2m", |f| f.frames_per_sec),
            mean("always", |f| f.p50_ms) / mean("2m", |f| f.p50_ms),
            mean("always", |f| f.p99_ms) / mean("2m", |f| f.p99_ms),
        );
    }
}
