//! The keys of a `type = "lbbtech"` section, and their checks.

use std::time::Duration;

use serde::Deserialize;

use super::{DEFAULT_POLL_INTERVAL, DEFAULT_POLL_WINDOW, ORDER_API, RESULT_API, START_API};

/// An lbbtech sink's own settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbbtechConfig {
    /// How often a start result is polled (default 3 s).
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// How long after the start reply it is polled (default 30 s).
    #[serde(default, with = "humantime_serde")]
    pub poll_window: Option<Duration>,
    /// How long after the poll window a car charger's order is looked up (default 5 min).
    #[serde(default, with = "humantime_serde")]
    pub verify_after: Option<Duration>,
    /// Order statuses that mean the charge started (default [2, 3]).
    pub started_statuses: Option<Vec<i64>>,
    /// Not supported yet: a config that sets it is refused.
    pub callback_url: Option<String>,
}

pub fn validate_config(name: &str, url: &str, cfg: &LbbtechConfig) -> Vec<String> {
    let mut p = Vec::new();
    if cfg.poll_interval.is_some_and(|d| d.is_zero()) {
        p.push(format!("sinks.{name}: poll_interval must be above 0"));
    }
    let interval = cfg.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
    let window = cfg.poll_window.unwrap_or(DEFAULT_POLL_WINDOW);
    if window < interval {
        p.push(format!(
            "sinks.{name}: poll_window ({}) must not be shorter than poll_interval ({})",
            humantime::format_duration(window),
            humantime::format_duration(interval)
        ));
    }
    if cfg.started_statuses.as_ref().is_some_and(|s| s.is_empty()) {
        p.push(format!(
            "sinks.{name}: started_statuses must list at least one order status (default [2, 3])"
        ));
    }
    let url = url.trim_end_matches('/');
    if [START_API, RESULT_API, ORDER_API]
        .iter()
        .any(|api| url.ends_with(api))
    {
        p.push(format!(
            "sinks.{name}: url must be the API base (e.g. https://center.lbbtech.com/open), not one endpoint"
        ));
    }
    if cfg.callback_url.is_some() {
        p.push(format!(
            "sinks.{name}: callback_url is not supported by this build yet: remove it and read outcomes from the outbox_outcomes view"
        ));
    }
    p
}
