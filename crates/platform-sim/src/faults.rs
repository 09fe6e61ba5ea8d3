//! Random faults for drills: requests without a script get a 503, a dropped connection or a
//! slow reply with the configured probabilities.
//!
//! The draw is a pure function of the RNG, so a seeded RNG replays the same fault sequence for
//! the same sequence of requests.

use std::time::Duration;

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::script::Step;

/// Fault probabilities for requests that no script covers.
///
/// JSON: `{"p_503": 0.1, "p_drop_before": 0.05, "p_drop_after": 0.05, "delay_ms": [0, 300],
/// "seed": 42}`, every field optional. The three probabilities are exclusive outcomes of one
/// draw (their sum should stay ≤ 1); the delay, when set, is drawn for every unscripted request
/// whatever the outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomFaults {
    /// Probability of a bare HTTP 503.
    pub p_503: f64,
    /// Probability of closing the connection without applying or replying.
    pub p_drop_before: f64,
    /// Probability of applying, then closing the connection without replying.
    pub p_drop_after: f64,
    /// Reply delay drawn uniformly from `[min, max]` milliseconds.
    pub delay_ms: Option<[u64; 2]>,
    /// Seed of the fault RNG; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl RandomFaults {
    /// No random faults.
    pub fn none() -> Self {
        RandomFaults::default()
    }

    /// True when no draw can ever produce a fault or a delay.
    pub fn is_none(&self) -> bool {
        self.p_503 <= 0.0
            && self.p_drop_before <= 0.0
            && self.p_drop_after <= 0.0
            && self.delay_ms.is_none()
    }

    /// Draws the step for one unscripted request; `None` means plain normal behaviour.
    pub fn draw(&self, rng: &mut impl RngCore) -> Option<Step> {
        if self.is_none() {
            return None;
        }
        let roll: f64 = rng.random();
        let mut step = if roll < self.p_503 {
            Step::http(503)
        } else if roll < self.p_503 + self.p_drop_before {
            Step::drop_before()
        } else if roll < self.p_503 + self.p_drop_before + self.p_drop_after {
            Step::drop_after()
        } else {
            Step::ok()
        };
        if let Some([min, max]) = self.delay_ms {
            let (low, high) = (min.min(max), min.max(max));
            step = step.delayed(Duration::from_millis(rng.random_range(low..=high)));
        }
        (!step.is_plain_ok()).then_some(step)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn no_faults_draw_nothing() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..100).all(|_| RandomFaults::none().draw(&mut rng).is_none()));
    }

    #[test]
    fn certain_faults_always_happen() {
        let mut rng = StdRng::seed_from_u64(1);
        let faults = RandomFaults {
            p_drop_after: 1.0,
            ..RandomFaults::none()
        };
        assert!((0..100).all(|_| faults.draw(&mut rng) == Some(Step::drop_after())));
    }

    #[test]
    fn same_seed_same_sequence_and_delays_in_range() {
        let faults = RandomFaults {
            p_503: 0.3,
            p_drop_before: 0.2,
            p_drop_after: 0.2,
            delay_ms: Some([10, 20]),
            seed: None,
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).map(|_| faults.draw(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        for step in run(7) {
            let delay = step.unwrap().delay.unwrap();
            assert!((10..=20).contains(&delay.as_millis()));
        }
    }
}
