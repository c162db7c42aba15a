//! The edge's counters and their Prometheus text form.
//!
//! Plain numbers that the edge bumps as things happen and renders at
//! `GET /metrics`. They live in one isolate's memory: each isolate counts
//! only what it handled and starts from zero, so a scrape sees one isolate
//! (sum across scrapes, use rates, expect resets). No I/O, no clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Where a frame was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Home,
    Secondary,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Home => "home",
            Target::Secondary => "secondary",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeCounters {
    /// Events accepted (answered 202 as accepted), by ack mode.
    pub accepted: BTreeMap<&'static str, u64>,
    /// Events rejected one by one, by reason.
    pub events_rejected: BTreeMap<String, u64>,
    /// Whole requests refused, by error code (401, 413, 429, 503 …).
    pub requests_rejected: BTreeMap<String, u64>,
    /// Events published with a PubAck, by target region.
    pub published: BTreeMap<Target, u64>,
    /// Failed publish attempts (a frame or a connection), by target region.
    pub publish_failures: BTreeMap<Target, u64>,
    /// Events parked on the spill queue, and the queue messages carrying them.
    pub spilled_events: u64,
    pub spill_messages: u64,
    /// Events that could not even be spilled (the loud, last-resort failure).
    pub spill_failed_events: u64,
    /// Events republished from the spill queue with a PubAck.
    pub replayed_events: u64,
    /// Queue messages whose republish failed and was retried later.
    pub replay_retries: u64,
    /// Queue messages that could not be read at all (dropped with an error log).
    pub replay_unreadable: u64,
    /// Requests and events refused by the rate limit.
    pub rate_limited_requests: u64,
    pub rate_limited_events: u64,
}

impl EdgeCounters {
    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self, region: &str) -> String {
        let mut s = String::with_capacity(2048);
        let r = escape(region);
        family(
            &mut s,
            "spoor_edge_events_accepted_total",
            "Events accepted, by ack mode.",
        );
        for mode in ["fast", "durable"] {
            let v = self.accepted.get(mode).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "spoor_edge_events_accepted_total{{region=\"{r}\",ack=\"{mode}\"}} {v}"
            );
        }
        family(
            &mut s,
            "spoor_edge_events_rejected_total",
            "Events rejected one by one, by reason.",
        );
        for (reason, v) in &self.events_rejected {
            let _ = writeln!(
                s,
                "spoor_edge_events_rejected_total{{region=\"{r}\",reason=\"{}\"}} {v}",
                escape(reason)
            );
        }
        family(
            &mut s,
            "spoor_edge_requests_rejected_total",
            "Whole requests refused, by error code.",
        );
        for (reason, v) in &self.requests_rejected {
            let _ = writeln!(
                s,
                "spoor_edge_requests_rejected_total{{region=\"{r}\",reason=\"{}\"}} {v}",
                escape(reason)
            );
        }
        family(
            &mut s,
            "spoor_edge_events_published_total",
            "Events JetStream acknowledged, by target region.",
        );
        for t in [Target::Home, Target::Secondary] {
            let v = self.published.get(&t).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "spoor_edge_events_published_total{{region=\"{r}\",target=\"{}\"}} {v}",
                t.as_str()
            );
        }
        family(
            &mut s,
            "spoor_edge_publish_failures_total",
            "Failed publish attempts, by target region.",
        );
        for t in [Target::Home, Target::Secondary] {
            let v = self.publish_failures.get(&t).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "spoor_edge_publish_failures_total{{region=\"{r}\",target=\"{}\"}} {v}",
                t.as_str()
            );
        }
        let singles: [(&str, &str, u64); 8] = [
            (
                "spoor_edge_events_spilled_total",
                "Events parked on the spill queue.",
                self.spilled_events,
            ),
            (
                "spoor_edge_spill_messages_total",
                "Queue messages written to the spill queue.",
                self.spill_messages,
            ),
            (
                "spoor_edge_spill_failed_events_total",
                "Accepted events that could not be published nor spilled.",
                self.spill_failed_events,
            ),
            (
                "spoor_edge_events_replayed_total",
                "Events republished from the spill queue.",
                self.replayed_events,
            ),
            (
                "spoor_edge_replay_retries_total",
                "Spill messages whose republish failed and was retried.",
                self.replay_retries,
            ),
            (
                "spoor_edge_replay_unreadable_total",
                "Spill messages that could not be read.",
                self.replay_unreadable,
            ),
            (
                "spoor_edge_rate_limited_requests_total",
                "Requests refused by the rate limit.",
                self.rate_limited_requests,
            ),
            (
                "spoor_edge_rate_limited_events_total",
                "Events in requests refused by the rate limit.",
                self.rate_limited_events,
            ),
        ];
        for (name, help, v) in singles {
            family(&mut s, name, help);
            let _ = writeln!(s, "{name}{{region=\"{r}\"}} {v}");
        }
        s
    }
}

fn family(s: &mut String, name: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help} Per isolate.");
    let _ = writeln!(s, "# TYPE {name} counter");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let mut c = EdgeCounters::default();
        *c.accepted.entry("fast").or_default() += 3;
        *c.events_rejected
            .entry("missing_identity".into())
            .or_default() += 1;
        *c.requests_rejected
            .entry("rate_limited".into())
            .or_default() += 2;
        *c.published.entry(Target::Secondary).or_default() += 3;
        c.spilled_events = 4;
        let text = c.render("eu\"1");
        for line in [
            "spoor_edge_events_accepted_total{region=\"eu\\\"1\",ack=\"fast\"} 3",
            "spoor_edge_events_accepted_total{region=\"eu\\\"1\",ack=\"durable\"} 0",
            "spoor_edge_events_rejected_total{region=\"eu\\\"1\",reason=\"missing_identity\"} 1",
            "spoor_edge_requests_rejected_total{region=\"eu\\\"1\",reason=\"rate_limited\"} 2",
            "spoor_edge_events_published_total{region=\"eu\\\"1\",target=\"home\"} 0",
            "spoor_edge_events_published_total{region=\"eu\\\"1\",target=\"secondary\"} 3",
            "spoor_edge_events_spilled_total{region=\"eu\\\"1\"} 4",
            "# TYPE spoor_edge_replay_retries_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
