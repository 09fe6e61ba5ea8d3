//! From a delivery's verdict to what the store does with its row: the prechecks a row
//! passes before its sink sees it, the retry decision, and the completion of a finished,
//! panicked or abandoned delivery task.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::slots::SinkSlot;
use super::MAX_PAYLOAD_BYTES;
use crate::clock::{self, now_ms};
use crate::event::ClaimedRow;
use crate::health::{clock_reason, LinkHealth, Observed, RowEffect, SinkCause, Transition};
use crate::outcome::{AttemptInfo, Blame, StepOutcome, Verdict};
use crate::retry::{Decision, RetryPolicy};
use crate::sinks::Sink;
use crate::store::{Action, Completion, DeadKind};
use crate::window::Signal;

/// A delivery task's row, remembered by task id so a panicked or aborted task still names
/// its row.
pub(crate) struct InFlight {
    pub(crate) row_id: i64,
    pub(crate) slot: usize,
    pub(crate) attempt: u32,
}

/// What a delivery task returns when it joins.
pub(crate) type Joined =
    Result<(tokio::task::Id, (ClaimedRow, StepOutcome)), tokio::task::JoinError>;

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
pub(crate) fn precheck(row: &ClaimedRow, name: &str, sink: &Sink) -> Option<String> {
    // The store marks a row whose columns are not text (see store/sqlite.rs).
    if let Some(problem) = &row.defect {
        return Some(format!(
            "the row cannot be read: {problem}; fix the producer"
        ));
    }
    let expected = sink.event_types_text();
    if !sink.accepts(&row.event_type) {
        return Some(format!("sink {name} (type {}) delivers {expected} events, not {:?}: fix the producer's event_type or sink", sink.type_name(), row.event_type));
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

/// One delivery: the precheck, then the sink (run inside the delivery task).
pub(crate) async fn deliver(
    row: ClaimedRow,
    name: String,
    sink: &Sink,
) -> (ClaimedRow, StepOutcome) {
    let outcome = match precheck(&row, &name, sink) {
        Some(reason) => StepOutcome::local(Verdict::Permanent { reason }, Default::default()),
        None => sink.deliver(&row).await,
    };
    (row, outcome)
}

/// Turns a finished (or aborted, or panicked) delivery task into a completion, recording
/// what it says about the sink's and the link's health; their changes of state are pushed
/// to `transitions`.
pub(crate) fn finish(
    joined: Joined,
    in_flight: &mut HashMap<tokio::task::Id, InFlight>,
    slots: &mut [SinkSlot],
    link: &mut LinkHealth,
    transitions: &mut Vec<Transition>,
) -> Option<(usize, Completion)> {
    let id = match &joined {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    let f = in_flight.remove(&id)?;
    let slot = &mut slots[f.slot];
    let now = now_ms();
    if joined.is_err() {
        slot.health.probe_abandoned(f.row_id);
        link.probe_abandoned(&slot.name);
    }
    let completion = match joined {
        Ok((_, (row, outcome))) => {
            let at = Instant::now();
            let effect = if slot.health_config.hold_after == 0 {
                // Holds off: every failure is judged row by row, as classified.
                crate::health::Effect {
                    row: RowEffect::AsClassified,
                    transition: None,
                }
            } else {
                let observed = observed(&outcome, slot);
                slot.health.record(row.id, &observed, at)
            };
            if effect.transition.as_ref().is_some_and(|t| t.to == "held") {
                // A platform coming back from a hold sees the initial window, not the
                // ceiling.
                slot.window.restart();
            }
            transitions.extend(effect.transition);
            let rtt = Duration::from_micros(outcome.info.duration_us.max(0) as u64);
            let sent = at.checked_sub(rtt).unwrap_or(at);
            slot.window.on_reply(window_signal(&outcome), sent, at);
            if let Some(connected) = reached(&outcome) {
                transitions.extend(link.observe(&slot.name, connected, at));
            }
            verdict_completion(slot, row, outcome, effect.row, now)
        }
        Err(e) if e.is_panic() => {
            let msg = panic_message(e.into_panic());
            tracing::error!(sink = %slot.name, row = f.row_id, panic = %msg, "delivery panicked; dead-lettering the row");
            Completion {
                id: f.row_id,
                sink: slot.name.clone(),
                attempt: f.attempt,
                action: Action::Dead { kind: DeadKind::Internal, reason: format!("internal error while delivering (panic: {msg}); please report it with this row"), last_reply: None },
                info: Some(AttemptInfo { started_at: now, error: Some(format!("panic: {msg}")), ..Default::default() }),
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

/// What a step says about the platform's load, for the sink's in-flight window: an answer
/// is clean unless it blames the platform being unavailable (429, 5xx, timeouts); a step
/// that sent nothing, or failed on credentials, clock or URL (the sink's health holds it),
/// says nothing about load.
pub(crate) fn window_signal(outcome: &StepOutcome) -> Signal {
    let answered = outcome.info.http_status.is_some();
    match (&outcome.verdict, outcome.blame) {
        (
            Verdict::Retry {
                retry_after: Some(_),
                ..
            },
            _,
        ) => Signal::Congested,
        (Verdict::Delivered { .. } | Verdict::Completed { .. } | Verdict::Continue { .. }, _) => {
            if answered {
                Signal::Clean
            } else {
                Signal::Neutral
            }
        }
        (_, Blame::Sink(SinkCause::Unavailable)) => Signal::Congested,
        (_, Blame::Row) if answered => Signal::Clean,
        _ => Signal::Neutral,
    }
}

/// What a step says about its sink's health. A `Retry-After` holds the sink until then; a
/// refused timestamp names the clock skew when the platform's `Date` explains it.
pub(crate) fn observed(outcome: &StepOutcome, slot: &SinkSlot) -> Observed {
    let reason = match &outcome.verdict {
        Verdict::Delivered { .. } | Verdict::Completed { .. } | Verdict::Continue { .. } => {
            return Observed::Success
        }
        Verdict::Retry {
            retry_after: Some(wait),
            reason,
        } => {
            return Observed::RetryAfter {
                wait: slot.policy.retry_after_wait(*wait),
                reason: format!("the platform asked for a pause (Retry-After): {reason}"),
            }
        }
        Verdict::Retry { reason, .. }
        | Verdict::Permanent { reason }
        | Verdict::Ambiguous { reason } => reason.clone(),
    };
    match outcome.blame {
        Blame::Row => Observed::RowFailure,
        Blame::Link => Observed::LinkFailure { reason },
        Blame::Sink(SinkCause::Clock) => {
            let skew = slot.sink.clock_skew_ms();
            let explained =
                skew.filter(|s| s.unsigned_abs() as u128 >= slot.clock_skew_warn.as_millis());
            Observed::SinkFailure {
                cause: SinkCause::Clock,
                reason: explained.map(clock_reason).unwrap_or(reason),
            }
        }
        Blame::Sink(cause) => Observed::SinkFailure { cause, reason },
    }
}

/// Whether the step's request reached the platform (`Some(true)`), could not connect
/// (`Some(false)`), or was never tried (`None`: decided before sending).
fn reached(outcome: &StepOutcome) -> Option<bool> {
    if outcome.blame == Blame::Link {
        return Some(false);
    }
    let tried = outcome.info.http_status.is_some() || outcome.info.error.is_some();
    tried.then_some(true)
}

/// What the store does with a row, once its sink's health had its say: as classified; a
/// retry even of a permanent verdict while it is unknown whether the row or the sink is at
/// fault; an uncounted retry when nothing was sent (until `max_age`); or, for a held sink,
/// the row put back as it was (an ambiguous one stays in doubt).
pub fn decide_with_health(
    effect: RowEffect,
    verdict: &Verdict,
    row: &ClaimedRow,
    sink: &Sink,
    policy: &RetryPolicy,
    now: i64,
    unit: f64,
) -> Action {
    match effect {
        RowEffect::AsClassified => decide(verdict, row, sink, policy, now, unit),
        RowEffect::Retry => match verdict {
            Verdict::Permanent { reason } => {
                let retry = Verdict::Retry {
                    reason: reason.clone(),
                    retry_after: None,
                };
                decide(&retry, row, sink, policy, now, unit)
            }
            other => decide(other, row, sink, policy, now, unit),
        },
        RowEffect::RetryNotSent => {
            let age = Duration::from_millis(now.saturating_sub(row.created_at).max(0) as u64);
            match policy.decide_not_sent(1, age, unit) {
                // Uncounted and due again at once: the sink's streak holds it (and so
                // paces this row) after `hold_after` such failures.
                Decision::RetryAfter(_) => Action::Release { in_doubt: false },
                Decision::GiveUp(why) => Action::Dead {
                    kind: DeadKind::Expired,
                    reason: format!("{why}; last error: {}", reason_of(verdict)),
                    last_reply: None,
                },
            }
        }
        RowEffect::Release => Action::Release {
            in_doubt: matches!(verdict, Verdict::Ambiguous { .. }),
        },
    }
}

fn reason_of(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Retry { reason, .. }
        | Verdict::Permanent { reason }
        | Verdict::Ambiguous { reason } => reason,
        Verdict::Delivered { .. } => "delivered",
        Verdict::Completed { note, .. } | Verdict::Continue { note, .. } => note,
    }
}

/// The completion of a delivery that returned a verdict.
fn verdict_completion(
    slot: &SinkSlot,
    row: ClaimedRow,
    outcome: StepOutcome,
    effect: RowEffect,
    now: i64,
) -> Completion {
    let unit = rand::rng().random::<f64>();
    let mut action = decide_with_health(
        effect,
        &outcome.verdict,
        &row,
        &slot.sink,
        &slot.policy,
        now,
        unit,
    );
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
    if effect == RowEffect::RetryNotSent && matches!(action, Action::Release { .. }) {
        tracing::info!(
            sink = %slot.name, key = row.idempotency_key.as_str(), attempt = row.attempts,
            error = %reason_of(&outcome.verdict), counted = false,
            "delivery failed; will retry"
        );
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
            retry_in_ms = (next_at - now_ms()).max(0), "delivery failed; will retry"
        ),
        Action::Continue { note, .. } => tracing::debug!(sink, key, note = %note, "flow step done"),
        Action::Dead { reason, .. } => {
            tracing::warn!(sink, key, attempt = row.attempts, reason = %reason, verdict = outcome.verdict.label(), "dead-lettered")
        }
        Action::Release { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const HOUR: i64 = 3_600_000;

    fn pyun() -> (Sink, RetryPolicy) {
        std::env::set_var("OUTBOXD_TEST_DECIDE_SECRET", "s3cret");
        let config = Config::parse(
            r#"
            [retry]
            max_attempts = 3
            max_age = "1h"
            [sinks.pyun]
            type = "pyun"
            url = "http://127.0.0.1:1/gate/1.0/energy/internal/replenish"
            app_id = "op1"
            secret_env = "OUTBOXD_TEST_DECIDE_SECRET"
            "#,
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let sc = &config.sinks["pyun"];
        let sink = Sink::build("pyun", sc).unwrap();
        (sink, sc.retry_policy(&config.retry).clone())
    }

    fn row(attempts: u32, created_at: i64) -> ClaimedRow {
        ClaimedRow {
            id: 1,
            sink: "pyun".into(),
            event_type: "charge_end".into(),
            idempotency_key: "k".into(),
            payload: "{}".into(),
            ordering_key: None,
            created_at,
            attempts,
            flow_state: None,
            in_doubt: false,
            defect: None,
        }
    }

    fn retry(reason: &str) -> Verdict {
        Verdict::Retry {
            reason: reason.into(),
            retry_after: None,
        }
    }

    #[test]
    fn a_transient_failure_is_retried_until_attempts_or_age_run_out() {
        let (sink, policy) = pyun();
        let now = 10 * HOUR;
        match decide(&retry("503"), &row(1, now), &sink, &policy, now, 0.5) {
            Action::Retry { next_at, error } => {
                assert!(next_at > now, "due later: {next_at}");
                assert_eq!(error, "503");
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        match decide(&retry("503"), &row(3, now), &sink, &policy, now, 0.5) {
            Action::Dead { reason, .. } => assert!(reason.contains("max_attempts = 3"), "{reason}"),
            other => panic!("expected dead, got {other:?}"),
        }
        // Created two hours ago: past max_age.
        match decide(
            &retry("503"),
            &row(1, now - 2 * HOUR),
            &sink,
            &policy,
            now,
            0.5,
        ) {
            Action::Dead { reason, .. } => {
                assert!(
                    reason.contains("max_age") && reason.ends_with("last error: 503"),
                    "{reason}"
                )
            }
            other => panic!("expected dead, got {other:?}"),
        }
    }

    #[test]
    fn a_server_retry_after_is_a_minimum() {
        let (sink, policy) = pyun();
        let now = 10 * HOUR;
        let v = Verdict::Retry {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        match decide(&v, &row(1, now), &sink, &policy, now, 0.0) {
            Action::Retry { next_at, .. } => assert!(next_at >= now + 30_000, "{next_at}"),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn final_verdicts_map_to_final_actions() {
        let (sink, policy) = pyun();
        let r = row(1, 0);
        let d = |v: Verdict| decide(&v, &r, &sink, &policy, 1, 0.5);
        assert_eq!(
            d(Verdict::Delivered {
                hint: None,
                result: None
            }),
            Action::Delivered {
                hint: None,
                result: None
            }
        );
        assert_eq!(
            d(Verdict::Permanent {
                reason: "bad".into()
            }),
            Action::Dead {
                kind: DeadKind::Permanent,
                reason: "bad".into(),
                last_reply: None
            }
        );
        assert_eq!(
            d(Verdict::Completed {
                note: "n".into(),
                result: None
            }),
            Action::Done {
                note: "n".into(),
                result: None
            }
        );
        // 4pyun deduplicates by key, so an ambiguous outcome is retried.
        assert!(matches!(
            d(Verdict::Ambiguous {
                reason: "timeout".into()
            }),
            Action::Retry { .. }
        ));
    }

    #[test]
    fn prechecks_name_the_problem() {
        let (sink, _) = pyun();
        assert_eq!(precheck(&row(1, 0), "pyun", &sink), None);
        let mut wrong = row(1, 0);
        wrong.event_type = "dosage".into();
        assert!(precheck(&wrong, "pyun", &sink)
            .unwrap()
            .contains("not \"dosage\""));
        let mut huge = row(1, 0);
        huge.payload = "x".repeat(MAX_PAYLOAD_BYTES + 1);
        assert!(precheck(&huge, "pyun", &sink)
            .unwrap()
            .contains("byte limit"));
        let mut bytes = row(1, 0);
        bytes.defect = Some("`payload` is not valid UTF-8 text (3 bytes)".into());
        assert!(precheck(&bytes, "pyun", &sink)
            .unwrap()
            .starts_with("the row cannot be read"));
    }

    #[test]
    fn health_effects_map_onto_store_actions() {
        let (sink, policy) = pyun();
        let now = 10 * HOUR;
        let r = row(1, now);
        let d = |e: RowEffect, v: &Verdict, r: &ClaimedRow| {
            decide_with_health(e, v, r, &sink, &policy, now, 0.5)
        };
        let refused = Verdict::Permanent {
            reason: "4pyun code 401".into(),
        };
        // Not yet known whose fault: a permanent verdict is retried, attempt counted.
        assert!(matches!(
            d(RowEffect::Retry, &refused, &r),
            Action::Retry { .. }
        ));
        assert!(matches!(
            d(RowEffect::AsClassified, &refused, &r),
            Action::Dead { .. }
        ));
        // Held: put back as it was; an ambiguous row stays in doubt.
        assert_eq!(
            d(RowEffect::Release, &refused, &r),
            Action::Release { in_doubt: false }
        );
        let unknown = Verdict::Ambiguous {
            reason: "timeout".into(),
        };
        assert_eq!(
            d(RowEffect::Release, &unknown, &r),
            Action::Release { in_doubt: true }
        );
        // Nothing sent: uncounted, whatever the attempts; only max_age (1 h here) ends it.
        let not_sent = retry("not sent: connection refused");
        assert_eq!(
            d(RowEffect::RetryNotSent, &not_sent, &row(50, now)),
            Action::Release { in_doubt: false }
        );
        match d(RowEffect::RetryNotSent, &not_sent, &row(1, now - 2 * HOUR)) {
            Action::Dead { kind, reason, .. } => {
                assert_eq!(kind, DeadKind::Expired);
                assert!(reason.contains("never reached the platform"), "{reason}");
                assert!(reason.ends_with("connection refused"), "{reason}");
            }
            other => panic!("expected dead, got {other:?}"),
        }
    }

    #[test]
    fn what_a_step_tells_the_window() {
        let step = |verdict: Verdict, status: Option<u16>, blame: Blame| StepOutcome {
            verdict,
            info: AttemptInfo {
                http_status: status,
                ..Default::default()
            },
            blame,
        };
        let ok = || Verdict::Delivered {
            hint: None,
            result: None,
        };
        let unavailable = Blame::Sink(SinkCause::Unavailable);
        assert_eq!(
            window_signal(&step(ok(), Some(200), Blame::Row)),
            Signal::Clean
        );
        // A success decided without a request says nothing about the platform's load.
        assert_eq!(
            window_signal(&step(ok(), None, Blame::Row)),
            Signal::Neutral
        );
        // 5xx, 429, timeouts: the platform struggles.
        assert_eq!(
            window_signal(&step(retry("HTTP 503"), Some(503), unavailable)),
            Signal::Congested
        );
        assert_eq!(
            window_signal(&step(retry("timed out"), None, unavailable)),
            Signal::Congested
        );
        let asked = Verdict::Retry {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(5)),
        };
        assert_eq!(
            window_signal(&step(asked, Some(429), unavailable)),
            Signal::Congested
        );
        // The row's own problem, answered promptly: the platform is well.
        let bad = Verdict::Permanent {
            reason: "field".into(),
        };
        assert_eq!(
            window_signal(&step(bad.clone(), Some(400), Blame::Row)),
            Signal::Clean
        );
        // Refused credentials and unreachable hosts are for the sink's health, not the window.
        let auth = Blame::Sink(SinkCause::Auth);
        assert_eq!(
            window_signal(&step(bad.clone(), Some(401), auth)),
            Signal::Neutral
        );
        assert_eq!(
            window_signal(&step(bad, None, Blame::Link)),
            Signal::Neutral
        );
    }

    #[test]
    fn what_a_step_tells_the_sinks_health() {
        use crate::health::{HealthConfig, SinkHealth};
        let (sink, policy) = pyun();
        let slot = SinkSlot {
            name: "pyun".into(),
            sink: std::sync::Arc::new(sink),
            policy,
            concurrency: 1,
            window: crate::window::Window::new(1),
            in_flight: 0,
            held: None,
            health: SinkHealth::new("pyun", HealthConfig::default()),
            health_config: HealthConfig::default(),
            clock_skew_warn: Duration::from_secs(120),
            skew_reported: None,
        };
        let step = |verdict: Verdict, blame: Blame| StepOutcome {
            verdict,
            info: AttemptInfo::default(),
            blame,
        };
        let ok = Verdict::Delivered {
            hint: None,
            result: None,
        };
        assert_eq!(observed(&step(ok, Blame::Row), &slot), Observed::Success);
        let bad = Verdict::Permanent {
            reason: "`vin` invalid".into(),
        };
        assert_eq!(
            observed(&step(bad.clone(), Blame::Row), &slot),
            Observed::RowFailure
        );
        assert_eq!(
            observed(&step(bad, Blame::Sink(SinkCause::Auth)), &slot),
            Observed::SinkFailure {
                cause: SinkCause::Auth,
                reason: "`vin` invalid".into()
            }
        );
        assert_eq!(
            observed(&step(retry("not sent: refused"), Blame::Link), &slot),
            Observed::LinkFailure {
                reason: "not sent: refused".into()
            }
        );
        // A Retry-After beyond the retry cap (and the 1 h ceiling) waits the ceiling.
        let slowdown = Verdict::Retry {
            reason: "HTTP 503".into(),
            retry_after: Some(Duration::from_secs(7200)),
        };
        match observed(&step(slowdown, Blame::Sink(SinkCause::Unavailable)), &slot) {
            Observed::RetryAfter { wait, .. } => assert_eq!(wait, Duration::from_secs(3600)),
            other => panic!("{other:?}"),
        }
        // A refused timestamp with no Date seen yet keeps the platform's words.
        let window = Verdict::Permanent {
            reason: "4pyun code 403 (hint: timestamp out of window)".into(),
        };
        assert_eq!(
            observed(&step(window, Blame::Sink(SinkCause::Clock)), &slot),
            Observed::SinkFailure {
                cause: SinkCause::Clock,
                reason: "4pyun code 403 (hint: timestamp out of window)".into()
            }
        );
    }
}
