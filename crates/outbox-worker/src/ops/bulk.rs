//! Acting on many rows at once, safely: `retry-now`, `cancel`, `dead requeue` and
//! `dead purge`. Each selects rows by ids or by the shared filters, works a chunk at a time
//! (progress on standard error when it is a terminal, nothing otherwise), keeps every
//! refusal with its reason, and with `--dry-run` only says what it would do.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};

use outbox_core::clock::{self, now_ms};
use outbox_core::store::filter::{RowFilter, RowState, TimeField};
use outbox_core::store::ops::{ListedRow, CHUNK};
use outbox_core::store::{DeadKind, DeadRow, Store};
use serde_json::json;

use super::list::{parse_kinds, row_filter};
use super::{key_back, print_json, refusal, store_err, CmdResult};
use crate::cli::{CancelArgs, FilterArgs, RetryNowArgs};
use crate::table::age;

/// Refusals printed one by one; the rest are counted.
const SHOWN: usize = 20;

/// "requeued 1500/4000" on standard error, rewritten in place, only on a terminal.
struct Progress {
    verb: &'static str,
    total: usize,
    done: usize,
    on: bool,
}

impl Progress {
    fn new(verb: &'static str, total: usize) -> Progress {
        Progress {
            verb,
            total,
            done: 0,
            // A small job finishes before anyone reads a progress line.
            on: std::io::stderr().is_terminal() && total > CHUNK,
        }
    }

    fn add(&mut self, n: usize) {
        self.done += n;
        if self.on {
            eprint!("\r{} {}/{}", self.verb, self.done, self.total);
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// Asks on the terminal; anything but y/yes declines. Never asks when standard input is
/// not a terminal (scripts, pipes, CI): the command goes ahead as given.
fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return true;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Who runs the command, for the cancel note.
fn operator() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "an operator".into())
}

fn print_refusals(refused: &[(i64, String)]) {
    for (_, why) in refused.iter().take(SHOWN) {
        println!("{why}");
    }
    if refused.len() > SHOWN {
        println!(
            "... and {} more refused (--json lists them all)",
            refused.len() - SHOWN
        );
    }
}

/// " (3, 4, 5)", the first few ids in order; "" for none.
fn ids_text(ids: &[i64]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut s: Vec<String> = sorted.iter().take(SHOWN).map(i64::to_string).collect();
    if ids.len() > SHOWN {
        s.push(format!("... {} more", ids.len() - SHOWN));
    }
    format!(" ({})", s.join(", "))
}

fn refusals_json(refused: &[(i64, String)]) -> Vec<serde_json::Value> {
    refused
        .iter()
        .map(|(i, e)| json!({"id": i, "error": e}))
        .collect()
}

/// The outbox rows a `retry-now` / `cancel` selects, in `states`: by ids or by filters
/// (`--sink` alone needs `--all` when `sink_alone_needs_all`).
async fn select_rows(
    store: &Store,
    ids: &[i64],
    filter: &FilterArgs,
    all: bool,
    command: &str,
    sink_alone_needs_all: bool,
    states: &[RowState],
) -> Result<(RowFilter, Vec<ListedRow>), String> {
    let mut f = row_filter(filter, TimeField::Created, now_ms())?;
    if !ids.is_empty() {
        if f.narrows() || all {
            return Err(format!(
                "give either row ids or filters (--sink, --key, ...), not both: `outboxd {command} 12 13` or `outboxd {command} --sink pyun --key-prefix CE-`"
            ));
        }
        f.ids = ids.to_vec();
    } else if !f.narrows() && !all {
        return Err(format!(
            "say which rows: ids (`outboxd {command} 12 13`), filters (`--sink NAME --key-prefix CE-`, `--reason TEXT`, ...), or `--all`; `outboxd list` shows the rows first"
        ));
    } else if sink_alone_needs_all
        && !all
        && f == (RowFilter {
            sink: f.sink.clone(),
            ..RowFilter::default()
        })
    {
        let s = f.sink.clone().unwrap_or_default();
        return Err(format!(
            "--sink {s} alone selects every pending row of that sink: add --all to mean it (`outboxd list --sink {s} --state pending` shows them first)"
        ));
    }
    // Named ids are looked at whatever their state, to say why one is not acted on.
    let look = if f.ids.is_empty() {
        f.with_states(states)
    } else {
        f.clone()
    };
    let rows = store
        .ops()
        .find_rows(&look, i64::MAX)
        .await
        .map_err(store_err)?;
    Ok((f, rows))
}

pub async fn retry_now(store: &Store, a: RetryNowArgs) -> CmdResult {
    let (f, rows) = select_rows(
        store,
        &a.ids,
        &a.filter,
        a.all,
        "retry-now",
        false,
        &[RowState::Pending],
    )
    .await?;
    let now = now_ms();
    let pending: Vec<&ListedRow> = rows.iter().filter(|r| r.state == "pending").collect();
    let waiting: Vec<i64> = pending
        .iter()
        .filter(|r| r.next_attempt_at.is_some_and(|t| t > now))
        .map(|r| r.id)
        .collect();
    let already_due = pending.len() - waiting.len();
    // Every sink with a matching pending row may be held by the daemon (whose rows wait,
    // due or not): ask it to probe. Only those: a misspelt --sink must not leave a request
    // (and a row in `outbox_sinks`) for a sink that does not exist.
    let sinks: BTreeSet<String> = pending.iter().map(|r| r.sink.clone()).collect();
    if a.dry_run {
        if a.json {
            print_json(&json!({
                "dry_run": true,
                "would_make_due": waiting,
                "already_due": already_due,
                "would_probe": sinks,
            }));
        } else {
            println!(
                "would make {} row(s) due now{}; {already_due} pending row(s) already due; would ask a daemon holding {} to probe at once. Nothing changed (--dry-run)",
                waiting.len(),
                ids_text(&waiting),
                if sinks.is_empty() { "no sink".to_string() } else { sinks.iter().cloned().collect::<Vec<_>>().join(", ") }
            );
        }
        return Ok(());
    }
    let mut progress = Progress::new("made due", waiting.len());
    let mut made_due = Vec::new();
    for chunk in waiting.chunks(CHUNK) {
        let done = store
            .ops()
            .make_due(chunk, now_ms())
            .await
            .map_err(store_err)?;
        progress.add(chunk.len());
        made_due.extend(done);
    }
    progress.finish();
    // Rows that left the backoff between the listing and the update (claimed, delivered,
    // cancelled, or simply due by now) need nothing.
    let moved = waiting.len() - made_due.len();
    for sink in &sinks {
        store
            .ops()
            .request_probe(sink, now_ms())
            .await
            .map_err(store_err)?;
    }
    if a.json {
        print_json(&json!({
            "made_due": made_due,
            "already_due": already_due,
            "moved": moved,
            "probe_requested": sinks,
        }));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no rows with {}", f.describe());
    } else if pending.is_empty() {
        println!(
            "no pending row with {} ({} row(s) matched, none waiting)",
            f.describe(),
            rows.len()
        );
    } else {
        println!(
            "made {} row(s) due now{}; {already_due} were due already{}",
            made_due.len(),
            ids_text(&made_due),
            if moved > 0 {
                format!("; {moved} left their backoff meanwhile (claimed or final)")
            } else {
                String::new()
            }
        );
    }
    if !sinks.is_empty() {
        println!(
            "asked the daemon to probe {} at once if it holds it (read at its next housekeeping, within poll_interval); `outboxd status` shows the sink's state",
            sinks.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

pub async fn cancel(store: &Store, a: CancelArgs) -> CmdResult {
    let (f, rows) = select_rows(
        store,
        &a.ids,
        &a.filter,
        a.all,
        "cancel",
        true,
        &[RowState::Pending, RowState::InFlight],
    )
    .await?;
    let note = format!(
        "cancelled by {}{}",
        operator(),
        a.note
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .map(|n| format!(": {n}"))
            .unwrap_or_default()
    );
    let mut refused: Vec<(i64, String)> = Vec::new();
    let mut candidates = Vec::new();
    for r in &rows {
        match r.state.as_str() {
            "pending" => candidates.push(r.id),
            "in_flight" => refused.push((r.id, in_flight_refusal(r))),
            // Final rows only matter when named by id; a filter just passes over them.
            s if !f.ids.is_empty() => refused.push((
                r.id,
                format!(
                    "row {} ({} / {}) not cancelled: it is {s} already (final)",
                    r.id, r.sink, r.idempotency_key
                ),
            )),
            _ => {}
        }
    }
    for id in &f.ids {
        if !rows.iter().any(|r| r.id == *id) {
            refused.push((
                *id,
                format!("row {id} not cancelled: no such outbox row (`outboxd list` shows the ids; a dead row is not pending)"),
            ));
        }
    }
    if a.dry_run {
        if a.json {
            print_json(&json!({
                "dry_run": true,
                "would_cancel": candidates,
                "refused": refusals_json(&refused),
            }));
        } else {
            if candidates.is_empty() && refused.is_empty() {
                println!("no pending rows with {}", f.describe());
            } else {
                println!(
                    "would cancel {} pending row(s){} with the note {note:?}",
                    candidates.len(),
                    ids_text(&candidates)
                );
            }
            print_refusals(&refused);
            println!("nothing changed (--dry-run)");
        }
        return Ok(());
    }
    let mut progress = Progress::new("cancelled", candidates.len());
    let mut cancelled = Vec::new();
    for chunk in candidates.chunks(CHUNK) {
        let done = store
            .ops()
            .cancel_rows(chunk, now_ms(), &note)
            .await
            .map_err(store_err)?;
        progress.add(chunk.len());
        // A row claimed (or finished) between the listing and the update is left alone.
        let missed: Vec<i64> = chunk
            .iter()
            .copied()
            .filter(|id| done.binary_search(id).is_err())
            .collect();
        if !missed.is_empty() {
            let now_rows = store
                .ops()
                .find_rows(
                    &RowFilter {
                        ids: missed.clone(),
                        ..RowFilter::default()
                    },
                    i64::MAX,
                )
                .await
                .map_err(store_err)?;
            for id in missed {
                let why = match now_rows.iter().find(|r| r.id == id) {
                    Some(r) if r.state == "in_flight" => in_flight_refusal(r),
                    Some(r) => format!(
                        "row {id} ({} / {}) not cancelled: it became {} meanwhile",
                        r.sink, r.idempotency_key, r.state
                    ),
                    None => format!("row {id} not cancelled: it left the outbox meanwhile (dead-lettered or pruned)"),
                };
                refused.push((id, why));
            }
        }
        cancelled.extend(done);
    }
    progress.finish();
    if a.json {
        print_json(&json!({
            "cancelled": cancelled,
            "refused": refusals_json(&refused),
            "note": note,
        }));
    } else {
        if cancelled.is_empty() && refused.is_empty() {
            println!("no pending rows with {}; nothing cancelled", f.describe());
        } else if !cancelled.is_empty() {
            println!(
                "cancelled {} row(s){}: final, never sent, kept with their history until retention; their keys stay known",
                cancelled.len(),
                ids_text(&cancelled)
            );
        }
        print_refusals(&refused);
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} row(s) not cancelled (see above)",
            refused.len()
        ))
    }
}

fn in_flight_refusal(r: &ListedRow) -> String {
    format!(
        "row {} ({} / {}) not cancelled: it is in flight (being delivered right now) and may reach the platform; wait for the attempt to end (`outboxd show --sink {} --key {}`), then cancel it if it is pending again",
        r.id, r.sink, r.idempotency_key, r.sink, r.idempotency_key
    )
}

/// The dead rows a `dead requeue` / `dead purge` selects.
fn dead_filter(filter: &FilterArgs, kind: &[String], ids: &[i64]) -> Result<RowFilter, String> {
    let mut f = row_filter(filter, TimeField::DeadAt, now_ms())?;
    f.kinds = parse_kinds(kind)?;
    f.ids = ids.to_vec();
    Ok(f)
}

/// Dead rows by id, a chunk at a time.
async fn dead_rows(store: &Store, ids: &[i64]) -> Result<Vec<DeadRow>, String> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let f = RowFilter {
            ids: chunk.to_vec(),
            ..RowFilter::default()
        };
        rows.extend(
            store
                .ops()
                .find_dead(&f, CHUNK as i64, false)
                .await
                .map_err(store_err)?,
        );
    }
    Ok(rows)
}

/// `(done, verb)`: ("requeued", "requeue").
fn unknown_refusal(d: &DeadRow, (done, verb): (&str, &str), how: &str) -> String {
    format!(
        "dead row {} ({} {}) not {done}: its outcome is unknown, so the platform may already have applied it{how}. Check on the platform side ({}), then {verb} it with --force",
        d.id, d.sink, d.idempotency_key, d.reason
    )
}

pub struct Requeue {
    pub ids: Vec<i64>,
    pub filter: FilterArgs,
    pub kind: Vec<String>,
    pub all: bool,
    pub force: bool,
    pub latest: bool,
    pub dry_run: bool,
    pub json: bool,
}

pub async fn requeue(store: &Store, a: Requeue) -> CmdResult {
    let by_filter = dead_filter(&a.filter, &a.kind, &[])?;
    let ids = if !a.ids.is_empty() {
        if by_filter.narrows() || a.all {
            return Err(
                "give either dead row ids or filters / `--sink NAME --all`, not both".into(),
            );
        }
        a.ids.clone()
    } else {
        let sink_only = by_filter
            == RowFilter {
                sink: by_filter.sink.clone(),
                time: by_filter.time,
                ..RowFilter::default()
            };
        match (&by_filter.sink, a.all) {
            (None, false) if !by_filter.narrows() => {
                return Err(
                    "give the dead row ids to requeue (`outboxd dead requeue 3 4`), filters (`--sink NAME --kind expired`, `--key-prefix CE-`, ...), or `--sink NAME --all`; `outboxd dead list` shows the ids"
                        .into(),
                )
            }
            (None, true) if !by_filter.narrows() => return Err("--all needs --sink NAME".into()),
            (Some(s), false) if sink_only => {
                return Err(format!(
                    "--sink {s} needs --all to requeue every dead row of that sink, or another filter (`outboxd dead list --sink {s}` shows them first)"
                ))
            }
            _ => {}
        }
        let ids = store
            .ops()
            .dead_ids_matching(&by_filter)
            .await
            .map_err(store_err)?;
        if ids.is_empty() && !a.json {
            match (&by_filter.sink, sink_only) {
                (Some(s), true) => {
                    println!("sink {s} has no dead-lettered rows; nothing to requeue")
                }
                _ => println!(
                    "no dead-lettered rows with {}; nothing to requeue",
                    by_filter.describe()
                ),
            }
        }
        ids
    };
    let total = ids.len();
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    let mut progress = Progress::new(if a.dry_run { "checked" } else { "requeued" }, total);
    for id in ids {
        progress.add(1);
        let d = store.dead_get(id).await.map_err(store_err)?;
        if let Some(d) = &d {
            if !a.force && d.requeue_may_duplicate() {
                failed.push((
                    id,
                    unknown_refusal(d, ("requeued", "requeue"), " and requeueing sends it again"),
                ));
                continue;
            }
        }
        if a.dry_run {
            match &d {
                None => failed.push((id, format!("dead row {id}: not found (already requeued or purged? `outboxd dead list` shows the ids)"))),
                Some(d) => match store.row(&d.sink, &d.idempotency_key).await.map_err(store_err)? {
                    Some(r) => failed.push((id, key_back(id, d, &r))),
                    None => ok.push(id),
                },
            }
            continue;
        }
        match store.requeue(id, now_ms(), a.latest).await {
            Ok(()) => ok.push(id),
            Err(e) => failed.push((id, refusal(store, id, e).await?)),
        }
    }
    progress.finish();
    if a.dry_run {
        if a.json {
            print_json(&json!({
                "dry_run": true,
                "would_requeue": ok,
                "refused": refusals_json(&failed),
            }));
        } else {
            if total > 0 {
                println!("would requeue {} row(s){}", ok.len(), ids_text(&ok));
            }
            print_refusals(&failed);
            println!("nothing changed (--dry-run)");
        }
        return Ok(());
    }
    if a.json {
        print_json(&json!({
            "requeued": ok,
            "failed": refusals_json(&failed),
        }));
    } else {
        if !ok.is_empty() {
            println!(
                "requeued {} row(s){}: pending again with attempts reset, history kept; the daemon delivers them",
                ok.len(),
                ids_text(&ok)
            );
        }
        print_refusals(&failed);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {total} row(s) not requeued (see above)",
            failed.len()
        ))
    }
}

pub struct Purge {
    pub older_than: Option<humantime::Duration>,
    pub filter: FilterArgs,
    pub kind: Vec<String>,
    pub all: bool,
    pub force: bool,
    pub dry_run: bool,
    pub yes: bool,
    pub json: bool,
}

pub async fn purge(store: &Store, a: Purge) -> CmdResult {
    let mut f = dead_filter(&a.filter, &a.kind, &[])?;
    if let Some(d) = a.older_than {
        let cutoff = now_ms() - clock::ms(d.into());
        f.until = Some(f.until.map_or(cutoff, |u| u.min(cutoff)));
    }
    if !f.narrows() && !a.all {
        return Err(
            "say which dead rows to delete: `--older-than 30d`, filters (`--sink NAME`, `--kind invalid`, `--key-prefix CE-`, ...), or `--all`; `outboxd dead list` shows them first"
                .into(),
        );
    }
    let ids = store.ops().dead_ids_matching(&f).await.map_err(store_err)?;
    let rows = dead_rows(store, &ids).await?;
    let (mut doomed, mut refused) = (Vec::new(), Vec::new());
    for d in &rows {
        if d.kind == DeadKind::Unknown && !a.force {
            refused.push((
                d.id,
                unknown_refusal(
                    d,
                    ("purged", "purge"),
                    ": once purged, nothing here shows it was ever sent",
                ),
            ));
        } else {
            doomed.push(d.id);
        }
    }
    let what = match a.older_than {
        Some(d) => format!("dead-lettered more than {} ago", age(clock::ms(d.into()))),
        None => format!("with {}", f.describe()),
    };
    if a.dry_run {
        if a.json {
            print_json(&json!({
                "dry_run": true,
                "would_purge": doomed,
                "refused": refusals_json(&refused),
            }));
        } else {
            println!(
                "would purge {} dead row(s) {what}{}, with their attempt history",
                doomed.len(),
                ids_text(&doomed)
            );
            print_refusals(&refused);
            println!("nothing changed (--dry-run)");
        }
        return Ok(());
    }
    if !doomed.is_empty()
        && !a.yes
        && !confirm(&format!(
            "delete {} dead row(s) {what} and their attempt history, for good?",
            doomed.len()
        ))
    {
        return Err("nothing deleted (not confirmed; --yes skips the question)".into());
    }
    let mut progress = Progress::new("purged", doomed.len());
    let mut purged = 0;
    for chunk in doomed.chunks(CHUNK) {
        purged += store.ops().delete_dead(chunk).await.map_err(store_err)?;
        progress.add(chunk.len());
    }
    progress.finish();
    if a.json {
        let mut out = json!({"purged": purged, "refused": refusals_json(&refused)});
        if let Some(d) = a.older_than {
            out["older_than"] = json!(d.to_string());
        }
        print_json(&out);
    } else {
        println!("purged {purged} dead row(s) {what}, with their attempt history");
        if !refused.is_empty() {
            println!("refused {} row(s) whose outcome is unknown:", refused.len());
        }
        print_refusals(&refused);
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} dead row(s) not purged: outcome unknown (see above; --force purges them)",
            refused.len()
        ))
    }
}
