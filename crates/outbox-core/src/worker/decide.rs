//! From a delivery's verdict to what the store does with its row: the prechecks a row
//! passes before its sink sees it, the retry decision, and the completion of a finished,
//! panicked or abandoned delivery task.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;

use super::slots::SinkSlot;
use super::MAX_PAYLOAD_BYTES;
use crate::clock::{self, now_ms};
use crate::event::ClaimedRow;
use crate::outcome::{AttemptInfo, StepOutcome, Verdict};
use crate::retry::{Decision, RetryPolicy};
use crate::sinks::Sink;
use crate::store::{Action, Completion, DeadKind};

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
        Some(reason) => StepOutcome {
            verdict: Verdict::Permanent { reason },
            info: Default::default(),
        },
        None => sink.deliver(&row).await,
    };
    (row, outcome)
}

/// Turns a finished (or aborted, or panicked) delivery task into a completion.
pub(crate) fn finish(
    joined: Joined,
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
        Ok((_, (row, outcome))) => verdict_completion(slot, row, outcome, now),
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

/// The completion of a delivery that returned a verdict.
fn verdict_completion(
    slot: &SinkSlot,
    row: ClaimedRow,
    outcome: StepOutcome,
    now: i64,
) -> Completion {
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
}
