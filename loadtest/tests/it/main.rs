//! The sender and the tracker against an in-process fake edge: plain hyper
//! around `spoor_core::ingest`, the same rule engine the real edge runs,
//! with injectable faults (503, 429, a lying receipt). The real edge, NATS
//! and ClickHouse are exercised by the workspace's end-to-end suite.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use spoor_core::ingest::{error_body, ingest, Endpoint, RequestMeta};
use spoor_core::{decode_batch, Geo, Limits};
use spoor_loadtest::{generate, run, RunOptions, TrafficArgs};
use uuid::Uuid;

const WRITE_KEY: &str = "wk_test";

#[derive(Clone, Copy, Default)]
struct Faults {
    /// The first n requests get a 503 with `Retry-After: 0`.
    unavailable: usize,
    /// The next n get a 429 with `Retry-After: 1`.
    throttled: usize,
    /// Every receipt claims one more accepted event than the truth.
    lie: bool,
}

struct State {
    faults: Faults,
    hits: AtomicUsize,
    /// Ids of every accepted event, duplicates included.
    stored: Mutex<Vec<Uuid>>,
}

struct FakeEdge {
    url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEdge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_edge(faults: Faults) -> FakeEdge {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        faults,
        hits: AtomicUsize::new(0),
        stored: Mutex::new(Vec::new()),
    });
    let s = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    FakeEdge {
        url: format!("http://{addr}"),
        state,
        task,
    }
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.hits.fetch_add(1, Ordering::SeqCst);
    let f = state.faults;
    let h = req.headers().clone();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if n < f.unavailable {
        let mut r = reply(503, error_body("unavailable", "injected"));
        r.headers_mut().insert("Retry-After", "0".parse().unwrap());
        return Ok(r);
    }
    if n < f.unavailable + f.throttled {
        let mut r = reply(429, error_body("rate_limited", "injected"));
        r.headers_mut().insert("Retry-After", "1".parse().unwrap());
        return Ok(r);
    }
    if header("X-Spoor-Write-Key").as_deref() != Some(WRITE_KEY) {
        return Ok(reply(
            401,
            error_body("invalid_write_key", "the write key is not known"),
        ));
    }
    let (ct, ce, ua) = (
        header("Content-Type"),
        header("Content-Encoding"),
        header("User-Agent").unwrap_or_default(),
    );
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let meta = RequestMeta {
        project_id: "demo",
        region: "test",
        partitions: 4,
        received_at_ms: now,
        content_type: ct.as_deref(),
        content_encoding: ce.as_deref(),
        user_agent: &ua,
        ip: "127.0.0.1",
        geo: Geo::default(),
    };
    match ingest(Endpoint::Batch, &body, &meta, &Limits::default()) {
        Err(e) => Ok(reply(e.status(), error_body(e.code(), &e.to_string()))),
        Ok(mut ing) => {
            let ids = ing
                .messages
                .iter()
                .flat_map(|m| decode_batch(&m.frame, 1 << 24).unwrap().events);
            state.stored.lock().unwrap().extend(ids.map(|e| e.event_id));
            if f.lie {
                ing.receipt.accepted += 1;
            }
            Ok(reply(202, serde_json::to_string(&ing.receipt).unwrap()))
        }
    }
}

fn options(edge: &FakeEdge, traffic: TrafficArgs) -> RunOptions {
    RunOptions {
        edge_url: edge.url.clone(),
        write_key: WRITE_KEY.into(),
        project: "demo".into(),
        traffic,
        concurrency: 4,
        ..RunOptions::default()
    }
}

/// The valid ids of a traffic spec (they do not depend on the clock).
fn valid_ids(traffic: &TrafficArgs) -> HashSet<Uuid> {
    let plan = generate(&traffic.model(traffic.run_id.unwrap(), 0)).unwrap();
    plan.batches
        .iter()
        .flat_map(|b| b.valid_ids.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receipt_matches_and_faults_are_retried() {
    let edge = fake_edge(Faults {
        unavailable: 1,
        throttled: 1,
        lie: false,
    })
    .await;
    let traffic = TrafficArgs {
        events: 3_000,
        users: 40,
        invalid_ratio: 0.05,
        resend_ratio: 0.1,
        run_id: Some(Uuid::from_u128(0xfeed)),
        ..TrafficArgs::default()
    };
    let summary_path =
        std::env::temp_dir().join(format!("spoor-loadtest-it-{}.json", std::process::id()));
    let opts = RunOptions {
        json_summary: Some(summary_path.clone()),
        ..options(&edge, traffic.clone())
    };
    let s = run(&opts).await.unwrap();

    assert!(s.ok, "{s}");
    assert_eq!(
        (s.retries, s.throttled, s.failed_requests),
        (1, 1, 0),
        "{s}"
    );
    assert!(s.resends > 0 && s.rejected > 0);
    // Two attempts were answered with errors; every other event was judged.
    let unjudged = s.sent - s.accepted - s.rejected;
    assert!(
        unjudged > 0 && unjudged <= 2 * traffic.batch_size,
        "{unjudged}"
    );
    assert_eq!(s.rejected_by_reason.values().sum::<usize>(), s.rejected);
    assert!(s.p50_ack_ms > 0.0 && s.p50_ack_ms <= s.p99_ack_ms && s.p99_ack_ms <= s.max_ack_ms);
    assert_eq!(s.stored, None, "no ClickHouse given, nothing verified");

    let expected = valid_ids(&traffic);
    assert_eq!(s.unique_valid, expected.len());
    let stored = edge.state.stored.lock().unwrap().clone();
    assert_eq!(stored.iter().copied().collect::<HashSet<_>>(), expected);
    assert!(
        stored.len() > expected.len(),
        "resends reach the edge as duplicates"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    std::fs::remove_file(&summary_path).ok();
    for key in [
        "sent",
        "accepted",
        "rejected",
        "unique_valid",
        "stored",
        "p50_ack_ms",
        "p90_ack_ms",
        "p99_ack_ms",
        "max_ack_ms",
        "events_per_sec",
        "store_delay_ms",
        "ok",
        "mismatches",
    ] {
        assert!(json.get(key).is_some(), "summary lacks {key}: {json}");
    }
    assert_eq!(json["ok"], true);
    assert_eq!(json["sent"], s.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_pacing() {
    let edge = fake_edge(Faults::default()).await;
    let traffic = TrafficArgs {
        events: 1_000,
        users: 20,
        run_id: Some(Uuid::from_u128(0xbeef)),
        ..TrafficArgs::default()
    };
    let opts = RunOptions {
        gzip: true,
        rate: 4_000.0,
        ..options(&edge, traffic)
    };
    let s = run(&opts).await.unwrap();
    assert!(s.ok, "{s}");
    assert_eq!(s.accepted, 1_000);
    // The last request is due after all but its own events went out at 4,000/s.
    assert!(s.send_secs >= 0.15, "paced run took only {} s", s.send_secs);
    assert!(s.events_per_sec < 6_000.0, "{}", s.events_per_sec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_receipt_fails_the_run() {
    let edge = fake_edge(Faults {
        lie: true,
        ..Faults::default()
    })
    .await;
    let traffic = TrafficArgs {
        events: 500,
        users: 10,
        run_id: Some(Uuid::from_u128(0xbad)),
        ..TrafficArgs::default()
    };
    let s = run(&options(&edge, traffic)).await.unwrap();
    assert!(!s.ok);
    assert_eq!(s.mismatch_count, s.requests);
    assert!(s.mismatches[0].contains("expected"), "{:?}", s.mismatches);
    assert!(format!("{s}").contains("FAIL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_write_key_and_a_dead_edge_are_reported() {
    let edge = fake_edge(Faults::default()).await;
    let traffic = TrafficArgs {
        events: 100,
        users: 2,
        run_id: Some(Uuid::from_u128(0xdead)),
        ..TrafficArgs::default()
    };
    let s = run(&RunOptions {
        write_key: "wk_nope".into(),
        ..options(&edge, traffic.clone())
    })
    .await
    .unwrap();
    assert!(!s.ok);
    assert_eq!(s.failed_requests, s.requests);
    assert!(
        s.mismatches[0].contains("HTTP 401: invalid_write_key"),
        "{:?}",
        s.mismatches
    );

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let opts = RunOptions {
        edge_url: format!("http://{dead}"),
        max_retries: 1,
        request_timeout_secs: 2,
        ..options(&edge, traffic)
    };
    let started = std::time::Instant::now();
    let s = run(&opts).await.unwrap();
    assert!(!s.ok);
    assert_eq!(s.failed_requests, s.requests);
    assert_eq!(s.retries, s.requests);
    assert!(
        s.mismatches[0].contains("no answer after 2 attempts"),
        "{:?}",
        s.mismatches
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
