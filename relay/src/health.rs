//! What `/healthz` reports: whether the relay is set up, connected to NATS,
//! and whether its last ClickHouse insert succeeded.
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

    /// `Ok(())` when healthy, else a sentence saying why not.
    pub fn check(&self) -> Result<(), String> {
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
