//! Delivery metrics, kept in memory and rendered in the Prometheus text format by the admin
//! listener. Queue figures (depth, oldest pending age, dead rows) are read from the store at
//! scrape time, so they are right across several workers and restarts; the counters here
//! are this process's since it started.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::now_ms;
use crate::store::SinkStats;

/// A sink's (or the link's) health as the worker last published it, for `/status.json`,
/// `/healthz` and `/metrics`. Times are epoch ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthView {
    /// `"active"` or `"held"`.
    pub state: &'static str,
    /// Why it is held: `auth`, `clock`, `config`, `retry_after`, `streak`, `link`.
    pub kind: Option<&'static str>,
    pub reason: Option<String>,
    pub since_ms: Option<i64>,
    pub next_probe_ms: Option<i64>,
    /// The platform's clock minus ours (from its `Date` header), when known.
    pub clock_skew_ms: Option<i64>,
    /// Holds since the daemon started.
    pub holds: u64,
    /// How many rows it may have in flight now (the adaptive window; `None` for the link).
    pub window: Option<usize>,
    /// The window's ceiling: the sink's `concurrency`.
    pub ceiling: Option<usize>,
}

impl HealthView {
    pub fn is_held(&self) -> bool {
        self.state == "held"
    }
}

/// Every sink's health and the link's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthBoard {
    pub sinks: BTreeMap<String, HealthView>,
    pub link: Option<HealthView>,
}

impl HealthBoard {
    /// One line per held sink (and the held link), for `/healthz`.
    pub fn held_lines(&self, now: i64) -> Vec<String> {
        let line = |name: &str, v: &HealthView| {
            let mut l = format!(
                "{name} held ({}) for {}: {}",
                v.kind.unwrap_or("?"),
                crate::clock::age(now - v.since_ms.unwrap_or(now)),
                v.reason.as_deref().unwrap_or("")
            );
            if let Some(p) = v.next_probe_ms {
                l.push_str(&format!(
                    "; next probe in {}",
                    crate::clock::age((p - now).max(0))
                ));
            }
            l
        };
        let link = self
            .link
            .iter()
            .filter(|v| v.is_held())
            .map(|v| line("link", v));
        self.sinks
            .iter()
            .filter(|(_, v)| v.is_held())
            .map(|(n, v)| line(n, v))
            .chain(link)
            .collect()
    }
}

/// Every outcome label a delivery step is counted under (`outboxd_deliveries_total`): the
/// verdicts' labels, a panicking delivery and a release at shutdown.
pub const OUTCOMES: [&str; 8] = [
    "delivered",
    "completed",
    "retry",
    "permanent",
    "ambiguous",
    "continue",
    "panic",
    "released",
];

/// The outcomes the admin page charts as deliveries, and as failed attempts.
const DELIVERED: [&str; 2] = ["delivered", "completed"];
const FAILED: [&str; 4] = ["retry", "permanent", "ambiguous", "panic"];

/// Upper bounds (seconds) of the attempt latency histogram.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    /// (sink, outcome) → deliveries.
    outcomes: BTreeMap<(String, &'static str), u64>,
    hints: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
    /// (sink, hold kind) → holds.
    holds: BTreeMap<(String, &'static str), u64>,
    /// (sink, dead kind) → rows dead-lettered. A counter, so an alert on `increase()` is
    /// right (the dead-letter gauge also falls on a purge or a requeue).
    dead: BTreeMap<(String, &'static str), u64>,
    /// The configured sinks: their queue gauges read 0 before they have any row.
    sinks: std::collections::BTreeSet<String>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// When the worker loop last went round (epoch ms): `/healthz` fails when it stalls.
    last_tick: AtomicI64,
    /// Since when the worker loop's store rounds fail (epoch ms; 0 while they succeed), and
    /// the first error: `/healthz` fails when they keep failing.
    failing_since: AtomicI64,
    failure: Mutex<String>,
    health: Mutex<HealthBoard>,
}

impl Metrics {
    /// The worker's latest view of its sinks' health.
    pub fn set_health(&self, board: HealthBoard) {
        *self.health.lock().expect("metrics lock") = board;
    }

    pub fn health(&self) -> HealthBoard {
        self.health.lock().expect("metrics lock").clone()
    }

    /// A sink (or `"link"`) went from active to held.
    pub fn count_hold(&self, sink: &str, kind: &'static str) {
        let mut g = self.inner.lock().expect("metrics lock");
        *g.holds.entry((sink.to_string(), kind)).or_default() += 1;
    }

    /// Starts every labelled series of `sinks` at zero (counters, the latency histogram,
    /// the holds of the sinks and of the link, the queue gauges), so the first event after
    /// a start is an increase `increase()` and `rate()` can see (a series that appears at 1
    /// counts as no increase).
    pub fn register_sinks(&self, sinks: &[String]) {
        let mut g = self.inner.lock().expect("metrics lock");
        for sink in sinks {
            for kind in crate::store::DeadKind::ALL {
                g.dead.entry((sink.clone(), kind.as_str())).or_default();
            }
            for outcome in OUTCOMES {
                g.outcomes.entry((sink.clone(), outcome)).or_default();
            }
            for kind in crate::health::HoldKind::ALL {
                if kind != crate::health::HoldKind::Link {
                    g.holds.entry((sink.clone(), kind.as_str())).or_default();
                }
            }
            g.hints.entry(sink.clone()).or_default();
            g.latency.entry(sink.clone()).or_default();
            g.sinks.insert(sink.clone());
        }
        let link = crate::health::HoldKind::Link.as_str();
        g.holds.entry(("link".to_string(), link)).or_default();
    }

    /// This process's delivery steps so far: (delivered or completed, failed attempts),
    /// for the admin page's charts.
    pub fn progress_totals(&self) -> (u64, u64) {
        let g = self.inner.lock().expect("metrics lock");
        let sum = |labels: &[&str]| -> u64 {
            g.outcomes
                .iter()
                .filter(|((_, o), _)| labels.contains(o))
                .map(|(_, n)| n)
                .sum()
        };
        (sum(&DELIVERED), sum(&FAILED))
    }

    /// A row of `sink` was dead-lettered (committed), with its kind.
    pub fn count_dead(&self, sink: &str, kind: &'static str) {
        let mut g = self.inner.lock().expect("metrics lock");
        *g.dead.entry((sink.to_string(), kind)).or_default() += 1;
    }

    pub fn record(&self, sink: &str, outcome: &'static str, duration_us: Option<i64>, hint: bool) {
        let mut g = self.inner.lock().expect("metrics lock");
        *g.outcomes.entry((sink.to_string(), outcome)).or_default() += 1;
        if hint {
            *g.hints.entry(sink.to_string()).or_default() += 1;
        }
        if let Some(us) = duration_us {
            let secs = us.max(0) as f64 / 1_000_000.0;
            let h = g.latency.entry(sink.to_string()).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        }
    }

    pub fn tick(&self) {
        self.last_tick.store(now_ms(), Ordering::Relaxed);
    }

    /// A store round of the worker loop failed (the first failure of a run is kept).
    pub fn round_failed(&self, reason: &str) {
        let mut failure = self.failure.lock().expect("metrics lock");
        if self.failing_since.load(Ordering::Relaxed) == 0 {
            *failure = reason.to_string();
            self.failing_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// A store round of the worker loop succeeded.
    pub fn round_ok(&self) {
        self.failing_since.store(0, Ordering::Relaxed);
    }

    /// How long the worker loop's store rounds have been failing, and the first error.
    pub fn failing_for_ms(&self) -> Option<(i64, String)> {
        let failure = self.failure.lock().expect("metrics lock");
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some((now_ms() - t, failure.clone())),
        }
    }

    /// Milliseconds since the worker loop last went round (`None` before it started).
    pub fn since_tick_ms(&self) -> Option<i64> {
        match self.last_tick.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now_ms() - t),
        }
    }

    pub fn render(&self, stats: &[SinkStats]) -> String {
        let g = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        out.push_str("# HELP outboxd_build_info The running outboxd's version (always 1).\n");
        out.push_str("# TYPE outboxd_build_info gauge\n");
        let _ = writeln!(
            out,
            "outboxd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str("# HELP outboxd_deliveries_total Delivery steps by sink and outcome, by this process.\n");
        out.push_str("# TYPE outboxd_deliveries_total counter\n");
        for ((sink, outcome), n) in &g.outcomes {
            let _ = writeln!(
                out,
                "outboxd_deliveries_total{{sink=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(sink)
            );
        }
        out.push_str("# HELP outboxd_dead_lettered_total Rows dead-lettered by sink and kind, by this process.\n");
        out.push_str("# TYPE outboxd_dead_lettered_total counter\n");
        for ((sink, kind), n) in &g.dead {
            let _ = writeln!(
                out,
                "outboxd_dead_lettered_total{{sink=\"{}\",kind=\"{kind}\"}} {n}",
                esc(sink)
            );
        }
        out.push_str(
            "# HELP outboxd_hints_total Success replies that carried a hint, by this process.\n",
        );
        out.push_str("# TYPE outboxd_hints_total counter\n");
        for (sink, n) in &g.hints {
            let _ = writeln!(out, "outboxd_hints_total{{sink=\"{}\"}} {n}", esc(sink));
        }
        out.push_str("# HELP outboxd_attempt_duration_seconds HTTP attempt latency by sink.\n");
        out.push_str("# TYPE outboxd_attempt_duration_seconds histogram\n");
        for (sink, h) in &g.latency {
            let s = esc(sink);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "outboxd_attempt_duration_seconds_bucket{{sink=\"{s}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "outboxd_attempt_duration_seconds_bucket{{sink=\"{s}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "outboxd_attempt_duration_seconds_sum{{sink=\"{s}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "outboxd_attempt_duration_seconds_count{{sink=\"{s}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP outboxd_sink_holds_total Times a sink (or the link) was held, by kind, by this process.\n");
        out.push_str("# TYPE outboxd_sink_holds_total counter\n");
        for ((sink, kind), n) in &g.holds {
            let _ = writeln!(
                out,
                "outboxd_sink_holds_total{{sink=\"{}\",kind=\"{kind}\"}} {n}",
                esc(sink)
            );
        }
        // Configured sinks without a row yet read 0, like the others.
        let mut all: Vec<SinkStats> = stats.to_vec();
        for sink in &g.sinks {
            if !stats.iter().any(|s| &s.sink == sink) {
                all.push(SinkStats {
                    sink: sink.clone(),
                    ..Default::default()
                });
            }
        }
        all.sort_by(|a, b| a.sink.cmp(&b.sink));
        let stats = &all[..];
        drop(g);
        render_gauges(&mut out, stats);
        render_states(&mut out, stats, &self.health());
        out
    }
}

/// The queue gauges, one series per sink, from the store's statistics.
fn render_gauges(out: &mut String, stats: &[SinkStats]) {
    let gauge = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&SinkStats) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for st in stats {
            let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", esc(&st.sink), f(st));
        }
    };
    gauge(
        out,
        "outboxd_queue_pending",
        "Rows waiting (first attempt, retry or next flow step).",
        &|s| s.pending as f64,
    );
    gauge(
        out,
        "outboxd_queue_in_flight",
        "Rows claimed under a lease.",
        &|s| s.in_flight as f64,
    );
    gauge(out, "outboxd_queue_due", "Pending rows due now.", &|s| {
        s.due_now as f64
    });
    gauge(
        out,
        "outboxd_oldest_pending_age_seconds",
        "Age of the oldest unfinished row.",
        &|s| s.oldest_pending_ms.unwrap_or(0) as f64 / 1000.0,
    );
    gauge(
        out,
        "outboxd_dead_letter_rows",
        "Rows in the dead-letter table.",
        &|s| s.dead as f64,
    );
    gauge(
        out,
        "outboxd_hint_rows",
        "Delivered rows whose success reply carried a hint.",
        &|s| s.hints as f64,
    );
    gauge(
        out,
        "outboxd_sink_paused",
        "1 when an operator paused the sink.",
        &|s| u8::from(s.paused) as f64,
    );
    gauge(
        out,
        "outboxd_ignored_reinserts",
        "Producer inserts of an already known idempotency key, ignored (never sent twice).",
        &|s| s.ignored_reinserts as f64,
    );
}

/// `outboxd_sink_state{sink,state}`: 1 for the state the sink is in (`held` by this daemon's
/// health, else `paused` by an operator, else `active`), 0 for the others; and the platform
/// clock skew where a reply told it.
fn render_states(out: &mut String, stats: &[SinkStats], health: &HealthBoard) {
    let mut sinks: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for st in stats {
        sinks.entry(&st.sink).or_default().1 = st.paused;
    }
    for (name, v) in &health.sinks {
        sinks.entry(name).or_default().0 = v.is_held();
    }
    out.push_str("# HELP outboxd_sink_state 1 for the state the sink is in: active, paused (by an operator) or held (by its health).\n");
    out.push_str("# TYPE outboxd_sink_state gauge\n");
    for (name, (held, paused)) in &sinks {
        let current = if *held {
            "held"
        } else if *paused {
            "paused"
        } else {
            "active"
        };
        for state in ["active", "paused", "held"] {
            let _ = writeln!(
                out,
                "outboxd_sink_state{{sink=\"{}\",state=\"{state}\"}} {}",
                esc(name),
                u8::from(state == current)
            );
        }
    }
    // The worker's view of each sink, where it has a figure.
    let gauge =
        |out: &mut String, name: &str, help: &str, f: &dyn Fn(&HealthView) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (sink, v) in &health.sinks {
                if let Some(x) = f(v) {
                    let _ = writeln!(out, "{name}{{sink=\"{}\"}} {x}", esc(sink));
                }
            }
        };
    gauge(
        out,
        "outboxd_sink_window",
        "Rows the sink may have in flight now: the adaptive window, between 1 and its concurrency.",
        &|v| v.window.map(|w| w as f64),
    );
    gauge(
        out,
        "outboxd_sink_concurrency",
        "The ceiling of the sink's window (its `concurrency`).",
        &|v| v.ceiling.map(|c| c as f64),
    );
    gauge(
        out,
        "outboxd_platform_clock_skew_seconds",
        "The platform's clock minus ours, from its replies' Date header.",
        &|v| v.clock_skew_ms.map(|ms| ms as f64 / 1000.0),
    );
}

/// Escapes a label value (Prometheus text format).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.record("pyun", "delivered", Some(3_000), false);
        m.record("pyun", "delivered", Some(40_000), true);
        m.record("pyun", "retry", Some(2_000_000), false);
        let stats = vec![SinkStats {
            sink: "pyun".into(),
            pending: 7,
            dead: 2,
            ..Default::default()
        }];
        let text = m.render(&stats);
        assert!(
            text.contains("outboxd_deliveries_total{sink=\"pyun\",outcome=\"delivered\"} 2"),
            "{text}"
        );
        assert!(text.contains("outboxd_deliveries_total{sink=\"pyun\",outcome=\"retry\"} 1"));
        assert!(text.contains("outboxd_hints_total{sink=\"pyun\"} 1"));
        assert!(
            text.contains("outboxd_attempt_duration_seconds_bucket{sink=\"pyun\",le=\"0.005\"} 1")
        );
        assert!(
            text.contains("outboxd_attempt_duration_seconds_bucket{sink=\"pyun\",le=\"0.05\"} 2")
        );
        assert!(
            text.contains("outboxd_attempt_duration_seconds_bucket{sink=\"pyun\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("outboxd_queue_pending{sink=\"pyun\"} 7"));
        assert!(text.contains("outboxd_dead_letter_rows{sink=\"pyun\"} 2"));
    }

    #[test]
    fn sink_states_and_holds_are_exported() {
        let m = Metrics::default();
        let stats = vec![
            SinkStats {
                sink: "epeis".into(),
                paused: true,
                ..Default::default()
            },
            SinkStats {
                sink: "pyun".into(),
                ..Default::default()
            },
        ];
        let held = HealthView {
            state: "held",
            kind: Some("auth"),
            reason: Some("4pyun code 401".into()),
            since_ms: Some(now_ms() - 60_000),
            next_probe_ms: Some(now_ms() + 5_000),
            clock_skew_ms: Some(-1_200_000),
            holds: 1,
            window: Some(4),
            ceiling: Some(512),
        };
        m.set_health(HealthBoard {
            sinks: [("pyun".to_string(), held)].into(),
            link: None,
        });
        m.count_hold("pyun", "auth");
        let text = m.render(&stats);
        for line in [
            "outboxd_sink_state{sink=\"pyun\",state=\"held\"} 1",
            "outboxd_sink_state{sink=\"pyun\",state=\"active\"} 0",
            "outboxd_sink_state{sink=\"epeis\",state=\"paused\"} 1",
            "outboxd_sink_state{sink=\"epeis\",state=\"held\"} 0",
            "outboxd_sink_holds_total{sink=\"pyun\",kind=\"auth\"} 1",
            "outboxd_platform_clock_skew_seconds{sink=\"pyun\"} -1200",
            "outboxd_sink_window{sink=\"pyun\"} 4",
            "outboxd_sink_concurrency{sink=\"pyun\"} 512",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let lines = m.health().held_lines(now_ms());
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("pyun held (auth) for 1m"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("4pyun code 401; next probe in"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn failing_rounds_keep_their_first_reason_until_a_round_succeeds() {
        let m = Metrics::default();
        assert_eq!(m.failing_for_ms(), None);
        m.round_failed("claiming: locked");
        m.round_failed("claiming: still locked");
        let (ms, why) = m.failing_for_ms().unwrap();
        assert!(ms >= 0);
        assert_eq!(why, "claiming: locked");
        m.round_ok();
        assert_eq!(m.failing_for_ms(), None);
        m.round_failed("again");
        assert_eq!(m.failing_for_ms().unwrap().1, "again");
    }

    #[test]
    fn dead_letters_are_counted_by_sink_and_kind() {
        let m = Metrics::default();
        m.count_dead("pyun", "permanent");
        m.count_dead("pyun", "permanent");
        m.count_dead("epeis", "unknown");
        m.register_sinks(&["lbb".to_string()]);
        let text = m.render(&[]);
        assert!(text.contains("outboxd_dead_lettered_total{sink=\"lbb\",kind=\"unknown\"} 0"));
        assert!(text.contains("outboxd_hints_total{sink=\"lbb\"} 0"));
        assert!(text.contains("# TYPE outboxd_dead_lettered_total counter"));
        assert!(text.contains("outboxd_dead_lettered_total{sink=\"pyun\",kind=\"permanent\"} 2"));
        assert!(text.contains("outboxd_dead_lettered_total{sink=\"epeis\",kind=\"unknown\"} 1"));
    }

    #[test]
    fn every_labelled_series_of_a_configured_sink_starts_at_zero() {
        let m = Metrics::default();
        m.register_sinks(&["lbb".to_string()]);
        let text = m.render(&[]);
        let version = env!("CARGO_PKG_VERSION");
        assert!(text.contains(&format!("outboxd_build_info{{version=\"{version}\"}} 1")));
        for outcome in OUTCOMES {
            let line = format!("outboxd_deliveries_total{{sink=\"lbb\",outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        for line in [
            "outboxd_sink_holds_total{sink=\"lbb\",kind=\"auth\"} 0",
            "outboxd_sink_holds_total{sink=\"lbb\",kind=\"retry_after\"} 0",
            "outboxd_sink_holds_total{sink=\"link\",kind=\"link\"} 0",
            "outboxd_attempt_duration_seconds_bucket{sink=\"lbb\",le=\"+Inf\"} 0",
            "outboxd_attempt_duration_seconds_count{sink=\"lbb\"} 0",
            "outboxd_queue_pending{sink=\"lbb\"} 0",
            "outboxd_dead_letter_rows{sink=\"lbb\"} 0",
            "outboxd_sink_state{sink=\"lbb\",state=\"active\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("outboxd_sink_holds_total{sink=\"lbb\",kind=\"link\"}"));
        // A sink the store knows is listed once, with the store's figures.
        let text = m.render(&[SinkStats {
            sink: "lbb".into(),
            pending: 4,
            ..Default::default()
        }]);
        assert_eq!(
            text.matches("outboxd_queue_pending{sink=\"lbb\"}").count(),
            1
        );
        assert!(text.contains("outboxd_queue_pending{sink=\"lbb\"} 4"));
    }

    #[test]
    fn progress_totals_split_deliveries_from_failed_attempts() {
        let m = Metrics::default();
        for o in [
            "delivered",
            "completed",
            "retry",
            "permanent",
            "ambiguous",
            "panic",
            "continue",
            "released",
        ] {
            m.record("pyun", o, None, false);
        }
        m.record("epeis", "delivered", None, false);
        assert_eq!(m.progress_totals(), (3, 4));
    }
}
