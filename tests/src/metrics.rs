//! `/metrics` pages in tests: fetched over HTTP and read with Spoor's one
//! Prometheus-text parser ([`spoor_core::prometheus`]). A page that does not
//! parse fails the test; a series that is absent reads as 0, as a counter
//! that never moved would.

use anyhow::{Context as _, Result};
use spoor_core::prometheus::Metrics;
use std::time::Duration;

/// `GET {base_url}/metrics` as text.
pub fn fetch(base_url: &str) -> Result<String> {
    let url = format!("{}/metrics", base_url.trim_end_matches('/'));
    Ok(ureq::get(&url)
        .timeout(Duration::from_secs(10))
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()?)
}

fn parse(page: &str) -> Metrics {
    Metrics::parse(page).unwrap_or_else(|e| panic!("a /metrics page that does not parse: {e}"))
}

/// The value of one series, e.g. `spoor_relay_rows_inserted_total` or
/// `spoor_relay_errors_total{stage="decode",error_type="bad_magic"}`; 0 when absent.
pub fn sample_value(page: &str, selector: &str) -> f64 {
    parse(page).get(selector).unwrap_or(0.0)
}

/// The sum of every series named `name`, whatever its labels.
pub fn sum(page: &str, name: &str) -> f64 {
    parse(page).sum(name)
}
