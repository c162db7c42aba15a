//! Benchmark (not a test): the edge's server-side ack latency, fast vs
//! durable, under the same load in the same run. The edge's WASM build runs
//! in plain workerd (the runtime Cloudflare runs) against a real nats-server
//! with JetStream (`sync_interval: always`); spoor-loadtest sends the same
//! seeded traffic twice, once per ack mode, and reports the client's latency
//! and the edge's own `X-Spoor-Ack-Ms`. No relay or ClickHouse: only the
//! edge → NATS leg is measured. The rate limit is off (it is per isolate and
//! would measure itself).
//!
//! ```sh
//! SPOOR_NATS_SERVER=... SPOOR_WORKERD=... SPOOR_EDGE_BUILD=$PWD/edge/build \
//!   cargo run --release -p spoor-tests --example edge_ack_latency -- [events] [concurrency] [events/s, 0 = unpaced]
//! ```

use clap::Parser;
use serde_json::json;
use spoor_tests::edge::{Edge, EdgeConfig};
use spoor_tests::nats::NatsServer;

/// The load: positional, so the BENCHMARKS.md command lines stay as written.
#[derive(Parser)]
struct Load {
    /// Unique events per round.
    #[arg(default_value_t = 50_000)]
    events: usize,
    /// Requests in flight.
    #[arg(default_value_t = 16)]
    concurrency: usize,
    /// Target events per second; 0 sends as fast as possible.
    #[arg(default_value_t = 0.0)]
    rate: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let Load {
        events,
        concurrency,
        rate,
    } = Load::parse();

    let nats = NatsServer::start()?;
    let client = nats.connect(spoor_tests::nats::NatsRole::Admin).await?;
    let js = async_nats::jetstream::new(client);
    spoor_relay::source::nats::ensure_stream(&js, spoor_core::contract::DEFAULT_EVENTS_STREAM)
        .await?;
    let edge = Edge::start(
        &EdgeConfig::for_nats(&nats)
            .var("WRITE_KEYS", json!({"wk_bench": "bench"}).to_string())
            .var("RATE_LIMIT_EVENTS_PER_SEC", "0"),
    )?;

    for (round, ack) in ["fast", "durable", "fast", "durable"]
        .into_iter()
        .enumerate()
    {
        let mut opts = spoor_loadtest::RunOptions {
            edge_url: edge.url(),
            write_key: "wk_bench".into(),
            project: "bench".into(),
            concurrency,
            rate,
            gzip: true,
            ack: Some(ack.into()),
            ..Default::default()
        };
        opts.traffic.events = events;
        opts.traffic.users = 2_000;
        opts.traffic.invalid_ratio = 0.0;
        opts.traffic.resend_ratio = 0.0;
        opts.traffic.seed = 100 + round as u64;
        let s = spoor_loadtest::run(&opts).await?;
        println!(
            "round {round} ack={ack}: {} requests, {} events, {:.0} events/s, {:.0} req/s, failed {}, modes {:?}\n  \
             client p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms\n  \
             server p50 {:.0} ms p99 {:.0} ms max {:.0} ms",
            s.requests, s.sent, s.events_per_sec, s.requests_per_sec, s.failed_requests, s.ack_modes,
            s.p50_ack_ms, s.p90_ack_ms, s.p99_ack_ms, s.max_ack_ms,
            s.server_p50_ack_ms, s.server_p99_ack_ms, s.server_max_ack_ms,
        );
    }
    Ok(())
}
