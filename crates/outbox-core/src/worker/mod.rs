//! The worker loop: claim due rows per sink, deliver them concurrently, record verdicts.
//!
//! - Claims are batched (one `UPDATE ... RETURNING` per sink) and only when a sink has a
//!   useful number of free slots, so a busy worker does not commit once per row
//!   ([`slots`]).
//! - Verdicts are written in batches, together with the next claims, one transaction per
//!   round: with `synchronous = FULL` every commit is an fsync, so batching is what makes
//!   throughput ([`decide`] turns a verdict into the store's action).
//! - Each delivery runs in its own task: a panic in a sink dead-letters that row, never the
//!   daemon. A database error is logged once per change of state and retried; nothing that
//!   was claimed is forgotten (its lease expires and it is claimed again).
//! - Housekeeping (expired leases, unknown sinks, pauses, retention) is in [`housekeeping`].

mod decide;
mod health;
mod housekeeping;
mod slots;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::{self, now_ms};
use crate::config::{Config, WorkerConfig};
use crate::event::ClaimedRow;
use crate::health::{LinkConfig, LinkHealth, Transition};
use crate::metrics::{HealthBoard, HealthView, Metrics};
use crate::outcome::StepOutcome;
use crate::shutdown::Shutdown;
use crate::store::wake::Wake;
use crate::store::{Action, Completion, Store};
use crate::window::Window;

pub use decide::decide;
use decide::{finish, InFlight, Joined};
use health::DbHealth;
use slots::{ClaimPlan, SinkSlot};

/// Payloads above this are dead-lettered unread (the claim measures them in SQL).
pub use crate::event::MAX_PAYLOAD_BYTES;

/// Why a store call of the loop failed: the database said no, or did not answer in time.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the database did not answer within worker.store_timeout ({0:?})")]
    TimedOut(Duration),
}

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

    /// Counts a committed verdict.
    fn account(&self, metrics: &Metrics, c: &Completion) {
        metrics.record(
            &c.sink,
            c.outcome_label,
            c.info
                .as_ref()
                .filter(|i| i.http_status.is_some() || i.error.is_some())
                .map(|i| i.duration_us),
            matches!(c.action, Action::Delivered { hint: Some(_), .. }),
        );
        if let Action::Dead { kind, .. } = &c.action {
            metrics.count_dead(&c.sink, kind.as_str());
        }
        let counter = match &c.action {
            Action::Delivered { hint: Some(_), .. } => {
                self.hints.fetch_add(1, Ordering::Relaxed);
                &self.delivered
            }
            Action::Delivered { .. } => &self.delivered,
            Action::Done { .. } => &self.done,
            Action::Retry { .. } => &self.retried,
            Action::Continue { .. } => &self.continued,
            Action::Dead { .. } => &self.dead,
            Action::Release { .. } => &self.released,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
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

/// Runs the worker until shutdown (or until idle, per `opts.mode`). Returns what it did.
///
/// One loop owns the database: each round it writes the verdicts of the deliveries that
/// finished since the last round and claims rows for the free slots, in one transaction
/// ([`Store::cycle`]). A slot is freed only once its row's verdict is committed, so the rows
/// that could be delivered twice after a crash are bounded by the sinks' concurrency.
pub async fn run(
    config: &Config,
    store: Store,
    shutdown: Shutdown,
    opts: RunOptions,
) -> Result<Summary, WorkerError> {
    let mut worker = Worker::new(config, store, shutdown, opts)?;
    worker.metrics.register_sinks(&worker.known);
    let pruner = tokio::spawn(housekeeping::retention_task(
        worker.store.clone(),
        worker.wc.retention,
        worker.wc.key_retention,
    ));
    tracing::info!(worker = %worker.owner, backend = worker.store.backend(), sinks = %worker.known.join(","), "outboxd worker started");
    worker.run().await;
    pruner.abort();
    let s = worker.counters.summary();
    tracing::info!(
        claimed = s.claimed,
        delivered = s.delivered,
        hints = s.hints,
        done = s.done,
        retried = s.retried,
        dead = s.dead,
        continued = s.continued,
        released = s.released,
        "outboxd worker stopped"
    );
    Ok(s)
}

/// The state of one round of the loop.
struct Round {
    /// Shutdown was requested: no new claims, finish what is in flight.
    stopping: bool,
    /// The database may be tried (no failure backoff pending).
    db_ready: bool,
    /// Rows may be waiting that this round did not claim: come back soon.
    more_waiting: bool,
    /// Come back at once: a claim filled its limit, or claims wait for the first read of
    /// the pauses. (A full window alone is not such a case: a delivery that finishes wakes
    /// the loop, and polling for it would spin.)
    again: bool,
}

/// What ended the wait at the end of a round.
enum Woken {
    Shutdown,
    Finished(Joined),
    GraceOver,
    Reload(Config),
    /// A timer, or another writer changed the database.
    Timer,
}

/// The loop's state: one per running worker.
struct Worker<'c> {
    config: &'c Config,
    store: Store,
    owner: String,
    wc: WorkerConfig,
    lease_ms: i64,
    mode: RunMode,
    slots: Vec<SinkSlot>,
    /// Connect failures on every busy sink at once hold the link (and so every sink).
    link: LinkHealth,
    /// The configured sinks' names.
    known: Vec<String>,
    /// Sinks an operator paused (re-read at each housekeeping; unknown before the first).
    paused: Option<Vec<String>>,
    counters: Counters,
    metrics: Arc<Metrics>,
    heartbeat: Option<Box<dyn Fn() + Send>>,
    reload: Option<mpsc::UnboundedReceiver<Config>>,
    shutdown: Shutdown,
    wake: Wake,
    tasks: JoinSet<(ClaimedRow, StepOutcome)>,
    in_flight: HashMap<tokio::task::Id, InFlight>,
    /// Verdicts waiting to be written.
    pending: Vec<Completion>,
    /// The slot of each pending verdict, in the same order.
    pending_slots: Vec<usize>,
    health: DbHealth,
    next_db_try: Instant,
    next_housekeeping: Instant,
    next_progress: Instant,
    next_idle_check: Instant,
    last_progress: Summary,
    grace_deadline: Option<Instant>,
    /// When the leases of the rows in flight were last renewed (the start of that round).
    renewed_at: Instant,
    /// A round that claimed failed: rows may be leased to this worker that it never got.
    unsent_unknown: bool,
}

impl<'c> Worker<'c> {
    fn new(
        config: &'c Config,
        store: Store,
        shutdown: Shutdown,
        opts: RunOptions,
    ) -> Result<Self, WorkerError> {
        let wc: WorkerConfig = config.worker.clone();
        let owner = wc.worker_id.clone().unwrap_or_else(default_worker_id);
        // Each sink builds its own HTTP client from its own timeouts (and again on reload).
        let slots = slots::build_slots(config)?;
        let known = slots.iter().map(|s| s.name.clone()).collect();
        let now = Instant::now();
        Ok(Worker {
            config,
            wake: Wake::new(store.clone(), wc.wake_interval),
            store,
            owner,
            lease_ms: clock::ms(wc.lease),
            wc,
            mode: opts.mode,
            slots,
            link: LinkHealth::new(LinkConfig::default()),
            known,
            paused: None,
            renewed_at: now,
            unsent_unknown: false,
            counters: Counters::default(),
            metrics: opts.metrics,
            heartbeat: opts.heartbeat,
            reload: opts.reload,
            shutdown,
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            pending: Vec::new(),
            pending_slots: Vec::new(),
            health: DbHealth::default(),
            next_db_try: now,
            next_housekeeping: now,
            next_progress: now + Duration::from_secs(60),
            next_idle_check: now,
            last_progress: Summary::default(),
            grace_deadline: None,
        })
    }

    /// The loop, as a list of steps.
    async fn run(&mut self) {
        loop {
            let mut round = self.begin_round();
            // Verdicts first: a stall longer than the lease must not cost the verdicts
            // this worker holds (housekeeping never takes its own rows either).
            let plan = self.plan_claims(&mut round);
            if let Some(claimed) = self.write_and_claim(&plan, &mut round).await {
                self.spawn_deliveries(&plan, claimed);
            }
            self.housekeeping(&round).await;
            if self.maybe_stop(&round).await {
                break;
            }
            self.log_progress();
            let woken = self.wait(&round).await;
            self.on_woken(woken).await;
        }
    }

    /// Tells the admin listener and the watchdog that the loop goes round.
    fn begin_round(&mut self) -> Round {
        self.metrics.tick();
        self.publish_health();
        if let Some(beat) = &self.heartbeat {
            beat();
        }
        Round {
            stopping: self.grace_deadline.is_some(),
            db_ready: Instant::now() >= self.next_db_try,
            more_waiting: false,
            again: false,
        }
    }

    /// Every `poll_interval`: reclaim expired leases (never this worker's own rows),
    /// dead-letter rows of unknown sinks, re-read the pauses.
    async fn housekeeping(&mut self, round: &Round) {
        if round.stopping || !round.db_ready || Instant::now() < self.next_housekeeping {
            return;
        }
        // The pauses first, on their own: claims wait for them, and must not wait for the
        // rest of housekeeping to succeed too.
        let r = match self.call(self.store.paused_sinks()).await {
            Ok(paused) => {
                self.paused = Some(paused);
                housekeeping::probe_on_request(&self.store, &mut self.slots, self.wc.store_timeout)
                    .await;
                let held = self.held_ids();
                // Rows of sinks this config lacks are held until the longest max_age here.
                let unknown_hold = self
                    .slots
                    .iter()
                    .map(|s| s.policy.max_age)
                    .max()
                    .unwrap_or_default();
                let pass = housekeeping::housekeep(
                    &self.store,
                    (&self.known, unknown_hold),
                    (&self.owner, &held),
                    now_ms(),
                    &self.counters,
                );
                self.call(pass).await
            }
            Err(e) => Err(e),
        };
        match r {
            // Not proof the database is healthy again: these statements rarely write, and a
            // full disk still answers reads. Only a cycle that records verdicts or claims
            // rows clears a failure, so the log does not flap.
            Ok(()) => {
                if self.pending.is_empty() {
                    // Nothing waits to be written: the database serves this worker again.
                    self.metrics.round_ok();
                }
                self.next_housekeeping = Instant::now() + self.wc.poll_interval;
            }
            Err(e) => {
                self.store_failed("housekeeping", &e);
                self.next_db_try = Instant::now() + self.health.backoff();
            }
        }
    }

    /// Which sinks to claim for this round, and how many rows each.
    fn plan_claims(&mut self, round: &mut Round) -> ClaimPlan {
        if round.stopping || !round.db_ready {
            return ClaimPlan::default();
        }
        let Some(paused) = &self.paused else {
            // No claim before the first housekeeping has read the pauses.
            round.more_waiting = true;
            round.again = true;
            return ClaimPlan::default();
        };
        let plan = slots::plan_claims(
            &mut self.slots,
            &self.link,
            paused,
            &self.pending_slots,
            self.wc.batch_size,
            now_ms(),
            Instant::now(),
        );
        round.more_waiting |= plan.more_waiting;
        plan
    }

    /// The store cycle: writes the pending verdicts and claims the planned rows, in one
    /// transaction. Returns the claimed rows, per planned claim, when it committed.
    async fn write_and_claim(
        &mut self,
        plan: &ClaimPlan,
        round: &mut Round,
    ) -> Option<Vec<Vec<ClaimedRow>>> {
        let renew_due = !self.in_flight.is_empty() && Instant::now() >= self.renew_at();
        if !round.db_ready || (self.pending.is_empty() && plan.is_empty() && !renew_due) {
            return None;
        }
        if self.unsent_unknown && !self.release_unsent().await {
            round.db_ready = false;
            return None;
        }
        // The leases of the rows still being delivered are renewed a quarter of a lease
        // after the last renewal (rows claimed since have later leases): renewing them in
        // every round would rewrite the whole window once per round.
        let renew: Vec<i64> = if renew_due {
            self.in_flight.values().map(|f| f.row_id).collect()
        } else {
            Vec::new()
        };
        let (started, now) = (Instant::now(), now_ms());
        let cycle = self.store.cycle(
            &self.owner,
            &self.pending,
            &plan.claims,
            &renew,
            now,
            now + self.lease_ms,
        );
        let result = self.call(cycle).await;
        match result {
            Ok((lost, claimed)) => {
                self.metrics.round_ok();
                // Only a round that wrote proves the database writable again (a full disk
                // still answers a claim that finds nothing).
                if !self.pending.is_empty() || claimed.iter().any(|rows| !rows.is_empty()) {
                    self.health.ok();
                }
                if lost > 0 {
                    tracing::warn!(rows = lost, "verdicts for rows whose lease had expired were not applied; those rows are being delivered again elsewhere");
                }
                self.committed();
                // The lease clock of this round's claims and renewals started before the
                // transaction: a slow commit brings the next renewal forward.
                if renew_due || self.in_flight.is_empty() {
                    self.renewed_at = started;
                }
                for (rows, (_, limit)) in claimed.iter().zip(&plan.claims) {
                    if rows.len() as u32 == *limit {
                        round.more_waiting = true;
                        round.again = true;
                    }
                }
                Some(claimed)
            }
            Err(e) => {
                self.store_failed("recording verdicts and claiming", &e);
                self.next_db_try = Instant::now() + self.health.backoff();
                // The claims may have committed unseen (a lost COMMIT acknowledgement):
                // give back what this worker holds but never sent, before claiming again.
                self.unsent_unknown |= !plan.is_empty();
                // No housekeeping on a failing database this round.
                round.db_ready = false;
                None
            }
        }
    }

    /// A store call of the loop failed: logged once per outage (see [`DbHealth`]), and
    /// reported to `/healthz`, which fails once the failures last `admin.stall_after`.
    fn store_failed(&mut self, what: &str, e: &CallError) {
        self.health.failed(what, e);
        self.metrics.round_failed(&format!("{what}: {e}"));
    }

    /// Runs one store call of the loop, bounded by `worker.store_timeout`: a hung query must
    /// not stall the loop until the watchdog kills the process.
    async fn call<T, E: Into<CallError>>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.wc.store_timeout, fut).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(CallError::TimedOut(self.wc.store_timeout)),
        }
    }

    /// After a failed round that claimed: releases the rows leased to this worker that it
    /// does not hold, not in doubt (they were never sent). Returns whether it succeeded.
    async fn release_unsent(&mut self) -> bool {
        let held = self.held_ids();
        let release = self.store.release_unsent(&self.owner, &held, now_ms());
        match self.call(release).await {
            Ok(n) => {
                if n > 0 {
                    tracing::warn!(
                        rows = n,
                        "released rows a failed round had claimed but never sent"
                    );
                }
                self.unsent_unknown = false;
                true
            }
            Err(e) => {
                self.store_failed("releasing unsent rows", &e);
                self.next_db_try = Instant::now() + self.health.backoff();
                false
            }
        }
    }

    /// When the leases of the rows in flight are next renewed: a quarter of the lease after
    /// the last renewal, so two renewals can fail before a lease runs out.
    fn renew_at(&self) -> Instant {
        self.renewed_at + self.wc.lease / 4
    }

    /// The rows this worker holds: being delivered, or with a verdict not yet written.
    fn held_ids(&self) -> Vec<i64> {
        let delivering = self.in_flight.values().map(|f| f.row_id);
        delivering
            .chain(self.pending.iter().map(|c| c.id))
            .collect()
    }

    /// The pending verdicts are committed: free their slots and count them.
    fn committed(&mut self) {
        for (slot, c) in self.pending_slots.drain(..).zip(self.pending.drain(..)) {
            self.slots[slot].in_flight -= 1;
            self.counters.account(&self.metrics, &c);
        }
    }

    /// One delivery task per claimed row.
    fn spawn_deliveries(&mut self, plan: &ClaimPlan, claimed: Vec<Vec<ClaimedRow>>) {
        for ((i, probe), rows) in plan.slots.iter().zip(&plan.probes).zip(claimed) {
            self.counters
                .claimed
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            let slot = &mut self.slots[*i];
            if let Some(first) = rows.first() {
                if probe.sink {
                    slot.health.probe_started(first.id);
                }
                if probe.link {
                    self.link.probe_started(&slot.name);
                }
            }
            for row in rows {
                slot.in_flight += 1;
                let (sink, name) = (slot.sink.clone(), slot.name.clone());
                let (row_id, attempt) = (row.id, row.attempts);
                let handle = self
                    .tasks
                    .spawn(async move { decide::deliver(row, name, &sink).await });
                let task = InFlight {
                    row_id,
                    slot: *i,
                    attempt,
                };
                self.in_flight.insert(handle.id(), task);
            }
        }
        self.wake.mark_seen();
    }

    /// Whether the loop ends: shutdown with nothing left in flight, or (until-idle runs) an
    /// outbox with nothing left to do.
    async fn maybe_stop(&mut self, round: &Round) -> bool {
        if round.stopping && self.tasks.is_empty() {
            if self.pending.is_empty() {
                return true;
            }
            if self.health.failing_longer_than(Duration::from_secs(10)) {
                tracing::error!(rows = self.pending.len(), "giving up recording verdicts at shutdown; these rows will be delivered again after their lease expires");
                return true;
            }
        }
        if self.mode == RunMode::UntilIdle
            && !round.stopping
            && self.tasks.is_empty()
            && self.pending.is_empty()
            && !round.more_waiting
            && !self.health.is_failing()
            && Instant::now() >= self.next_idle_check
        {
            return self.outbox_is_empty().await;
        }
        false
    }

    /// Whether no row of a configured, unpaused, unheld sink is pending or in flight.
    async fn outbox_is_empty(&mut self) -> bool {
        // Ask at most every 50ms.
        self.next_idle_check = Instant::now() + Duration::from_millis(50);
        // A sink held until an operator acts (its platform's hold; credentials, clock or URL
        // refused) has nothing an idle run can finish; a Retry-After, a streak or the link
        // resume by themselves.
        let held: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| {
                s.held.is_some()
                    || matches!(s.health.state(), crate::health::State::Held(h) if h.kind.clears_on_reload())
            })
            .map(|s| s.name.as_str())
            .collect();
        match self.call(self.store.open_rows()).await {
            Ok(rows) => {
                let open: i64 = rows
                    .iter()
                    .filter(|(sink, _)| {
                        self.known.contains(sink)
                            && !self.paused.iter().flatten().any(|p| p == sink)
                            && !held.contains(&sink.as_str())
                    })
                    .map(|(_, n)| n)
                    .sum();
                if open == 0 {
                    tracing::info!("outbox is empty: every row is final");
                    return true;
                }
            }
            Err(e) => self.store_failed("status", &e),
        }
        false
    }

    /// Once a minute, what changed since the last progress line.
    fn log_progress(&mut self) {
        if Instant::now() < self.next_progress {
            return;
        }
        let s = self.counters.summary();
        let last = self.last_progress;
        if s != last {
            tracing::info!(
                delivered = s.delivered - last.delivered,
                hints = s.hints - last.hints,
                retried = s.retried - last.retried,
                dead = s.dead - last.dead,
                in_flight = self.tasks.len(),
                "progress in the last minute"
            );
            self.last_progress = s;
        }
        self.next_progress = Instant::now() + Duration::from_secs(60);
    }

    /// Waits for the next reason to go round: shutdown, finished deliveries, the end of the
    /// shutdown grace, a reload, another writer, or a timer.
    async fn wait(&mut self, round: &Round) -> Woken {
        let stopping = round.stopping;
        let idle_until = if self.health.is_failing() {
            self.next_db_try
        } else if (round.again && !stopping) || !self.pending.is_empty() {
            // Work is waiting: come back as soon as something finishes.
            Instant::now() + Duration::from_millis(1)
        } else {
            let mut next = self.next_housekeeping;
            if !self.in_flight.is_empty() && !stopping {
                next = next.min(self.renew_at());
            }
            if let Some(probe) = slots::next_probe(&self.slots, &self.link, Instant::now()) {
                next = next.min(probe);
            }
            next.max(Instant::now() + Duration::from_millis(1))
        };
        let grace = self.grace_deadline;
        let has_tasks = !self.tasks.is_empty();
        let reload = self.reload.as_mut();
        let can_reload = reload.is_some() && !stopping;
        tokio::select! {
            biased;
            _ = self.shutdown.recv(), if !stopping => Woken::Shutdown,
            Some(joined) = self.tasks.join_next_with_id() => Woken::Finished(joined),
            _ = async { tokio::time::sleep_until(grace.expect("guarded")).await }, if stopping && has_tasks => Woken::GraceOver,
            Some(new_config) = async { reload.expect("guarded").recv().await }, if can_reload => Woken::Reload(new_config),
            _ = self.wake.changed_or(idle_until), if !stopping => Woken::Timer,
            _ = tokio::time::sleep_until(idle_until), if stopping => Woken::Timer,
        }
    }

    async fn on_woken(&mut self, woken: Woken) {
        match woken {
            Woken::Shutdown => {
                tracing::info!(in_flight = self.tasks.len(), grace = %humantime::format_duration(self.wc.shutdown_grace), "shutdown requested: no new claims, finishing in-flight deliveries");
                self.grace_deadline = Some(Instant::now() + self.wc.shutdown_grace);
            }
            Woken::Finished(joined) => {
                self.finished(joined);
                while let Some(j) = self.tasks.try_join_next_with_id() {
                    self.finished(j);
                }
            }
            Woken::GraceOver => {
                tracing::warn!(rows = self.tasks.len(), "shutdown grace over: abandoning in-flight deliveries; their rows are released for another attempt");
                self.tasks.abort_all();
                while let Some(j) = self.tasks.join_next_with_id().await {
                    self.finished(j);
                }
            }
            Woken::Reload(new_config) => self.reload(&new_config),
            Woken::Timer => {}
        }
    }

    /// A delivery task joined: its verdict waits to be written with the next round.
    fn finished(&mut self, joined: Joined) {
        let mut transitions = Vec::new();
        let done = finish(
            joined,
            &mut self.in_flight,
            &mut self.slots,
            &mut self.link,
            &mut transitions,
        );
        if let Some((slot, c)) = done {
            slots::report_skew(&mut self.slots[slot]);
            self.pending_slots.push(slot);
            self.pending.push(c);
        }
        self.transitions(transitions);
    }

    /// Logs each change of a sink's (or the link's) health once, at warn.
    fn transitions(&mut self, transitions: Vec<Transition>) {
        for t in transitions {
            if t.subject == "link" && t.to == "active" {
                let now = Instant::now();
                for slot in &mut self.slots {
                    slot.health.link_restored(now);
                    // After an outage the platforms see the initial window again.
                    slot.window.restart();
                }
            }
            let kind = t.kind.map(|k| k.as_str()).unwrap_or("");
            if let (Some(k), "active") = (t.kind, t.from) {
                self.metrics.count_hold(&t.subject, k.as_str());
            }
            tracing::warn!(sink = %t.subject, from = t.from, to = t.to, kind, "{t}");
        }
    }

    /// Hands the sinks' and the link's health to the admin listener (`/status.json`,
    /// `/healthz`, `/metrics`).
    fn publish_health(&self) {
        let (at, now) = (Instant::now(), now_ms());
        let view = |snap: crate::health::Snapshot, skew: Option<i64>, window: Option<&Window>| {
            let epoch = |i: Instant| {
                let ahead = clock::ms(i.saturating_duration_since(at));
                let behind = clock::ms(at.saturating_duration_since(i));
                now + ahead - behind
            };
            HealthView {
                state: snap.state,
                kind: snap.kind.map(|k| k.as_str()),
                reason: snap.reason,
                since_ms: snap.since.map(epoch),
                next_probe_ms: snap.next_probe.map(epoch),
                clock_skew_ms: skew,
                holds: snap.holds,
                window: window.map(Window::limit),
                ceiling: window.map(Window::ceiling),
            }
        };
        let sinks = self
            .slots
            .iter()
            .filter(|s| s.concurrency > 0)
            .map(|s| {
                let v = view(s.health.snapshot(), s.sink.clock_skew_ms(), Some(&s.window));
                (s.name.clone(), v)
            })
            .collect();
        self.metrics.set_health(HealthBoard {
            sinks,
            link: Some(view(self.link.snapshot(), None, None)),
        });
    }

    /// Applies a new, already validated config (SIGHUP).
    fn reload(&mut self, new_config: &Config) {
        match slots::build_slots(new_config) {
            Ok(fresh) => {
                if new_config.database_url != self.config.database_url {
                    tracing::warn!("database_url changed: that takes a restart; the rest of the new config is applied");
                }
                let resumed = slots::reload_slots(&mut self.slots, fresh, Instant::now());
                self.transitions(resumed);
                self.known = new_config.sinks.keys().cloned().collect();
                self.link.retain_sinks(|s| new_config.sinks.contains_key(s));
                self.wc = new_config.worker.clone();
                self.lease_ms = clock::ms(self.wc.lease);
                self.next_housekeeping = Instant::now();
                self.metrics.register_sinks(&self.known);
                tracing::info!(sinks = %self.known.join(","), "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "reloaded configuration rejected; keeping the previous one")
            }
        }
    }
}

#[cfg(test)]
mod tests;
