//! Per-sink slots (how many rows each sink may have in flight) and claim planning: which
//! sinks to claim for this round, and how many rows each.

use std::sync::Arc;

use tokio::time::Instant;

use super::WorkerError;
use crate::config::Config;
use crate::health::{HealthConfig, LinkHealth, Permit, SinkHealth, Transition};
use crate::retry::RetryPolicy;
use crate::sinks::Sink;
use crate::window::Window;

pub(crate) struct SinkSlot {
    pub(crate) name: String,
    pub(crate) sink: Arc<Sink>,
    pub(crate) policy: RetryPolicy,
    /// The ceiling of the window (the sink's `concurrency`); 0 once removed by a reload.
    pub(crate) concurrency: usize,
    /// How many rows may be in flight now: adapts between 1 and `concurrency`
    /// ([`crate::window`]).
    pub(crate) window: Window,
    pub(crate) in_flight: usize,
    /// Why the sink is held (see [`Sink::hold`]), to log only changes.
    pub(crate) held: Option<String>,
    /// Held after the platform's own failures (credentials, clock, URL, `Retry-After`,
    /// streaks): one probe row at a time.
    pub(crate) health: SinkHealth,
    pub(crate) health_config: HealthConfig,
    /// A platform clock further off than this is reported.
    pub(crate) clock_skew_warn: std::time::Duration,
    /// The skew last reported, in whole minutes (`None`: within `clock_skew_warn`).
    pub(crate) skew_reported: Option<i64>,
}

/// The claims of one round: `(sink, limit)` per claimed sink, with its slot index.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ClaimPlan {
    pub(crate) claims: Vec<(String, u32)>,
    pub(crate) slots: Vec<usize>,
    /// Per claim: the row is the probe of a held sink, or of the held link.
    pub(crate) probes: Vec<ProbeOf>,
    /// A sink had no free slot: work may be waiting.
    pub(crate) more_waiting: bool,
}

/// What a claimed probe row probes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeOf {
    pub(crate) sink: bool,
    pub(crate) link: bool,
}

impl ClaimPlan {
    pub(crate) fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }
}

pub(crate) fn build_slots(config: &Config) -> Result<Vec<SinkSlot>, WorkerError> {
    let mut slots = Vec::new();
    for (name, sc) in &config.sinks {
        let sink = Sink::build(name, sc).map_err(WorkerError::Sink)?;
        slots.push(SinkSlot {
            name: name.clone(),
            sink: Arc::new(sink),
            policy: sc.retry_policy(&config.retry).clone(),
            concurrency: sc.settings.concurrency,
            window: Window::new(sc.settings.concurrency),
            in_flight: 0,
            held: None,
            health: SinkHealth::new(name.clone(), sc.settings.health.clone()),
            health_config: sc.settings.health.clone(),
            clock_skew_warn: sc.settings.clock_skew_warn,
            skew_reported: None,
        });
    }
    Ok(slots)
}

/// Applies a reloaded config: existing sinks keep their slot (and in-flight count), removed
/// sinks stop claiming (concurrency 0) until their in-flight rows finish. A held sink whose
/// hold a reload may fix (credentials, clock, URL) resumes at once; the transitions are
/// returned to be logged.
pub(crate) fn reload_slots(
    slots: &mut Vec<SinkSlot>,
    fresh: Vec<SinkSlot>,
    now: Instant,
) -> Vec<Transition> {
    let mut transitions = Vec::new();
    for s in slots.iter_mut() {
        if !fresh.iter().any(|f| f.name == s.name) {
            s.concurrency = 0;
        }
    }
    for f in fresh {
        match slots.iter_mut().find(|s| s.name == f.name) {
            Some(s) => {
                s.sink = f.sink;
                s.policy = f.policy;
                s.concurrency = f.concurrency;
                s.window.set_ceiling(f.concurrency);
                s.held = None;
                s.health.set_config(f.health_config.clone());
                s.health_config = f.health_config;
                s.clock_skew_warn = f.clock_skew_warn;
                s.skew_reported = None;
                transitions.extend(s.health.resume_on_reload(now));
            }
            None => slots.push(f),
        }
    }
    transitions
}

/// Re-reads the sink's hold (see [`Sink::hold`]) and logs a change. Returns whether held.
fn refresh_hold(slot: &mut SinkSlot, now: i64) -> bool {
    let hold = slot.sink.hold(now);
    if hold != slot.held {
        match &hold {
            Some(why) => {
                tracing::error!(sink = %slot.name, reason = %why, "holding this sink's rows (no attempts used) until the cause is fixed")
            }
            None => {
                tracing::info!(sink = %slot.name, "sink no longer held; delivering again")
            }
        }
        slot.held = hold;
    }
    slot.held.is_some()
}

/// Logs the platform's clock skew once when it passes `clock_skew_warn`, again when it
/// changes by a minute or more, and once when it is back within.
pub(crate) fn report_skew(slot: &mut SinkSlot) {
    let Some(skew) = slot.sink.clock_skew_ms() else {
        return;
    };
    let off = skew.unsigned_abs() as u128 > slot.clock_skew_warn.as_millis();
    let minutes = skew / 60_000;
    match (off, slot.skew_reported) {
        (true, Some(m)) if m == minutes => {}
        (true, _) => {
            tracing::warn!(sink = %slot.name, skew_ms = skew, "{}: check this host's time synchronisation (NTP)", crate::health::clock_reason(skew));
            slot.skew_reported = Some(minutes);
        }
        (false, Some(_)) => {
            tracing::info!(sink = %slot.name, skew_ms = skew, "the platform's clock agrees with ours again");
            slot.skew_reported = None;
        }
        (false, None) => {}
    }
}

/// How many rows a slot should claim now, or `None` to skip it this round. `window` is how
/// many it may have in flight; `finishing` are its rows whose verdicts are about to be
/// written: their slots count as free.
pub(crate) fn claim_size(
    window: usize,
    in_flight: usize,
    finishing: usize,
    batch_size: u32,
) -> Option<u32> {
    let free = (window + finishing).saturating_sub(in_flight);
    // Refill in chunks: claiming one row per freed slot would cost a commit (an fsync) per
    // row.
    let threshold = (window / 4).max(1);
    if free == 0 || (free < threshold && in_flight > finishing) {
        return None;
    }
    Some((free as u32).min(batch_size))
}

/// Plans this round's claims over every slot that is neither paused, held nor removed. A
/// sink held by its health (or a held link) claims one probe row when its probe is due, and
/// the link is probed through one sink at a time.
pub(crate) fn plan_claims(
    slots: &mut [SinkSlot],
    link: &LinkHealth,
    paused: &[String],
    pending_slots: &[usize],
    batch_size: u32,
    now: i64,
    at: Instant,
) -> ClaimPlan {
    let mut plan = ClaimPlan::default();
    let mut link_permit = link.permit(at);
    for (i, slot) in slots.iter_mut().enumerate() {
        if paused.contains(&slot.name) {
            continue;
        }
        if refresh_hold(slot, now) || slot.concurrency == 0 {
            continue;
        }
        let sink_permit = slot.health.permit(at);
        let probe = ProbeOf {
            sink: sink_permit == Permit::Probe,
            link: link_permit == Permit::Probe,
        };
        if matches!(sink_permit, Permit::Wait(_)) || matches!(link_permit, Permit::Wait(_)) {
            continue;
        }
        let finishing = pending_slots.iter().filter(|s| **s == i).count();
        let window = slot.window.limit();
        match claim_size(window, slot.in_flight, finishing, batch_size) {
            Some(limit) => {
                // A probe is one row; so is every claim while a streak of sink failures is
                // running, so a failing platform sees at most `hold_after` rows before the
                // hold, not a batch per free slot.
                let cautious = slot.health.snapshot().consecutive_failures > 0;
                let limit = if probe.sink || probe.link || cautious {
                    1
                } else {
                    limit
                };
                plan.claims.push((slot.name.clone(), limit));
                plan.slots.push(i);
                plan.probes.push(probe);
                if probe.link {
                    // One sink probes the link; the others wait for its answer.
                    link_permit = Permit::Wait(None);
                }
            }
            None => plan.more_waiting |= window + finishing <= slot.in_flight,
        }
    }
    plan
}

/// The earliest time a held sink (or the held link) that is waiting may claim a probe row.
/// (A probe already due was planned this round; if no row was due it waits for the next
/// wake-up like any sink.)
pub(crate) fn next_probe(slots: &[SinkSlot], link: &LinkHealth, at: Instant) -> Option<Instant> {
    let wait = |p: Permit| match p {
        Permit::Wait(Some(t)) => Some(t),
        _ => None,
    };
    let link_wait = wait(link.permit(at));
    slots
        .iter()
        .filter(|s| s.concurrency > 0)
        .filter_map(|s| wait(s.health.permit(at)))
        .chain(link_wait)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_in_chunks_not_one_row_per_freed_slot() {
        // An idle sink claims up to its concurrency, capped by the batch size.
        assert_eq!(claim_size(32, 0, 0, 256), Some(32));
        assert_eq!(claim_size(32, 0, 0, 10), Some(10));
        // One freed slot of 32 waits for a chunk of 8.
        assert_eq!(claim_size(32, 31, 0, 256), None);
        assert_eq!(claim_size(32, 24, 0, 256), Some(8));
        // Verdicts about to be written free their slots.
        assert_eq!(claim_size(32, 32, 8, 256), Some(8));
        // Full: nothing.
        assert_eq!(claim_size(4, 4, 0, 256), None);
        // All in flight are finishing: claim even a single slot.
        assert_eq!(claim_size(32, 1, 1, 256), Some(32));
    }
}
