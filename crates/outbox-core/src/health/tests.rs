//! Time is passed in, so these tests walk it forward by arithmetic on one `Instant`: no
//! sleeping, nothing depends on how fast the machine is.

use super::*;

const S: Duration = Duration::from_secs(1);

fn auth() -> Observed {
    Observed::SinkFailure {
        cause: SinkCause::Auth,
        reason: "401 签名验证不通过".into(),
    }
}

fn unavailable() -> Observed {
    Observed::SinkFailure {
        cause: SinkCause::Unavailable,
        reason: "HTTP 503".into(),
    }
}

fn refused() -> Observed {
    Observed::LinkFailure {
        reason: "connection refused".into(),
    }
}

fn sink() -> SinkHealth {
    SinkHealth::new("pyun", HealthConfig::default())
}

fn held(h: &SinkHealth) -> Hold {
    match h.state() {
        State::Held(hold) => hold.clone(),
        State::Active => panic!("not held"),
    }
}

#[test]
fn active_sink_claims_at_full_speed() {
    let h = sink();
    let t = Instant::now();
    assert_eq!(h.permit(t), Permit::Full);
    assert_eq!(Permit::Full.rows(32), 32);
    assert_eq!(Permit::Probe.rows(32), 1);
    assert_eq!(Permit::Probe.rows(0), 0);
    assert_eq!(Permit::Wait(None).rows(32), 0);
    assert_eq!(h.snapshot().state, "active");
}

#[test]
fn five_sink_failures_in_a_row_hold_the_sink_and_the_fifth_row_keeps_its_attempts() {
    let mut h = sink();
    let t = Instant::now();
    for row in 1..=4 {
        let e = h.record(row, &auth(), t);
        assert_eq!(e, effect(RowEffect::Retry, None), "row {row}");
        assert_eq!(h.permit(t), Permit::Full);
    }
    let e = h.record(5, &auth(), t);
    assert_eq!(e.row, RowEffect::Release);
    let transition = e.transition.expect("one transition");
    assert_eq!((transition.from, transition.to), ("active", "held"));
    assert_eq!(transition.kind, Some(HoldKind::Auth));
    assert_eq!(transition.subject, "pyun");
    assert!(transition.to_string().contains("pyun held (auth): 401"));
    // The other rows in flight come back while held: released, no more transitions.
    for row in 6..40 {
        assert_eq!(h.record(row, &auth(), t), effect(RowEffect::Release, None));
    }
    assert_eq!(held(&h).kind, HoldKind::Auth);
    assert_eq!(h.permit(t), Permit::Wait(Some(t + 5 * S)));
    assert_eq!(h.snapshot().holds, 1);
}

#[test]
fn a_single_401_among_successes_is_the_rows_problem() {
    let mut h = sink();
    let t = Instant::now();
    assert_eq!(h.record(7, &auth(), t).row, RowEffect::Retry);
    for row in 100..110 {
        assert_eq!(
            h.record(row, &Observed::Success, t).row,
            RowEffect::AsClassified
        );
    }
    // The same row fails the same way after the sink has worked: the verdict stands.
    assert_eq!(
        h.record(7, &auth(), t),
        effect(RowEffect::AsClassified, None)
    );
    assert_eq!(h.snapshot().consecutive_failures, 0);
    // Another lone failure of another row is judged afresh.
    assert_eq!(h.record(8, &auth(), t).row, RowEffect::Retry);
    assert_eq!(h.permit(t), Permit::Full);
}

#[test]
fn a_small_backlog_failing_again_without_successes_still_reaches_the_hold() {
    let mut h = sink();
    let t = Instant::now();
    // Two rows, retried in turn, never a success: a streak, not two bad rows.
    let effects: Vec<RowEffect> = [1, 2, 1, 2, 1]
        .iter()
        .map(|row| h.record(*row, &auth(), t).row)
        .collect();
    assert_eq!(
        effects,
        [
            RowEffect::Retry,
            RowEffect::Retry,
            RowEffect::Retry,
            RowEffect::Retry,
            RowEffect::Release
        ]
    );
    assert_eq!(held(&h).kind, HoldKind::Auth);
}

#[test]
fn a_success_breaks_the_streak() {
    let mut h = sink();
    let t = Instant::now();
    for row in 1..=4 {
        h.record(row, &unavailable(), t);
    }
    h.record(5, &Observed::Success, t);
    for row in 6..=9 {
        assert_eq!(h.record(row, &unavailable(), t).row, RowEffect::Retry);
    }
    assert_eq!(h.permit(t), Permit::Full);
    assert_eq!(h.record(10, &unavailable(), t).row, RowEffect::Release);
    assert_eq!(held(&h).kind, HoldKind::Streak);
}

#[test]
fn row_failures_neither_break_the_streak_nor_resume_a_hold() {
    let mut h = sink();
    let t = Instant::now();
    for row in 1..=4 {
        h.record(row, &auth(), t);
    }
    // A 400 may be checked before the signature: it proves nothing about the credentials.
    assert_eq!(
        h.record(50, &Observed::RowFailure, t),
        effect(RowEffect::AsClassified, None)
    );
    assert!(h.record(5, &auth(), t).transition.is_some());
    // While held, a probe that fails on its own content keeps the hold; the row's verdict
    // stands, and the next probe may go at once.
    let t1 = t + 5 * S;
    assert_eq!(h.permit(t1), Permit::Probe);
    h.probe_started(60);
    assert_eq!(
        h.record(60, &Observed::RowFailure, t1),
        effect(RowEffect::AsClassified, None)
    );
    assert_eq!(h.permit(t1), Permit::Probe);
    assert_eq!(h.snapshot().state, "held");
}

#[test]
fn held_sink_probes_one_row_at_a_time_on_a_growing_interval() {
    let mut h = sink();
    let mut t = Instant::now();
    for row in 1..=5 {
        h.record(row, &unavailable(), t);
    }
    let mut intervals = Vec::new();
    for probe in 100..110 {
        let due = held(&h).next_probe;
        intervals.push(held(&h).probe_interval.as_secs());
        assert_eq!(
            h.permit(due - Duration::from_millis(1)),
            Permit::Wait(Some(due))
        );
        t = due;
        assert_eq!(h.permit(t), Permit::Probe);
        h.probe_started(probe);
        // Only one probe in flight, however long it takes.
        assert_eq!(h.permit(t + 3600 * S), Permit::Wait(None));
        // A row claimed before the hold fails meanwhile: no effect on the probe timing.
        assert_eq!(h.record(1, &unavailable(), t).row, RowEffect::Release);
        assert_eq!(h.permit(t), Permit::Wait(None));
        let e = h.record(probe, &unavailable(), t + S);
        assert_eq!(e, effect(RowEffect::Release, None));
        t += S;
    }
    assert_eq!(intervals, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
    // The hold's start is unchanged by probes.
    assert!(held(&h).since < t);
}

#[test]
fn the_first_success_resumes_full_speed() {
    let mut h = sink();
    let t = Instant::now();
    for row in 1..=5 {
        h.record(row, &auth(), t);
    }
    let t1 = t + 5 * S;
    assert_eq!(h.permit(t1), Permit::Probe);
    h.probe_started(9);
    let e = h.record(9, &Observed::Success, t1 + S);
    assert_eq!(e.row, RowEffect::AsClassified);
    let transition = e.transition.unwrap();
    assert_eq!((transition.from, transition.to), ("held", "active"));
    assert_eq!(transition.kind, None);
    assert!(
        transition.reason.contains("6s held (auth)"),
        "{}",
        transition.reason
    );
    assert_eq!(h.permit(t1 + S), Permit::Full);
    // A fresh streak is needed to hold again.
    for row in 10..14 {
        assert_eq!(h.record(row, &auth(), t1).row, RowEffect::Retry);
    }
    assert_eq!(h.snapshot().holds, 1);
}

#[test]
fn retry_after_holds_the_sink_until_then() {
    let mut h = sink();
    let t = Instant::now();
    let ra = Observed::RetryAfter {
        wait: 120 * S,
        reason: "HTTP 429, Retry-After: 120".into(),
    };
    let e = h.record(1, &ra, t);
    assert_eq!(e.row, RowEffect::Release);
    assert_eq!(e.transition.unwrap().kind, Some(HoldKind::RetryAfter));
    assert_eq!(h.permit(t + 119 * S), Permit::Wait(Some(t + 120 * S)));
    assert_eq!(h.permit(t + 120 * S), Permit::Probe);
    // A later, longer Retry-After from a row in flight pushes the probe back; a shorter
    // one does not bring it forward.
    h.record(
        2,
        &Observed::RetryAfter {
            wait: 300 * S,
            reason: "again".into(),
        },
        t + S,
    );
    assert_eq!(held(&h).next_probe, t + 301 * S);
    h.record(
        3,
        &Observed::RetryAfter {
            wait: S,
            reason: "short".into(),
        },
        t + 2 * S,
    );
    assert_eq!(held(&h).next_probe, t + 301 * S);
    h.probe_started(4);
    assert!(h
        .record(4, &Observed::Success, t + 301 * S)
        .transition
        .is_some());
    assert_eq!(h.permit(t + 301 * S), Permit::Full);
}

#[test]
fn a_new_kind_of_hold_is_one_transition_the_same_kind_none() {
    let mut h = sink();
    let t = Instant::now();
    for row in 1..=5 {
        h.record(row, &unavailable(), t);
    }
    assert!(h.record(6, &unavailable(), t).transition.is_none());
    let e = h.record(7, &auth(), t);
    let transition = e.transition.unwrap();
    assert_eq!((transition.from, transition.to), ("held", "held"));
    assert_eq!(transition.kind, Some(HoldKind::Auth));
    assert!(h.record(8, &auth(), t).transition.is_none());
    assert_eq!(held(&h).reason, "401 签名验证不通过");
    assert_eq!(h.snapshot().holds, 1);
}

#[test]
fn reload_resumes_auth_clock_and_config_holds_at_once() {
    let t = Instant::now();
    for (observed, resumes) in [
        (auth(), true),
        (
            Observed::SinkFailure {
                cause: SinkCause::Clock,
                reason: clock_reason(20 * 60_000),
            },
            true,
        ),
        (
            Observed::SinkFailure {
                cause: SinkCause::Config,
                reason: "HTTP 404: check the sink url".into(),
            },
            true,
        ),
        (unavailable(), false),
        (refused(), false),
    ] {
        let mut h = sink();
        for row in 1..=5 {
            h.record(row, &observed, t);
        }
        assert_eq!(h.snapshot().state, "held");
        let transition = h.resume_on_reload(t + S);
        assert_eq!(transition.is_some(), resumes, "{observed:?}");
        if resumes {
            assert_eq!(h.permit(t + S), Permit::Full);
            assert!(transition
                .unwrap()
                .reason
                .contains("configuration reloaded"));
        } else {
            assert_eq!(h.permit(t + S), Permit::Wait(Some(t + 5 * S)));
        }
    }
    // A retry-after hold stays too; an active sink has nothing to resume.
    let mut h = sink();
    h.record(
        1,
        &Observed::RetryAfter {
            wait: 60 * S,
            reason: "429".into(),
        },
        t,
    );
    assert!(h.resume_on_reload(t).is_none());
    assert!(sink().resume_on_reload(t).is_none());
}

#[test]
fn connect_failures_are_not_counted_and_a_streak_of_them_holds() {
    let mut h = sink();
    let t = Instant::now();
    for row in 1..=4 {
        assert_eq!(
            h.record(row, &refused(), t),
            effect(RowEffect::RetryNotSent, None)
        );
    }
    // Even after successes, a row that could not connect is never the row's fault.
    h.record(50, &Observed::Success, t);
    assert_eq!(h.record(1, &refused(), t).row, RowEffect::RetryNotSent);
    for row in 2..=5 {
        h.record(row, &refused(), t);
    }
    assert_eq!(held(&h).kind, HoldKind::Link);
    // The link is back (the link tracker says so): probe at once.
    h.link_restored(t + S);
    assert_eq!(h.permit(t + S), Permit::Probe);
}

#[test]
fn thresholds_are_per_sink() {
    let t = Instant::now();
    let mut strict = SinkHealth::new(
        "epeis",
        HealthConfig {
            hold_after: 1,
            ..HealthConfig::default()
        },
    );
    assert_eq!(strict.record(1, &auth(), t).row, RowEffect::Release);
    let mut zero = SinkHealth::new(
        "lbb",
        HealthConfig {
            hold_after: 0,
            probe_initial: 2 * S,
            probe_max: 3 * S,
        },
    );
    assert_eq!(zero.record(1, &auth(), t).row, RowEffect::Release);
    assert_eq!(zero.permit(t), Permit::Wait(Some(t + 2 * S)));
    zero.probe_started(2);
    zero.record(2, &auth(), t + 2 * S);
    assert_eq!(held(&zero).probe_interval, 3 * S);
    let mut lax = sink();
    lax.set_config(HealthConfig {
        hold_after: 10,
        ..HealthConfig::default()
    });
    for row in 1..=9 {
        assert_eq!(lax.record(row, &auth(), t).row, RowEffect::Retry);
    }
    assert_eq!(lax.record(10, &auth(), t).row, RowEffect::Release);
}

#[test]
fn an_abandoned_probe_allows_another() {
    let mut h = sink();
    let t = Instant::now();
    for row in 1..=5 {
        h.record(row, &auth(), t);
    }
    let t1 = t + 5 * S;
    h.probe_started(9);
    assert_eq!(h.permit(t1), Permit::Wait(None));
    h.probe_abandoned(8);
    assert_eq!(h.permit(t1), Permit::Wait(None));
    h.probe_abandoned(9);
    assert_eq!(h.permit(t1), Permit::Probe);
    // probe_started on an active sink is ignored.
    let mut active = sink();
    active.probe_started(1);
    assert_eq!(active.permit(t), Permit::Full);
}

#[test]
fn snapshot_reports_state_reason_since_and_next_probe() {
    let mut h = sink();
    let t = Instant::now();
    h.record(1, &auth(), t);
    h.record(2, &auth(), t);
    let s = h.snapshot();
    assert_eq!(
        (s.state, s.consecutive_failures, s.kind),
        ("active", 2, None)
    );
    for row in 3..=5 {
        h.record(row, &auth(), t + S);
    }
    assert_eq!(
        h.snapshot(),
        Snapshot {
            state: "held",
            kind: Some(HoldKind::Auth),
            reason: Some("401 签名验证不通过".into()),
            since: Some(t + S),
            next_probe: Some(t + 6 * S),
            probe_interval: Some(5 * S),
            consecutive_failures: 0,
            holds: 1,
        }
    );
}

#[test]
fn scopes_of_observations() {
    assert_eq!(Observed::Success.scope(), None);
    assert_eq!(Observed::RowFailure.scope(), Some(FailureScope::Row));
    assert_eq!(auth().scope(), Some(FailureScope::Sink));
    assert_eq!(
        Observed::RetryAfter {
            wait: S,
            reason: String::new()
        }
        .scope(),
        Some(FailureScope::Sink)
    );
    assert_eq!(refused().scope(), Some(FailureScope::Link));
}

#[test]
fn clock_reason_names_the_minutes() {
    assert_eq!(
        clock_reason(20 * 60_000),
        "local clock is 20 min off the platform's (behind it)"
    );
    assert_eq!(
        clock_reason(-11 * 60_000 - 40_000),
        "local clock is 12 min off the platform's (ahead of it)"
    );
}

#[test]
fn health_config_parses_with_defaults() {
    let c: HealthConfig = toml::from_str("probe_max = \"1m\"").unwrap();
    assert_eq!(
        c,
        HealthConfig {
            probe_max: 60 * S,
            ..HealthConfig::default()
        }
    );
    assert_eq!(HealthConfig::default().hold_after, 5);
    assert_eq!(HealthConfig::default().probe_initial, 5 * S);
    assert_eq!(HealthConfig::default().probe_max, 300 * S);
    assert!(toml::from_str::<HealthConfig>("bogus = 1").is_err());
}

#[test]
fn link_holds_when_every_busy_sink_fails_to_connect_at_once() {
    let mut link = LinkHealth::new(LinkConfig::default());
    let t = Instant::now();
    // One sink failing is that sink's (or its platform's) problem.
    assert!(link.observe("pyun", false, t).is_none());
    assert_eq!(link.permit(t), Permit::Full);
    // Another sink still reaches its platform: not the link.
    assert!(link.observe("epeis", true, t).is_none());
    assert!(link.observe("pyun", false, t + S).is_none());
    // Now both fail within the window.
    let transition = link.observe("epeis", false, t + 2 * S).unwrap();
    assert_eq!(transition.subject, "link");
    assert_eq!(transition.kind, Some(HoldKind::Link));
    assert!(transition.reason.contains("2 sinks"));
    assert_eq!(link.permit(t + 2 * S), Permit::Wait(Some(t + 7 * S)));
    assert_eq!(link.snapshot().state, "held");
    assert_eq!(link.snapshot().holds, 1);
}

#[test]
fn idle_sinks_do_not_keep_the_link_up_nor_stale_failures_bring_it_down() {
    let mut link = LinkHealth::new(LinkConfig::default());
    let t = Instant::now();
    // lbbtech reached its platform long ago and has been idle since.
    link.observe("lbbtech", true, t);
    link.observe("pyun", false, t + 100 * S);
    assert!(link.observe("epeis", false, t + 101 * S).is_some());

    let mut link = LinkHealth::new(LinkConfig::default());
    link.observe("pyun", false, t);
    // pyun's failure is a minute old: not "at once".
    assert!(link.observe("epeis", false, t + 60 * S).is_none());
    assert_eq!(link.permit(t + 60 * S), Permit::Full);
}

#[test]
fn link_probes_one_at_a_time_and_resumes_on_the_first_connection() {
    let mut link = LinkHealth::new(LinkConfig::default());
    let t = Instant::now();
    link.observe("pyun", false, t);
    link.observe("epeis", false, t);
    let t1 = t + 5 * S;
    assert_eq!(link.permit(t1), Permit::Probe);
    link.probe_started("pyun");
    assert_eq!(link.permit(t1), Permit::Wait(None));
    // Rows in flight on another sink failing: timing unchanged.
    assert!(link.observe("epeis", false, t1).is_none());
    assert_eq!(link.permit(t1), Permit::Wait(None));
    assert!(link.observe("pyun", false, t1).is_none());
    assert_eq!(link.permit(t1), Permit::Wait(Some(t1 + 10 * S)));
    link.probe_started("epeis");
    link.probe_abandoned("epeis");
    assert_eq!(link.permit(t1 + 10 * S), Permit::Probe);
    link.probe_started("epeis");
    let transition = link.observe("epeis", true, t1 + 10 * S).unwrap();
    assert_eq!((transition.from, transition.to), ("held", "active"));
    assert!(transition.reason.contains("epeis reached its platform"));
    assert_eq!(link.permit(t1 + 10 * S), Permit::Full);
    // Forgetting a sink (reload).
    link.retain_sinks(|name| name == "pyun");
    assert!(link.observe("pyun", false, t1 + 11 * S).is_none());
}

#[test]
fn an_operators_probe_request_makes_a_held_sink_probe_at_once_and_counts_once() {
    let mut h = sink();
    let t = Instant::now();
    // A request seen while active is remembered, so it does not fire on a later hold.
    assert!(!h.probe_requested(1_000, t));
    for row in 1..=5 {
        h.record(row, &auth(), t);
    }
    let hold = held(&h);
    assert_eq!(h.permit(t), Permit::Wait(Some(hold.next_probe)));
    assert!(!h.probe_requested(1_000, t), "an old request counts once");
    assert_eq!(h.permit(t), Permit::Wait(Some(hold.next_probe)));
    let later = t + S;
    assert!(h.probe_requested(2_000, later));
    assert_eq!(h.permit(later), Permit::Probe);
    assert_eq!(
        held(&h).probe_interval,
        HealthConfig::default().probe_initial
    );
}
