//! The device debug ring: lookup of one device holding 1,000 events in a
//! ring of 1,000,000 events, and the bytes each event costs.
//!
//! `cargo bench -p spoor-relay --bench ring`. Besides criterion's timing
//! of `Ring::lookup` (+ the core merge of that one answer), it prints the
//! lookup's p50/p99 over 2,000 timed runs, the ring's own byte estimate per
//! event, and the resident memory the process gained while filling the
//! ring (from /proc/self/statm), per event.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use spoor_core::debug::{merge, DeviceQuery, EventState, RelayAnswer, Subject};
use spoor_relay::ring::{Observed, Ring, RingLimits};
use uuid::Uuid;

const NOW: i64 = 1_709_296_496_789;
const TOTAL: u64 = 1_000_000;
const TARGET_EVENTS: u64 = 1_000;
/// Other devices: 10 events each on average.
const OTHER_DEVICES: u64 = 100_000;

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn event(n: u64, device: String, user: String) -> Observed {
    // Spread over the last 50 minutes, in arrival order.
    let at = NOW - 3_000_000 + (n as i64 * 3_000_000 / TOTAL as i64);
    Observed {
        event_id: Uuid::from_u64_pair(0x0190_0000_0000_7000, n),
        event: if n.is_multiple_of(3) {
            "page_view"
        } else {
            "add_to_cart"
        }
        .into(),
        project_id: "shop".into(),
        anonymous_id: device,
        user_id: user,
        session_id: format!("s-{}", n / 50),
        ts_ms: at - 40,
        properties: format!(
            r#"{{"path":"/product/{}","price":{}.5}}"#,
            n % 5_000,
            n % 90
        ),
        client_ts_ms: Some(at - 45),
        edge_received_at_ms: at - 3,
        stream_at_ms: at,
        stream_seq: n,
        relay_received_at_ms: Some(at + 2),
        state: EventState::Inserted {
            at_ms: Some(at + 300),
        },
    }
}

fn filled() -> (Ring, Option<u64>) {
    let limits = RingLimits {
        max_bytes: 4 << 30,
        ..RingLimits::default()
    };
    let before = rss_bytes();
    let mut ring = Ring::new(limits, 16, "relay-bench");
    // Every 1,000th event is the target device's; the rest round-robin.
    let every = TOTAL / TARGET_EVENTS;
    for n in 0..TOTAL {
        let (device, user) = if n % every == 0 {
            ("device-target".to_string(), "user-target".to_string())
        } else {
            let d = n % OTHER_DEVICES;
            (
                format!("anon-{d:08x}-4c1f-9e2a"),
                if d.is_multiple_of(4) {
                    format!("u-{d}")
                } else {
                    String::new()
                },
            )
        };
        ring.observe(event(n, device, user), NOW);
    }
    let gained = rss_bytes().zip(before).map(|(a, b)| a.saturating_sub(b));
    (ring, gained)
}

fn bench(c: &mut Criterion) {
    let (ring, rss_gained) = filled();
    assert_eq!(ring.events(), TOTAL, "nothing may be evicted in this setup");
    let query = DeviceQuery::new(
        Subject::Device("device-target".into()),
        Some("shop".into()),
        3_600_000,
        NOW,
        2_000,
    )
    .unwrap();
    assert_eq!(ring.lookup(&query).events.len(), TARGET_EVENTS as usize);

    let lookup_and_merge = |q: &DeviceQuery| {
        let found = ring.lookup(q);
        let answer = RelayAnswer {
            relay: "relay-bench".into(),
            part: 0,
            last: true,
            events: found.events,
            dead_frames: found.dead_frames,
            coverage: Default::default(),
            error: None,
        };
        merge(q.clone(), [answer])
    };
    let mut samples: Vec<u128> = (0..2_000)
        .map(|_| {
            let t = Instant::now();
            black_box(lookup_and_merge(black_box(&query)));
            t.elapsed().as_micros()
        })
        .collect();
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "ring: {} events, {} devices; lookup+merge of 1,000 events: p50 {} us, p99 {} us, max {} us",
        ring.events(),
        ring.devices(),
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );
    println!(
        "ring: estimated {} bytes held, {:.1} bytes/event; resident memory gained while filling: {}",
        ring.bytes(),
        ring.bytes() as f64 / ring.events() as f64,
        rss_gained
            .map(|b| format!("{b} bytes, {:.1} bytes/event", b as f64 / TOTAL as f64))
            .unwrap_or_else(|| "unknown (no /proc/self/statm)".into())
    );

    c.bench_function("ring lookup 1k of 1M (lookup only)", |b| {
        b.iter(|| black_box(ring.lookup(black_box(&query))))
    });
    c.bench_function("ring lookup 1k of 1M (lookup + merge)", |b| {
        b.iter(|| black_box(lookup_and_merge(black_box(&query))))
    });
    let unknown = DeviceQuery {
        subject: Subject::Device("nobody".into()),
        ..query.clone()
    };
    c.bench_function("ring lookup unknown device", |b| {
        b.iter(|| black_box(ring.lookup(black_box(&unknown))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
