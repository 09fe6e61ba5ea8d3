//! Operators' queries and bulk actions (issue 16): finding rows wherever they are, and
//! cancelling, making due, probing and purging them by id, a chunk at a time.
//!
//! Kept apart from [`Backend`](super::Backend) (the daemon's hot path): the SQL here is
//! the same on both backends except for what [`Dialect`] spells, so it is written once, in
//! [`impl_ops!`], and instantiated for each. Every statement is a single chunk of ids the
//! caller chose (at most [`CHUNK`]), so no statement holds SQLite's one write lock for long
//! while the daemon drains.

use futures_util::future::BoxFuture;
use serde::Serialize;

use super::filter::{push_where, Dialect, RowFilter, Table};
use super::{dead_row, map_rows, Cols, DeadKind, DeadRow, Engine, Result, Store};

/// Ids per statement of a bulk action.
pub const CHUNK: usize = 500;

/// Where a listed row lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// Still in `outbox` (any status).
    Outbox,
    /// In `outbox_dead`.
    Dead,
}

/// One row of `outboxd list`, from either table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListedRow {
    pub place: Place,
    /// The outbox id, or the dead row's id.
    pub id: i64,
    pub outbox_id: i64,
    pub sink: String,
    pub event_type: String,
    pub idempotency_key: String,
    /// The outbox status, or `dead`.
    pub state: String,
    /// Dead rows: why, as a type.
    pub kind: Option<DeadKind>,
    pub attempts: i64,
    pub created_at: i64,
    /// Pending rows: when the next attempt is due.
    pub next_attempt_at: Option<i64>,
    /// Final rows: when they finished; dead rows: when they were dead-lettered.
    pub finished_at: Option<i64>,
    /// The last error, the cancel note, or the dead-letter reason.
    pub reason: Option<String>,
}

impl From<DeadRow> for ListedRow {
    fn from(d: DeadRow) -> Self {
        ListedRow {
            place: Place::Dead,
            id: d.id,
            outbox_id: d.outbox_id,
            sink: d.sink,
            event_type: d.event_type,
            idempotency_key: d.idempotency_key,
            state: "dead".into(),
            kind: Some(d.kind),
            attempts: d.attempts,
            created_at: d.created_at,
            next_attempt_at: None,
            finished_at: Some(d.dead_at),
            reason: Some(d.reason),
        }
    }
}

fn listed_row(r: &impl Cols) -> std::result::Result<ListedRow, sqlx::Error> {
    let state = r.text("status")?;
    let reason = match state.as_str() {
        "cancelled" => r.opt_text("cancel_note")?.or(r.opt_text("last_error")?),
        _ => r.opt_text("last_error")?,
    };
    Ok(ListedRow {
        place: Place::Outbox,
        id: r.int("id")?,
        outbox_id: r.int("id")?,
        sink: r.text("sink")?,
        event_type: r.text("event_type")?,
        idempotency_key: r.text("idempotency_key")?,
        next_attempt_at: match state.as_str() {
            "pending" => r.opt_int("next_attempt_at")?,
            _ => None,
        },
        state,
        kind: None,
        attempts: r.int("attempts")?,
        created_at: r.int("created_at")?,
        finished_at: r.opt_int("finished_at")?,
        reason,
    })
}

/// Operators' store operations, on either backend ([`Store::ops`]).
pub trait Ops: Send + Sync {
    /// Outbox rows matching `f`, newest first, at most `limit`.
    fn find_rows<'a>(
        &'a self,
        f: &'a RowFilter,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<ListedRow>>>;

    /// How many outbox rows match `f`.
    fn count_rows<'a>(&'a self, f: &'a RowFilter) -> BoxFuture<'a, Result<i64>>;

    /// Dead rows matching `f`, oldest (`newest_first` false) or newest first.
    fn find_dead<'a>(
        &'a self,
        f: &'a RowFilter,
        limit: i64,
        newest_first: bool,
    ) -> BoxFuture<'a, Result<Vec<DeadRow>>>;

    /// How many dead rows match `f`.
    fn count_dead<'a>(&'a self, f: &'a RowFilter) -> BoxFuture<'a, Result<i64>>;

    /// The ids of the outbox rows matching `f`, ascending.
    fn row_ids<'a>(&'a self, f: &'a RowFilter) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// The ids of the dead rows matching `f`, ascending.
    fn dead_ids_matching<'a>(&'a self, f: &'a RowFilter) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Cancels the rows of `ids` that are pending now (in flight and final rows are left
    /// as they are): final `cancelled`, `finished_at = now`, `cancel_note = note`, history
    /// and key kept. Returns the ids cancelled. At most [`CHUNK`] ids.
    fn cancel_rows<'a>(
        &'a self,
        ids: &'a [i64],
        now: i64,
        note: &'a str,
    ) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Makes the rows of `ids` that are pending and due later than `now` due at `now`.
    /// Returns the ids changed. At most [`CHUNK`] ids.
    fn make_due<'a>(&'a self, ids: &'a [i64], now: i64) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Asks a daemon holding `sink` to probe it at once (read at its housekeeping).
    fn request_probe<'a>(&'a self, sink: &'a str, now: i64) -> BoxFuture<'a, Result<()>>;

    /// Every sink's latest probe request (`retry-now`): (sink, requested at).
    fn probe_requests(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>>>;

    /// Deletes the dead rows of `ids` and their attempt history (unless a row with the
    /// same outbox id is back in the outbox). Returns how many dead rows it deleted. At
    /// most [`CHUNK`] ids.
    fn delete_dead<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, Result<u64>>;

    /// Every sink name the database knows of (rows, dead rows, pauses).
    fn sinks_seen(&self) -> BoxFuture<'_, Result<Vec<String>>>;
}

impl Store {
    /// The operators' queries and bulk actions of this store's backend.
    pub fn ops(&self) -> &dyn Ops {
        match self.engine() {
            Engine::Sqlite(s) => s,
            Engine::Postgres(p) => p,
        }
    }
}

const ROW_COLUMNS: &str =
    "SELECT id, sink, event_type, idempotency_key, status, attempts, created_at, \
     next_attempt_at, finished_at, last_error, cancel_note FROM outbox";

/// The [`Ops`] implementation for one backend: `$store` with a `pool()`, its database
/// type, its [`Dialect`], and how it opens a write transaction.
macro_rules! impl_ops {
    ($store:ty, $db:ty, $dialect:expr, |$pool:ident| $begin:expr) => {
        impl $store {
            /// How many rows of `table` match `f`.
            async fn count_in(&self, table: Table, f: &RowFilter) -> Result<i64> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT count(*) FROM ");
                qb.push(table.name());
                push_where(&mut qb, f, table, $dialect);
                Ok(qb
                    .build_query_scalar::<i64>()
                    .fetch_one(self.pool())
                    .await?)
            }

            /// The ids of the rows of `table` that match `f`, in id order.
            async fn ids_in(&self, table: Table, f: &RowFilter) -> Result<Vec<i64>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT id FROM ");
                qb.push(table.name());
                push_where(&mut qb, f, table, $dialect);
                qb.push(" ORDER BY id");
                Ok(qb
                    .build_query_scalar::<i64>()
                    .fetch_all(self.pool())
                    .await?)
            }
        }

        impl Ops for $store {
            fn find_rows<'a>(
                &'a self,
                f: &'a RowFilter,
                limit: i64,
            ) -> BoxFuture<'a, Result<Vec<ListedRow>>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(ROW_COLUMNS);
                    push_where(&mut qb, f, Table::Outbox, $dialect);
                    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                        .push_bind(limit);
                    let rows = qb.build().fetch_all(self.pool()).await?;
                    map_rows(&rows, listed_row)
                })
            }

            fn count_rows<'a>(&'a self, f: &'a RowFilter) -> BoxFuture<'a, Result<i64>> {
                Box::pin(self.count_in(Table::Outbox, f))
            }

            fn find_dead<'a>(
                &'a self,
                f: &'a RowFilter,
                limit: i64,
                newest_first: bool,
            ) -> BoxFuture<'a, Result<Vec<DeadRow>>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM outbox_dead");
                    push_where(&mut qb, f, Table::Dead, $dialect);
                    qb.push(if newest_first {
                        " ORDER BY id DESC LIMIT "
                    } else {
                        " ORDER BY id LIMIT "
                    })
                    .push_bind(limit);
                    let rows = qb.build().fetch_all(self.pool()).await?;
                    map_rows(&rows, dead_row)
                })
            }

            fn count_dead<'a>(&'a self, f: &'a RowFilter) -> BoxFuture<'a, Result<i64>> {
                Box::pin(self.count_in(Table::Dead, f))
            }

            fn row_ids<'a>(&'a self, f: &'a RowFilter) -> BoxFuture<'a, Result<Vec<i64>>> {
                Box::pin(self.ids_in(Table::Outbox, f))
            }

            fn dead_ids_matching<'a>(
                &'a self,
                f: &'a RowFilter,
            ) -> BoxFuture<'a, Result<Vec<i64>>> {
                Box::pin(self.ids_in(Table::Dead, f))
            }

            fn cancel_rows<'a>(
                &'a self,
                ids: &'a [i64],
                now: i64,
                note: &'a str,
            ) -> BoxFuture<'a, Result<Vec<i64>>> {
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE outbox SET status = 'cancelled', finished_at = ",
                    );
                    qb.push_bind(now)
                        .push(", cancel_note = ")
                        .push_bind(note.to_string())
                        .push(", lease_owner = NULL, lease_expires_at = NULL WHERE status = 'pending' AND id IN (");
                    let mut sep = qb.separated(", ");
                    for id in ids {
                        sep.push_bind(*id);
                    }
                    qb.push(") RETURNING id");
                    let mut done: Vec<i64> = qb
                        .build_query_scalar::<i64>()
                        .fetch_all(self.pool())
                        .await?;
                    done.sort_unstable();
                    Ok(done)
                })
            }

            fn make_due<'a>(
                &'a self,
                ids: &'a [i64],
                now: i64,
            ) -> BoxFuture<'a, Result<Vec<i64>>> {
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut qb =
                        sqlx::QueryBuilder::<$db>::new("UPDATE outbox SET next_attempt_at = ");
                    qb.push_bind(now)
                        .push(" WHERE status = 'pending' AND next_attempt_at > ")
                        .push_bind(now)
                        .push(" AND id IN (");
                    let mut sep = qb.separated(", ");
                    for id in ids {
                        sep.push_bind(*id);
                    }
                    qb.push(") RETURNING id");
                    let mut done: Vec<i64> = qb
                        .build_query_scalar::<i64>()
                        .fetch_all(self.pool())
                        .await?;
                    done.sort_unstable();
                    Ok(done)
                })
            }

            fn request_probe<'a>(&'a self, sink: &'a str, now: i64) -> BoxFuture<'a, Result<()>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO outbox_sinks (sink, probe_requested_at) VALUES (",
                    );
                    qb.push_bind(sink.to_string())
                        .push(", ")
                        .push_bind(now)
                        .push(
                            ") ON CONFLICT (sink) DO UPDATE SET probe_requested_at = excluded.probe_requested_at",
                        );
                    qb.build().execute(self.pool()).await?;
                    Ok(())
                })
            }

            fn probe_requests(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>>> {
                Box::pin(async move {
                    Ok(sqlx::query_as::<_, (String, i64)>(
                        "SELECT sink, probe_requested_at FROM outbox_sinks \
                         WHERE probe_requested_at IS NOT NULL ORDER BY sink",
                    )
                    .fetch_all(self.pool())
                    .await?)
                })
            }

            fn delete_dead<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, Result<u64>> {
                Box::pin(async move {
                    if ids.is_empty() {
                        return Ok(0);
                    }
                    let in_ids = |qb: &mut sqlx::QueryBuilder<'static, $db>| {
                        qb.push("(");
                        let mut sep = qb.separated(", ");
                        for id in ids {
                            sep.push_bind(*id);
                        }
                        qb.push(")");
                    };
                    let $pool = self.pool();
                    let mut tx = $begin.await?;
                    // The history goes with the row, unless a row with its outbox id is back
                    // in the outbox (requeued, died again, requeued again): it is that row's.
                    let mut history = sqlx::QueryBuilder::<$db>::new(
                        "DELETE FROM outbox_attempts WHERE outbox_id NOT IN (SELECT id FROM outbox) \
                         AND outbox_id IN (SELECT outbox_id FROM outbox_dead WHERE id IN ",
                    );
                    in_ids(&mut history);
                    history.push(")");
                    history.build().execute(&mut *tx).await?;
                    let mut dead = sqlx::QueryBuilder::<$db>::new("DELETE FROM outbox_dead WHERE id IN ");
                    in_ids(&mut dead);
                    let n = dead.build().execute(&mut *tx).await?.rows_affected();
                    tx.commit().await?;
                    Ok(n)
                })
            }

            fn sinks_seen(&self) -> BoxFuture<'_, Result<Vec<String>>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar::<_, String>(
                        "SELECT DISTINCT sink FROM outbox UNION SELECT DISTINCT sink FROM outbox_dead \
                         UNION SELECT sink FROM outbox_sinks ORDER BY 1",
                    )
                    .fetch_all(self.pool())
                    .await?)
                })
            }
        }
    };
}

impl_ops!(
    super::sqlite::SqliteStore,
    sqlx::Sqlite,
    Dialect::Sqlite,
    |pool| pool.begin_with("BEGIN IMMEDIATE")
);
impl_ops!(
    super::postgres::PgStore,
    sqlx::Postgres,
    Dialect::Postgres,
    |pool| pool.begin()
);
