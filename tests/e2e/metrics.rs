//! `/metrics` right after a start, before any row: every labelled series of every configured
//! sink is there at 0 (so `increase()` and `rate()` see the first event: a series that
//! appears at 1 counts as no increase), with `outboxd_build_info`. On both backends: the
//! queue gauges come from the store.

use std::time::Duration;

use outboxd_e2e::Env;
use tokio::time::Instant;

use super::page::{admin_addr, http};

const SOON: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_every_series_of_a_configured_sink_starts_at_zero() {
    every_series_of_a_configured_sink_starts_at_zero(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_every_series_of_a_configured_sink_starts_at_zero() {
    if let Some(env) = Env::postgres().await {
        every_series_of_a_configured_sink_starts_at_zero(env).await;
    }
}

async fn every_series_of_a_configured_sink_starts_at_zero(env: Env) {
    // A second sink with no row at all: the database does not know it yet.
    env.write_config(&env.pyun_sink("quiet", &["concurrency = 2"]));
    let mut daemon = env.spawn_daemon();
    let admin = admin_addr(&mut daemon).await;
    // /healthz answers 200 once the worker loop went round: its sinks are registered.
    let deadline = Instant::now() + SOON;
    while http(admin, "GET", "/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "/healthz never answered 200");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (code, text) = http(admin, "GET", "/metrics").await;
    assert_eq!(code, 200, "{text}");
    let version = env!("CARGO_PKG_VERSION");
    let mut expected = vec![format!("outboxd_build_info{{version=\"{version}\"}} 1")];
    for sink in ["pyun", "quiet"] {
        for outcome in [
            "delivered",
            "completed",
            "retry",
            "permanent",
            "ambiguous",
            "continue",
            "panic",
            "released",
        ] {
            expected.push(format!(
                "outboxd_deliveries_total{{sink=\"{sink}\",outcome=\"{outcome}\"}} 0"
            ));
        }
        for kind in [
            "permanent",
            "unknown",
            "expired",
            "invalid",
            "internal",
            "unknown_sink",
        ] {
            expected.push(format!(
                "outboxd_dead_lettered_total{{sink=\"{sink}\",kind=\"{kind}\"}} 0"
            ));
        }
        for kind in ["auth", "clock", "config", "retry_after", "streak"] {
            expected.push(format!(
                "outboxd_sink_holds_total{{sink=\"{sink}\",kind=\"{kind}\"}} 0"
            ));
        }
        expected.push(format!("outboxd_hints_total{{sink=\"{sink}\"}} 0"));
        expected.push(format!(
            "outboxd_attempt_duration_seconds_bucket{{sink=\"{sink}\",le=\"+Inf\"}} 0"
        ));
        expected.push(format!(
            "outboxd_attempt_duration_seconds_count{{sink=\"{sink}\"}} 0"
        ));
        for gauge in [
            "outboxd_queue_pending",
            "outboxd_queue_in_flight",
            "outboxd_queue_due",
            "outboxd_dead_letter_rows",
            "outboxd_hint_rows",
            "outboxd_sink_paused",
        ] {
            expected.push(format!("{gauge}{{sink=\"{sink}\"}} 0"));
        }
        expected.push(format!(
            "outboxd_sink_state{{sink=\"{sink}\",state=\"active\"}} 1"
        ));
        expected.push(format!(
            "outboxd_sink_state{{sink=\"{sink}\",state=\"held\"}} 0"
        ));
    }
    expected.push("outboxd_sink_holds_total{sink=\"link\",kind=\"link\"} 0".into());
    let lines: Vec<&str> = text.lines().collect();
    for series in &expected {
        assert!(
            lines.contains(&series.as_str()),
            "{series} missing from\n{text}"
        );
    }
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}
