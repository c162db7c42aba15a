//! What the whole-system benchmarks (`relay/benches/device_lookup.rs`,
//! `aggregator/benches/read_path.rs`, `tests/benches/`) share: latency
//! histograms in microseconds and `SPOOR_BENCH_*` overrides.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Microseconds from 1 µs to 10 minutes, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// Records `d` (at least 1 µs; longer than the bounds saturates).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// The `q` quantile in milliseconds.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// `name` from the environment, parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
