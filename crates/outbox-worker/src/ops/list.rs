//! Finding rows: `outboxd list` (outbox and dead letters together), the filters every
//! operator command shares, and `dead list`.

use outbox_core::clock::{self, now_ms};
use outbox_core::store::filter::{RowFilter, RowState, TimeField};
use outbox_core::store::ops::{ListedRow, Place};
use outbox_core::store::{DeadKind, Store};
use serde_json::json;

use super::{print_json, store_err, CmdResult, TEXT_COLUMN};
use crate::cli::{FilterArgs, ListArgs};
use crate::table::{self, clip, relative, Align, Paint};

/// A time an operator typed: RFC 3339 (`2026-11-24T10:00:00Z`, or without the zone, read
/// as UTC) or an age before `now` (`2h`, `7d`, `90s`).
pub(crate) fn parse_time(flag: &str, text: &str, now: i64) -> Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text.trim()) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0));
    }
    match humantime::parse_duration(text.trim()) {
        Ok(d) => Ok(now - clock::ms(d)),
        Err(e) => Err(format!(
            "{flag} {text:?}: neither a time nor an age ({e}); use 2026-11-24T10:00:00Z or an age like 2h, 7d"
        )),
    }
}

pub(crate) fn parse_states(states: &[String]) -> Result<Vec<RowState>, String> {
    states.iter().map(|s| s.parse::<RowState>()).collect()
}

pub(crate) fn parse_kinds(kinds: &[String]) -> Result<Vec<DeadKind>, String> {
    kinds
        .iter()
        .map(|k| {
            k.trim().parse::<DeadKind>().map_err(|e| {
                format!(
                    "{e}: use one of {}",
                    DeadKind::ALL.map(DeadKind::as_str).join(", ")
                )
            })
        })
        .collect()
}

/// The store filter for the command line's filters.
pub(crate) fn row_filter(a: &FilterArgs, time: TimeField, now: i64) -> Result<RowFilter, String> {
    let since = a
        .since
        .as_deref()
        .map(|t| parse_time("--since", t, now))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|t| parse_time("--until", t, now))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(format!(
                "--since ({}) is not before --until ({}): nothing can match",
                outbox_core::store::filter::rfc3339(s),
                outbox_core::store::filter::rfc3339(u)
            ));
        }
    }
    Ok(RowFilter {
        sink: a.sink.clone(),
        key: a.key.clone(),
        key_prefix: a.key_prefix.clone().filter(|p| !p.is_empty()),
        since,
        until,
        time,
        reason: a.reason.clone().filter(|r| !r.is_empty()),
        ..RowFilter::default()
    })
}

pub async fn list(store: &Store, a: ListArgs) -> CmdResult {
    if a.limit < 1 {
        return Err("--limit must be at least 1".into());
    }
    let now = now_ms();
    let mut f = row_filter(&a.filter, TimeField::Created, now)?;
    f.states = parse_states(&a.state)?;
    f.kinds = parse_kinds(&a.kind)?;
    if !f.kinds.is_empty() && !f.states.is_empty() && !f.wants_dead() {
        return Err("--kind selects dead rows: add --state dead, or drop --kind".into());
    }
    let ops = store.ops();
    let (mut rows, mut matched) = (Vec::<ListedRow>::new(), 0);
    if f.wants_outbox() {
        matched += ops.count_rows(&f).await.map_err(store_err)?;
        rows.extend(ops.find_rows(&f, a.limit).await.map_err(store_err)?);
    }
    if f.wants_dead() {
        matched += ops.count_dead(&f).await.map_err(store_err)?;
        let dead = ops.find_dead(&f, a.limit, true).await.map_err(store_err)?;
        rows.extend(dead.into_iter().map(ListedRow::from));
    }
    // Newest first across both tables.
    rows.sort_by(|x, y| {
        (y.created_at, y.outbox_id, y.place == Place::Outbox).cmp(&(
            x.created_at,
            x.outbox_id,
            x.place == Place::Outbox,
        ))
    });
    rows.truncate(a.limit as usize);
    if (rows.len() as i64) < matched {
        eprintln!(
            "showing the newest {} of {matched} matching row(s); `--limit N` or narrower filters show the rest",
            rows.len()
        );
    }
    if a.json {
        print_json(&json!({"matched": matched, "rows": rows}));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no rows with {}", f.describe());
        return Ok(());
    }
    print!("{}", list_table(&rows, now, Paint::stdout()));
    println!(
        "\n`outboxd show --sink SINK --key KEY` shows one row with every attempt; dead rows: `outboxd dead show ID`"
    );
    Ok(())
}

fn list_table(rows: &[ListedRow], now: i64, p: Paint) -> String {
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let state = match (r.place, r.state.as_str()) {
                (Place::Dead, _) => p.red(&format!(
                    "dead ({})",
                    r.kind.map(|k| k.as_str()).unwrap_or("?")
                )),
                (_, "delivered") => p.green("delivered"),
                (_, "pending") if r.attempts > 0 => p.yellow("pending"),
                (_, s) => s.to_string(),
            };
            let when = match (r.place, r.state.as_str(), r.next_attempt_at, r.finished_at) {
                (Place::Dead, _, _, Some(t)) => format!("died {}", relative(t, now)),
                (_, "pending", Some(t), _) if t > now => format!("due {}", relative(t, now)),
                (_, "pending", _, _) => "due now".into(),
                (_, _, _, Some(t)) => format!("{} {}", r.state, relative(t, now)),
                _ => "-".into(),
            };
            vec![
                match r.place {
                    Place::Outbox => r.id.to_string(),
                    Place::Dead => format!("dead {}", r.id),
                },
                r.sink.clone(),
                r.idempotency_key.clone(),
                r.event_type.clone(),
                state,
                r.attempts.to_string(),
                relative(r.created_at, now),
                when,
                r.reason
                    .as_deref()
                    .map(|e| clip(e, TEXT_COLUMN))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    use Align::{Left as L, Right as R};
    table::render_aligned(
        &[
            "ID", "SINK", "KEY", "TYPE", "STATE", "ATTEMPTS", "CREATED", "WHEN", "REASON",
        ],
        &[R, L, L, L, L, R, L, L, L],
        &table_rows,
    )
}

pub(crate) async fn dead_list(
    store: &Store,
    filter: FilterArgs,
    kind: Vec<String>,
    limit: i64,
    json: bool,
) -> CmdResult {
    if limit < 1 {
        return Err("--limit must be at least 1".into());
    }
    let now = now_ms();
    let mut f = row_filter(&filter, TimeField::DeadAt, now)?;
    f.kinds = parse_kinds(&kind)?;
    let rows = store
        .ops()
        .find_dead(&f, limit, false)
        .await
        .map_err(store_err)?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        if f.narrows() {
            println!("no dead-lettered rows with {}", f.describe());
        } else {
            println!("no dead-lettered rows");
        }
        return Ok(());
    }
    let p = Paint::stdout();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                d.sink.clone(),
                d.idempotency_key.clone(),
                d.event_type.clone(),
                d.attempts.to_string(),
                relative(d.dead_at, now),
                p.red(&clip(&d.reason, TEXT_COLUMN)),
            ]
        })
        .collect();
    use Align::{Left as L, Right as R};
    print!(
        "{}",
        table::render_aligned(
            &["ID", "SINK", "KEY", "TYPE", "ATTEMPTS", "DEAD", "REASON"],
            &[R, L, L, L, R, L, L],
            &table_rows
        )
    );
    if rows.len() as i64 == limit {
        let matched = store.ops().count_dead(&f).await.map_err(store_err)?;
        if matched > limit {
            println!("\nshowing the first {limit} of {matched}; `--limit N` shows more");
        }
    }
    println!(
        "\n`outboxd dead show ID` for the payload and every reply; `outboxd dead requeue ID` once the cause is fixed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("--since", "2h", now), Ok(now - 7_200_000));
        assert_eq!(
            parse_time("--since", "2026-11-24T10:00:00Z", now),
            Ok(1_795_514_400_000)
        );
        assert_eq!(
            parse_time("--since", "2026-11-24 10:00:00", now),
            Ok(1_795_514_400_000)
        );
        let e = parse_time("--until", "yesterday-ish", now).unwrap_err();
        assert!(e.contains("--until \"yesterday-ish\""), "{e}");
    }

    #[test]
    fn filters_reject_an_empty_window_and_unknown_words() {
        let a = FilterArgs {
            since: Some("1h".into()),
            until: Some("2h".into()),
            ..Default::default()
        };
        assert!(row_filter(&a, TimeField::Created, now_ms())
            .unwrap_err()
            .contains("nothing can match"));
        assert!(parse_states(&["pending".into(), "lost".into()]).is_err());
        assert!(parse_kinds(&["unknown_sink".into()]).is_ok());
        assert!(parse_kinds(&["nope".into()])
            .unwrap_err()
            .contains("permanent, unknown"));
    }
}
