//! What `/healthz` reports: whether the relay is set up, connected to NATS,
//! and whether its last ClickHouse insert succeeded (failing: 503), and
//! whether the events stream is filling up (degraded: still 200).
//!
//! Degraded is not failing: the relay works, and it is the process that
//! empties the stream, so a liveness or readiness probe must not restart it
//! or take it out of service for that. `/healthz` answers 200 with one
//! `degraded: <reason>` line per reason (instead of `ok`), for alerting
//! and for people; a failing relay answers 503 with its failure on the
//! first line and any degradation after it.
//!
//! Shared state written by the pipeline and read by the HTTP server. It holds
//! facts only; it must never block the pipeline (a short mutex on the error
//! text is the only lock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Default)]
pub struct Health {
    nats: OnceLock<async_nats::Client>,
    insert_failing: AtomicBool,
    last_insert_error: Mutex<Option<String>>,
    /// Why the events stream degrades health (set by the stream poller, `fullness`).
    stream_degraded: Mutex<Option<String>>,
}

/// What `/healthz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Why the relay is not working (503), if it is not.
    pub failing: Option<String>,
    /// Why it works but needs attention (200 unless failing too).
    pub degraded: Vec<String>,
}

impl Health {
    /// Setup finished: from now on NATS connectivity is checked on this client.
    pub fn set_ready(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    pub fn insert_succeeded(&self) {
        if self.insert_failing.swap(false, Ordering::Relaxed) {
            if let Ok(mut e) = self.last_insert_error.lock() {
                *e = None;
            }
        }
    }

    pub fn insert_failed(&self, error: &dyn std::fmt::Display) {
        if let Ok(mut e) = self.last_insert_error.lock() {
            *e = Some(error.to_string());
        }
        self.insert_failing.store(true, Ordering::Relaxed);
    }

    /// The stream poller's verdict: `Some(reason)` at or above the
    /// threshold, `None` below it.
    pub fn set_stream_degraded(&self, reason: Option<String>) {
        if let Ok(mut r) = self.stream_degraded.lock() {
            *r = reason;
        }
    }

    /// Failing and degraded reasons together.
    pub fn report(&self) -> Report {
        Report {
            failing: self.check().err(),
            degraded: self
                .stream_degraded
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .into_iter()
                .collect(),
        }
    }

    /// `Ok(())` when working, else a sentence saying why not.
    fn check(&self) -> Result<(), String> {
        let Some(client) = self.nats.get() else {
            return Err(
                "starting: NATS stream/consumer or ClickHouse schema not set up yet".into(),
            );
        };
        let state = client.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(format!("NATS not connected ({state})"));
        }
        if self.insert_failing.load(Ordering::Relaxed) {
            let error = self
                .last_insert_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            return Err(format!("last ClickHouse insert failed: {error}"));
        }
        Ok(())
    }
}
