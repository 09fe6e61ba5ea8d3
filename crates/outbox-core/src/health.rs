//! Sink health: a failure that belongs to the platform or the link holds the sink, not the
//! backlog.
//!
//! Pure state machines, no I/O: time is passed in ([`tokio::time::Instant`], so the worker's
//! tests can run on paused time). The worker feeds each delivery's result with its
//! [`FailureScope`] into the sink's [`SinkHealth`] and asks it before claiming.
//!
//! - **Active**: claims at full speed. A sink-scoped failure (credentials, clock window, wrong
//!   URL, 5xx/timeouts) starts a streak; below `hold_after` (default 5) the row is retried
//!   with its attempt counted ([`RowEffect::Retry`]); a row that fails that way again after
//!   the sink has succeeded in between is the row's own problem ([`RowEffect::AsClassified`]).
//! - **Held**: claims nothing but one probe row at a time, when the probe is due; the probe
//!   interval grows exponentially (default 5 s up to 5 min). The first success resumes full
//!   speed. The row that caused the hold, and every row failing while held, is released with
//!   its attempt count unchanged ([`RowEffect::Release`]).
//! - A `Retry-After` holds the sink at once, until then.
//! - [`SinkHealth::resume_on_reload`] (SIGHUP, perhaps with a new secret) resumes auth, clock
//!   and configuration holds at once.
//!
//! [`LinkHealth`] sees the link: connect failures (nothing sent) on every busy sink at once
//! hold the link, probed the same way.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Whose fault a failed delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureScope {
    /// This row's content (a 400 naming a field).
    Row,
    /// The platform or this sink's settings (credentials, signature, clock window, 404/3xx on
    /// the URL, `Retry-After`, a streak of 5xx/timeouts).
    Sink,
    /// The network: connect/DNS/TLS failures before anything was sent.
    Link,
}

/// Why a sink-scoped failure is the sink's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkCause {
    /// Credentials or signature refused (4pyun 401, epeis credential code, lbbtech token).
    Auth,
    /// Timestamp outside the platform's window, explained by clock skew.
    Clock,
    /// The URL is wrong (404, 3xx): only an operator can fix it.
    Config,
    /// 5xx, timeouts, garbage: the platform is unwell.
    Unavailable,
}

/// Why a sink is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldKind {
    Auth,
    Clock,
    Config,
    RetryAfter,
    Streak,
    Link,
}

impl HoldKind {
    pub const ALL: [HoldKind; 6] = [
        HoldKind::Auth,
        HoldKind::Clock,
        HoldKind::Config,
        HoldKind::RetryAfter,
        HoldKind::Streak,
        HoldKind::Link,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Auth => "auth",
            HoldKind::Clock => "clock",
            HoldKind::Config => "config",
            HoldKind::RetryAfter => "retry_after",
            HoldKind::Streak => "streak",
            HoldKind::Link => "link",
        }
    }

    /// Holds a configuration reload may have fixed (a new secret, a new URL, a fixed clock).
    pub fn clears_on_reload(self) -> bool {
        matches!(self, HoldKind::Auth | HoldKind::Clock | HoldKind::Config)
    }
}

impl From<SinkCause> for HoldKind {
    fn from(cause: SinkCause) -> Self {
        match cause {
            SinkCause::Auth => HoldKind::Auth,
            SinkCause::Clock => HoldKind::Clock,
            SinkCause::Config => HoldKind::Config,
            SinkCause::Unavailable => HoldKind::Streak,
        }
    }
}

impl fmt::Display for HoldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason of a clock hold: "local clock is N min off the platform's". `skew_ms` is the
/// platform's clock minus ours.
pub fn clock_reason(skew_ms: i64) -> String {
    let minutes = (skew_ms.unsigned_abs() + 30_000) / 60_000;
    let side = if skew_ms > 0 { "behind" } else { "ahead of" };
    format!("local clock is {minutes} min off the platform's ({side} it)")
}

/// One delivery's result, as health sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// The platform accepted the request (delivered, or a final business answer).
    Success,
    /// The row's own problem; says nothing about the sink.
    RowFailure,
    /// The sink's problem; `reason` is shown to operators (no secrets).
    SinkFailure { cause: SinkCause, reason: String },
    /// Nothing was sent: connect refused, DNS, TLS handshake.
    LinkFailure { reason: String },
    /// The platform asked to be left alone for `wait` (already capped by
    /// `RetryPolicy::retry_after_wait`).
    RetryAfter { wait: Duration, reason: String },
}

impl Observed {
    /// The failure scope, `None` for a success.
    pub fn scope(&self) -> Option<FailureScope> {
        match self {
            Observed::Success => None,
            Observed::RowFailure => Some(FailureScope::Row),
            Observed::SinkFailure { .. } | Observed::RetryAfter { .. } => Some(FailureScope::Sink),
            Observed::LinkFailure { .. } => Some(FailureScope::Link),
        }
    }
}

/// Per-sink thresholds (`[sinks.NAME.health]` once wired).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Consecutive sink-scoped failures before the sink is held. A single 401 among successes
    /// is a row's problem; this many in a row are the sink's.
    pub hold_after: u32,
    /// First probe interval of a held sink; doubles after each failed probe.
    #[serde(with = "humantime_serde")]
    pub probe_initial: Duration,
    /// The probe interval grows no further than this.
    #[serde(with = "humantime_serde")]
    pub probe_max: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            hold_after: 5,
            probe_initial: Duration::from_secs(5),
            probe_max: Duration::from_secs(300),
        }
    }
}

/// A hold in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub kind: HoldKind,
    pub reason: String,
    pub since: Instant,
    /// When the next probe row may be claimed.
    pub next_probe: Instant,
    /// The interval that set `next_probe` (doubles after each failed probe).
    pub probe_interval: Duration,
}

/// A sink's (or the link's) state.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Active,
    Held(Hold),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Active => "active",
            State::Held(_) => "held",
        }
    }
}

/// What the sink may claim now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Claim as usual.
    Full,
    /// Claim exactly one row, then call `probe_started` with it.
    Probe,
    /// Claim nothing; look again at `Some(instant)`, or when the probe in flight (`None`)
    /// reports.
    Wait(Option<Instant>),
}

impl Permit {
    /// How many rows may be claimed now, out of `free` slots.
    pub fn rows(self, free: usize) -> usize {
        match self {
            Permit::Full => free,
            Permit::Probe => free.min(1),
            Permit::Wait(_) => 0,
        }
    }
}

/// What the worker does with the row whose result was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowEffect {
    /// Apply the verdict as the classifier gave it (attempt counted).
    AsClassified,
    /// Count the attempt and retry by the retry policy, even if the verdict was permanent:
    /// whose fault it is is not known yet.
    Retry,
    /// Nothing was sent: retry without counting the attempt (`RetryPolicy::decide_not_sent`).
    RetryNotSent,
    /// The sink is held: put the row back as it was, attempt count unchanged, no dead letter.
    Release,
}

/// A change of state, to log once (warn).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The sink's name, or `"link"`.
    pub subject: String,
    pub from: &'static str,
    pub to: &'static str,
    /// The hold's kind when the new state is held.
    pub kind: Option<HoldKind>,
    pub reason: String,
    pub at: Instant,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(
                f,
                "{} {} ({kind}): {}; probing one row at a time",
                self.subject, self.to, self.reason
            ),
            None => write!(f, "{} {} again: {}", self.subject, self.to, self.reason),
        }
    }
}

/// The result of recording one delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub row: RowEffect,
    pub transition: Option<Transition>,
}

/// A sink's health for `status` and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `"active"` or `"held"`.
    pub state: &'static str,
    pub kind: Option<HoldKind>,
    pub reason: Option<String>,
    pub since: Option<Instant>,
    pub next_probe: Option<Instant>,
    pub probe_interval: Option<Duration>,
    /// Sink-scoped failures in a row while active.
    pub consecutive_failures: u32,
    /// Holds since start, for a counter.
    pub holds: u64,
}

/// Rows remembered as "failed sink-scoped while the sink was active"; older ones are
/// forgotten (they are then given the benefit of the doubt once more).
const MAX_SUSPECTS: usize = 256;

/// The health of one sink.
#[derive(Debug, Clone)]
pub struct SinkHealth {
    name: String,
    config: HealthConfig,
    state: State,
    streak: u32,
    /// Successes so far, to tell "failed again after the sink worked" from a streak.
    successes: u64,
    /// Rows that failed sink-scoped while active, with `successes` at that time.
    suspects: VecDeque<(i64, u64)>,
    /// The probe row in flight.
    probe: Option<i64>,
    holds: u64,
    /// The latest operator's probe request (`outboxd retry-now`) seen, epoch ms.
    probe_request_seen: Option<i64>,
}

impl SinkHealth {
    pub fn new(name: impl Into<String>, config: HealthConfig) -> Self {
        SinkHealth {
            name: name.into(),
            config,
            state: State::Active,
            streak: 0,
            successes: 0,
            suspects: VecDeque::new(),
            probe: None,
            holds: 0,
            probe_request_seen: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// New thresholds (a reload); the state is kept.
    pub fn set_config(&mut self, config: HealthConfig) {
        self.config = config;
    }

    /// What the sink may claim at `now`.
    pub fn permit(&self, now: Instant) -> Permit {
        match &self.state {
            State::Active => Permit::Full,
            State::Held(_) if self.probe.is_some() => Permit::Wait(None),
            State::Held(hold) if now >= hold.next_probe => Permit::Probe,
            State::Held(hold) => Permit::Wait(Some(hold.next_probe)),
        }
    }

    /// The worker claimed `row` as the probe (after [`Permit::Probe`]).
    pub fn probe_started(&mut self, row: i64) {
        if matches!(self.state, State::Held(_)) {
            self.probe = Some(row);
        }
    }

    /// The probe row left without a result (shutdown, released): allow another probe.
    pub fn probe_abandoned(&mut self, row: i64) {
        if self.probe == Some(row) {
            self.probe = None;
        }
    }

    /// Records the result of delivering `row` and says what to do with the row.
    pub fn record(&mut self, row: i64, observed: &Observed, now: Instant) -> Effect {
        let was_probe = self.probe == Some(row);
        if was_probe {
            self.probe = None;
        }
        match observed {
            Observed::Success => {
                self.successes += 1;
                self.streak = 0;
                self.forget(row);
                let transition = self.resume(now, "a delivery succeeded");
                effect(RowEffect::AsClassified, transition)
            }
            // Neutral: a 400 may be checked before the signature, so it proves nothing.
            Observed::RowFailure => effect(RowEffect::AsClassified, None),
            Observed::RetryAfter { wait, reason } => {
                let until = now + *wait;
                let transition = match &mut self.state {
                    State::Held(hold) => {
                        hold.next_probe = hold.next_probe.max(until);
                        retag(&self.name, hold, HoldKind::RetryAfter, reason, now)
                    }
                    State::Active => {
                        let t = self.hold(HoldKind::RetryAfter, reason, now);
                        if let State::Held(hold) = &mut self.state {
                            hold.next_probe = until;
                        }
                        Some(t)
                    }
                };
                effect(RowEffect::Release, transition)
            }
            Observed::SinkFailure { cause, reason } => {
                self.failed(row, (*cause).into(), reason, was_probe, now)
            }
            Observed::LinkFailure { reason } => {
                self.failed(row, HoldKind::Link, reason, was_probe, now)
            }
        }
    }

    fn failed(
        &mut self,
        row: i64,
        kind: HoldKind,
        reason: &str,
        was_probe: bool,
        now: Instant,
    ) -> Effect {
        if let State::Held(hold) = &mut self.state {
            if was_probe {
                hold.probe_interval = (hold.probe_interval * 2).min(self.config.probe_max);
                hold.next_probe = now + hold.probe_interval;
            }
            let transition = retag(&self.name, hold, kind, reason, now);
            return effect(RowEffect::Release, transition);
        }
        self.streak += 1;
        if self.streak >= self.config.hold_after.max(1) {
            let transition = self.hold(kind, reason, now);
            return effect(RowEffect::Release, Some(transition));
        }
        if kind == HoldKind::Link {
            return effect(RowEffect::RetryNotSent, None);
        }
        // Failed before, and the sink has worked since: this row's own problem.
        let before = self.suspects.iter().position(|(r, _)| *r == row);
        if let Some(i) = before {
            let (_, successes_then) = self.suspects[i];
            if self.successes > successes_then {
                self.suspects.remove(i);
                self.streak -= 1;
                return effect(RowEffect::AsClassified, None);
            }
            self.suspects.remove(i);
        }
        if self.suspects.len() >= MAX_SUSPECTS {
            self.suspects.pop_front();
        }
        self.suspects.push_back((row, self.successes));
        effect(RowEffect::Retry, None)
    }

    fn hold(&mut self, kind: HoldKind, reason: &str, now: Instant) -> Transition {
        let interval = self.config.probe_initial;
        self.state = State::Held(Hold {
            kind,
            reason: reason.to_owned(),
            since: now,
            next_probe: now + interval,
            probe_interval: interval,
        });
        self.streak = 0;
        self.suspects.clear();
        self.holds += 1;
        Transition {
            subject: self.name.clone(),
            from: "active",
            to: "held",
            kind: Some(kind),
            reason: reason.to_owned(),
            at: now,
        }
    }

    fn resume(&mut self, now: Instant, why: &str) -> Option<Transition> {
        let State::Held(hold) = &self.state else {
            return None;
        };
        let held_for = now.saturating_duration_since(hold.since);
        let reason = format!(
            "{why} after {} held ({})",
            humantime::format_duration(Duration::from_secs(held_for.as_secs())),
            hold.kind
        );
        self.state = State::Active;
        self.streak = 0;
        self.probe = None;
        Some(Transition {
            subject: self.name.clone(),
            from: "held",
            to: "active",
            kind: None,
            reason,
            at: now,
        })
    }

    fn forget(&mut self, row: i64) {
        self.suspects.retain(|(r, _)| *r != row);
    }

    /// A configuration reload (SIGHUP, perhaps with a new secret or URL): auth, clock and
    /// configuration holds resume at once; other holds are kept.
    pub fn resume_on_reload(&mut self, now: Instant) -> Option<Transition> {
        match &self.state {
            State::Held(hold) if hold.kind.clears_on_reload() => {
                self.resume(now, "configuration reloaded")
            }
            _ => None,
        }
    }

    /// An operator asked for a probe (`outboxd retry-now`, at `requested_at`, epoch ms):
    /// a held sink probes at once, its interval back to the first. Each request counts
    /// once. Returns whether it made a held sink probe.
    pub fn probe_requested(&mut self, requested_at: i64, now: Instant) -> bool {
        if self
            .probe_request_seen
            .is_some_and(|seen| seen >= requested_at)
        {
            return false;
        }
        self.probe_request_seen = Some(requested_at);
        match &mut self.state {
            State::Held(hold) => {
                hold.next_probe = now;
                hold.probe_interval = self.config.probe_initial;
                true
            }
            State::Active => false,
        }
    }

    /// The link is back: a sink held for link failures probes at once.
    pub fn link_restored(&mut self, now: Instant) {
        if let State::Held(hold) = &mut self.state {
            if hold.kind == HoldKind::Link {
                hold.next_probe = now;
                hold.probe_interval = self.config.probe_initial;
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let hold = match &self.state {
            State::Held(hold) => Some(hold),
            State::Active => None,
        };
        Snapshot {
            state: self.state.name(),
            kind: hold.map(|h| h.kind),
            reason: hold.map(|h| h.reason.clone()),
            since: hold.map(|h| h.since),
            next_probe: hold.map(|h| h.next_probe),
            probe_interval: hold.map(|h| h.probe_interval),
            consecutive_failures: self.streak,
            holds: self.holds,
        }
    }
}

fn effect(row: RowEffect, transition: Option<Transition>) -> Effect {
    Effect { row, transition }
}

/// Updates a hold's kind and reason; a change of kind is a transition (held -> held).
fn retag(
    subject: &str,
    hold: &mut Hold,
    kind: HoldKind,
    reason: &str,
    now: Instant,
) -> Option<Transition> {
    if hold.kind == kind {
        return None;
    }
    hold.kind = kind;
    hold.reason = reason.to_owned();
    Some(Transition {
        subject: subject.to_owned(),
        from: "held",
        to: "held",
        kind: Some(kind),
        reason: reason.to_owned(),
        at: now,
    })
}

/// Thresholds of the link tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Failures count as "at once" when each busy sink's latest one is this recent.
    pub window: Duration,
    /// At least this many sinks must be failing: with one sink, its own hold says enough.
    pub min_sinks: usize,
    pub probe_initial: Duration,
    pub probe_max: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            window: Duration::from_secs(30),
            min_sinks: 2,
            probe_initial: Duration::from_secs(5),
            probe_max: Duration::from_secs(300),
        }
    }
}

/// The link's health: connect failures (nothing sent) on every busy sink at once hold the
/// link; one probe at a time (on any sink) checks it; the first request that reaches a
/// platform releases it.
#[derive(Debug, Clone)]
pub struct LinkHealth {
    config: LinkConfig,
    /// Per sink: its latest observation (`true` = could not connect) and when.
    latest: HashMap<String, (bool, Instant)>,
    state: State,
    /// The sink whose probe is in flight.
    probe: Option<String>,
    holds: u64,
}

impl LinkHealth {
    pub fn new(config: LinkConfig) -> Self {
        LinkHealth {
            config,
            latest: HashMap::new(),
            state: State::Active,
            probe: None,
            holds: 0,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Forgets sinks no longer configured (a reload).
    pub fn retain_sinks(&mut self, keep: impl Fn(&str) -> bool) {
        self.latest.retain(|name, _| keep(name));
    }

    /// What any sink may claim at `now` as far as the link is concerned.
    pub fn permit(&self, now: Instant) -> Permit {
        match &self.state {
            State::Active => Permit::Full,
            State::Held(_) if self.probe.is_some() => Permit::Wait(None),
            State::Held(hold) if now >= hold.next_probe => Permit::Probe,
            State::Held(hold) => Permit::Wait(Some(hold.next_probe)),
        }
    }

    /// A probe was claimed on `sink`.
    pub fn probe_started(&mut self, sink: &str) {
        if matches!(self.state, State::Held(_)) {
            self.probe = Some(sink.to_owned());
        }
    }

    /// The probe left without a result.
    pub fn probe_abandoned(&mut self, sink: &str) {
        if self.probe.as_deref() == Some(sink) {
            self.probe = None;
        }
    }

    /// A request on `sink` reached the platform (`connected`, whatever it answered) or
    /// could not connect.
    pub fn observe(&mut self, sink: &str, connected: bool, now: Instant) -> Option<Transition> {
        self.latest.insert(sink.to_owned(), (!connected, now));
        let was_probe = self.probe.as_deref() == Some(sink);
        if was_probe {
            self.probe = None;
        }
        if let State::Held(hold) = &mut self.state {
            if connected {
                let held_for = now.saturating_duration_since(hold.since);
                let reason = format!(
                    "{sink} reached its platform after {} down",
                    humantime::format_duration(Duration::from_secs(held_for.as_secs()))
                );
                self.state = State::Active;
                self.probe = None;
                return Some(Transition {
                    subject: "link".into(),
                    from: "held",
                    to: "active",
                    kind: None,
                    reason,
                    at: now,
                });
            }
            if was_probe {
                hold.probe_interval = (hold.probe_interval * 2).min(self.config.probe_max);
                hold.next_probe = now + hold.probe_interval;
            }
            return None;
        }
        if connected {
            return None;
        }
        let recent: Vec<bool> = self
            .latest
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= self.config.window)
            .map(|(failed, _)| *failed)
            .collect();
        let all_failing = recent.len() >= self.config.min_sinks.max(1) && recent.iter().all(|f| *f);
        if !all_failing {
            return None;
        }
        let reason = format!("{} sinks could not connect at once", recent.len());
        self.state = State::Held(Hold {
            kind: HoldKind::Link,
            reason: reason.clone(),
            since: now,
            next_probe: now + self.config.probe_initial,
            probe_interval: self.config.probe_initial,
        });
        self.holds += 1;
        Some(Transition {
            subject: "link".into(),
            from: "active",
            to: "held",
            kind: Some(HoldKind::Link),
            reason,
            at: now,
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        let hold = match &self.state {
            State::Held(hold) => Some(hold),
            State::Active => None,
        };
        Snapshot {
            state: self.state.name(),
            kind: hold.map(|h| h.kind),
            reason: hold.map(|h| h.reason.clone()),
            since: hold.map(|h| h.since),
            next_probe: hold.map(|h| h.next_probe),
            probe_interval: hold.map(|h| h.probe_interval),
            consecutive_failures: 0,
            holds: self.holds,
        }
    }
}

#[cfg(test)]
mod tests;
