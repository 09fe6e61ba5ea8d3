//! Housekeeping, every `poll_interval`: expired leases (a crashed worker) go back to
//! pending, rows for sinks that are not configured are dead-lettered so they don't sit there
//! forever, and the operators' pauses are re-read. Retention pruning runs in its own task.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::slots::SinkSlot;
use super::Counters;
use crate::clock::{self, now_ms};
use crate::store::{Store, StoreError};

/// One housekeeping pass (the pauses are read by the loop itself); logs and counts what it
/// changed. `owner` holds `held`: those rows are not reclaimed.
pub(crate) async fn housekeep(
    store: &Store,
    (known, unknown_hold): (&[String], Duration),
    (owner, held): (&str, &[i64]),
    now: i64,
    counters: &Counters,
) -> Result<(), StoreError> {
    // The rows this live worker holds are never reclaimed from it: it renews their leases,
    // and a stall that outlasted a lease must not cost the verdicts it holds.
    let reclaimed = store.reclaim_expired(now, owner, held).await?;
    if reclaimed > 0 {
        tracing::warn!(
            rows = reclaimed,
            "reclaimed rows whose lease expired (a worker stopped mid-delivery)"
        );
    }
    // Not configured here: held (counted in status), dead-lettered only after max_age, so
    // workers whose configs differ, or a renamed sink, do not dead-letter each other's rows.
    let unknown = store
        .dead_letter_unknown_sinks(known, unknown_hold, now)
        .await?;
    if unknown > 0 {
        tracing::warn!(
            rows = unknown,
            "dead-lettered rows addressed to sinks that are not configured, older than max_age"
        );
        counters.dead.fetch_add(unknown, Ordering::Relaxed);
    }
    Ok(())
}

/// Operators' probe requests (`outboxd retry-now` on a sink this daemon holds, whose
/// health only the daemon knows): a held sink with a new request probes at once. Read at
/// housekeeping, with the pauses; a failed read waits for the next pass.
pub(crate) async fn probe_on_request(store: &Store, slots: &mut [SinkSlot], timeout: Duration) {
    let requests = match tokio::time::timeout(timeout, store.ops().probe_requests()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading probe requests failed; trying again later");
            return;
        }
        Err(_) => return,
    };
    let now = tokio::time::Instant::now();
    for (sink, at) in requests {
        if let Some(slot) = slots.iter_mut().find(|s| s.name == sink) {
            if slot.health.probe_requested(at, now) {
                tracing::info!(sink = %sink, "an operator asked for a probe (retry-now): probing the held sink now");
            }
        }
    }
}

/// Deletes finished rows past their retention, a small batch at a time, so pruning never
/// holds the database long enough to stall delivery.
pub(crate) async fn retention_task(store: Store, retention: Duration, key_retention: Duration) {
    const BATCH: i64 = 500;
    // Idle checks every minute, or sooner for a short retention.
    let idle = retention.clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let before = now_ms() - clock::ms(retention);
        let pause = match store.prune_finished(before, BATCH).await {
            Ok(n) if n as i64 == BATCH => Duration::from_millis(50),
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(rows = n, "pruned finished rows past retention");
                }
                // Keys outlive their rows by far (key_retention): forget the oldest few.
                if let Err(e) = store.prune_keys(now_ms(), key_retention, BATCH).await {
                    tracing::debug!(error = %e, "pruning keys failed; trying again later");
                }
                idle
            }
            Err(e) => {
                tracing::debug!(error = %e, "pruning failed; trying again later");
                idle
            }
        };
        tokio::time::sleep(pause).await;
    }
}
