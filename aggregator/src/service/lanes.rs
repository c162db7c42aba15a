//! Two lanes of queries, each with its own concurrency limit, queue wait and
//! timeout: `dashboard` (the dashboard's refreshes, marked with
//! `X-Spoor-Lane: dashboard`) and `adhoc` (everything else). A lane's slots
//! are its own, so any number of slow ad-hoc questions leave the
//! dashboard's slots free.

use std::future::Future;

use hyper::StatusCode;
use tokio::sync::Semaphore;

use super::ApiError;
use crate::config::{Config, LaneLimits};
use crate::metrics::{LaneBusy, Metrics};

/// Which lane a request runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Dashboard,
    Adhoc,
}

/// The header that picks the lane.
pub const LANE_HEADER: &str = "x-spoor-lane";

impl Lane {
    /// From the `X-Spoor-Lane` header: `dashboard`, or `adhoc` (also the
    /// default); anything else is a 400.
    pub fn from_header(value: Option<&[u8]>) -> Result<Lane, ApiError> {
        match value {
            None | Some(b"adhoc") => Ok(Lane::Adhoc),
            Some(b"dashboard") => Ok(Lane::Dashboard),
            Some(_) => Err(ApiError::bad_request(
                "X-Spoor-Lane must be `dashboard` or `adhoc`",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Lane::Dashboard => "dashboard",
            Lane::Adhoc => "adhoc",
        }
    }
}

struct LaneState {
    slots: Semaphore,
    limits: LaneLimits,
    /// A client whose queries carry the lane's ClickHouse limits.
    client: clickhouse::Client,
}

pub(crate) struct Lanes {
    dashboard: LaneState,
    adhoc: LaneState,
}

fn lane_state(limits: LaneLimits, base: &clickhouse::Client, max_result_rows: u64) -> LaneState {
    // ClickHouse counts max_execution_time in whole seconds; the service's
    // own timer below enforces the exact limit.
    let seconds = limits.timeout.as_secs_f64().ceil().max(1.0) as u64;
    LaneState {
        slots: Semaphore::new(limits.concurrency.max(1)),
        limits,
        client: base
            .clone()
            .with_option("max_execution_time", seconds.to_string())
            .with_option("max_result_rows", max_result_rows.to_string())
            .with_option("result_overflow_mode", "throw"),
    }
}

impl Lanes {
    pub(crate) fn new(config: &Config, base: &clickhouse::Client) -> Lanes {
        Lanes {
            dashboard: lane_state(config.dashboard, base, config.max_result_rows),
            adhoc: lane_state(config.adhoc, base, config.max_result_rows),
        }
    }

    /// Waits for a slot (at most the queue wait: 503 after), then runs
    /// `work` with the lane's client under the lane's timeout (504 after).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        lane: Lane,
        metrics: &Metrics,
        work: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(clickhouse::Client) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let state = match lane {
            Lane::Dashboard => &self.dashboard,
            Lane::Adhoc => &self.adhoc,
        };
        let permit = match tokio::time::timeout(state.limits.queue_wait, state.slots.acquire())
            .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                LaneBusy { lane: lane.name() }.emit(metrics);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!(
                        "the {} lane is running {} queries and none finished within {:?}; retry shortly",
                        lane.name(),
                        state.limits.concurrency,
                        state.limits.queue_wait
                    ),
                ));
            }
        };
        let result = tokio::time::timeout(state.limits.timeout, work(state.client.clone())).await;
        drop(permit);
        result.unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "the query ran past the {} lane's limit of {:?}; narrow the time range or the filters",
                    lane.name(),
                    state.limits.timeout
                ),
            ))
        })
    }
}
