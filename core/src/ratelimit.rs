//! The per-write-key rate limit: token buckets counted in events, with a
//! burst, a default rate and per-key overrides.
//!
//! The state is whatever the caller keeps (the edge keeps one `TokenBuckets`
//! per isolate) and the time comes in as `now_ms`; this module never reads a
//! clock. Only configured write keys reach it, so the map is bounded by the
//! key list.
//!
//! Why a token bucket per isolate and not the Workers rate-limit binding:
//! workers-rs exposes the binding (`[[unsafe.bindings]] type = "ratelimit"`),
//! but it counts calls, not events, its period can only be 10 or 60 s, it has
//! no burst, it is eventually consistent per location, and locally it exists
//! only as miniflare's simulation (which plain workerd, the benchmark runtime,
//! lacks). Spoor limits events per second with a burst and per-key overrides,
//! so the limit lives here: exact, tested natively and in workerd. The cost:
//! a key spread over N isolates can send N times its rate. A global limit
//! would need a Durable Object per key, a round trip per request; not worth
//! it for overload protection.

use std::collections::HashMap;

use serde::Deserialize;

/// Events per second with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Rate {
    pub events_per_sec: f64,
    pub burst: f64,
}

/// The default rate per key (per isolate): 1,000 events/s with bursts of
/// 5,000, ten full batches at once.
pub const DEFAULT_RATE: Rate = Rate {
    events_per_sec: 1_000.0,
    burst: 5_000.0,
};

/// The default rate and per-key overrides. A rate of 0 events/s disables the
/// limit for that key.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    pub default: Rate,
    pub overrides: HashMap<String, Rate>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            default: DEFAULT_RATE,
            overrides: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitsError {
    #[error("{name} {value:?} must be a number of 0 or more")]
    Number { name: &'static str, value: String },
    #[error(
        "RATE_LIMIT_OVERRIDES must be a JSON object of write key to {{\"events_per_sec\": n, \"burst\": n}}: {0}"
    )]
    Overrides(String),
}

fn number(name: &'static str, value: &str) -> Result<f64, RateLimitsError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| RateLimitsError::Number {
            name,
            value: value.to_string(),
        })
}

impl RateLimits {
    /// From the edge's vars: `RATE_LIMIT_EVENTS_PER_SEC`, `RATE_LIMIT_BURST`
    /// (defaults to the rate when only the rate is set, so one second's
    /// worth), `RATE_LIMIT_OVERRIDES`.
    pub fn from_vars(
        events_per_sec: Option<&str>,
        burst: Option<&str>,
        overrides: Option<&str>,
    ) -> Result<Self, RateLimitsError> {
        let mut default = DEFAULT_RATE;
        if let Some(r) = events_per_sec {
            default.events_per_sec = number("RATE_LIMIT_EVENTS_PER_SEC", r)?;
            default.burst = default.events_per_sec;
        }
        if let Some(b) = burst {
            default.burst = number("RATE_LIMIT_BURST", b)?;
        }
        let overrides = match overrides {
            None => HashMap::new(),
            Some(text) => {
                let map: HashMap<String, Rate> = serde_json::from_str(text)
                    .map_err(|e| RateLimitsError::Overrides(e.to_string()))?;
                if let Some((k, _)) = map.iter().find(|(_, r)| {
                    !(r.events_per_sec.is_finite()
                        && r.events_per_sec >= 0.0
                        && r.burst.is_finite()
                        && r.burst >= 0.0)
                }) {
                    return Err(RateLimitsError::Overrides(format!(
                        "{k:?} has a negative or non-finite number"
                    )));
                }
                map
            }
        };
        Ok(RateLimits { default, overrides })
    }

    pub fn rate_for(&self, write_key: &str) -> Rate {
        self.overrides
            .get(write_key)
            .copied()
            .unwrap_or(self.default)
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; `retry_after_s` (at least 1) is when enough tokens
    /// will have refilled for this request.
    Limited {
        retry_after_s: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

/// Token buckets by write key.
#[derive(Debug, Default)]
pub struct TokenBuckets {
    buckets: HashMap<String, Bucket>,
}

/// Above this many keys, buckets that have refilled completely are dropped
/// (a full bucket is the same as no bucket).
const MAX_TRACKED_KEYS: usize = 10_000;

impl TokenBuckets {
    /// Takes `cost` events from `key`'s bucket if it allows them. A request
    /// bigger than the burst passes when the bucket is full and leaves it in
    /// debt, so a key's long-run rate holds whatever its batch size.
    pub fn take(&mut self, key: &str, rate: Rate, cost: u64, now_ms: i64) -> Verdict {
        if rate.events_per_sec <= 0.0 {
            return Verdict::Allowed;
        }
        if self.buckets.len() >= MAX_TRACKED_KEYS && !self.buckets.contains_key(key) {
            self.buckets
                .retain(|_, b| refill(*b, rate, now_ms) < rate.burst);
        }
        let bucket = self.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            updated_ms: now_ms,
        });
        let tokens = refill(*bucket, rate, now_ms);
        let cost = cost as f64;
        let needed = cost.min(rate.burst);
        bucket.updated_ms = now_ms.max(bucket.updated_ms);
        if tokens >= needed {
            bucket.tokens = tokens - cost;
            Verdict::Allowed
        } else {
            bucket.tokens = tokens;
            let wait_s = ((needed - tokens) / rate.events_per_sec).ceil();
            Verdict::Limited {
                retry_after_s: (wait_s as u64).max(1),
            }
        }
    }
}

fn refill(b: Bucket, rate: Rate, now_ms: i64) -> f64 {
    // A clock that steps back refills nothing instead of draining.
    let elapsed_s = now_ms.saturating_sub(b.updated_ms).max(0) as f64 / 1000.0;
    (b.tokens + elapsed_s * rate.events_per_sec).min(rate.burst)
}

#[cfg(test)]
mod tests;
