//! Criterion benchmarks of the edge's CPU path on `spoor_core::sample`'s
//! 50-event batch (about 33 KB): `ingest` whole (parse, validate, enrich,
//! CBOR+LZ4 encode), then stage by stage as `edge/bench` runs them as wasm
//! under V8, and the relay's `decode_batch` of the resulting frame.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spoor_core::ingest::{ingest, stages, Endpoint};
use spoor_core::{decode_batch, sample, Limits, WireBatch};

const NOW: i64 = 1_763_800_000_000;

fn bench(c: &mut Criterion) {
    let body = sample::batch_body(50, NOW, "0a0b0c0d");
    let limits = Limits::default();
    let m = sample::request_meta(NOW);
    let mut g = c.benchmark_group("edge");
    g.throughput(Throughput::Elements(50));
    g.bench_function("ingest_50_events", |b| {
        b.iter(|| ingest(Endpoint::Batch, body.as_bytes(), &m, &limits).unwrap())
    });
    g.bench_function("stage_envelope", |b| {
        b.iter(|| stages::envelope(body.as_bytes(), &m, &limits))
    });
    g.bench_function("stage_parse", |b| {
        b.iter(|| stages::parse(body.as_bytes(), &limits))
    });
    g.bench_function("stage_validate", |b| {
        b.iter(|| stages::validate(body.as_bytes(), &m, &limits))
    });
    g.bench_function("stage_enrich", |b| b.iter(|| stages::enrich(&m)));
    let (device, ip_prefix) = stages::enrich(&m);
    let batch = WireBatch {
        batch_id: "b".into(),
        project_id: "shop".into(),
        region: "eu".into(),
        received_at_ms: NOW,
        sent_at_ms: Some(NOW),
        geo: m.geo.clone(),
        device,
        ip_prefix,
        events: stages::events(body.as_bytes(), &m, &limits),
    };
    g.bench_function("stage_cbor", |b| b.iter(|| stages::cbor(&batch)));
    let cbor = stages::cbor(&batch);
    g.bench_function("stage_lz4", |b| b.iter(|| stages::lz4(&cbor)));
    let frame = ingest(Endpoint::Batch, body.as_bytes(), &m, &limits)
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
