//! How the edge acknowledges and delivers a request: which ack mode a request
//! gets (fast or durable) and when a failed publish is tried again.
//!
//! Pure decisions only. The edge reads the header, query string and clock and
//! does the publishing; this module never does I/O and never sleeps, so the
//! rules are unit-tested natively and stay identical on every runtime.
//!
//! Why two modes: fast (the default) trades a window of risk (home, secondary
//! and the spill queue all failing, or the isolate dying inside `waitUntil`)
//! for an ack that never waits on NATS; durable (on request, or for critical
//! events) trades latency and 503s during outages for an ack that means
//! "fsynced in JetStream". The retry schedule is deterministic, with no
//! jitter: each request retries on its own, a few attempts, not a herd.
//! Durable acks make one round (home, then secondary) while the client waits;
//! the client's retry after the 503 is the next round.

use std::collections::{BTreeSet, HashMap, HashSet};

/// When the edge answers a request that carries accepted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// 202 as soon as the batch is validated; publishing continues after the
    /// answer (home → secondary → spill queue).
    Fast,
    /// 202 only after JetStream's PubAck for every frame; 503 when no region
    /// takes the batch.
    Durable,
}

impl AckMode {
    /// The value of the `X-Spoor-Ack` response header.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Fast => "fast",
            AckMode::Durable => "durable",
        }
    }
}

/// Event names a project marks critical: a batch holding one is always
/// acknowledged durably, whatever the client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriticalEvents {
    by_project: HashMap<String, HashSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CRITICAL_EVENTS must be a JSON object of project id to a list of event names: {0}")]
pub struct CriticalEventsError(String);

impl CriticalEvents {
    /// Parses `{"<project>": ["purchase", ...], ...}`.
    pub fn from_json(text: &str) -> Result<Self, CriticalEventsError> {
        let raw: HashMap<String, Vec<String>> =
            serde_json::from_str(text).map_err(|e| CriticalEventsError(e.to_string()))?;
        let by_project = raw
            .into_iter()
            .map(|(project, names)| (project, names.into_iter().collect()))
            .collect();
        Ok(CriticalEvents { by_project })
    }

    /// True when any of `names` is critical for `project`.
    pub fn any_critical<'a>(
        &self,
        project: &str,
        names: impl IntoIterator<Item = &'a String>,
    ) -> bool {
        match self.by_project.get(project) {
            None => false,
            Some(critical) => names.into_iter().any(|n| critical.contains(n)),
        }
    }
}

/// The ack mode of one request. Durable when the `X-Spoor-Ack` header says
/// `durable`, when the query string has `ack=durable`, or when an accepted
/// event's name is critical for the project; fast otherwise. Anything else in
/// the header or query (`fast`, a typo) leaves the default: a client cannot
/// downgrade a critical batch.
pub fn ack_mode(
    header: Option<&str>,
    query: Option<&str>,
    project: &str,
    event_names: &BTreeSet<String>,
    critical: &CriticalEvents,
) -> AckMode {
    let header_durable = header.is_some_and(|h| h.trim().eq_ignore_ascii_case("durable"));
    let query_durable = query.is_some_and(|q| {
        q.trim_start_matches('?').split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == "ack" && v.eq_ignore_ascii_case("durable")
        })
    });
    if header_durable || query_durable || critical.any_critical(project, event_names) {
        AckMode::Durable
    } else {
        AckMode::Fast
    }
}

/// Bounded retries with exponential backoff inside a time budget (the
/// runtime's `wait_until` allowance, minus room to spill). Deterministic: no
/// jitter, because each edge request publishes on its own socket and
/// retries are a handful of attempts, not a herd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Most attempts, the first included. At least one is always made.
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time after.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// No attempt starts that could end after this many ms from the start.
    pub budget_ms: u64,
}

impl Default for RetrySchedule {
    /// 4 attempts, 100 → 200 → 400 ms apart, within 20 s: well inside the
    /// 30 s that Workers grant `waitUntil` after the response.
    fn default() -> Self {
        RetrySchedule {
            attempts: 4,
            base_delay_ms: 100,
            max_delay_ms: 2_000,
            budget_ms: 20_000,
        }
    }
}

impl RetrySchedule {
    /// How long to wait before attempt number `attempt` (0 is the first and
    /// needs no wait), given the time spent so far and the worst case one
    /// attempt can take. `None` when no further attempt is allowed: the
    /// caller then falls back (spill) or gives up (503).
    pub fn delay_before(
        &self,
        attempt: u32,
        elapsed_ms: u64,
        worst_attempt_ms: u64,
    ) -> Option<u64> {
        if attempt == 0 {
            return Some(0);
        }
        if attempt >= self.attempts {
            return None;
        }
        let shift = (attempt - 1).min(20);
        let delay = self
            .base_delay_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_delay_ms);
        let ends = elapsed_ms
            .saturating_add(delay)
            .saturating_add(worst_attempt_ms);
        (ends <= self.budget_ms).then_some(delay)
    }
}

#[cfg(test)]
mod tests;
