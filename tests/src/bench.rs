//! What the whole-system benchmarks (`relay/benches/device_lookup.rs`,
//! `aggregator/benches/read_path.rs`, `tests/benches/`, `tests/examples/`)
//! share: latency histograms in microseconds, `SPOOR_BENCH_*` overrides,
//! and a process's and its threads' CPU time from `/proc`.

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

/// utime + stime of a process, in seconds (0 when it cannot be read).
pub fn process_cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of each of a process's threads, by thread id.
pub fn thread_cpu_secs(pid: u32) -> std::collections::BTreeMap<u32, f64> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) {
            out.insert(tid, stat_cpu_secs(&format!("/proc/{pid}/task/{tid}/stat")));
        }
    }
    out
}

/// The CPU seconds the busiest thread spent between two snapshots of
/// `thread_cpu_secs`: in workerd, the isolate's thread (the others compile,
/// collect garbage and do I/O).
pub fn busiest_thread_delta(
    before: &std::collections::BTreeMap<u32, f64>,
    after: &std::collections::BTreeMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(tid, s)| s - before.get(tid).copied().unwrap_or(0.0))
        .fold(0.0, f64::max)
}

fn stat_cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}
