//! Where a started charge stands between steps (the row's `flow_state`), and the timings
//! that move it on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::LbbtechConfig;
use super::payload::Charger;
use super::{
    DEFAULT_POLL_INTERVAL, DEFAULT_POLL_WINDOW, DEFAULT_STARTED_STATUSES, DEFAULT_VERIFY_AFTER,
};
use crate::clock;
use crate::outcome::truncate;

/// The longest wait between two failed order queries.
const MAX_VERIFY_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// The timings and status set of one sink, in epoch-ms arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub poll_interval_ms: i64,
    pub poll_window_ms: i64,
    pub verify_after_ms: i64,
    pub started_statuses: Vec<i64>,
}

impl Settings {
    pub fn from_config(cfg: &LbbtechConfig) -> Settings {
        Settings {
            poll_interval_ms: clock::ms(cfg.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL)),
            poll_window_ms: clock::ms(cfg.poll_window.unwrap_or(DEFAULT_POLL_WINDOW)),
            verify_after_ms: clock::ms(cfg.verify_after.unwrap_or(DEFAULT_VERIFY_AFTER)),
            started_statuses: cfg
                .started_statuses
                .clone()
                .unwrap_or_else(|| DEFAULT_STARTED_STATUSES.to_vec()),
        }
    }

    /// When a car charger's order is looked up: the end of the poll window plus
    /// `verify_after`, counted from the start reply (so a restart never moves it).
    pub(super) fn verify_at(&self, started_at: i64) -> i64 {
        started_at + self.poll_window_ms + self.verify_after_ms
    }

    /// The wait after failed order query number `queries`: doubling from the poll interval,
    /// at most five minutes.
    pub(super) fn verify_backoff_ms(&self, queries: u32) -> i64 {
        let base = self.poll_interval_ms.max(1);
        base.saturating_mul(1i64 << queries.saturating_sub(1).min(20))
            .min(clock::ms(MAX_VERIFY_BACKOFF))
    }
}

/// Where a started flow stands between steps: the row's `flow_state`, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum FlowState {
    Poll(PollState),
    Verify(VerifyState),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollState {
    pub result_key: String,
    pub order_num: Option<String>,
    pub charger: Charger,
    /// When the start reply came back (epoch ms): the poll window counts from here.
    pub started_at: i64,
    /// Polls done so far.
    pub polls: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyState {
    pub order_num: String,
    pub charger: Charger,
    /// When the order may be looked up (epoch ms).
    pub verify_at: i64,
    /// The failure result polling saw, if any (car chargers verify those too).
    pub poll_result: Option<i64>,
    /// Order queries that failed so far (network, 5xx, unreadable).
    pub queries: u32,
}

impl FlowState {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("flow states serialise")
    }

    /// `None` before the first step.
    pub fn parse(text: Option<&str>) -> Result<Option<FlowState>, String> {
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(t)
                .map(Some)
                .map_err(|e| format!("unreadable flow_state {}: {e}", truncate(t, 200))),
        }
    }
}
