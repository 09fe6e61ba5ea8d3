//! Operator commands: enqueue, status, show, dead-letter inspection and requeue, pause.

use std::io::Read;

use outbox_core::clock::{self, now_ms};
use outbox_core::event::{EventType, NewEvent};
use outbox_core::store::{Store, StoreError};
use serde_json::json;

use crate::cli::{DeadCommand, EnqueueArgs};
use crate::table;

pub type CmdResult = Result<(), String>;

fn ago(t: i64) -> String {
    format!("{} ago", clock::age(now_ms() - t))
}

fn store_err(e: StoreError) -> String {
    e.to_string()
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
    serde_json::from_str::<serde_json::Value>(&payload)
        .map_err(|e| format!("the payload is not valid JSON: {e}"))?;
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
    };
    if store.enqueue(&ev).await.map_err(store_err)? {
        println!(
            "enqueued {} {} for sink {}",
            ev.event_type, ev.idempotency_key, ev.sink
        );
    } else {
        println!(
            "already in the outbox: sink {} key {} (ignored)",
            ev.sink, ev.idempotency_key
        );
    }
    Ok(())
}

pub async fn status(store: &Store, json_out: bool) -> CmdResult {
    let stats = store.stats(now_ms()).await.map_err(store_err)?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).expect("serialisable")
        );
        return Ok(());
    }
    if stats.is_empty() {
        println!("the outbox is empty");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.sink.clone(),
                if s.paused {
                    "paused".into()
                } else {
                    "active".into()
                },
                s.pending.to_string(),
                s.in_flight.to_string(),
                s.due_now.to_string(),
                s.oldest_pending_ms
                    .map(clock::age)
                    .unwrap_or_else(|| "-".into()),
                s.delivered.to_string(),
                s.delivered_last_hour.to_string(),
                s.done.to_string(),
                s.retrying.to_string(),
                s.dead.to_string(),
                s.hints.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "SINK",
                "STATE",
                "PENDING",
                "IN FLIGHT",
                "DUE",
                "OLDEST",
                "DELIVERED",
                "LAST HOUR",
                "DONE",
                "RETRYING",
                "DEAD",
                "HINTS"
            ],
            &rows
        )
    );
    for s in &stats {
        if let Some(e) = &s.last_error {
            println!("{}: last error: {e}", s.sink);
        }
    }
    Ok(())
}

pub async fn show(store: &Store, sink: &str, key: &str, json_out: bool) -> CmdResult {
    let row = store.row(sink, key).await.map_err(store_err)?;
    let Some(row) = row else {
        return Err(format!("no row for sink {sink} key {key:?} in the outbox (it may have been dead-lettered: see `outboxd dead list --sink {sink}`)"));
    };
    let attempts = store.attempts(row.id).await.map_err(store_err)?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"row": row, "attempts": attempts}))
                .expect("serialisable")
        );
        return Ok(());
    }
    println!(
        "row {} sink {} key {} ({}): {}, {} attempt(s)",
        row.id, row.sink, row.idempotency_key, row.event_type, row.status, row.attempts
    );
    if let Some(h) = &row.hint {
        println!("hint: {h}");
    }
    if let Some(r) = &row.result {
        println!("result: {r}");
    }
    if let Some(e) = &row.last_error {
        println!("last error: {e}");
    }
    print_attempts(&attempts);
    Ok(())
}

fn print_attempts(attempts: &[outbox_core::store::AttemptRow]) {
    if attempts.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                ago(a.started_at),
                format!("{}ms", a.duration_ms),
                a.http_status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                a.reply_code.clone().unwrap_or_else(|| "-".into()),
                a.outcome.clone(),
                a.hint
                    .clone()
                    .or_else(|| a.error.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ATTEMPT",
                "WHEN",
                "TOOK",
                "HTTP",
                "CODE",
                "OUTCOME",
                "HINT / ERROR"
            ],
            &rows
        )
    );
}

pub async fn dead(store: &Store, cmd: DeadCommand) -> CmdResult {
    match cmd {
        DeadCommand::List {
            sink,
            since,
            reason,
            limit,
            json,
        } => {
            let since_ms = since.map(|d| now_ms() - clock::ms(d.into()));
            let rows = store
                .dead_list(sink.as_deref(), since_ms, reason.as_deref(), limit)
                .await
                .map_err(store_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).expect("serialisable")
                );
                return Ok(());
            }
            if rows.is_empty() {
                println!("no dead-lettered rows");
                return Ok(());
            }
            let table_rows: Vec<Vec<String>> = rows
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.sink.clone(),
                        d.idempotency_key.clone(),
                        d.attempts.to_string(),
                        ago(d.dead_at),
                        outbox_core::outcome::truncate(&d.reason, 160),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["ID", "SINK", "KEY", "ATTEMPTS", "DEAD", "REASON"],
                    &table_rows
                )
            );
            println!("\n`outboxd dead show ID` for details; `outboxd dead requeue ID` once the cause is fixed.");
            Ok(())
        }
        DeadCommand::Show { id, json } => {
            let d = store
                .dead_get(id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    format!("no dead-lettered row with id {id} (see `outboxd dead list`)")
                })?;
            let attempts = store.attempts(d.outbox_id).await.map_err(store_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"dead": d, "attempts": attempts}))
                        .expect("serialisable")
                );
                return Ok(());
            }
            println!(
                "dead row {} (outbox row {}), sink {}, {} {}",
                d.id, d.outbox_id, d.sink, d.event_type, d.idempotency_key
            );
            println!(
                "created {}, dead-lettered {} after {} attempt(s)",
                ago(d.created_at),
                ago(d.dead_at),
                d.attempts
            );
            println!("reason: {}", d.reason);
            if let Some(r) = &d.last_reply {
                println!("last reply: {r}");
            }
            println!("payload: {}", d.payload);
            print_attempts(&attempts);
            Ok(())
        }
        DeadCommand::Requeue {
            ids,
            sink,
            all,
            json,
        } => {
            let ids = match (ids.is_empty(), sink, all) {
                (false, None, false) => ids,
                (true, Some(s), true) => store.dead_ids(&s).await.map_err(store_err)?,
                _ => return Err("give dead row ids, or --sink NAME --all".into()),
            };
            let now = now_ms();
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            for id in ids {
                match store.requeue(id, now).await {
                    Ok(()) => ok.push(id),
                    Err(e @ (StoreError::NotFound(_) | StoreError::Conflict(_))) => {
                        failed.push((id, e.to_string()))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            if json {
                println!(
                    "{}",
                    json!({"requeued": ok, "failed": failed.iter().map(|(i, e)| json!({"id": i, "error": e})).collect::<Vec<_>>()})
                );
            } else {
                println!("requeued {} row(s)", ok.len());
                for (_, e) in &failed {
                    println!("not requeued: {e}");
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!("{} row(s) not requeued", failed.len()))
            }
        }
        DeadCommand::Purge { older_than, json } => {
            let n = store
                .purge_dead(now_ms() - clock::ms(older_than.into()))
                .await
                .map_err(store_err)?;
            if json {
                println!("{}", json!({"purged": n}));
            } else {
                println!("purged {n} dead row(s) older than {older_than}");
            }
            Ok(())
        }
    }
}

pub async fn pause(store: &Store, sink: &str, paused: bool, note: Option<&str>) -> CmdResult {
    store
        .set_paused(sink, paused, note)
        .await
        .map_err(store_err)?;
    if paused {
        println!("sink {sink} paused: its rows are held (no attempts used) until `outboxd resume {sink}`");
    } else {
        println!("sink {sink} resumed");
    }
    Ok(())
}
