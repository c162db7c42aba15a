//! How full the events stream is, and when that degrades health.
//!
//! `SPOOR_EVENTS` discards nothing it acknowledged (`discard: new`): once
//! it holds `max_bytes` (or `max_msgs`) it refuses new publishes, and the
//! edge answers durable acks with 503 and spills fast acks. Fullness is
//! the warning before that: the relay exports it as a gauge and both the
//! relay's and the edge's `/healthz` say "degraded" past a threshold
//! ([`DEFAULT_DEGRADED_AT`]), while there is still room.
//!
//! Pure arithmetic over the stream's limits and state as JetStream reports
//! them (`$JS.API.STREAM.INFO.<stream>`): the relay reads them through
//! async-nats, the edge through its own client; both decide here, so the
//! two health answers agree.

use serde::{Deserialize, Serialize};

/// The fullness at which health turns "degraded" unless configured.
pub const DEFAULT_DEGRADED_AT: f64 = 0.8;

/// A stream's usage against its limits, as JetStream reports them. A limit
/// of 0 or below (JetStream's -1) means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamUsage {
    pub bytes: u64,
    pub max_bytes: i64,
    pub messages: u64,
    pub max_msgs: i64,
}

fn ratio(used: u64, max: i64) -> Option<f64> {
    (max > 0).then(|| used as f64 / max as f64)
}

impl StreamUsage {
    /// Bytes stored over `max_bytes`; `None` when bytes are unlimited.
    pub fn bytes_ratio(&self) -> Option<f64> {
        ratio(self.bytes, self.max_bytes)
    }

    /// Messages stored over `max_msgs`; `None` when unlimited.
    pub fn msgs_ratio(&self) -> Option<f64> {
        ratio(self.messages, self.max_msgs)
    }

    /// The nearer of the two limits, 0 when neither is set: the stream
    /// refuses publishes when this reaches 1.
    pub fn ratio(&self) -> f64 {
        self.bytes_ratio()
            .into_iter()
            .chain(self.msgs_ratio())
            .fold(0.0, f64::max)
    }

    /// Why health is degraded, or `None` below `threshold`.
    pub fn degraded(&self, stream: &str, threshold: f64) -> Option<String> {
        let ratio = self.ratio();
        if ratio < threshold {
            return None;
        }
        let mut limits = Vec::new();
        if self.max_bytes > 0 {
            limits.push(format!("{} of {} bytes", self.bytes, self.max_bytes));
        }
        if self.max_msgs > 0 {
            limits.push(format!("{} of {} messages", self.messages, self.max_msgs));
        }
        Some(format!(
            "stream {stream} is {:.1}% full ({}; degraded at {:.1}%): when full it refuses new events (durable acks get 503, fast acks spill)",
            ratio * 100.0,
            limits.join(", "),
            threshold * 100.0
        ))
    }
}

/// Parses a degradation threshold: a fraction in (0, 1], e.g. `0.8`.
pub fn parse_threshold(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number like 0.8"))?;
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(format!("{text:?} must be above 0 and at most 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_takes_the_nearer_limit_and_ignores_unlimited_ones() {
        let u = StreamUsage {
            bytes: 50,
            max_bytes: 100,
            messages: 9,
            max_msgs: 10,
        };
        assert_eq!(u.bytes_ratio(), Some(0.5));
        assert_eq!(u.msgs_ratio(), Some(0.9));
        assert_eq!(u.ratio(), 0.9);
        let bytes_only = StreamUsage { max_msgs: -1, ..u };
        assert_eq!(bytes_only.msgs_ratio(), None);
        assert_eq!(bytes_only.ratio(), 0.5);
        let unlimited = StreamUsage {
            bytes: 1 << 40,
            max_bytes: -1,
            messages: 7,
            max_msgs: 0,
        };
        assert_eq!(unlimited.ratio(), 0.0);
        assert_eq!(unlimited.degraded("S", 0.1), None);
    }

    #[test]
    fn degraded_names_the_stream_the_ratio_and_the_limits() {
        let u = StreamUsage {
            bytes: 85,
            max_bytes: 100,
            messages: 3,
            max_msgs: -1,
        };
        assert_eq!(u.degraded("SPOOR_EVENTS", 0.9), None);
        let reason = u.degraded("SPOOR_EVENTS", 0.8).unwrap();
        assert!(
            reason.starts_with(
                "stream SPOOR_EVENTS is 85.0% full (85 of 100 bytes; degraded at 80.0%)"
            ),
            "{reason}"
        );
        // Exactly at the threshold is degraded.
        assert!(u.degraded("S", 0.85).is_some());
    }

    #[test]
    fn thresholds_are_fractions() {
        assert_eq!(parse_threshold("0.8"), Ok(0.8));
        assert_eq!(parse_threshold(" 1 "), Ok(1.0));
        for bad in ["0", "-0.1", "1.5", "80%", "", "NaN"] {
            assert!(parse_threshold(bad).is_err(), "{bad}");
        }
    }
}
