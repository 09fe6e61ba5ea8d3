//! Operator commands: enqueue, status, show, dead-letter inspection, requeue and purge,
//! pause and resume. Each prints an aligned table (colour only on a terminal) or, with
//! `--json`, one JSON document on stdout; errors say what to do next.

use std::io::Read;

use outbox_core::clock::{self, now_ms};
use outbox_core::event::{EventType, NewEvent};
use outbox_core::store::{AttemptRow, DeadRow, RowView, SinkStats, Store, StoreError};
use serde_json::json;

use crate::cli::{DeadCommand, EnqueueArgs, SinkArg};

mod bulk;
mod list;

use crate::table::{self, age, clip, relative, Align, Paint};
pub use bulk::{cancel, retry_now};
pub use list::list;

pub type CmdResult = Result<(), String>;

/// Widest a free-text cell (reason, hint, error) gets in a table; `show` prints it whole.
const TEXT_COLUMN: usize = 72;

fn store_err(e: StoreError) -> String {
    match e {
        StoreError::Database(_) => format!(
            "{e}\n  check that the database is reachable and that database_url (config, or --database-url) points at the outbox"
        ),
        e => e.to_string(),
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("plain data serialises")
    );
}

pub async fn enqueue(store: &Store, a: EnqueueArgs) -> CmdResult {
    let event_type: EventType = a.event_type.parse()?;
    let payload = match a.payload.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("reading the payload from stdin: {e}"))?;
            s
        }
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("reading the payload file {path}: {e}"))?,
        None => a.payload,
    };
    serde_json::from_str::<serde_json::Value>(&payload).map_err(|e| {
        format!("the payload is not valid JSON: {e}\n  pass JSON text, @FILE or @- (stdin)")
    })?;
    let not_before = match a.not_before {
        Some(t) => {
            let at = humantime::parse_rfc3339_weak(&t)
                .map_err(|e| format!("--not-before {t:?}: {e} (use 2026-11-24T10:00:00Z)"))?;
            Some(
                at.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
            )
        }
        None => None,
    };
    let ev = NewEvent {
        sink: a.sink,
        event_type,
        idempotency_key: a.key,
        payload,
        ordering_key: a.ordering_key,
        not_before,
        supersede_key: a.supersede_key,
    };
    let inserted = store.enqueue(&ev).await.map_err(store_err)?;
    if a.json {
        print_json(&json!({
            "enqueued": inserted,
            "sink": ev.sink,
            "event_type": ev.event_type.as_str(),
            "idempotency_key": ev.idempotency_key,
        }));
    } else if inserted {
        println!(
            "enqueued {} {} for sink {}",
            ev.event_type, ev.idempotency_key, ev.sink
        );
    } else {
        println!(
            "already in the outbox: sink {} key {} (ignored; `outboxd show --sink {} --key {}` shows it)",
            ev.sink, ev.idempotency_key, ev.sink, ev.idempotency_key
        );
    }
    Ok(())
}

/// `status`: the figures from the database; each sink's health (held or not) from the
/// running daemon's admin listener (`admin_listen`), which alone knows it.
pub async fn status(store: &Store, json_out: bool, admin_listen: Option<&str>) -> CmdResult {
    let now = now_ms();
    let stats = store.stats(now).await.map_err(store_err)?;
    let health = daemon_health(admin_listen).await;
    if json_out {
        let mut all = serde_json::to_value(&stats).expect("plain data serialises");
        for s in all.as_array_mut().into_iter().flatten() {
            let name = s["sink"].as_str().unwrap_or_default().to_string();
            s["health"] = match &health {
                Ok(h) => h["sinks"][&name].clone(),
                Err(why) => json!({"state": "unknown", "reason": why}),
            };
        }
        print_json(&all);
        return Ok(());
    }
    if stats.is_empty() {
        println!("the outbox is empty: no rows, no dead letters, no paused sinks");
        return Ok(());
    }
    print!("{}", status_table(&stats, &health, Paint::stdout()));
    Ok(())
}

/// The daemon's `/status.json` (each sink's health), read from its admin listener.
async fn daemon_health(listen: Option<&str>) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = listen
        .filter(|l| !l.trim().is_empty())
        .ok_or("daemon not reachable: no admin listener configured (admin.listen)")?;
    if addr.ends_with(":0") {
        return Err(format!(
            "daemon not reachable: admin.listen = {addr:?} picks a port at random"
        ));
    }
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(b"GET /status.json HTTP/1.0\r\nHost: outboxd\r\n\r\n")
            .await?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(std::time::Duration::from_secs(2), fetch)
        .await
        .map_err(|_| format!("daemon not reachable at {addr}: no answer within 2 s"))?
        .map_err(|e| format!("daemon not reachable at {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).map_err(|e| format!("daemon at {addr} answered no health ({e})"))
}

/// The text form of `status`: one line per sink, then what needs a look.
fn status_table(
    stats: &[SinkStats],
    health: &Result<serde_json::Value, String>,
    p: Paint,
) -> String {
    let held = |sink: &str| match health {
        Ok(h) if h["sinks"][sink]["state"] == "held" => Some(&h["sinks"][sink]),
        _ => None,
    };
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                p.bold(&s.sink),
                if held(&s.sink).is_some() {
                    p.red("held")
                } else if s.paused {
                    p.yellow("paused")
                } else {
                    p.green("active")
                },
                s.pending.to_string(),
                s.due_now.to_string(),
                s.in_flight.to_string(),
                window(health, &s.sink),
                s.oldest_pending_ms.map(age).unwrap_or_else(|| "-".into()),
                p.warn_count(s.retrying),
                s.delivered_last_hour.to_string(),
                s.delivered.to_string(),
                s.done.to_string(),
                p.bad_count(s.dead),
                p.warn_count(s.hints),
            ]
        })
        .collect();
    use Align::{Left as L, Right as R};
    let mut out = table::render_aligned(
        &[
            "SINK",
            "STATE",
            "PENDING",
            "DUE",
            "IN FLIGHT",
            "WINDOW",
            "OLDEST",
            "RETRYING",
            "LAST HOUR",
            "DELIVERED",
            "DONE",
            "DEAD",
            "HINTS",
        ],
        &[L, L, R, R, R, R, R, R, R, R, R, R, R],
        &rows,
    );
    let mut notes = Vec::new();
    for s in stats {
        if let Some(e) = &s.last_error {
            notes.push(format!(
                "{}: last error: {}",
                s.sink,
                p.red(&clip(e, 2 * TEXT_COLUMN))
            ));
        }
        if let Some(h) = held(&s.sink) {
            notes.push(held_note(&s.sink, h, now_ms()));
        }
        if let Ok(h) = health {
            if let Some(skew) = h["sinks"][&s.sink]["clock_skew_ms"].as_i64() {
                if skew.abs() >= 60_000 {
                    notes.push(format!(
                        "{}: {}",
                        s.sink,
                        p.yellow(&outbox_core::health::clock_reason(skew))
                    ));
                }
            }
        }
        if s.paused {
            notes.push(format!(
                "{}: paused, {} row(s) held; `outboxd resume {}` delivers them again",
                s.sink,
                s.pending + s.in_flight,
                s.sink
            ));
        }
        if s.dead > 0 {
            notes.push(format!(
                "{}: {} dead-lettered row(s); `outboxd dead list --sink {}` shows why",
                s.sink, s.dead, s.sink
            ));
        }
        if let Some(since) = s.unconfigured_since {
            notes.push(format!(
                "{}: not in the worker's config: {} row(s) held since {}; add [sinks.{}] or fix the producer (they are dead-lettered after max_age)",
                s.sink,
                s.pending,
                relative(since, now_ms()),
                s.sink
            ));
        }
        if s.cancelled > 0 {
            notes.push(format!(
                "{}: {} row(s) cancelled by an operator (never sent; kept until retention); `outboxd list --sink {} --state cancelled` lists them",
                s.sink, s.cancelled, s.sink
            ));
        }
        if s.ignored_reinserts > 0 {
            notes.push(format!(
                "{}: {} insert(s) of an already known key ignored (never sent twice); `outboxd dead show` lists corrections",
                s.sink, s.ignored_reinserts
            ));
        }
        if s.hints > 0 {
            notes.push(format!(
                "{}: {} delivered row(s) carried a platform hint (accepted with a warning); the daemon logs each one",
                s.sink, s.hints
            ));
        }
    }
    if let Err(why) = health {
        notes.push(format!("sink health: state unknown ({why})"));
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

/// The sink's in-flight window as the daemon sees it now, "WINDOW/CEILING" ("-" when no
/// daemon answered).
fn window(health: &Result<serde_json::Value, String>, sink: &str) -> String {
    let Ok(h) = health else {
        return "-".into();
    };
    let v = &h["sinks"][sink];
    match (v["window"].as_u64(), v["ceiling"].as_u64()) {
        (Some(w), Some(c)) => format!("{w}/{c}"),
        _ => "-".into(),
    }
}

/// "pyun: held (auth) since 2m 3s: 4pyun code 401 ...; next probe in 4s"
fn held_note(sink: &str, h: &serde_json::Value, now: i64) -> String {
    let mut note = format!(
        "{sink}: held ({}) for {}: {}",
        h["kind"].as_str().unwrap_or("?"),
        clock::age(now - h["since_ms"].as_i64().unwrap_or(now)),
        h["reason"].as_str().unwrap_or("")
    );
    if let Some(p) = h["next_probe_ms"].as_i64() {
        note.push_str(&format!("; next probe in {}", clock::age((p - now).max(0))));
    }
    note.push_str("; its rows wait, using no attempts");
    note
}

/// `show`: the row in the outbox, or else the latest dead row with that key (saying so).
pub async fn show(store: &Store, sink: &str, key: &str, json_out: bool) -> CmdResult {
    let row = store.row(sink, key).await.map_err(store_err)?;
    let Some(row) = row else {
        let f = outbox_core::store::filter::RowFilter {
            sink: Some(sink.to_string()),
            key: Some(key.to_string()),
            ..Default::default()
        };
        let dead = store
            .ops()
            .find_dead(&f, 1, true)
            .await
            .map_err(store_err)?;
        let Some(d) = dead.into_iter().next() else {
            return Err(format!(
                "no row for sink {sink} key {key:?} in the outbox or the dead letters\n  it may have been pruned after its retention, or the sink or key is misspelt: `outboxd list --sink {sink}` and `outboxd dead list --sink {sink}` show what there is"
            ));
        };
        if !json_out {
            println!(
                "{sink} / {key} is not in the outbox: it was dead-lettered (dead row {}, `outboxd dead show {}`)\n",
                d.id, d.id
            );
        }
        return dead_show(store, d.id, json_out).await;
    };
    let attempts = store.attempts(row.id).await.map_err(store_err)?;
    if json_out {
        print_json(&json!({"place": "outbox", "row": row, "attempts": attempts}));
        return Ok(());
    }
    let p = Paint::stdout();
    let now = now_ms();
    println!(
        "{} {} / {} ({}), outbox row {}",
        p.bold("row"),
        row.sink,
        row.idempotency_key,
        row.event_type,
        row.id
    );
    let due = match row.status.as_str() {
        "pending" if row.next_attempt_at > now => {
            format!(", next attempt {}", relative(row.next_attempt_at, now))
        }
        "pending" => ", due now".to_string(),
        _ => String::new(),
    };
    let mut fields = vec![(
        "status",
        format!("{}, {} attempt(s){due}", row.status, row.attempts),
    )];
    if let Some(h) = &row.hint {
        fields.push(("hint", p.yellow(h)));
    }
    if let Some(r) = &row.result {
        fields.push(("result", r.clone()));
    }
    if row.status == "cancelled" {
        // Who cancelled it and why (the cancel note), and when.
        let f = outbox_core::store::filter::RowFilter {
            ids: vec![row.id],
            ..Default::default()
        };
        let listed = store.ops().find_rows(&f, 1).await.map_err(store_err)?;
        if let Some(r) = listed.first() {
            let when = r.finished_at.map(|t| relative(t, now)).unwrap_or_default();
            let note = r.reason.clone().unwrap_or_default();
            fields.push(("cancelled", format!("{when}: {note}")));
        }
    }
    if let Some(e) = &row.last_error {
        fields.push(("last error", p.red(e)));
    }
    print!("{}", key_values(&fields));
    print_attempts(&attempts, now, p);
    Ok(())
}

/// `name  value` lines with the values lined up.
fn key_values(fields: &[(&str, String)]) -> String {
    let w = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

fn print_attempts(attempts: &[AttemptRow], now: i64, p: Paint) {
    if attempts.is_empty() {
        println!("no attempts recorded");
        return;
    }
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            let detail = a
                .hint
                .as_deref()
                .map(|h| p.yellow(&clip(h, TEXT_COLUMN)))
                .or_else(|| a.error.as_deref().map(|e| p.red(&clip(e, TEXT_COLUMN))))
                .unwrap_or_default();
            vec![
                a.attempt.to_string(),
                relative(a.started_at, now),
                format!("{}ms", a.duration_ms),
                a.http_status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                a.reply_code.clone().unwrap_or_else(|| "-".into()),
                a.outcome.clone(),
                detail,
            ]
        })
        .collect();
    use Align::{Left as L, Right as R};
    println!();
    print!(
        "{}",
        table::render_aligned(
            &[
                "ATTEMPT",
                "WHEN",
                "TOOK",
                "HTTP",
                "CODE",
                "OUTCOME",
                "HINT / ERROR"
            ],
            &[R, L, R, R, L, L, L],
            &rows
        )
    );
    let replies: Vec<String> = attempts
        .iter()
        .filter_map(|a| {
            a.reply.as_deref().filter(|r| !r.is_empty()).map(|r| {
                format!(
                    "  attempt {} ({}): {r}",
                    a.attempt,
                    relative(a.started_at, now)
                )
            })
        })
        .collect();
    if !replies.is_empty() {
        println!("\nreplies:");
        for r in replies {
            println!("{r}");
        }
    }
}

pub async fn dead(store: &Store, cmd: DeadCommand) -> CmdResult {
    match cmd {
        DeadCommand::List {
            filter,
            kind,
            limit,
            json,
        } => list::dead_list(store, filter, kind, limit, json).await,
        DeadCommand::Show { id, json } => dead_show(store, id, json).await,
        DeadCommand::Requeue {
            ids,
            filter,
            kind,
            all,
            dry_run,
            force,
            latest,
            json,
        } => {
            let a = bulk::Requeue {
                ids,
                filter,
                kind,
                all,
                force,
                latest,
                dry_run,
                json,
            };
            bulk::requeue(store, a).await
        }
        DeadCommand::Purge {
            older_than,
            filter,
            kind,
            all,
            force,
            dry_run,
            yes,
            json,
        } => {
            let a = bulk::Purge {
                older_than,
                filter,
                kind,
                all,
                force,
                dry_run,
                yes,
                json,
            };
            bulk::purge(store, a).await
        }
    }
}

async fn dead_show(store: &Store, id: i64, json: bool) -> CmdResult {
    let d = store.dead_get(id).await.map_err(store_err)?.ok_or_else(|| {
        format!(
            "no dead-lettered row with id {id}\n  `outboxd dead list` shows the ids; it may have been requeued or purged already"
        )
    })?;
    let attempts = store.attempts(d.outbox_id).await.map_err(store_err)?;
    if json {
        print_json(&json!({"place": "dead", "dead": d, "attempts": attempts}));
        return Ok(());
    }
    let p = Paint::stdout();
    let now = now_ms();
    println!(
        "{} {} / {} ({}), dead row {}, outbox row {}",
        p.bold("dead"),
        d.sink,
        d.idempotency_key,
        d.event_type,
        d.id,
        d.outbox_id
    );
    let mut fields = vec![
        ("created", relative(d.created_at, now)),
        (
            "dead-lettered",
            format!(
                "{}, after {} attempt(s)",
                relative(d.dead_at, now),
                d.attempts
            ),
        ),
        ("kind", d.kind.to_string()),
        ("reason", p.red(&d.reason)),
    ];
    if let Some(k) = &d.ordering_key {
        fields.push(("ordering key", k.clone()));
    }
    if let Some(r) = &d.last_reply {
        fields.push(("last reply", r.clone()));
    }
    print!("{}", key_values(&fields));
    println!("\npayload:");
    let pretty = serde_json::from_str::<serde_json::Value>(&d.payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| d.payload.clone());
    for line in pretty.lines() {
        println!("  {line}");
    }
    if let Some(corrected) = &d.correction_payload {
        let when = d
            .correction_at
            .map(|t| relative(t, now))
            .unwrap_or_default();
        println!(
            "\n{} (the producer inserted this key again with another payload, {when}; \
             `outboxd dead requeue {} --latest` sends it):",
            p.bold("correction"),
            d.id
        );
        let pretty = serde_json::from_str::<serde_json::Value>(corrected)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| corrected.clone());
        for line in pretty.lines() {
            println!("  {line}");
        }
    }
    print_attempts(&attempts, now, p);
    println!(
        "\nonce the cause is fixed: `outboxd dead requeue {}` (attempts start again, this history is kept)",
        d.id
    );
    Ok(())
}

/// Why a requeue was refused, in words that say what to do.
async fn refusal(store: &Store, id: i64, e: StoreError) -> Result<String, String> {
    Ok(match e {
        StoreError::NotFound(_) => format!(
            "dead row {id}: not found (already requeued or purged? `outboxd dead list` shows the ids)"
        ),
        StoreError::Conflict(_) => {
            let Some(d) = store.dead_get(id).await.map_err(store_err)? else {
                return Ok(format!("dead row {id}: {e}"));
            };
            match store.row(&d.sink, &d.idempotency_key).await.map_err(store_err)? {
                Some(r) => key_back(id, &d, &r),
                None => format!("dead row {id} ({} / {}): {e}", d.sink, d.idempotency_key),
            }
        }
        e => return Err(store_err(e)),
    })
}

/// A dead row's key is back in the outbox (row `r`): requeueing would send it twice.
fn key_back(id: i64, d: &DeadRow, r: &RowView) -> String {
    format!(
        "dead row {id} ({} / {}) not requeued: the producer sent this key again and the outbox has it (row {}, {}, {} attempt(s)); requeueing would deliver it twice. Nothing to do: {}",
        d.sink,
        d.idempotency_key,
        r.id,
        r.status,
        r.attempts,
        match r.status.as_str() {
            "delivered" | "done" | "superseded" | "cancelled" => "that row is final already",
            _ => "the daemon delivers that row",
        }
    )
}

/// `pause` / `resume`. A sink name the config does not have is an error (a typo would
/// otherwise pause nothing and say it worked), listing the configured sinks; `resume` of a
/// paused sink is always allowed (its config section may be gone). Without a config
/// (`--database-url` alone) the database's sinks stand in: a name no row, dead row or
/// pause has ever used is an error. `--force` acts anyway (a sink only another worker's
/// config has).
pub async fn pause(
    store: &Store,
    sink: &SinkArg,
    paused: bool,
    note: Option<&str>,
    configured: Option<&[String]>,
) -> CmdResult {
    let name = sink.name.as_str();
    let was_paused = store
        .paused_sinks()
        .await
        .map_err(store_err)?
        .iter()
        .any(|s| s == name);
    let verb = if paused { "pause" } else { "resume" };
    // Resuming a paused sink always works: its config section may be gone.
    let resumes_a_pause = was_paused && !paused;
    if !sink.force && !resumes_a_pause {
        match configured {
            Some(sinks) if !sinks.iter().any(|s| s == name) => {
                return Err(format!(
                    "sink {name:?} is not in the config: configured sinks are {}; check the name against the config's [sinks.NAME] sections (`outboxd {verb} {name} --force` if only another worker's config has it)",
                    if sinks.is_empty() { "none".to_string() } else { sinks.join(", ") }
                ));
            }
            Some(_) => {}
            None => {
                let seen = store.ops().sinks_seen().await.map_err(store_err)?;
                if !seen.iter().any(|s| s == name) {
                    return Err(format!(
                        "sink {name:?} has no rows, dead rows or pauses in this database (known there: {}) and no config was read to check the name against; check the name, or `outboxd {verb} {name} --force`",
                        if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
                    ));
                }
            }
        }
    }
    store
        .set_paused(name, paused, note)
        .await
        .map_err(store_err)?;
    if sink.json {
        print_json(&json!({"sink": name, "paused": paused, "was_paused": was_paused}));
        return Ok(());
    }
    match (paused, was_paused) {
        (true, false) => println!(
            "sink {name} paused: from now on no worker claims its rows (rows already in flight finish); no attempts are used while paused. `outboxd resume {name}` to deliver again"
        ),
        (true, true) => println!("sink {name} was already paused; note updated"),
        (false, true) => println!("sink {name} resumed: the daemon delivers its rows again within one poll interval"),
        (false, false) => println!("sink {name} was not paused; nothing changed"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_lines_up_and_says_what_next() {
        let stats = vec![
            SinkStats {
                sink: "pyun".into(),
                pending: 12,
                due_now: 3,
                oldest_pending_ms: Some(185_000),
                delivered: 1500,
                delivered_last_hour: 40,
                dead: 2,
                hints: 1,
                ..Default::default()
            },
            SinkStats {
                sink: "epeis".into(),
                paused: true,
                pending: 1,
                retrying: 1,
                last_error: Some("HTTP 503".into()),
                ..Default::default()
            },
        ];
        let health = Ok(json!({"sinks": {"pyun": {
            "state": "held", "kind": "auth", "reason": "4pyun code 401 签名验证不通过",
            "since_ms": now_ms() - 125_000, "next_probe_ms": now_ms() + 4_500,
            "clock_skew_ms": -1_200_000
        }}}));
        let text = status_table(&stats, &health, Paint::with(false));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("SINK   STATE   PENDING  DUE"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("pyun   held         12    3"),
            "{text}"
        );
        assert!(
            text.contains(
                "pyun: held (auth) for 2m 5s: 4pyun code 401 签名验证不通过; next probe in 4s"
            ),
            "{text}"
        );
        assert!(
            text.contains("pyun: local clock is 20 min off the platform's (ahead of it)"),
            "{text}"
        );
        let unknown = status_table(
            &stats,
            &Err("daemon not reachable".into()),
            Paint::with(false),
        );
        assert!(unknown.contains("pyun   active"), "{unknown}");
        assert!(unknown.contains("sink health: state unknown (daemon not reachable)"));
        assert!(lines[1].contains("3m 5s"), "{text}");
        assert!(
            lines[2].starts_with("epeis  paused        1    0"),
            "{text}"
        );
        assert!(text.contains("epeis: last error: HTTP 503"));
        assert!(text.contains("`outboxd resume epeis`"));
        assert!(text.contains("`outboxd dead list --sink pyun`"));
        assert!(!text.contains('\x1b'));
        // Every data line is as wide as the header says.
        let col = lines[0].find("DEAD").unwrap() + "DEAD".len();
        assert_eq!(&lines[1][col - 1..col], "2", "{text}");
    }

    #[test]
    fn key_values_line_up() {
        let kv = key_values(&[("reason", "400".into()), ("last reply", "x".into())]);
        assert_eq!(kv, "reason      400\nlast reply  x\n");
    }
}
