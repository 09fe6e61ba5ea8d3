//! The retry schedule: a pure function from an attempt number to a delay, with exponential
//! growth, full jitter, a floor and a cap. The schedule lives in the database
//! (`next_attempt_at`), so an iterator-style retry crate does not fit, and `backoff` is
//! unmaintained (RUSTSEC-2025-0012).

use std::time::Duration;

use serde::Deserialize;

/// Per-sink retry settings (`[retry]` in the config, overridable per sink).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay scale of the first retry: attempt n waits up to `base * 2^(n-1)`.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// No wait is ever longer than this.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// No wait is ever shorter than this, so full jitter cannot turn into a hot loop.
    #[serde(with = "humantime_serde")]
    pub floor: Duration,
    /// Attempts (including the first) before the row is dead-lettered.
    pub max_attempts: u32,
    /// Age after which a row still failing is dead-lettered, however few attempts it had.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(15 * 60),
            floor: Duration::from_millis(500),
            max_attempts: 15,
            max_age: Duration::from_secs(48 * 3600),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    RetryAfter(Duration),
    GiveUp(String),
}

impl RetryPolicy {
    /// Full jitter: `uniform(0, min(cap, base * 2^(attempt-1)))`, then clamped to
    /// `[floor, cap]`. `unit` is a random number in `[0, 1)`, injected so the function stays
    /// pure and testable.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        let ceiling = self
            .base
            .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        jittered.max(self.floor).min(self.cap.max(self.floor))
    }

    /// Decides after failed attempt number `attempts` (1-based) of a row created `age` ago.
    /// A server's `Retry-After` is honoured as a minimum, never beyond the cap.
    pub fn decide(
        &self,
        attempts: u32,
        age: Duration,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Decision {
        if attempts >= self.max_attempts {
            return Decision::GiveUp(format!(
                "gave up after {attempts} attempts (max_attempts = {})",
                self.max_attempts
            ));
        }
        let mut wait = self.delay(attempts, unit);
        if let Some(ra) = retry_after {
            wait = wait.max(ra.min(self.cap));
        }
        if age + wait > self.max_age {
            return Decision::GiveUp(format!(
                "gave up after {attempts} attempts over {} (max_age = {})",
                crate::clock::age(crate::clock::ms(age)),
                humantime::format_duration(self.max_age)
            ));
        }
        Decision::RetryAfter(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            floor: Duration::from_millis(100),
            max_attempts: 5,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn grows_exponentially_at_the_top_of_the_jitter_range() {
        let p = policy();
        let near_one = 0.999_999;
        let d: Vec<u64> = (1..=8)
            .map(|a| p.delay(a, near_one).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![999, 1999, 3999, 7999, 15999, 31999, 59999, 59999]);
    }

    #[test]
    fn floor_and_cap_bound_every_delay() {
        let p = policy();
        for attempt in [0, 1, 2, 10, 40, 1000, u32::MAX] {
            for unit in [0.0, 0.3, 0.7, 1.0, -5.0, 7.0] {
                let d = p.delay(attempt, unit);
                assert!(d >= p.floor, "{attempt} {unit} {d:?}");
                assert!(d <= p.cap, "{attempt} {unit} {d:?}");
            }
        }
        assert_eq!(p.delay(3, 0.0), p.floor);
    }

    #[test]
    fn jitter_spreads_delays_uniformly() {
        let p = policy();
        let d = p.delay(4, 0.5);
        assert_eq!(d, Duration::from_secs(4));
    }

    #[test]
    fn gives_up_on_attempts_or_age() {
        let p = policy();
        assert_eq!(
            p.decide(1, Duration::ZERO, None, 0.5),
            Decision::RetryAfter(Duration::from_millis(500))
        );
        assert!(
            matches!(p.decide(5, Duration::ZERO, None, 0.5), Decision::GiveUp(r) if r.contains("5 attempts"))
        );
        assert!(matches!(
            p.decide(2, Duration::from_millis(3_599_500), None, 0.5),
            Decision::GiveUp(r) if r.contains("max_age")
        ));
    }

    #[test]
    fn retry_after_is_a_minimum_capped_by_the_cap() {
        let p = policy();
        assert_eq!(
            p.decide(1, Duration::ZERO, Some(Duration::from_secs(30)), 0.0),
            Decision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.decide(1, Duration::ZERO, Some(Duration::from_secs(600)), 0.0),
            Decision::RetryAfter(Duration::from_secs(60))
        );
    }
}
