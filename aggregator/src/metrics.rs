//! The aggregator's Prometheus metrics, in a registry owned by one service
//! (never a process-global recorder), so tests can run several in one
//! process. Only [`QueryServed`] and [`LaneBusy`] touch them, each writing
//! its log line with its count.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels3 = [(&'static str, &'static str); 3];
type Labels1 = [(&'static str, &'static str); 1];

/// Every metric the aggregator exports (prefix `spoor_aggregator_`).
pub struct Metrics {
    registry: Registry,
    /// Answers by route, lane and outcome (`ok`, `bad_request`, `busy`...).
    pub requests: Family<Labels3, Counter>,
    /// Time from accepting a query to answering it, by route.
    pub query_seconds: Family<Labels1, Histogram>,
    /// Queries refused because their lane stayed full for its queue wait.
    pub lane_busy: Family<Labels1, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spoor_aggregator");
        let requests = Family::<Labels3, Counter>::default();
        let query_seconds = Family::<Labels1, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        let lane_busy = Family::<Labels1, Counter>::default();
        registry.register(
            "requests",
            "API requests answered, by route, lane and outcome",
            requests.clone(),
        );
        registry.register(
            "query_seconds",
            "Seconds from accepting a query to answering it, by route",
            query_seconds.clone(),
        );
        registry.register(
            "lane_busy",
            "Queries refused because their lane was full for its whole queue wait",
            lane_busy.clone(),
        );
        Metrics {
            registry,
            requests,
            query_seconds,
            lane_busy,
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One API request answered.
pub struct QueryServed {
    pub route: &'static str,
    pub lane: &'static str,
    pub outcome: &'static str,
    pub elapsed: Duration,
}

impl QueryServed {
    pub fn emit(self, m: &Metrics) {
        tracing::debug!(
            route = self.route,
            lane = self.lane,
            outcome = self.outcome,
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            "query served"
        );
        m.requests
            .get_or_create(&[
                ("route", self.route),
                ("lane", self.lane),
                ("outcome", self.outcome),
            ])
            .inc();
        m.query_seconds
            .get_or_create(&[("route", self.route)])
            .observe(self.elapsed.as_secs_f64());
    }
}

/// A query waited its lane's whole queue wait without a slot.
pub struct LaneBusy {
    pub lane: &'static str,
}

impl LaneBusy {
    pub fn emit(self, m: &Metrics) {
        tracing::warn!(lane = self.lane, "lane full; query refused with 503");
        m.lane_busy.get_or_create(&[("lane", self.lane)]).inc();
    }
}
