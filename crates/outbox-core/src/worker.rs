//! The worker loop: claim due rows per sink, deliver them concurrently, record verdicts.
//!
//! - Claims are batched (one `UPDATE ... RETURNING` per sink) and only when a sink has a
//!   useful number of free slots, so a busy worker does not commit once per row.
//! - Verdicts go to a completer task that writes them in batches, one transaction each:
//!   with `synchronous = FULL` every commit is an fsync, so batching is what makes
//!   throughput.
//! - Each delivery runs in its own task: a panic in a sink dead-letters that row, never the
//!   daemon. A database error is logged once per change of state and retried; nothing that
//!   was claimed is forgotten (its lease expires and it is claimed again).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::{self, now_ms};
use crate::config::{Config, WorkerConfig};
use crate::event::ClaimedRow;
use crate::metrics::Metrics;
use crate::outcome::{StepOutcome, Verdict};
use crate::retry::{Decision, RetryPolicy};
use crate::shutdown::Shutdown;
use crate::sinks::Sink;
use crate::store::wake::Wake;
use crate::store::{Action, Completion, DeadKind, Store};

/// Payloads above this are dead-lettered unread (the claim measures them in SQL).
pub use crate::event::MAX_PAYLOAD_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("sink setup failed: {0}")]
    Sink(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// How `run` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Until the shutdown future resolves.
    Forever,
    /// Until no row of a configured sink is pending or in flight (demo, benchmarks).
    UntilIdle,
}

/// Counters since start, for progress logs and the run summary.
#[derive(Debug, Default)]
pub struct Counters {
    pub claimed: AtomicU64,
    pub delivered: AtomicU64,
    pub hints: AtomicU64,
    pub done: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub continued: AtomicU64,
    pub released: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub claimed: u64,
    pub delivered: u64,
    pub hints: u64,
    pub done: u64,
    pub retried: u64,
    pub dead: u64,
    pub continued: u64,
    pub released: u64,
}

impl Counters {
    pub fn summary(&self) -> Summary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            claimed: g(&self.claimed),
            delivered: g(&self.delivered),
            hints: g(&self.hints),
            done: g(&self.done),
            retried: g(&self.retried),
            dead: g(&self.dead),
            continued: g(&self.continued),
            released: g(&self.released),
        }
    }
}

struct SinkSlot {
    name: String,
    sink: Arc<Sink>,
    policy: RetryPolicy,
    concurrency: usize,
    in_flight: usize,
    /// Why the sink is held (see [`Sink::hold`]), to log only changes.
    held: Option<String>,
}

struct InFlight {
    row_id: i64,
    slot: usize,
    attempt: u32,
}

/// Turns a sink's verdict into what the store does with the row.
pub fn decide(
    verdict: &Verdict,
    row: &ClaimedRow,
    sink: &Sink,
    policy: &RetryPolicy,
    now: i64,
    unit: f64,
) -> Action {
    let retry = |reason: &str, retry_after: Option<Duration>| {
        let age = Duration::from_millis(now.saturating_sub(row.created_at).max(0) as u64);
        match policy.decide(row.attempts, age, retry_after, unit) {
            Decision::RetryAfter(d) => Action::Retry {
                next_at: now + clock::ms(d),
                error: reason.to_string(),
            },
            Decision::GiveUp(why) => Action::Dead {
                kind: DeadKind::Expired,
                reason: format!("{why}; last error: {reason}"),
                last_reply: None,
            },
        }
    };
    match verdict {
        Verdict::Delivered { hint, result } => Action::Delivered {
            hint: hint.clone(),
            result: result.clone(),
        },
        Verdict::Completed { note, result } => Action::Done {
            note: note.clone(),
            result: result.clone(),
        },
        Verdict::Retry {
            reason,
            retry_after,
        } => retry(reason, *retry_after),
        Verdict::Permanent { reason } => Action::Dead {
            kind: DeadKind::Permanent,
            reason: reason.clone(),
            last_reply: None,
        },
        Verdict::Ambiguous { reason } if sink.retry_ambiguous() => retry(reason, None),
        Verdict::Ambiguous { reason } => Action::Dead {
            kind: DeadKind::Unknown,
            reason: reason.clone(),
            last_reply: None,
        },
        Verdict::Continue {
            state,
            next_at,
            note,
        } => Action::Continue {
            state: state.clone(),
            next_at: *next_at,
            note: note.clone(),
        },
    }
}

/// Checks a claimed row before its sink sees it: wrong event type, oversized payload.
fn precheck(row: &ClaimedRow, name: &str, sink: &Sink) -> Option<String> {
    // The store marks a row whose columns are not text (see store/sqlite.rs).
    if let Some(problem) = &row.defect {
        return Some(format!(
            "the row cannot be read: {problem}; fix the producer"
        ));
    }
    let expected = sink.kind().event_type();
    if row.event_type != expected.as_str() {
        return Some(format!("sink {name} (type {}) delivers {expected} events, not {:?}: fix the producer's event_type or sink", sink.kind(), row.event_type));
    }
    if row.payload.len() > MAX_PAYLOAD_BYTES {
        return Some(format!(
            "payload is {} bytes, above the {} byte limit: no platform accepts it",
            row.payload.len(),
            MAX_PAYLOAD_BYTES
        ));
    }
    None
}

pub fn default_worker_id() -> String {
    // /proc/sys is hidden under the unit's ProcSubset=pid; /etc/hostname stays readable.
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Logs a database failure once when it starts and once when it ends.
#[derive(Default)]
struct DbHealth {
    failing_since: Option<Instant>,
}

impl DbHealth {
    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if self.failing_since.is_none() {
            tracing::error!(error = %e, "database unavailable during {what}; deliveries pause and resume by themselves");
            self.failing_since = Some(Instant::now());
        }
    }

    fn ok(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::warn!(down_for = ?since.elapsed(), "database reachable again; resuming");
        }
    }

    fn backoff(&self) -> Duration {
        let down = self.failing_since.map(|s| s.elapsed()).unwrap_or_default();
        // 100ms, growing with the outage, at most 5s.
        Duration::from_millis(100)
            .max(down / 4)
            .min(Duration::from_secs(5))
    }
}

/// What the daemon around the worker plugs in.
pub struct RunOptions {
    pub mode: RunMode,
    /// New, already validated configs (SIGHUP). Sinks, retry policies, concurrency and
    /// worker timings change at once; in-flight deliveries finish on the old sinks.
    pub reload: Option<mpsc::UnboundedReceiver<Config>>,
    /// Called every time the loop goes round (at least every `poll_interval`): the systemd
    /// watchdog is fed from here, so a stuck loop gets the daemon restarted.
    pub heartbeat: Option<Box<dyn Fn() + Send>>,
    pub metrics: Arc<Metrics>,
}

impl RunOptions {
    pub fn new(mode: RunMode) -> Self {
        RunOptions {
            mode,
            reload: None,
            heartbeat: None,
            metrics: Arc::new(Metrics::default()),
        }
    }
}

fn build_slots(config: &Config, client: &reqwest::Client) -> Result<Vec<SinkSlot>, WorkerError> {
    let mut slots = Vec::new();
    for (name, sc) in &config.sinks {
        let sink = Sink::build(name, sc, client.clone()).map_err(WorkerError::Sink)?;
        slots.push(SinkSlot {
            name: name.clone(),
            sink: Arc::new(sink),
            policy: sc.retry_policy(&config.retry).clone(),
            concurrency: sc.concurrency,
            in_flight: 0,
            held: None,
        });
    }
    Ok(slots)
}

/// Applies a reloaded config: existing sinks keep their slot (and in-flight count), removed
/// sinks stop claiming (concurrency 0) until their in-flight rows finish.
fn reload_slots(slots: &mut Vec<SinkSlot>, fresh: Vec<SinkSlot>) {
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

/// Deletes finished rows past their retention, a small batch at a time, so pruning never
/// holds the database long enough to stall delivery.
async fn retention_task(store: Store, retention: Duration) {
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
                // Keys outlive their rows by far (400 days): forget the oldest few.
                if let Err(e) = store
                    .prune_keys(now_ms(), crate::store::DEFAULT_KEY_RETENTION, BATCH)
                    .await
                {
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

/// Runs the worker until shutdown (or until idle, per `opts.mode`). Returns what it did.
///
/// One loop owns the database: each round it writes the verdicts of the deliveries that
/// finished since the last round and claims rows for the free slots, in one transaction
/// ([`Store::cycle`]). A slot is freed only once its row's verdict is committed, so the rows
/// that could be delivered twice after a crash are bounded by the sinks' concurrency.
pub async fn run(
    config: &Config,
    store: Store,
    mut shutdown: Shutdown,
    opts: RunOptions,
) -> Result<Summary, WorkerError> {
    let RunOptions {
        mode,
        mut reload,
        heartbeat,
        metrics,
    } = opts;
    let mut wc: WorkerConfig = config.worker.clone();
    let owner = wc.worker_id.clone().unwrap_or_else(default_worker_id);
    let pool_size = config
        .sinks
        .values()
        .map(|s| s.concurrency)
        .max()
        .unwrap_or(8);
    let connect_timeout = config
        .sinks
        .values()
        .map(|s| s.connect_timeout)
        .max()
        .unwrap_or(Duration::from_secs(5));
    let client = crate::http::client(connect_timeout, pool_size);

    let mut slots = build_slots(config, &client)?;
    let mut known: Vec<String> = slots.iter().map(|s| s.name.clone()).collect();
    let counters = Counters::default();
    let pruner = tokio::spawn(retention_task(store.clone(), wc.retention));

    tracing::info!(worker = %owner, backend = store.backend(), sinks = ?known, "outboxd worker started");

    let mut wake = Wake::new(store.clone(), wc.wake_interval);
    let mut tasks: JoinSet<(ClaimedRow, StepOutcome)> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
    // Verdicts waiting to be written, with their slot.
    let mut pending: Vec<Completion> = Vec::new();
    // The slot of each pending verdict, in the same order.
    let mut pending_slots: Vec<usize> = Vec::new();
    let mut health = DbHealth::default();
    let mut next_db_try = Instant::now();
    let mut paused: Vec<String> = Vec::new();
    let mut next_housekeeping = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(60);
    let mut next_idle_check = Instant::now();
    let mut last_progress = counters.summary();
    let mut grace_deadline: Option<Instant> = None;
    let mut lease_ms = clock::ms(wc.lease);

    loop {
        metrics.tick();
        if let Some(beat) = &heartbeat {
            beat();
        }
        let stopping = grace_deadline.is_some();
        let db_ready = Instant::now() >= next_db_try;
        let mut more_waiting = false;

        if !stopping && db_ready && Instant::now() >= next_housekeeping {
            // Expired leases (a crashed worker) go back to pending; rows for sinks that are
            // not configured are held, then dead-lettered after max_age.
            let now = now_ms();
            let r = async {
                let reclaimed = store.reclaim_expired(now).await?;
                if reclaimed > 0 {
                    tracing::warn!(
                        rows = reclaimed,
                        "reclaimed rows whose lease expired (a worker stopped mid-delivery)"
                    );
                }
                // Held (counted in status) until the longest max_age of this config.
                let hold = slots
                    .iter()
                    .map(|s| s.policy.max_age)
                    .max()
                    .unwrap_or_default();
                let unknown = store.dead_letter_unknown_sinks(&known, hold, now).await?;
                if unknown > 0 {
                    tracing::warn!(
                        rows = unknown,
                        "dead-lettered rows addressed to sinks that are not configured"
                    );
                    counters.dead.fetch_add(unknown, Ordering::Relaxed);
                }
                paused = store.paused_sinks().await?;
                Ok::<_, crate::store::StoreError>(())
            }
            .await;
            match r {
                // Not proof the database is healthy again: these statements rarely write, and
                // a full disk still answers reads. Only a cycle that records verdicts or
                // claims rows clears a failure, so the log does not flap.
                Ok(()) => next_housekeeping = Instant::now() + wc.poll_interval,
                Err(e) => {
                    health.failed("housekeeping", &e);
                    next_db_try = Instant::now() + health.backoff();
                }
            }
        }

        // Which sinks to claim for this round.
        let mut claims: Vec<(String, u32)> = Vec::new();
        let mut claim_slots: Vec<usize> = Vec::new();
        if !stopping && db_ready {
            for (i, slot) in slots.iter_mut().enumerate() {
                if paused.contains(&slot.name) {
                    continue;
                }
                let hold = slot.sink.hold(now_ms());
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
                if slot.held.is_some() || slot.concurrency == 0 {
                    continue;
                }
                // Slots of the verdicts about to be written count as free.
                let finishing = pending_slots.iter().filter(|s| **s == i).count();
                let free = (slot.concurrency + finishing).saturating_sub(slot.in_flight);
                // Refill in chunks: claiming one row per freed slot would cost a commit (an
                // fsync) per row.
                let threshold = (slot.concurrency / 4).max(1);
                if free == 0 || (free < threshold && slot.in_flight > finishing) {
                    more_waiting |= free == 0;
                    continue;
                }
                claims.push((slot.name.clone(), (free as u32).min(wc.batch_size)));
                claim_slots.push(i);
            }
        }

        if db_ready && (!pending.is_empty() || !claims.is_empty()) {
            let now = now_ms();
            match store
                .cycle(&owner, &pending, &claims, now, now + lease_ms)
                .await
            {
                Ok((lost, claimed)) => {
                    // Only a round that wrote proves the database writable again (a full
                    // disk still answers a claim that finds nothing).
                    if !pending.is_empty() || claimed.iter().any(|rows| !rows.is_empty()) {
                        health.ok();
                    }
                    if lost > 0 {
                        tracing::warn!(rows = lost, "verdicts for rows whose lease had expired were not applied; those rows are being delivered again elsewhere");
                    }
                    for (slot, c) in pending_slots.drain(..).zip(pending.drain(..)) {
                        slots[slot].in_flight -= 1;
                        account(&counters, &metrics, &c);
                    }
                    for ((i, rows), (_, limit)) in claim_slots.iter().zip(claimed).zip(&claims) {
                        if rows.len() as u32 == *limit {
                            more_waiting = true;
                        }
                        counters
                            .claimed
                            .fetch_add(rows.len() as u64, Ordering::Relaxed);
                        let slot = &mut slots[*i];
                        for row in rows {
                            slot.in_flight += 1;
                            let (sink, name) = (slot.sink.clone(), slot.name.clone());
                            let (row_id, attempt) = (row.id, row.attempts);
                            let handle = tasks.spawn(async move {
                                let outcome = match precheck(&row, &name, &sink) {
                                    Some(reason) => StepOutcome {
                                        verdict: Verdict::Permanent { reason },
                                        info: Default::default(),
                                    },
                                    None => sink.deliver(&row).await,
                                };
                                (row, outcome)
                            });
                            in_flight.insert(
                                handle.id(),
                                InFlight {
                                    row_id,
                                    slot: *i,
                                    attempt,
                                },
                            );
                        }
                    }
                    wake.mark_seen();
                }
                Err(e) => {
                    health.failed("recording verdicts and claiming", &e);
                    next_db_try = Instant::now() + health.backoff();
                }
            }
        }

        if stopping && tasks.is_empty() {
            if pending.is_empty() {
                break;
            }
            if health
                .failing_since
                .is_some_and(|s| s.elapsed() > Duration::from_secs(10))
            {
                tracing::error!(rows = pending.len(), "giving up recording verdicts at shutdown; these rows will be delivered again after their lease expires");
                break;
            }
        }
        if mode == RunMode::UntilIdle
            && !stopping
            && tasks.is_empty()
            && pending.is_empty()
            && !more_waiting
            && health.failing_since.is_none()
            && Instant::now() >= next_idle_check
        {
            // The status query counts the whole table: ask at most every 50ms.
            next_idle_check = Instant::now() + Duration::from_millis(50);
            let held: Vec<&str> = slots
                .iter()
                .filter(|s| s.held.is_some())
                .map(|s| s.name.as_str())
                .collect();
            match store.stats(now_ms()).await {
                Ok(stats) => {
                    let open: i64 = stats
                        .iter()
                        .filter(|s| {
                            known.contains(&s.sink)
                                && !paused.contains(&s.sink)
                                && !held.contains(&s.sink.as_str())
                        })
                        .map(|s| s.pending + s.in_flight)
                        .sum();
                    if open == 0 {
                        tracing::info!("outbox is empty: every row is final");
                        break;
                    }
                }
                Err(e) => health.failed("status", &e),
            }
        }
        if Instant::now() >= next_progress {
            let s = counters.summary();
            if s != last_progress {
                tracing::info!(
                    delivered = s.delivered - last_progress.delivered,
                    hints = s.hints - last_progress.hints,
                    retried = s.retried - last_progress.retried,
                    dead = s.dead - last_progress.dead,
                    in_flight = tasks.len(),
                    "progress in the last minute"
                );
                last_progress = s;
            }
            next_progress = Instant::now() + Duration::from_secs(60);
        }

        let idle_until = if health.failing_since.is_some() {
            next_db_try
        } else if (more_waiting && !stopping) || !pending.is_empty() {
            // Work is waiting: come back as soon as something finishes.
            Instant::now() + Duration::from_millis(1)
        } else {
            next_housekeeping.max(Instant::now() + Duration::from_millis(1))
        };

        tokio::select! {
            biased;
            _ = shutdown.recv(), if !stopping => {
                tracing::info!(in_flight = tasks.len(), grace = ?wc.shutdown_grace, "shutdown requested: no new claims, finishing in-flight deliveries");
                grace_deadline = Some(Instant::now() + wc.shutdown_grace);
            }
            Some(joined) = tasks.join_next_with_id() => {
                let mut done = vec![joined];
                while let Some(j) = tasks.try_join_next_with_id() {
                    done.push(j);
                }
                for (slot, c) in done.into_iter().filter_map(|j| finish(j, &mut in_flight, &slots)) {
                    pending_slots.push(slot);
                    pending.push(c);
                }
            }
            _ = async { tokio::time::sleep_until(grace_deadline.expect("guarded")).await }, if stopping && !tasks.is_empty() => {
                tracing::warn!(rows = tasks.len(), "shutdown grace over: abandoning in-flight deliveries; their rows are released for another attempt");
                tasks.abort_all();
                while let Some(j) = tasks.join_next_with_id().await {
                    if let Some((slot, c)) = finish(j, &mut in_flight, &slots) {
                        pending_slots.push(slot);
                        pending.push(c);
                    }
                }
            }
            Some(new_config) = async { reload.as_mut().expect("guarded").recv().await }, if reload.is_some() && !stopping => {
                match build_slots(&new_config, &client) {
                    Ok(fresh) => {
                        if new_config.database_url != config.database_url {
                            tracing::warn!("database_url changed: that takes a restart; the rest of the new config is applied");
                        }
                        reload_slots(&mut slots, fresh);
                        known = new_config.sinks.keys().cloned().collect();
                        wc = new_config.worker.clone();
                        lease_ms = clock::ms(wc.lease);
                        next_housekeeping = Instant::now();
                        tracing::info!(sinks = ?known, "configuration reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "reloaded configuration rejected; keeping the previous one"),
                }
            }
            _ = wake.changed_or(idle_until), if !stopping => {}
            _ = tokio::time::sleep_until(idle_until), if stopping => {}
        }
    }

    pruner.abort();
    let s = counters.summary();
    tracing::info!(?s, "outboxd worker stopped");
    Ok(s)
}

/// Counts a committed verdict.
fn account(counters: &Counters, metrics: &Metrics, c: &Completion) {
    metrics.record(
        &c.sink,
        c.outcome_label,
        c.info
            .as_ref()
            .filter(|i| i.http_status.is_some() || i.error.is_some())
            .map(|i| i.duration_us),
        matches!(c.action, Action::Delivered { hint: Some(_), .. }),
    );
    let counter = match &c.action {
        Action::Delivered { hint: Some(_), .. } => {
            counters.hints.fetch_add(1, Ordering::Relaxed);
            &counters.delivered
        }
        Action::Delivered { .. } => &counters.delivered,
        Action::Done { .. } => &counters.done,
        Action::Retry { .. } => &counters.retried,
        Action::Continue { .. } => &counters.continued,
        Action::Dead { .. } => &counters.dead,
        Action::Release { .. } => &counters.released,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Turns a finished (or aborted, or panicked) delivery task into a completion.
fn finish(
    joined: Result<(tokio::task::Id, (ClaimedRow, StepOutcome)), tokio::task::JoinError>,
    in_flight: &mut HashMap<tokio::task::Id, InFlight>,
    slots: &[SinkSlot],
) -> Option<(usize, Completion)> {
    let id = match &joined {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    let f = in_flight.remove(&id)?;
    let slot = &slots[f.slot];
    let now = now_ms();
    let completion = match joined {
        Ok((_, (row, outcome))) => {
            let unit = rand::rng().random::<f64>();
            let mut action = decide(&outcome.verdict, &row, &slot.sink, &slot.policy, now, unit);
            if let Action::Dead {
                kind, last_reply, ..
            } = &mut action
            {
                last_reply.clone_from(&outcome.info.reply);
                // A row the precheck refused was never sent (same check, same answer).
                if precheck(&row, &slot.name, &slot.sink).is_some() {
                    *kind = DeadKind::Invalid;
                }
            }
            log_verdict(&slot.name, &row, &outcome, &action);
            Completion {
                id: row.id,
                sink: slot.name.clone(),
                attempt: row.attempts,
                action,
                info: Some(outcome.info),
                outcome_label: outcome.verdict.label(),
            }
        }
        Err(e) if e.is_panic() => {
            let msg = panic_message(e.into_panic());
            tracing::error!(sink = %slot.name, row = f.row_id, panic = %msg, "delivery panicked; dead-lettering the row");
            Completion {
                id: f.row_id,
                sink: slot.name.clone(),
                attempt: f.attempt,
                action: Action::Dead { kind: DeadKind::Internal, reason: format!("internal error while delivering (panic: {msg}); please report it with this row"), last_reply: None },
                info: Some(crate::outcome::AttemptInfo { started_at: now, error: Some(format!("panic: {msg}")), ..Default::default() }),
                outcome_label: "panic",
            }
        }
        Err(_) => Completion {
            // Aborted at the end of the shutdown grace: it had started, so it may have
            // reached the platform.
            id: f.row_id,
            sink: slot.name.clone(),
            attempt: f.attempt,
            action: Action::Release { in_doubt: true },
            info: None,
            outcome_label: "released",
        },
    };
    Some((f.slot, completion))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

fn log_verdict(sink: &str, row: &ClaimedRow, outcome: &StepOutcome, action: &Action) {
    let key = row.idempotency_key.as_str();
    match action {
        Action::Delivered { hint: Some(h), .. } => {
            tracing::warn!(sink, key, attempt = row.attempts, hint = %h, "delivered, but the platform attached a hint: check it")
        }
        Action::Delivered { .. } => tracing::debug!(sink, key, attempt = row.attempts, "delivered"),
        Action::Done { note, .. } => tracing::info!(sink, key, note = %note, "final outcome"),
        Action::Retry { next_at, error } => tracing::info!(
            sink, key, attempt = row.attempts, error = %error,
            retry_in = ?Duration::from_millis((next_at - now_ms()).max(0) as u64), "delivery failed; will retry"
        ),
        Action::Continue { note, .. } => tracing::debug!(sink, key, note = %note, "flow step done"),
        Action::Dead { reason, .. } => {
            tracing::warn!(sink, key, attempt = row.attempts, reason = %reason, verdict = outcome.verdict.label(), "dead-lettered")
        }
        Action::Release { .. } => {}
    }
}
