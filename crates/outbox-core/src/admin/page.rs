//! The admin page: `/`, the state at a glance, and `/dead/{id}`, one dead letter with its
//! attempt history. Pure rendering from figures the listener already has; read-only (no
//! forms, no actions: changes stay in the CLI); no scripts, no external assets. Every
//! piece of data goes through [`Html`], which escapes it.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::chart::{self, Line};
use super::history::{History, Series};
use super::html::Html;
use crate::clock::age;
use crate::metrics::{HealthBoard, HealthView};
use crate::store::{AttemptRow, DeadRow, SinkStats};

/// Seconds between the page's own refreshes.
pub const REFRESH_SECS: u32 = 10;

/// How many of the latest dead letters `/` lists.
pub const DEAD_SHOWN: i64 = 20;

/// What `/` shows.
pub struct Overview<'a> {
    pub now: i64,
    pub stats: &'a [SinkStats],
    pub health: &'a HealthBoard,
    /// The latest dead letters, newest first.
    pub dead: &'a [DeadRow],
    pub history: &'a History,
}

const STYLE: &str = "<style>\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f4f4f4;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}td.t{white-space:nowrap}\
.state{font-weight:600}.active{color:#17702b}.paused{color:#8a6100}.held{color:#b3261e}\
.muted{color:#666}pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap;word-break:break-all;max-width:70em}\
figure{display:inline-block;margin:0 1.5em 1em 0}figcaption{font-weight:600}\
svg .frame{fill:#fafafa;stroke:#ccc}svg .axis{font-size:10px;fill:#666}\
.legend span{margin-right:1em}.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}\
</style>";

fn head(h: &mut Html, title: &str, refresh: bool) {
    h.raw("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    if refresh {
        h.raw("<meta http-equiv=\"refresh\"")
            .attr("content", REFRESH_SECS)
            .raw(">");
    }
    h.element("<title>", title, "</title>")
        .raw(STYLE)
        .raw("</head><body>");
}

/// An epoch-ms time as RFC 3339 (UTC, seconds).
fn at(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A sink's state as the page says it: held (by its health) first, as the
/// `outboxd_sink_state` metric does, then paused (by an operator), then active.
fn state(h: &mut Html, now: i64, stats: Option<&SinkStats>, health: Option<&HealthView>) {
    let paused = stats.is_some_and(|s| s.paused);
    match health.filter(|v| v.is_held()) {
        Some(v) => {
            h.raw("<span class=\"state held\">held</span>");
            held_detail(h, now, v);
            if paused {
                h.raw("<br><span class=\"state paused\">also paused</span>");
            }
        }
        None if paused => {
            h.raw("<span class=\"state paused\">paused</span>");
        }
        None => {
            h.raw("<span class=\"state active\">active</span>");
        }
    }
    if let Some(since) = stats.and_then(|s| s.unconfigured_since) {
        h.raw("<br><span class=\"muted\">not in this worker's config since ")
            .text(at(since))
            .raw("</span>");
    }
}

fn held_detail(h: &mut Html, now: i64, v: &HealthView) {
    h.raw(" (").text(v.kind.unwrap_or("?")).raw(")");
    if let Some(since) = v.since_ms {
        h.text(format!(" for {}", age(now - since)));
    }
    if let Some(reason) = &v.reason {
        h.raw("<br>").text(reason);
    }
    if let Some(p) = v.next_probe_ms {
        h.raw("<br><span class=\"muted\">next probe in ")
            .text(age((p - now).max(0)))
            .raw("</span>");
    }
}

/// One row of the sinks table: what a column may show.
pub struct SinkRow<'a> {
    pub now: i64,
    pub stats: &'a SinkStats,
    /// The worker's view of the sink (`None` before it published one, or for a sink only
    /// the database knows).
    pub health: Option<&'a HealthView>,
}

/// The sinks table's figure columns: one entry per column, so a new figure (from the
/// store's statistics or the worker's published view) is one line here.
type Column = (&'static str, fn(&SinkRow) -> String);

const COLUMNS: &[Column] = &[
    ("backlog", |r| r.stats.pending.to_string()),
    ("due", |r| r.stats.due_now.to_string()),
    ("in flight", |r| r.stats.in_flight.to_string()),
    ("window", |r| {
        match r.health.and_then(|h| h.window.zip(h.ceiling)) {
            Some((w, c)) => format!("{w}/{c}"),
            None => "-".into(),
        }
    }),
    ("retrying", |r| r.stats.retrying.to_string()),
    ("dead", |r| r.stats.dead.to_string()),
    ("hints", |r| r.stats.hints.to_string()),
    ("delivered (1 h)", |r| {
        r.stats.delivered_last_hour.to_string()
    }),
    ("oldest pending", |r| {
        r.stats
            .oldest_pending_ms
            .map(age)
            .unwrap_or_else(|| "-".into())
    }),
];

fn sinks_table(h: &mut Html, o: &Overview) {
    let mut sinks: BTreeMap<&str, (Option<&SinkStats>, Option<&HealthView>)> = BTreeMap::new();
    for s in o.stats {
        sinks.entry(&s.sink).or_default().0 = Some(s);
    }
    for (name, v) in &o.health.sinks {
        sinks.entry(name).or_default().1 = Some(v);
    }
    h.raw("<h2>Sinks</h2>");
    if sinks.is_empty() {
        h.raw("<p class=\"muted\">No sinks yet.</p>");
        return;
    }
    h.raw("<table id=\"sinks\"><tr><th>sink</th><th>state</th>");
    for (name, _) in COLUMNS {
        h.element("<th>", *name, "</th>");
    }
    h.raw("<th>last error</th></tr>");
    let empty = SinkStats::default();
    for (name, (stats, health)) in sinks {
        h.raw("<tr>").element("<td>", name, "</td>").raw("<td>");
        state(h, o.now, stats, health);
        h.raw("</td>");
        let s = stats.unwrap_or(&empty);
        let row = SinkRow {
            now: o.now,
            stats: s,
            health,
        };
        for (_, figure) in COLUMNS {
            h.element("<td class=\"n\">", figure(&row), "</td>");
        }
        h.element("<td>", s.last_error.as_deref().unwrap_or(""), "</td></tr>");
    }
    h.raw("</table>");
}

fn link_state(h: &mut Html, o: &Overview) {
    h.raw("<p id=\"link\">Link: ");
    match &o.health.link {
        Some(v) if v.is_held() => {
            h.raw("<span class=\"state held\">held</span>");
            held_detail(h, o.now, v);
        }
        Some(_) => {
            h.raw("<span class=\"state active\">up</span>");
        }
        None => {
            h.raw("<span class=\"muted\">not known yet</span>");
        }
    }
    h.raw("</p>");
}

fn charts(h: &mut Html, series: &Series, now: i64, per: &'static str, from: &'static str) {
    let window = series.window(now);
    let pick = |f: fn(&super::history::Slot) -> Option<f64>| -> Vec<Option<f64>> {
        window.iter().map(|s| s.as_ref().and_then(f)).collect()
    };
    chart::chart(
        h,
        per,
        from,
        &[
            Line {
                label: "delivered",
                color: "#17702b",
                values: pick(|s| Some(s.delivered as f64)),
            },
            Line {
                label: "failed attempts",
                color: "#b3261e",
                values: pick(|s| Some(s.failed as f64)),
            },
        ],
    );
    chart::chart(
        h,
        "Backlog (pending and in flight)",
        from,
        &[Line {
            label: "backlog",
            color: "#1f5fbf",
            values: pick(|s| s.backlog.map(|b| b as f64)),
        }],
    );
}

fn dead_table(h: &mut Html, o: &Overview) {
    h.raw("<h2>Latest dead letters</h2>");
    if o.dead.is_empty() {
        h.raw("<p class=\"muted\">None.</p>");
        return;
    }
    h.raw("<table id=\"dead\"><tr><th>id</th><th>dead at</th><th>sink</th><th>key</th><th>kind</th><th>attempts</th><th>reason</th></tr>");
    for d in o.dead {
        h.raw("<tr><td><a")
            .attr("href", format!("/dead/{}", d.id))
            .raw(">")
            .text(d.id)
            .raw("</a></td>")
            .element("<td class=\"t\">", at(d.dead_at), "</td>")
            .element("<td>", &d.sink, "</td>")
            .element("<td>", &d.idempotency_key, "</td>")
            .element("<td>", d.kind, "</td>")
            .element("<td class=\"n\">", d.attempts, "</td>")
            .element("<td>", &d.reason, "</td></tr>");
    }
    h.raw("</table>");
    if o.dead.len() as i64 >= DEAD_SHOWN {
        h.raw("<p class=\"muted\">The latest ")
            .text(DEAD_SHOWN)
            .raw(" only: <code>outboxd dead list</code> shows them all.</p>");
    }
}

/// `/`.
pub fn overview(o: &Overview) -> String {
    let mut h = Html::new();
    head(&mut h, "outboxd", true);
    h.raw("<h1>outboxd</h1><p class=\"muted\">")
        .text(format!(
            "{} · as of {} · refreshes every {REFRESH_SECS} s · read-only: act with the outboxd CLI",
            env!("CARGO_PKG_VERSION"),
            at(o.now)
        ))
        .raw("</p>");
    sinks_table(&mut h, o);
    link_state(&mut h, o);
    h.raw("<h2>Last hour</h2>");
    charts(
        &mut h,
        &o.history.hour,
        o.now,
        "Deliveries and failures per minute",
        "-1 h",
    );
    h.raw("<h2>Last day</h2>");
    charts(
        &mut h,
        &o.history.day,
        o.now,
        "Deliveries and failures per 10 minutes",
        "-24 h",
    );
    h.raw("<p class=\"muted\">Charts are kept in this daemon's memory since it started.</p>");
    dead_table(&mut h, o);
    h.raw("</body></html>");
    h.into_string()
}

/// Shows a JSON text indented when it parses, as it is otherwise.
fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

/// `/dead/{id}`: the row, its payload and its attempt history (replies as the store keeps
/// them: scrubbed of secrets when they were recorded).
pub fn dead_row(d: &DeadRow, attempts: &[AttemptRow]) -> String {
    let mut h = Html::new();
    head(&mut h, &format!("dead letter {}", d.id), false);
    h.raw("<p><a href=\"/\">← overview</a></p>")
        .element("<h1>Dead letter ", d.id, "</h1>")
        .raw("<table id=\"row\">");
    let mut field = |name: &'static str, value: String| {
        h.element("<tr><th>", name, "</th>")
            .element("<td>", value, "</td></tr>");
    };
    field("sink", d.sink.clone());
    field("idempotency key", d.idempotency_key.clone());
    field("event type", d.event_type.clone());
    field("kind", d.kind.to_string());
    field("reason", d.reason.clone());
    field("attempts", d.attempts.to_string());
    field("created", at(d.created_at));
    field("dead-lettered", at(d.dead_at));
    field("outbox id", d.outbox_id.to_string());
    if let Some(k) = &d.ordering_key {
        field("ordering key", k.clone());
    }
    if let Some(s) = &d.flow_state {
        field("flow state", s.clone());
    }
    if d.requeue_may_duplicate() {
        field(
            "requeue",
            "outcome unknown: the platform may have applied it; requeue only once you know it did not".into(),
        );
    }
    h.raw("</table><h2>Payload</h2>")
        .element("<pre id=\"payload\">", pretty(&d.payload), "</pre>");
    if let Some(c) = &d.correction_payload {
        h.raw("<h2>Correction</h2><p class=\"muted\">")
            .text(format!(
                "inserted again by the producer at {}; `dead requeue --latest` sends it",
                d.correction_at.map(at).unwrap_or_default()
            ))
            .raw("</p>")
            .element("<pre>", pretty(c), "</pre>");
    }
    if let Some(r) = &d.last_reply {
        h.raw("<h2>Last reply</h2>").element("<pre>", r, "</pre>");
    }
    h.raw("<h2>Attempts</h2>");
    if attempts.is_empty() {
        h.raw("<p class=\"muted\">None recorded.</p>");
    } else {
        h.raw("<table id=\"attempts\"><tr><th>#</th><th>started</th><th>took</th><th>HTTP</th><th>code</th><th>outcome</th><th>hint</th><th>error</th><th>reply</th></tr>");
        for a in attempts {
            let opt = |o: &Option<String>| o.clone().unwrap_or_default();
            h.element("<tr><td class=\"n\">", a.attempt, "</td>")
                .element("<td class=\"t\">", at(a.started_at), "</td>")
                .element("<td class=\"n\">", format!("{} ms", a.duration_ms), "</td>")
                .element(
                    "<td class=\"n\">",
                    a.http_status.map(|s| s.to_string()).unwrap_or_default(),
                    "</td>",
                )
                .element("<td>", opt(&a.reply_code), "</td>")
                .element("<td>", &a.outcome, "</td>")
                .element("<td>", opt(&a.hint), "</td>")
                .element("<td>", opt(&a.error), "</td>")
                .element("<td><pre>", opt(&a.reply), "</pre></td></tr>");
        }
        h.raw("</table>");
    }
    h.raw("</body></html>");
    h.into_string()
}

/// A page for an error (`404`, `503`), saying what went wrong.
pub fn error_page(title: &'static str, message: &str) -> String {
    let mut h = Html::new();
    head(&mut h, title, false);
    h.element("<h1>", title, "</h1>")
        .element("<p id=\"error\">", message, "</p>")
        .raw("<p><a href=\"/\">overview</a></p></body></html>");
    h.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeadKind;

    const EVIL: &str = r#"<script>alert(1)</script> "quotes" & 'more' <b>"#;

    fn evil_dead() -> DeadRow {
        DeadRow {
            id: 7,
            outbox_id: 70,
            sink: EVIL.into(),
            event_type: EVIL.into(),
            idempotency_key: EVIL.into(),
            payload: format!("{{\"vin\": {}}}", serde_json::to_string(EVIL).unwrap()),
            ordering_key: Some(EVIL.into()),
            created_at: 1_700_000_000_000,
            attempts: 3,
            kind: DeadKind::Unknown,
            reason: EVIL.into(),
            last_reply: Some(EVIL.into()),
            dead_at: 1_700_000_100_000,
            flow_state: Some(EVIL.into()),
            correction_payload: Some(EVIL.into()),
            correction_at: Some(1_700_000_200_000),
        }
    }

    /// No markup of the data made it through: every `<` of the page opens one of the
    /// page's own tags.
    fn assert_no_injection(page: &str) {
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("'more'"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
    }

    #[test]
    fn every_field_of_the_overview_is_escaped() {
        let now = 1_700_000_300_000;
        let stats = vec![SinkStats {
            sink: EVIL.into(),
            pending: 3,
            paused: true,
            last_error: Some(EVIL.into()),
            ..Default::default()
        }];
        let held = HealthView {
            state: "held",
            kind: Some("auth"),
            reason: Some(EVIL.into()),
            since_ms: Some(now - 60_000),
            next_probe_ms: Some(now + 5_000),
            clock_skew_ms: None,
            holds: 1,
            window: None,
            ceiling: None,
        };
        let health = HealthBoard {
            sinks: [(EVIL.to_string(), held.clone())].into(),
            link: Some(held),
        };
        let dead = vec![evil_dead()];
        let mut history = History::default();
        history.sample(now - 30_000, 5, 1, Some(3));
        history.sample(now, 9, 2, Some(0));
        let page = overview(&Overview {
            now,
            stats: &stats,
            health: &health,
            dead: &dead,
            history: &history,
        });
        assert_no_injection(&page);
        assert!(page.contains("http-equiv=\"refresh\""));
        assert!(page.contains("href=\"/dead/7\""));
        assert!(
            page.contains("class=\"state held\">held</span> (auth) for 1m"),
            "{page}"
        );
        assert!(page.contains("also paused"));
        assert!(
            page.contains("<svg") && page.contains("<polyline"),
            "{page}"
        );
        assert!(!page.contains("<form") && !page.contains("src="), "{page}");
    }

    #[test]
    fn every_field_of_a_dead_row_is_escaped() {
        let attempts = vec![AttemptRow {
            attempt: 1,
            started_at: 1_700_000_000_000,
            duration_ms: 12,
            http_status: Some(200),
            reply_code: Some(EVIL.into()),
            hint: Some(EVIL.into()),
            outcome: EVIL.into(),
            error: Some(EVIL.into()),
            reply: Some(EVIL.into()),
        }];
        let page = dead_row(&evil_dead(), &attempts);
        assert_no_injection(&page);
        assert!(page.contains("&quot;quotes&quot;"));
        assert!(page.contains("&amp; &#39;more&#39;"));
        assert!(page.contains("<td>unknown</td>"), "the kind");
        assert!(!page.contains("http-equiv"), "a row page does not refresh");
        let error = error_page("Not found", EVIL);
        assert_no_injection(&error);
    }

    #[test]
    fn states_read_active_paused_and_held() {
        let now = 1_000_000;
        let page = |stats: SinkStats, health: Option<HealthView>| {
            let health = HealthBoard {
                sinks: health.map(|v| ("s".to_string(), v)).into_iter().collect(),
                link: None,
            };
            overview(&Overview {
                now,
                stats: &[SinkStats {
                    sink: "s".into(),
                    ..stats
                }],
                health: &health,
                dead: &[],
                history: &History::default(),
            })
        };
        assert!(page(SinkStats::default(), None).contains("state active\">active"));
        let paused = SinkStats {
            paused: true,
            ..Default::default()
        };
        let p = page(paused, None);
        assert!(p.contains("state paused\">paused"), "{p}");
        assert!(p.contains("Link: <span class=\"muted\">not known yet"));
        let held = HealthView {
            state: "held",
            kind: Some("retry_after"),
            reason: Some("Retry-After 120 s".into()),
            since_ms: Some(now),
            next_probe_ms: Some(now + 120_000),
            clock_skew_ms: None,
            holds: 1,
            window: Some(4),
            ceiling: Some(256),
        };
        let p = page(SinkStats::default(), Some(held));
        assert!(p.contains("held</span> (retry_after)"), "{p}");
        // The in-flight window beside its ceiling.
        assert!(p.contains(">4/256</td>"), "{p}");
        assert!(
            p.contains("Retry-After 120 s<br><span class=\"muted\">next probe in 2m"),
            "{p}"
        );
    }
}
