//! The adaptive in-flight window of one sink: how many of its rows may be in flight now.
//!
//! Pure (no I/O, time passed in), in the manner of TCP's congestion control:
//! - **Slow start**: from `initial`, the window grows by one row per clean success (it
//!   doubles every round trip) until the first sign of trouble.
//! - **Additive increase**: after that, by one row per window's worth of clean successes.
//! - **Multiplicative decrease**: a sign of an unwell platform (429, 5xx, a timeout: what the
//!   classifiers blame on the platform being unavailable) or latency rising well above the
//!   lowest seen halves the window, at most once per round trip: the rows already in flight
//!   when it shrank answer with the same news, and must not halve it again.
//! - After a hold (an outage, refused credentials) the sink starts again from `initial`,
//!   so a platform coming back is not hit by the whole ceiling at once.
//!
//! The sink's `concurrency` is the ceiling: what an operator or a platform's rules allow.

use std::time::Duration;

use tokio::time::Instant;

/// The window a sink starts from (and returns to after a hold).
pub const INITIAL: usize = 4;

/// Latency counts as rising when the smoothed round trip is at least this many times the
/// lowest recent one...
const LATENCY_FACTOR: u32 = 3;
/// ...and at least this much above it: on loopback a round trip of 0.2 ms becomes 20 ms
/// under load without anything being wrong; on a real platform a rise of 250 ms is a queue
/// building up on its side.
const LATENCY_SLACK: Duration = Duration::from_millis(250);
/// The lowest round trip is forgotten after this long, so a platform that became slower
/// for good is not judged against a figure from hours ago.
const MIN_RTT_MAX_AGE: Duration = Duration::from_secs(300);

/// What a finished delivery tells the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The platform answered and was well (whatever the verdict on the row).
    Clean,
    /// 429, 5xx, a timeout: the platform is struggling.
    Congested,
    /// Tells nothing about the platform's load (nothing sent, a local decision).
    Neutral,
}

#[derive(Debug, Clone)]
pub struct Window {
    ceiling: usize,
    /// The window, fractional so additive increase can add 1/window per success.
    size: f64,
    /// Below this the window grows in slow start; above, additively.
    threshold: f64,
    srtt: Option<Duration>,
    min_rtt: Option<(Duration, Instant)>,
    /// Deliveries sent before this instant do not shrink the window again.
    last_decrease: Option<Instant>,
}

impl Window {
    pub fn new(ceiling: usize) -> Window {
        let ceiling = ceiling.max(1);
        Window {
            ceiling,
            size: INITIAL.min(ceiling) as f64,
            threshold: f64::INFINITY,
            srtt: None,
            min_rtt: None,
            last_decrease: None,
        }
    }

    /// How many rows may be in flight now.
    pub fn limit(&self) -> usize {
        (self.size as usize).clamp(1, self.ceiling)
    }

    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// A new ceiling (a reloaded `concurrency`): the window keeps what it learnt, within it.
    pub fn set_ceiling(&mut self, ceiling: usize) {
        self.ceiling = ceiling.max(1);
        self.size = self.size.min(self.ceiling as f64);
    }

    /// The smoothed round trip of clean replies, if any.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// A delivery sent at `sent` finished at `now` with `signal`.
    pub fn on_reply(&mut self, signal: Signal, sent: Instant, now: Instant) {
        let rtt = now.saturating_duration_since(sent);
        match signal {
            Signal::Neutral => {}
            Signal::Congested => self.decrease(sent, now),
            Signal::Clean => {
                self.sample(rtt, now);
                if self.latency_rising() {
                    self.decrease(sent, now);
                } else {
                    self.increase();
                }
            }
        }
    }

    /// The sink was held (outage, credentials, a `Retry-After`): start again from the
    /// initial window, remembering half of what worked as the end of slow start.
    pub fn restart(&mut self) {
        self.threshold = (self.size / 2.0).max(INITIAL as f64);
        self.size = INITIAL.min(self.ceiling) as f64;
        self.srtt = None;
    }

    fn increase(&mut self) {
        let step = if self.size < self.threshold {
            1.0
        } else {
            1.0 / self.size
        };
        // Growing past the ceiling would only have to be undone by the first decrease.
        self.size = (self.size + step).min(self.ceiling as f64);
    }

    fn decrease(&mut self, sent: Instant, now: Instant) {
        if self.last_decrease.is_some_and(|d| sent < d) {
            return;
        }
        self.size = (self.size / 2.0).max(1.0);
        self.threshold = self.size;
        self.last_decrease = Some(now);
    }

    fn sample(&mut self, rtt: Duration, now: Instant) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            // The classic 7/8 smoothing.
            Some(s) => (s * 7 + rtt) / 8,
        });
        let fresh = match self.min_rtt {
            None => true,
            Some((m, at)) => rtt <= m || now.saturating_duration_since(at) > MIN_RTT_MAX_AGE,
        };
        if fresh {
            self.min_rtt = Some((rtt, now));
        }
    }

    fn latency_rising(&self) -> bool {
        match (self.srtt, self.min_rtt) {
            (Some(s), Some((m, _))) => s >= m * LATENCY_FACTOR && s >= m + LATENCY_SLACK,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `n` replies of `rtt`, each sent `rtt` before it finishes.
    fn replies(w: &mut Window, n: usize, signal: Signal, rtt: Duration, clock: &mut Instant) {
        for _ in 0..n {
            *clock += MS;
            w.on_reply(signal, *clock - rtt, *clock);
        }
    }

    #[test]
    fn slow_start_doubles_each_window_up_to_the_ceiling() {
        let mut w = Window::new(512);
        let mut t = Instant::now();
        assert_eq!(w.limit(), INITIAL);
        replies(&mut w, 4, Signal::Clean, MS, &mut t);
        assert_eq!(w.limit(), 8);
        replies(&mut w, 8, Signal::Clean, MS, &mut t);
        assert_eq!(w.limit(), 16);
        replies(&mut w, 10_000, Signal::Clean, MS, &mut t);
        assert_eq!(w.limit(), 512, "never past the ceiling");
    }

    #[test]
    fn a_small_ceiling_caps_the_start_too() {
        let w = Window::new(2);
        assert_eq!(w.limit(), 2);
        assert_eq!(Window::new(0).limit(), 1);
    }

    #[test]
    fn congestion_halves_once_per_round_trip_then_grows_additively() {
        let mut w = Window::new(1024);
        let mut t = Instant::now();
        replies(&mut w, 124, Signal::Clean, MS, &mut t);
        assert_eq!(w.limit(), 128);
        // A burst of 429s from rows that were all sent before the first one came back.
        let sent = t;
        t += 10 * MS;
        for _ in 0..50 {
            w.on_reply(Signal::Congested, sent, t);
        }
        assert_eq!(w.limit(), 64, "one halving for one burst, not 50");
        // A row sent after the decrease that fails again halves it again.
        t += 10 * MS;
        w.on_reply(Signal::Congested, t - MS, t);
        assert_eq!(w.limit(), 32);
        // Now additive: a window's worth of clean replies adds one row, not 32.
        replies(&mut w, 34, Signal::Clean, MS, &mut t);
        assert_eq!(w.limit(), 33);
    }

    #[test]
    fn the_window_never_drops_below_one() {
        let mut w = Window::new(8);
        let mut t = Instant::now();
        for _ in 0..20 {
            t += MS;
            w.on_reply(Signal::Congested, t, t);
        }
        assert_eq!(w.limit(), 1);
    }

    #[test]
    fn neutral_replies_change_nothing() {
        let mut w = Window::new(64);
        let mut t = Instant::now();
        replies(&mut w, 100, Signal::Neutral, MS, &mut t);
        assert_eq!(w.limit(), INITIAL);
        assert_eq!(w.srtt(), None);
    }

    #[test]
    fn rising_latency_shrinks_the_window_but_loopback_jitter_does_not() {
        let mut w = Window::new(1024);
        let mut t = Instant::now();
        // Loopback under load: 0.2 ms idle, 30 ms busy. Far above 3x, but not 250 ms above.
        replies(
            &mut w,
            10,
            Signal::Clean,
            Duration::from_micros(200),
            &mut t,
        );
        replies(&mut w, 500, Signal::Clean, 30 * MS, &mut t);
        assert_eq!(w.limit(), INITIAL + 510, "slow start all along");
        // A platform at 80 ms whose replies climb to 600 ms: a queue on its side.
        let mut w = Window::new(1024);
        replies(&mut w, 60, Signal::Clean, 80 * MS, &mut t);
        let before = w.limit();
        assert_eq!(before, 64);
        replies(&mut w, 40, Signal::Clean, 600 * MS, &mut t);
        assert!(
            w.limit() < before,
            "window {} after latency rose",
            w.limit()
        );
    }

    #[test]
    fn a_hold_restarts_from_the_initial_window() {
        let mut w = Window::new(512);
        let mut t = Instant::now();
        replies(&mut w, 300, Signal::Clean, MS, &mut t);
        assert_eq!(w.limit(), 304);
        w.restart();
        assert_eq!(w.limit(), INITIAL);
        // Slow start again, but only up to half of what it had.
        replies(&mut w, 400, Signal::Clean, MS, &mut t);
        assert!(w.limit() < 160, "additive above 152, got {}", w.limit());
        assert!(w.limit() >= 152);
    }

    #[test]
    fn a_lower_ceiling_on_reload_clamps_the_window() {
        let mut w = Window::new(512);
        let mut t = Instant::now();
        replies(&mut w, 300, Signal::Clean, MS, &mut t);
        w.set_ceiling(16);
        assert_eq!(w.limit(), 16);
        assert_eq!(w.ceiling(), 16);
    }
}
