//! The database's health as the loop sees it: a failure is logged once when it starts and
//! once when it ends, and the loop backs off while it lasts.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Default)]
pub(crate) struct DbHealth {
    pub(crate) failing_since: Option<Instant>,
}

impl DbHealth {
    pub(crate) fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if self.failing_since.is_none() {
            tracing::error!(error = %e, "database unavailable during {what}; deliveries pause and resume by themselves");
            self.failing_since = Some(Instant::now());
        }
    }

    pub(crate) fn ok(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::warn!(
                down_for_ms = since.elapsed().as_millis() as u64,
                "database reachable again; resuming"
            );
        }
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Whether the database has been failing for longer than `d`.
    pub(crate) fn failing_longer_than(&self, d: Duration) -> bool {
        self.failing_since.is_some_and(|s| s.elapsed() > d)
    }

    pub(crate) fn backoff(&self) -> Duration {
        let down = self.failing_since.map(|s| s.elapsed()).unwrap_or_default();
        // 100ms, growing with the outage, at most 5s.
        Duration::from_millis(100)
            .max(down / 4)
            .min(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_the_outage_and_is_capped() {
        let mut h = DbHealth::default();
        assert_eq!(h.backoff(), Duration::from_millis(100));
        h.failed("test", &"down");
        assert_eq!(h.backoff(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(h.backoff(), Duration::from_secs(2));
        assert!(h.failing_longer_than(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(h.backoff(), Duration::from_secs(5));
        // A second failure does not restart the clock.
        h.failed("test", &"still down");
        assert_eq!(h.backoff(), Duration::from_secs(5));
        h.ok();
        assert!(!h.is_failing());
        assert_eq!(h.backoff(), Duration::from_millis(100));
    }
}
