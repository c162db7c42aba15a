//! Criterion benchmarks of the edge's CPU path: `ingest` (parse, validate,
//! enrich, CBOR+LZ4 encode) of a realistic 50-event batch, and the relay's
//! `decode_batch` of the resulting frame.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spoor_core::ingest::{ingest, Endpoint, RequestMeta};
use spoor_core::{decode_batch, Geo, Limits};

const NOW: i64 = 1_763_800_000_000;

fn batch_body(n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"event":"{}","event_id":"0b9e1d6a-3c43-4c7e-9f0e-{:012x}","anonymous_id":"dev-42","user_id":"user-42","session_id":"s-1","timestamp":{},"properties":{{"path":"/products/{}","product_id":"p-{}","price":19.99,"currency":"EUR","items":[{{"sku":"a","qty":1}}]}},"context":{{"page":{{"url":"https://shop.test/products/{}","path":"/products/{}","referrer":"https://search.test/","title":"Product {}"}},"library":{{"name":"spoor-js","version":"0.1.0"}},"locale":"de-DE","screen":{{"width":1920,"height":1080}}}}}}"#,
                ["page_view", "add_to_cart", "purchase"][i % 3], i, NOW - 1000 + i as i64, i, i, i, i, i
            )
        })
        .collect();
    format!(r#"{{"sent_at":{},"batch":[{}]}}"#, NOW, events.join(","))
}

fn meta() -> RequestMeta<'static> {
    RequestMeta {
        project_id: "shop",
        region: "eu",
        partitions: 16,
        received_at_ms: NOW,
        content_type: Some("application/json"),
        content_encoding: None,
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
        ip: "203.0.113.9",
        geo: Geo { country: "DE".into(), city: "Berlin".into(), colo: "TXL".into(), asn: 3320, ..Geo::default() },
    }
}

fn bench(c: &mut Criterion) {
    let body = batch_body(50);
    let limits = Limits::default();
    let mut g = c.benchmark_group("edge");
    g.throughput(Throughput::Elements(50));
    g.bench_function("ingest_50_events", |b| {
        b.iter(|| ingest(Endpoint::Batch, body.as_bytes(), &meta(), &limits).unwrap())
    });
    let frame = ingest(Endpoint::Batch, body.as_bytes(), &meta(), &limits)
        .unwrap()
        .messages
        .remove(0)
        .frame;
    g.bench_function("decode_50_events", |b| {
        b.iter(|| decode_batch(&frame, limits.max_frame_bytes).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
