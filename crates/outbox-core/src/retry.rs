//! The retry schedule: a pure function from an attempt number to a delay, with exponential
//! growth, full jitter, a floor and a cap. The schedule lives in the database
//! (`next_attempt_at`), so an iterator-style retry crate does not fit, and `backoff` is
//! unmaintained (RUSTSEC-2025-0012).
//!
//! Three kinds of failure are decided here:
//! - an ordinary failed attempt ([`RetryPolicy::decide`]): counted against `max_attempts`,
//!   bounded by `max_age`;
//! - a failure that provably never left (connect refused, DNS, TLS handshake:
//!   [`RetryPolicy::decide_not_sent`]): not counted, only `max_age` bounds it;
//! - a server's `Retry-After`: honoured as given, beyond `cap`, up to `retry_after_ceiling`.
//!
//! The defaults let a row ride out `max_age` (48 h) of trouble: [`RetryPolicy::schedule`]
//! computes the real schedule and [`schedule_table`] prints it (docs/RELIABILITY.md carries the
//! table; `cargo run -p outbox-core --example retry-schedule` regenerates it).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

/// Per-sink retry settings (`[retry]` in the config, overridable per sink).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay scale of the first retry: attempt n waits up to `base * 2^(n-1)`.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// No wait is ever longer than this (except one a server asked for with `Retry-After`).
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// No wait is ever shorter than this, so full jitter cannot turn into a hot loop.
    #[serde(with = "humantime_serde")]
    pub floor: Duration,
    /// Attempts (including the first) before the row is dead-lettered. Attempts that provably
    /// never left do not count.
    pub max_attempts: u32,
    /// Age after which a row still failing is dead-lettered, however few attempts it had.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The longest `Retry-After` honoured; a longer one waits this long.
    #[serde(with = "humantime_serde")]
    pub retry_after_ceiling: Duration,
}

/// Default `max_attempts`: high enough that `max_age` is the limit that governs. With full
/// jitter the waits past the ramp average `cap / 2`, so 500 attempts last about 61 h, and
/// fewer than 48 h with a probability below one in a million (see [`RetryPolicy::schedule`]).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 500;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(15 * 60),
            floor: Duration::from_millis(500),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_age: Duration::from_secs(48 * 3600),
            retry_after_ceiling: Duration::from_secs(3600),
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
        let jittered = self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0));
        jittered.max(self.floor).min(self.cap.max(self.floor))
    }

    /// The top of attempt `attempt`'s jitter range: `min(cap, base * 2^(attempt-1))`.
    fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        self.base
            .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// How long a server's `Retry-After` makes us wait: as given, up to
    /// `retry_after_ceiling` (the retry cap does not apply).
    pub fn retry_after_wait(&self, retry_after: Duration) -> Duration {
        retry_after.min(self.retry_after_ceiling)
    }

    /// Decides after failed attempt number `attempts` (1-based) of a row created `age` ago.
    /// A server's `Retry-After` is honoured as a minimum, beyond the cap, up to
    /// `retry_after_ceiling`.
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
            wait = wait.max(self.retry_after_wait(ra));
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

    /// Decides after a failure that provably never left this host (connect refused, DNS, TLS
    /// handshake). It does not count against `max_attempts`; only `max_age` limits it.
    /// `tries` is how many such failures in a row the row has had (1-based): the wait grows
    /// with it as with attempts.
    pub fn decide_not_sent(&self, tries: u32, age: Duration, unit: f64) -> Decision {
        let wait = self.delay(tries, unit);
        if age + wait > self.max_age {
            return Decision::GiveUp(format!(
                "gave up after {} of failures that never reached the platform (max_age = {})",
                crate::clock::age(crate::clock::ms(age)),
                humantime::format_duration(self.max_age)
            ));
        }
        Decision::RetryAfter(wait)
    }

    /// The real schedule of a row that fails every attempt: one row per failed attempt `n`,
    /// from 1 until the last one that is followed by another (`max_attempts - 1`), or until
    /// even the shortest waits have passed `max_age`, at most 100,000 rows.
    pub fn schedule(&self) -> Vec<ScheduleRow> {
        let floor = self.floor.as_secs_f64();
        let max_age = self.max_age.as_secs_f64();
        let (mut cum_min, mut cum_max, mut cum_mean, mut cum_var) = (0.0, 0.0, 0.0, 0.0);
        let mut rows = Vec::new();
        for attempt in 1..self.max_attempts.min(100_001) {
            let wait_min = self.delay(attempt, 0.0);
            let wait_max = self.delay(attempt, 1.0);
            let (mean, var) = jitter_moments(self.ceiling(attempt).as_secs_f64(), floor);
            cum_min += wait_min.as_secs_f64();
            cum_max += wait_max.as_secs_f64();
            cum_mean += mean;
            cum_var += var;
            // One-sided normal quantile of 1e-6: the sum of many independent draws is close
            // to normal, and its median is its mean.
            let low = (cum_mean - 4.753 * cum_var.sqrt()).max(cum_min);
            rows.push(ScheduleRow {
                attempt,
                wait_min,
                wait_median: self.delay(attempt, 0.5),
                wait_max,
                cumulative_min: secs(cum_min),
                cumulative_median: secs(cum_mean),
                cumulative_max: secs(cum_max),
                cumulative_low: secs(low),
            });
            if cum_min > max_age {
                break;
            }
        }
        rows
    }
}

/// Mean and variance, in seconds, of `max(floor, uniform(0, ceiling))`.
fn jitter_moments(ceiling: f64, floor: f64) -> (f64, f64) {
    if ceiling <= floor {
        return (floor, 0.0);
    }
    let mean = (ceiling * ceiling + floor * floor) / (2.0 * ceiling);
    let square = (ceiling.powi(3) + 2.0 * floor.powi(3)) / (3.0 * ceiling);
    (mean, (square - mean * mean).max(0.0))
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

/// One failed attempt of [`RetryPolicy::schedule`]: the wait that follows attempt `attempt`,
/// and the time from the first attempt to attempt `attempt + 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub attempt: u32,
    pub wait_min: Duration,
    pub wait_median: Duration,
    pub wait_max: Duration,
    /// Every wait at its shortest (the floor; practically never happens).
    pub cumulative_min: Duration,
    /// The middle of the sum of the waits (its mean: the sum is close to normal).
    pub cumulative_median: Duration,
    /// Every wait at its longest.
    pub cumulative_max: Duration,
    /// Only one row in a million has waited less by then (normal approximation).
    pub cumulative_low: Duration,
}

/// The schedule of `policy` as a Markdown table with a summary: the ramp attempt by attempt,
/// then every 50th attempt, the attempts where `max_age` is reached, and the last one.
pub fn schedule_table(policy: &RetryPolicy) -> String {
    let rows = policy.schedule();
    let reached = |pick: fn(&ScheduleRow) -> Duration| {
        rows.iter()
            .find(|r| pick(r) >= policy.max_age)
            .map(|r| r.attempt)
    };
    let by_max = reached(|r| r.cumulative_max);
    let by_median = reached(|r| r.cumulative_median);
    let by_low = reached(|r| r.cumulative_low);
    let last = rows.last().map(|r| r.attempt);
    let shown =
        |a: u32| a <= 12 || a % 50 == 0 || [by_max, by_median, by_low, last].contains(&Some(a));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "base = {}, cap = {}, floor = {}, max_attempts = {}, max_age = {}, retry_after_ceiling = {}\n",
        humantime::format_duration(policy.base),
        humantime::format_duration(policy.cap),
        humantime::format_duration(policy.floor),
        policy.max_attempts,
        humantime::format_duration(policy.max_age),
        humantime::format_duration(policy.retry_after_ceiling),
    );
    out.push_str(
        "| after attempt | wait (min – median – max) | cumulative min | cumulative 1-in-10⁶ low | cumulative median | cumulative max |\n\
         |---:|---|---:|---:|---:|---:|\n",
    );
    let mut previous = 0;
    for row in rows.iter().filter(|r| shown(r.attempt)) {
        if row.attempt > previous + 1 {
            out.push_str("| … | | | | | |\n");
        }
        previous = row.attempt;
        let _ = writeln!(
            out,
            "| {} | {} – {} – {} | {} | {} | {} | {} |",
            row.attempt,
            fmt(row.wait_min),
            fmt(row.wait_median),
            fmt(row.wait_max),
            fmt(row.cumulative_min),
            fmt(row.cumulative_low),
            fmt(row.cumulative_median),
            fmt(row.cumulative_max),
        );
    }
    let at = |a: Option<u32>| match a {
        Some(a) => format!("after attempt {a}"),
        None => "never (max_attempts ends it first)".to_owned(),
    };
    let _ = writeln!(
        out,
        "\nmax_age ({}) is reached with every wait at its longest {}; at the median {}; \
         for a row with one-in-a-million bad luck {}. A row is dead-lettered when its next wait \
         would pass max_age, or after attempt {}.",
        fmt(policy.max_age),
        at(by_max),
        at(by_median),
        at(by_low),
        policy.max_attempts,
    );
    out
}

/// A compact duration: `0.5s`, `16s`, `4m 16s`, `53h 05m`, `5d 02h`.
fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    let whole = d.as_secs();
    if s < 60.0 {
        let text = format!("{s:.1}");
        format!("{}s", text.trim_end_matches(".0"))
    } else if whole < 3600 {
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else if whole < 100 * 3600 {
        format!("{}h {:02}m", whole / 3600, whole % 3600 / 60)
    } else {
        format!("{}d {:02}h", whole / 86_400, whole % 86_400 / 3600)
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
            retry_after_ceiling: Duration::from_secs(300),
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
    fn retry_after_is_a_minimum_beyond_the_cap_up_to_the_ceiling() {
        let p = policy();
        assert_eq!(
            p.decide(1, Duration::ZERO, Some(Duration::from_secs(30)), 0.0),
            Decision::RetryAfter(Duration::from_secs(30))
        );
        // Beyond the cap (60 s): honoured as given.
        assert_eq!(
            p.decide(1, Duration::ZERO, Some(Duration::from_secs(120)), 0.0),
            Decision::RetryAfter(Duration::from_secs(120))
        );
        // Beyond the ceiling (300 s): the ceiling.
        assert_eq!(
            p.decide(1, Duration::ZERO, Some(Duration::from_secs(600)), 0.0),
            Decision::RetryAfter(Duration::from_secs(300))
        );
        assert_eq!(
            p.retry_after_wait(Duration::from_secs(7200)),
            Duration::from_secs(300)
        );
        // Still a minimum: a longer backoff wins.
        assert_eq!(
            p.decide(4, Duration::ZERO, Some(Duration::from_secs(1)), 0.5),
            Decision::RetryAfter(Duration::from_secs(4))
        );
        // And max_age still bounds it.
        assert!(matches!(
            p.decide(1, Duration::from_secs(3500), Some(Duration::from_secs(200)), 0.0),
            Decision::GiveUp(r) if r.contains("max_age")
        ));
    }

    #[test]
    fn default_retry_after_ceiling_is_an_hour() {
        let p = RetryPolicy::default();
        assert_eq!(p.retry_after_ceiling, Duration::from_secs(3600));
        assert_eq!(
            p.decide(1, Duration::ZERO, Some(Duration::from_secs(120)), 0.0),
            Decision::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            p.decide(1, Duration::ZERO, Some(Duration::from_secs(5 * 3600)), 0.0),
            Decision::RetryAfter(Duration::from_secs(3600))
        );
    }

    #[test]
    fn ceiling_parses_and_defaults_when_absent() {
        let p: RetryPolicy = toml::from_str("retry_after_ceiling = \"10m\"").unwrap();
        assert_eq!(p.retry_after_ceiling, Duration::from_secs(600));
        assert_eq!(p.cap, RetryPolicy::default().cap);
        let p: RetryPolicy = toml::from_str("max_attempts = 5").unwrap();
        assert_eq!(p.retry_after_ceiling, Duration::from_secs(3600));
    }

    #[test]
    fn not_sent_failures_ignore_max_attempts_and_stop_at_max_age() {
        let p = policy();
        // Far past max_attempts (5), still retried, with the usual growth and cap.
        assert_eq!(
            p.decide_not_sent(1, Duration::ZERO, 0.5),
            Decision::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(
            p.decide_not_sent(50, Duration::from_secs(600), 0.5),
            Decision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.decide_not_sent(u32::MAX, Duration::ZERO, 1.0),
            Decision::RetryAfter(Duration::from_secs(60))
        );
        // The same count of ordinary attempts gives up.
        assert!(matches!(
            p.decide(50, Duration::ZERO, None, 0.5),
            Decision::GiveUp(_)
        ));
        // max_age is the limit.
        assert!(matches!(
            p.decide_not_sent(50, Duration::from_secs(3590), 0.5),
            Decision::GiveUp(r) if r.contains("never reached") && r.contains("max_age")
        ));
    }

    #[test]
    fn defaults_keep_base_and_cap_and_let_max_age_govern() {
        let p = RetryPolicy::default();
        assert_eq!(p.base, Duration::from_secs(2));
        assert_eq!(p.cap, Duration::from_secs(15 * 60));
        assert_eq!(p.max_age, Duration::from_secs(48 * 3600));
        let rows = p.schedule();
        let last = rows.last().unwrap();
        assert_eq!(last.attempt, p.max_attempts - 1);
        // Even a one-in-a-million unlucky row reaches max_age before max_attempts runs out.
        assert!(last.cumulative_low > p.max_age, "{last:?}");
        // Under the old default (15 attempts) the median was about 46 minutes.
        let old = RetryPolicy {
            max_attempts: 15,
            ..RetryPolicy::default()
        };
        let old_last = old.schedule().pop().unwrap();
        assert!(old_last.cumulative_median < Duration::from_secs(50 * 60));
        assert!(old_last.cumulative_median > Duration::from_secs(40 * 60));
    }

    #[test]
    fn schedule_rows_match_delay_and_add_up() {
        let p = policy();
        let rows = p.schedule();
        assert_eq!(rows.len(), 4, "attempts 1..=4 are followed by another");
        let mut sum_min = Duration::ZERO;
        let mut sum_max = Duration::ZERO;
        for row in &rows {
            assert_eq!(row.wait_min, p.delay(row.attempt, 0.0));
            assert_eq!(row.wait_max, p.delay(row.attempt, 1.0));
            assert_eq!(row.wait_median, p.delay(row.attempt, 0.5));
            sum_min += row.wait_min;
            sum_max += row.wait_max;
            assert_eq!(row.cumulative_min, sum_min);
            assert_eq!(row.cumulative_max, sum_max);
            assert!(row.cumulative_min <= row.cumulative_low);
            assert!(row.cumulative_low <= row.cumulative_median);
            assert!(row.cumulative_median <= row.cumulative_max);
        }
        // Attempt 3: uniform(0, 4 s) floored at 0.1 s has mean (16 + 0.01) / 8 s.
        let third =
            rows[2].cumulative_median.as_secs_f64() - rows[1].cumulative_median.as_secs_f64();
        assert!((third - 2.00125).abs() < 1e-6, "{third}");
        // Stops once even the shortest waits pass max_age.
        let tight = RetryPolicy {
            max_attempts: u32::MAX,
            floor: Duration::from_secs(10),
            ..policy()
        };
        let rows = tight.schedule();
        assert!(rows.last().unwrap().cumulative_min > tight.max_age);
        assert!(rows[rows.len() - 2].cumulative_min <= tight.max_age);
    }

    #[test]
    fn schedule_table_shows_the_ramp_milestones_and_summary() {
        let table = schedule_table(&RetryPolicy::default());
        assert!(table.contains("| 1 | 0.5s – 1s – 2s |"), "{table}");
        assert!(
            table.contains("| 10 | 0.5s – 7m 30s – 15m 00s |"),
            "{table}"
        );
        assert!(table.contains("| 499 |"), "{table}");
        assert!(!table.contains("| 13 |"), "{table}");
        assert!(table.contains("| … |"));
        assert!(table.contains("max_attempts = 500"));
        assert!(table.contains("one-in-a-million bad luck after attempt"));
    }

    /// docs/RELIABILITY.md carries the table of the defaults; regenerate it with
    /// `cargo run -p outbox-core --example retry-schedule`.
    #[test]
    fn reliability_doc_has_the_current_default_schedule() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/RELIABILITY.md"),
        )
        .unwrap();
        assert!(
            doc.contains(&schedule_table(&RetryPolicy::default())),
            "docs/RELIABILITY.md is out of date: run `cargo run -p outbox-core --example retry-schedule`"
        );
    }
}
