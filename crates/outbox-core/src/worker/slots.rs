//! Per-sink slots (how many rows each sink may have in flight) and claim planning: which
//! sinks to claim for this round, and how many rows each.

use std::sync::Arc;

use super::WorkerError;
use crate::config::Config;
use crate::retry::RetryPolicy;
use crate::sinks::Sink;

pub(crate) struct SinkSlot {
    pub(crate) name: String,
    pub(crate) sink: Arc<Sink>,
    pub(crate) policy: RetryPolicy,
    pub(crate) concurrency: usize,
    pub(crate) in_flight: usize,
    /// Why the sink is held (see [`Sink::hold`]), to log only changes.
    pub(crate) held: Option<String>,
}

/// The claims of one round: `(sink, limit)` per claimed sink, with its slot index.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ClaimPlan {
    pub(crate) claims: Vec<(String, u32)>,
    pub(crate) slots: Vec<usize>,
    /// A sink had no free slot: work may be waiting.
    pub(crate) more_waiting: bool,
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
            in_flight: 0,
            held: None,
        });
    }
    Ok(slots)
}

/// Applies a reloaded config: existing sinks keep their slot (and in-flight count), removed
/// sinks stop claiming (concurrency 0) until their in-flight rows finish.
pub(crate) fn reload_slots(slots: &mut Vec<SinkSlot>, fresh: Vec<SinkSlot>) {
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
                s.held = None;
            }
            None => slots.push(f),
        }
    }
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

/// How many rows a slot should claim now, or `None` to skip it this round. `finishing` are
/// its rows whose verdicts are about to be written: their slots count as free.
pub(crate) fn claim_size(
    concurrency: usize,
    in_flight: usize,
    finishing: usize,
    batch_size: u32,
) -> Option<u32> {
    let free = (concurrency + finishing).saturating_sub(in_flight);
    // Refill in chunks: claiming one row per freed slot would cost a commit (an fsync) per
    // row.
    let threshold = (concurrency / 4).max(1);
    if free == 0 || (free < threshold && in_flight > finishing) {
        return None;
    }
    Some((free as u32).min(batch_size))
}

/// Plans this round's claims over every slot that is neither paused, held nor removed.
pub(crate) fn plan_claims(
    slots: &mut [SinkSlot],
    paused: &[String],
    pending_slots: &[usize],
    batch_size: u32,
    now: i64,
) -> ClaimPlan {
    let mut plan = ClaimPlan::default();
    for (i, slot) in slots.iter_mut().enumerate() {
        if paused.contains(&slot.name) {
            continue;
        }
        if refresh_hold(slot, now) || slot.concurrency == 0 {
            continue;
        }
        let finishing = pending_slots.iter().filter(|s| **s == i).count();
        match claim_size(slot.concurrency, slot.in_flight, finishing, batch_size) {
            Some(limit) => {
                plan.claims.push((slot.name.clone(), limit));
                plan.slots.push(i);
            }
            None => plan.more_waiting |= slot.concurrency + finishing <= slot.in_flight,
        }
    }
    plan
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
