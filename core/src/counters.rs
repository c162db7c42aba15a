//! The edge's counters and their Prometheus text form.
//!
//! Plain numbers that the edge bumps as things happen and renders at
//! `GET /metrics`. They live in one isolate's memory: each isolate counts
//! only what it handled and starts from zero, so a scrape sees one isolate
//! (sum across scrapes, use rates, expect resets). No I/O, no clock.
//!
//! A global view needs Analytics Engine or log aggregation (Workers share no
//! memory between isolates). Locally, in workerd or `wrangler dev`, one
//! isolate serves everything, so tests read exact totals.

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

/// The reason of a publish JetStream refused because the stream (or the
/// server's store) is full.
pub const REFUSED_STREAM_FULL: &str = "stream_full";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeCounters {
    /// Events accepted (answered 202 as accepted), by ack mode.
    pub accepted: BTreeMap<&'static str, u64>,
    /// Events rejected one by one, by reason.
    pub events_rejected: BTreeMap<String, u64>,
    /// Events that repeated the id of an earlier event of their request.
    pub duplicate_events: u64,
    /// Whole requests refused, by error code (401, 413, 429, 503 …).
    pub requests_rejected: BTreeMap<String, u64>,
    /// Events published with a PubAck, by target region.
    pub published: BTreeMap<Target, u64>,
    /// Failed publish attempts (a frame or a connection), by target region.
    pub publish_failures: BTreeMap<Target, u64>,
    /// Frames JetStream refused, by target region and reason
    /// ([`REFUSED_STREAM_FULL`]): each refusal of each attempt.
    pub publish_refused: BTreeMap<(Target, &'static str), u64>,
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
    /// Requests handed to a link.
    pub link_requests: u64,
    /// Requests whose link could not be reached, published per request.
    pub link_fallback_requests: u64,
    /// Calls to a link (one call carries the frames of one or more
    /// requests).
    pub link_handoffs: u64,
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
        family(
            &mut s,
            "spoor_edge_publish_refused_total",
            "Frames JetStream refused (not stored), by target region and reason; stream_full: the stream or its server's store is full.",
        );
        let mut refused = self.publish_refused.clone();
        for t in [Target::Home, Target::Secondary] {
            refused.entry((t, REFUSED_STREAM_FULL)).or_default();
        }
        for ((t, reason), v) in &refused {
            let _ = writeln!(
                s,
                "spoor_edge_publish_refused_total{{region=\"{r}\",target=\"{}\",reason=\"{}\"}} {v}",
                t.as_str(),
                escape(reason)
            );
        }
        let singles: [(&str, &str, u64); 12] = [
            (
                "spoor_edge_link_requests_total",
                "Requests whose frames were handed to a NATS link.",
                self.link_requests,
            ),
            (
                "spoor_edge_link_handoffs_total",
                "Calls to a NATS link; a fast ack's frames share a call with other requests' gathered meanwhile.",
                self.link_handoffs,
            ),
            (
                "spoor_edge_link_fallback_requests_total",
                "Requests whose link could not be reached, published over a socket of their own.",
                self.link_fallback_requests,
            ),
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
            (
                "spoor_edge_events_duplicate_total",
                "Events repeating the id of an earlier event of their request (kept once).",
                self.duplicate_events,
            ),
        ];
        for (name, help, v) in singles {
            family(&mut s, name, help);
            let _ = writeln!(s, "{name}{{region=\"{r}\"}} {v}");
        }
        s
    }
}

/// The links' own state (each link reports it; not per isolate): gauges
/// for connected and in-flight, counters for connects, messages, frames
/// and failed frames, labelled by link name.
pub fn render_links(region: &str, links: &[crate::link::LinkHealth]) -> String {
    let mut s = String::new();
    let r = escape(region);
    type Get = fn(&crate::link::LinkHealth) -> u64;
    let families: [(&str, &str, &str, Get); 7] = [
        (
            "spoor_edge_link_connected",
            "gauge",
            "1 when the link holds an open NATS connection.",
            |l| l.connected as u64,
        ),
        (
            "spoor_edge_link_in_flight",
            "gauge",
            "Messages the link has sent that await their PubAck.",
            |l| l.in_flight as u64,
        ),
        (
            "spoor_edge_link_connects_total",
            "counter",
            "NATS connections the link has opened since it started.",
            |l| l.connects,
        ),
        (
            "spoor_edge_link_messages_total",
            "counter",
            "JetStream messages the link published since it started.",
            |l| l.messages,
        ),
        (
            "spoor_edge_link_frames_total",
            "counter",
            "Frames those messages carried (frames/messages is the coalescing ratio).",
            |l| l.frames,
        ),
        (
            "spoor_edge_link_failed_frames_total",
            "counter",
            "Frames the link answered with a failure.",
            |l| l.failed_frames,
        ),
        (
            "spoor_edge_link_duplicate_frames_total",
            "counter",
            "Frames answered from the link's recent ids instead of published again.",
            |l| l.duplicate_frames,
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        for l in links {
            let _ = writeln!(
                s,
                "{name}{{region=\"{r}\",link=\"{}\"}} {}",
                escape(&l.name),
                get(l)
            );
        }
    }
    s
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
    fn renders_link_health() {
        let links = [crate::link::LinkHealth {
            name: "eu:FRA:1".into(),
            connected: true,
            in_flight: 2,
            connects: 1,
            messages: 10,
            frames: 25,
            ..Default::default()
        }];
        let text = render_links("eu", &links);
        for line in [
            "spoor_edge_link_connected{region=\"eu\",link=\"eu:FRA:1\"} 1",
            "spoor_edge_link_in_flight{region=\"eu\",link=\"eu:FRA:1\"} 2",
            "spoor_edge_link_frames_total{region=\"eu\",link=\"eu:FRA:1\"} 25",
            "# TYPE spoor_edge_link_connected gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

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
        c.link_fallback_requests = 5;
        *c.publish_refused
            .entry((Target::Home, REFUSED_STREAM_FULL))
            .or_default() += 6;
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
            "spoor_edge_link_fallback_requests_total{region=\"eu\\\"1\"} 5",
            "spoor_edge_publish_refused_total{region=\"eu\\\"1\",target=\"home\",reason=\"stream_full\"} 6",
            "spoor_edge_publish_refused_total{region=\"eu\\\"1\",target=\"secondary\",reason=\"stream_full\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
