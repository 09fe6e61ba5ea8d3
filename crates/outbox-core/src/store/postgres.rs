//! The Postgres backend: several workers (on several hosts) drain one outbox.
//!
//! - Claims lock candidate rows with `FOR UPDATE SKIP LOCKED`, so concurrent workers never
//!   wait on each other and never claim the same row; see [`PgStore::claim`] for how
//!   ordering keys stay one-in-flight across workers.
//! - Completions are written per batch, one statement per kind of action (`unnest` arrays),
//!   in one transaction.
//! - New rows fire `pg_notify('outbox_new')` (a trigger); idle workers `LISTEN` on it
//!   ([`super::wake`]) and poll as a fallback.
//! - The pool tests each connection before handing it out, so after a Postgres restart the
//!   dead connections are dropped and the next call reconnects.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Postgres, Row};

use futures_util::future::BoxFuture;

use super::{
    Action, AttemptRow, Backend, Completion, DeadRow, Engine, OpenOptions, Result, RowView,
    SchemaState, SinkStats, StoreError,
};
use crate::event::{ClaimedRow, NewEvent, MAX_PAYLOAD_BYTES};

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// The channel the `outbox_notify_new` trigger notifies on every insert into `outbox`.
pub const NEW_ROWS_CHANNEL: &str = "outbox_new";

/// The first key of the advisory locks a claim takes on ordering keys (the second is
/// `hashtext(ordering_key)`), so they cannot collide with a producer's own advisory locks
/// on single bigint keys, nor with sqlx's migration lock. "ob" + "ok".
pub const ORDERING_LOCK_SPACE: i32 = 0x6f62_6f6b;

/// The pool may always grow to this: a worker uses one for its loop (verdicts, claims,
/// housekeeping), one for the retention pruner, and spares for `/metrics`, `/healthz` and
/// overlap; the `LISTEN` connection has a pool of its own. The default of
/// `OpenOptions::max_connections` (1) is sized for SQLite's single writer.
const MIN_CONNECTIONS: u32 = 4;

/// How long a call waits for a connection (including connecting) before it fails with a
/// database error that the worker logs and retries.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Per sink, where the last full claim ended: see [`ClaimCursor`].
    cursors: Arc<Mutex<HashMap<String, ClaimCursor>>>,
}

/// Where the last full claim of a sink ended, `(next_attempt_at, id)`: the next claim scans
/// `outbox_due` from there. Every claim leaves the entries of the rows it took behind as
/// dead index entries (a claimed row no longer matches the partial index, but its old entry
/// stays until VACUUM), all at the head of the index; during a long drain each claim would
/// otherwise step over every entry claimed so far (measured: the 1,000,000-row drain ran at
/// 0.66x the 10,000-row rate, the claim 1.55x slower). A row that becomes due below the
/// cursor (a past `not_before`, a slow producer transaction with an older id) waits at most
/// [`CURSOR_MAX_AGE`] or until a claim finds fewer rows than it asked for; nothing is skipped
/// for good.
#[derive(Debug, Clone, Copy)]
struct ClaimCursor {
    after: (i64, i64),
    set_at: std::time::Instant,
}

/// A cursor older than this is dropped and the claim scans from the head again.
const CURSOR_MAX_AGE: Duration = Duration::from_secs(1);

/// Inserts an event through any Postgres executor, so a producer can enqueue inside its own
/// transaction, atomically with its business rows. Returns whether the row was new.
pub async fn enqueue_in<'c, E>(executor: E, ev: &NewEvent) -> Result<bool>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let done = sqlx::query(
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload, ordering_key, not_before, supersede_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (sink, idempotency_key) DO NOTHING",
    )
    .bind(&ev.sink)
    .bind(ev.event_type.as_str())
    .bind(&ev.idempotency_key)
    .bind(&ev.payload)
    .bind(&ev.ordering_key)
    .bind(ev.not_before)
    .bind(&ev.supersede_key)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Finishes, as `superseded`, the pending rows of `sink` that have a newer row (higher id)
/// with the same `supersede_key`: only the newest row of a key is ever sent. Runs before
/// each claim of the sink; the partial index `outbox_supersede` keeps it cheap. Rows another
/// worker's transaction has locked are skipped, not waited for (a later claim finishes them):
/// two workers' claim transactions never wait on each other here, so they cannot deadlock.
async fn supersede_in(conn: &mut sqlx::PgConnection, sink: &str, now: i64) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE outbox SET status = 'superseded', finished_at = $2 \
         WHERE status = 'pending' AND id IN ( \
            SELECT o.id FROM outbox o \
            WHERE o.sink = $1 AND o.status = 'pending' AND o.supersede_key IS NOT NULL \
              AND EXISTS (SELECT 1 FROM outbox n WHERE n.sink = o.sink \
                          AND n.supersede_key = o.supersede_key AND n.id > o.id) \
            FOR UPDATE SKIP LOCKED)",
    )
    .bind(sink)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// The rows of an ordering key that keep a row of the same key (`o`) from being claimed:
/// an earlier unfinished row, or any row in flight. The second half matters for a requeued
/// row, which gets its old (smaller) id back while a later row of its key may be in flight,
/// and for a row whose producer committed after a later row of the same key was claimed.
const ORDERING_BLOCKED: &str = "(EXISTS (SELECT 1 FROM outbox e \
       WHERE e.ordering_key = o.ordering_key AND e.id < o.id AND e.status IN ('pending', 'in_flight')) \
     OR EXISTS (SELECT 1 FROM outbox f WHERE f.ordering_key = o.ordering_key AND f.status = 'in_flight'))";

/// The claim's candidate scan (`$1` sink, `$2` now, `$3` limit): due rows by due time,
/// through the partial index `outbox_due`, skipping rows other transactions have locked.
/// Nothing of a paused sink: the pause is read by the claim itself, so it takes effect when
/// `outboxd pause` commits (the uncorrelated NOT EXISTS is a one-time filter on top of the
/// index scan). Scanned from the head of `outbox_due`, or (`after`) from a
/// [`ClaimCursor`]: the row comparison is an index condition on `(sink, next_attempt_at, id)`.
fn candidates_sql(after: bool) -> String {
    let from = if after {
        "AND (o.next_attempt_at, o.id) > ($4, $5) "
    } else {
        ""
    };
    format!(
        "SELECT o.id, o.ordering_key, o.next_attempt_at FROM outbox o \
         WHERE o.sink = $1 AND o.status = 'pending' AND o.next_attempt_at <= $2 {from}\
           AND NOT EXISTS (SELECT 1 FROM outbox_sinks z WHERE z.sink = $1 AND z.paused) \
           AND (o.ordering_key IS NULL OR NOT {ORDERING_BLOCKED}) \
         ORDER BY o.next_attempt_at, o.id \
         LIMIT $3 \
         FOR UPDATE SKIP LOCKED"
    )
}

/// An oversized payload (above `$5`, MAX_PAYLOAD_BYTES) is measured, not loaded
/// (`octet_length` reads a TOASTed value's stored size without fetching it).
const CLAIMED_COLUMNS: &str = "id, sink, event_type, idempotency_key, \
     CASE WHEN octet_length(payload) > $5 THEN '' ELSE payload END AS payload, \
     octet_length(payload)::bigint AS payload_bytes, ordering_key, \
     coalesce(requeued_at, created_at) AS created_at, attempts, flow_state, in_doubt";

fn claimed(r: &PgRow) -> std::result::Result<ClaimedRow, sqlx::Error> {
    Ok(ClaimedRow {
        id: r.try_get("id")?,
        sink: r.try_get("sink")?,
        event_type: r.try_get("event_type")?,
        idempotency_key: r.try_get("idempotency_key")?,
        payload: r.try_get("payload")?,
        ordering_key: r.try_get("ordering_key")?,
        created_at: r.try_get("created_at")?,
        attempts: r.try_get::<i32, _>("attempts")?.max(0) as u32,
        flow_state: r.try_get("flow_state")?,
        in_doubt: r.try_get("in_doubt")?,
        defect: Some(r.try_get::<i64, _>("payload_bytes")?)
            .filter(|n| *n > MAX_PAYLOAD_BYTES as i64)
            .map(super::oversized),
    })
}

impl super::Cols for PgRow {
    fn int(&self, col: &str) -> std::result::Result<i64, sqlx::Error> {
        Ok(self.opt_int(col)?.unwrap_or_default())
    }
    /// BIGINT, or INTEGER widened.
    fn opt_int(&self, col: &str) -> std::result::Result<Option<i64>, sqlx::Error> {
        match self.try_get::<Option<i64>, _>(col) {
            Ok(v) => Ok(v),
            Err(_) => Ok(self.try_get::<Option<i32>, _>(col)?.map(i64::from)),
        }
    }
    fn opt_text(&self, col: &str) -> std::result::Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
    fn flag(&self, col: &str) -> std::result::Result<bool, sqlx::Error> {
        self.try_get(col)
    }
}

/// Dead-letter completions: id, reason, last reply, kind.
type DeadColumns = (
    Vec<i64>,
    Vec<String>,
    Vec<Option<String>>,
    Vec<&'static str>,
);

/// Completions of one kind, as parallel arrays for `unnest`.
#[derive(Default)]
struct Batch {
    delivered: (Vec<i64>, Vec<Option<String>>, Vec<Option<String>>),
    done: (Vec<i64>, Vec<String>, Vec<Option<String>>),
    retry: (Vec<i64>, Vec<i64>, Vec<String>),
    cont: (Vec<i64>, Vec<String>, Vec<i64>, Vec<String>),
    release: (Vec<i64>, Vec<bool>),
    dead: DeadColumns,
}

/// The attempt history entries of a batch, as parallel arrays for `unnest`.
#[derive(Default)]
struct History {
    outbox_id: Vec<i64>,
    sink: Vec<String>,
    attempt: Vec<i32>,
    started_at: Vec<i64>,
    duration_ms: Vec<i64>,
    http_status: Vec<Option<i32>>,
    reply_code: Vec<Option<String>>,
    hint: Vec<Option<String>>,
    outcome: Vec<String>,
    error: Vec<Option<String>>,
    reply: Vec<Option<String>>,
}

impl PgStore {
    async fn renew_in(
        conn: &mut sqlx::PgConnection,
        owner: &str,
        ids: &[i64],
        lease_until: i64,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET lease_expires_at = greatest(lease_expires_at, $3) \
             WHERE id = ANY($1) AND status = 'in_flight' AND lease_owner = $2",
        )
        .bind(ids)
        .bind(owner)
        .bind(lease_until)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn open(url: &str, opts: &OpenOptions) -> Result<PgStore> {
        let mut options = PgConnectOptions::from_str(url)?.application_name("outboxd");
        if !opts.create {
            // A hung query or a lock held for ever fails the call instead of stalling the
            // worker; the server drops the connection of a client that vanished. Not for the
            // migrator (`create`): an index build on a large table may take minutes.
            options = options.options([
                ("statement_timeout", "30s"),
                ("lock_timeout", "10s"),
                ("idle_in_transaction_session_timeout", "60s"),
                ("tcp_keepalives_idle", "30"),
                ("tcp_keepalives_interval", "10"),
                ("tcp_keepalives_count", "3"),
            ]);
        }
        if opts.create && matches!(Postgres::database_exists(url).await, Ok(false)) {
            // Best effort, for `outbox-migrate` on a fresh server; without the CREATEDB
            // privilege the connect below reports the missing database.
            let _ = Postgres::create_database(url).await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(MIN_CONNECTIONS))
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A ping before each use: after a Postgres restart every pooled connection is
            // dead, and this drops them instead of failing the next few calls.
            .test_before_acquire(true)
            // JIT compiles a query when its estimated cost crosses `jit_above_cost`, which
            // the churning statistics of a queue table make happen at random: measured
            // here, the status query took 50-700 ms instead of 5. Every query of outboxd is
            // short; none is worth compiling.
            .after_connect(|conn, _| {
                Box::pin(async move { conn.execute("SET jit = off").await.map(|_| ()) })
            })
            .connect_with(options)
            .await?;
        Ok(PgStore {
            pool,
            cursors: Arc::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A listener on [`NEW_ROWS_CHANNEL`], on a connection of its own (outside the query
    /// pool, which it would otherwise hold a connection of forever).
    pub async fn listener(&self) -> Result<PgListener> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(NEW_ROWS_CHANNEL).await?;
        Ok(listener)
    }

    async fn applied(&self) -> Result<Vec<i64>> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The cursor to claim `sink` from, if a recent full claim left one.
    fn cursor(&self, sink: &str) -> Option<(i64, i64)> {
        let cursors = self.cursors.lock().expect("cursor lock");
        cursors
            .get(sink)
            .filter(|c| c.set_at.elapsed() < CURSOR_MAX_AGE)
            .map(|c| c.after)
    }

    /// After a committed claim: a full one leaves a cursor where it ended, a short one
    /// (caught up) none.
    fn set_cursors(&self, ended: Vec<(String, Option<(i64, i64)>)>) {
        let mut cursors = self.cursors.lock().expect("cursor lock");
        for (sink, end) in ended {
            match end {
                Some(after) => {
                    let set_at = match cursors.get(&sink) {
                        // Keep the age of a cursor that moves on, so it is dropped (and the
                        // head scanned again) every CURSOR_MAX_AGE during a long drain.
                        Some(c) if c.set_at.elapsed() < CURSOR_MAX_AGE => c.set_at,
                        _ => std::time::Instant::now(),
                    };
                    cursors.insert(sink, ClaimCursor { after, set_at });
                }
                None => {
                    cursors.remove(&sink);
                }
            }
        }
    }

    /// Claims up to `limit` due rows of `sink`, from `after` when given. Returns the rows and,
    /// when the candidates filled the limit, where they ended (the next cursor).
    #[allow(clippy::too_many_arguments)]
    async fn claim_in(
        tx: &mut sqlx::PgConnection,
        sink: &str,
        owner: &str,
        limit: u32,
        now: i64,
        lease_until: i64,
        after: Option<(i64, i64)>,
    ) -> Result<(Vec<ClaimedRow>, Option<(i64, i64)>)> {
        supersede_in(tx, sink, now).await?;
        let sql = candidates_sql(after.is_some());
        let mut q = sqlx::query_as(&sql)
            .bind(sink)
            .bind(now)
            .bind(i64::from(limit));
        if let Some((at, id)) = after {
            q = q.bind(at).bind(id);
        }
        let candidates: Vec<(i64, Option<String>, i64)> = q.fetch_all(&mut *tx).await?;
        let end = candidates
            .last()
            .filter(|_| candidates.len() as u32 == limit)
            .map(|(id, _, at)| (*at, *id));
        if candidates.is_empty() {
            return Ok((Vec::new(), end));
        }
        let mut keys: Vec<&str> = candidates
            .iter()
            .filter_map(|(_, k, _)| k.as_deref())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let locked: Vec<String> = if keys.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT k FROM unnest($1::text[]) AS k WHERE pg_try_advisory_xact_lock($2, hashtext(k))",
            )
            .bind(&keys)
            .bind(ORDERING_LOCK_SPACE)
            .fetch_all(&mut *tx)
            .await?
        };
        let ids: Vec<i64> = candidates
            .iter()
            .filter(|(_, k, _)| k.as_ref().is_none_or(|k| locked.contains(k)))
            .map(|(id, _, _)| *id)
            .collect();
        let rows = sqlx::query(&format!(
            "UPDATE outbox o SET status = 'in_flight', lease_owner = $1, lease_expires_at = $2, \
                    attempts = o.attempts + 1, last_attempt_at = $3 \
             WHERE o.id = ANY($4) AND (o.ordering_key IS NULL OR NOT {ORDERING_BLOCKED}) \
             RETURNING {CLAIMED_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(&ids)
        .bind(MAX_PAYLOAD_BYTES as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed_rows = rows
            .iter()
            .map(claimed)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // RETURNING order is unspecified; deliver in id order, as SQLite does.
        claimed_rows.sort_by_key(|r| r.id);
        Ok((claimed_rows, end))
    }

    /// The plan of the claim's candidate scan, for tests and for operators wondering why a
    /// claim is slow: it should use the partial index `outbox_due`.
    pub async fn explain_claim(&self, sink: &str, now: i64, limit: u32) -> Result<String> {
        let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", candidates_sql(false)))
            .bind(sink)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(lines.join("\n"))
    }

    /// Writes a batch of completions: one statement per kind of action and one for the
    /// attempt history, whatever the batch size. Returns how many rows had lost their lease.
    async fn complete_in(
        tx: &mut sqlx::PgConnection,
        owner: &str,
        batch: &[Completion],
        now: i64,
    ) -> Result<u64> {
        let (b, h) = Self::collect(batch);
        let applied = Self::apply_final(tx, owner, now, &b).await?
            + Self::apply_pending(tx, owner, now, &b).await?;
        Self::insert_history(tx, &h).await?;
        Ok((batch.len() as u64).saturating_sub(applied))
    }

    /// Sorts a batch into one column array per action and the attempt history.
    fn collect(batch: &[Completion]) -> (Batch, History) {
        let mut b = Batch::default();
        let mut h = History::default();
        for c in batch {
            match &c.action {
                Action::Delivered { hint, result } => {
                    b.delivered.0.push(c.id);
                    b.delivered.1.push(hint.clone());
                    b.delivered.2.push(result.clone());
                }
                Action::Done { note, result } => {
                    b.done.0.push(c.id);
                    b.done.1.push(note.clone());
                    b.done.2.push(result.clone());
                }
                Action::Retry { next_at, error } => {
                    b.retry.0.push(c.id);
                    b.retry.1.push(*next_at);
                    b.retry.2.push(error.clone());
                }
                Action::Continue {
                    state,
                    next_at,
                    note,
                } => {
                    b.cont.0.push(c.id);
                    b.cont.1.push(state.clone());
                    b.cont.2.push(*next_at);
                    b.cont.3.push(note.clone());
                }
                Action::Release { in_doubt } => {
                    b.release.0.push(c.id);
                    b.release.1.push(*in_doubt);
                }
                Action::Dead {
                    kind,
                    reason,
                    last_reply,
                } => {
                    b.dead.0.push(c.id);
                    b.dead.1.push(reason.clone());
                    b.dead.2.push(last_reply.clone());
                    b.dead.3.push(kind.as_str());
                }
            }
            if let Some(info) = &c.info {
                h.outbox_id.push(c.id);
                h.sink.push(c.sink.clone());
                h.attempt.push(i32::try_from(c.attempt).unwrap_or(i32::MAX));
                h.started_at.push(info.started_at);
                h.duration_ms.push(info.duration_ms);
                h.http_status.push(info.http_status.map(i32::from));
                h.reply_code.push(info.reply_code.clone());
                h.hint.push(info.hint.clone());
                h.outcome.push(c.outcome_label.to_string());
                h.error.push(info.error.clone());
                h.reply.push(info.reply.clone());
            }
        }

        (b, h)
    }

    /// Delivered, done and dead-lettered rows.
    async fn apply_final(
        tx: &mut sqlx::PgConnection,
        owner: &str,
        now: i64,
        b: &Batch,
    ) -> Result<u64> {
        let mut applied = 0;
        if !b.delivered.0.is_empty() {
            applied += sqlx::query(&format!(
                "UPDATE outbox o SET status = 'delivered', hint = u.hint, result = u.result, finished_at = $2, \
                        last_error = NULL, in_doubt = false, lease_owner = NULL, lease_expires_at = NULL \
                 FROM unnest($3::bigint[], $4::text[], $5::text[]) AS u(id, hint, result) WHERE {OWNED}"
            ))
            .bind(owner)
            .bind(now)
            .bind(&b.delivered.0)
            .bind(&b.delivered.1)
            .bind(&b.delivered.2)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !b.done.0.is_empty() {
            applied += sqlx::query(&format!(
                "UPDATE outbox o SET status = 'done', last_error = u.note, result = u.result, finished_at = $2, \
                        in_doubt = false, lease_owner = NULL, lease_expires_at = NULL \
                 FROM unnest($3::bigint[], $4::text[], $5::text[]) AS u(id, note, result) WHERE {OWNED}"
            ))
            .bind(owner)
            .bind(now)
            .bind(&b.done.0)
            .bind(&b.done.1)
            .bind(&b.done.2)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !b.dead.0.is_empty() {
            applied += sqlx::query(&format!(
                "WITH u AS (SELECT * FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) \
                            AS u(id, reason, last_reply, kind)), \
                      moved AS (DELETE FROM outbox o USING u WHERE {OWNED} \
                                RETURNING o.*, u.reason AS dead_reason, u.last_reply AS dead_reply, u.kind AS dead_kind) \
                 INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, ordering_key, \
                                          created_at, attempts, kind, reason, last_reply, flow_state, dead_at) \
                 SELECT id, sink, event_type, idempotency_key, payload, ordering_key, created_at, attempts, \
                        dead_kind, dead_reason, dead_reply, flow_state, $2 FROM moved ORDER BY id"
            ))
            .bind(owner)
            .bind(now)
            .bind(&b.dead.0)
            .bind(&b.dead.1)
            .bind(&b.dead.2)
            .bind(&b.dead.3)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        Ok(applied)
    }

    /// Rows that go back to pending: retried, continued flows, released.
    async fn apply_pending(
        tx: &mut sqlx::PgConnection,
        owner: &str,
        now: i64,
        b: &Batch,
    ) -> Result<u64> {
        let mut applied = 0;
        if !b.retry.0.is_empty() {
            applied += sqlx::query(&format!(
                "UPDATE outbox o SET status = 'pending', next_attempt_at = u.next_at, last_error = u.error, \
                        lease_owner = NULL, lease_expires_at = NULL \
                 FROM unnest($2::bigint[], $3::bigint[], $4::text[]) AS u(id, next_at, error) WHERE {OWNED}"
            ))
            .bind(owner)
            .bind(&b.retry.0)
            .bind(&b.retry.1)
            .bind(&b.retry.2)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !b.cont.0.is_empty() {
            applied += sqlx::query(&format!(
                "UPDATE outbox o SET status = 'pending', flow_state = u.state, next_attempt_at = u.next_at, \
                        last_error = u.note, attempts = 0, in_doubt = false, lease_owner = NULL, lease_expires_at = NULL \
                 FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[]) AS u(id, state, next_at, note) \
                 WHERE {OWNED}"
            ))
            .bind(owner)
            .bind(&b.cont.0)
            .bind(&b.cont.1)
            .bind(&b.cont.2)
            .bind(&b.cont.3)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !b.release.0.is_empty() {
            applied += sqlx::query(&format!(
                "UPDATE outbox o SET status = 'pending', next_attempt_at = $2, \
                        attempts = CASE WHEN u.in_doubt THEN o.attempts ELSE greatest(o.attempts - 1, 0) END, \
                        in_doubt = o.in_doubt OR u.in_doubt, lease_owner = NULL, lease_expires_at = NULL \
                 FROM unnest($3::bigint[], $4::boolean[]) AS u(id, in_doubt) WHERE {OWNED}"
            ))
            .bind(owner)
            .bind(now)
            .bind(&b.release.0)
            .bind(&b.release.1)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        Ok(applied)
    }

    async fn insert_history(tx: &mut sqlx::PgConnection, h: &History) -> Result<()> {
        if !h.outbox_id.is_empty() {
            sqlx::query(
                "INSERT INTO outbox_attempts (outbox_id, sink, attempt, started_at, duration_ms, http_status, \
                                              reply_code, hint, outcome, error, reply) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[], $5::bigint[], \
                                      $6::integer[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])",
            )
            .bind(&h.outbox_id)
            .bind(&h.sink)
            .bind(&h.attempt)
            .bind(&h.started_at)
            .bind(&h.duration_ms)
            .bind(&h.http_status)
            .bind(&h.reply_code)
            .bind(&h.hint)
            .bind(&h.outcome)
            .bind(&h.error)
            .bind(&h.reply)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// Only rows still in flight under this owner's lease are touched by a completion; the
/// others were reclaimed (lease expired) and are someone else's now.
const OWNED: &str = "o.id = u.id AND o.status = 'in_flight' AND o.lease_owner = $1";

impl Backend for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn engine(&self) -> Engine<'_> {
        Engine::Postgres(self)
    }

    fn migrate(&self) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            let before = self.applied().await?;
            // sqlx holds an advisory lock while migrating: concurrent runs wait for each other.
            MIGRATOR.run(&self.pool).await?;
            let after = self.applied().await?;
            Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
        })
    }

    fn schema_state(&self) -> BoxFuture<'_, Result<SchemaState>> {
        Box::pin(async move {
            let applied = self.applied().await?;
            Ok(super::compare_schema(
                &applied,
                MIGRATOR.iter().map(|m| m.version),
            ))
        })
    }

    fn enqueue<'a>(&'a self, ev: &'a NewEvent) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { enqueue_in(&self.pool, ev).await })
    }

    /// Claims up to `limit` due rows of `sink`, in one transaction: the candidate scan
    /// (`SELECT ... FOR UPDATE SKIP LOCKED`: workers never get the same row and never wait
    /// on each other), then an `UPDATE` of the candidates.
    ///
    /// Ordering keys: a key never has two rows in flight, across all workers. The scan skips
    /// a keyed row if an earlier row of its key is unfinished or any row of its key is in
    /// flight, as of the scan's snapshot. That suffices while ids follow commit order: a row
    /// another worker is claiming right now is still pending in the snapshot and blocks the
    /// rows after it, and a finished row never comes back. It does not when the row that
    /// matters is missing from the snapshot: a producer transaction that got a smaller id
    /// but committed after a later row of the key, or a requeued row (old id) while a later
    /// row of its key is in flight, claimed by two workers at once, each blind to the
    /// other's uncommitted claim. So for keyed candidates the claim also takes a
    /// transaction-scoped advisory lock per key (`pg_try_advisory_xact_lock`: a key another
    /// claim holds is skipped this round, never waited for), and the `UPDATE` checks them
    /// again with a snapshot taken after the locks are held: claims of one key are
    /// serialised, and each sees the earlier ones committed. Workers meet on these locks
    /// only when they claim rows of the same key at the same moment.
    fn claim<'a>(
        &'a self,
        sink: &'a str,
        owner: &'a str,
        limit: u32,
        now: i64,
        lease_until: i64,
    ) -> BoxFuture<'a, Result<Vec<ClaimedRow>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let after = self.cursor(sink);
            let (rows, end) =
                Self::claim_in(&mut tx, sink, owner, limit, now, lease_until, after).await?;
            tx.commit().await?;
            self.set_cursors(vec![(sink.to_string(), end)]);
            Ok(rows)
        })
    }

    /// One transaction for a whole worker round: the verdicts of finished deliveries, then
    /// new claims for the sinks with free slots (one commit instead of one per step).
    fn cycle<'a>(
        &'a self,
        owner: &'a str,
        batch: &'a [Completion],
        claims: &'a [(String, u32)],
        renew: &'a [i64],
        now: i64,
        lease_until: i64,
    ) -> BoxFuture<'a, Result<(u64, Vec<Vec<ClaimedRow>>)>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let lost = if batch.is_empty() {
                0
            } else {
                Self::complete_in(&mut tx, owner, batch, now).await?
            };
            if !renew.is_empty() {
                Self::renew_in(&mut tx, owner, renew, lease_until).await?;
            }
            let mut claimed = Vec::with_capacity(claims.len());
            let mut ends = Vec::with_capacity(claims.len());
            for (sink, limit) in claims {
                let after = self.cursor(sink);
                let (rows, end) =
                    Self::claim_in(&mut tx, sink, owner, *limit, now, lease_until, after).await?;
                claimed.push(rows);
                ends.push((sink.clone(), end));
            }
            tx.commit().await?;
            // Only once committed: a rolled-back claim must not move the cursor past rows
            // it never took.
            self.set_cursors(ends);
            Ok((lost, claimed))
        })
    }

    fn reclaim_expired<'a>(
        &'a self,
        now: i64,
        owner: &'a str,
        held: &'a [i64],
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE outbox SET status = 'pending', in_doubt = true, next_attempt_at = $1, \
                        last_error = 'lease of worker ' || coalesce(lease_owner, '?') || ' expired mid-delivery; the previous attempt may have reached the platform', \
                        lease_owner = NULL, lease_expires_at = NULL \
                 WHERE status = 'in_flight' AND lease_expires_at < $1 \
                   AND NOT (lease_owner IS NOT DISTINCT FROM $2 AND id = ANY($3))",
            )
            .bind(now)
            .bind(owner)
            .bind(held)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    fn release_unsent<'a>(
        &'a self,
        owner: &'a str,
        held: &'a [i64],
        now: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE outbox SET status = 'pending', next_attempt_at = $3, \
                        attempts = greatest(attempts - 1, 0), lease_owner = NULL, lease_expires_at = NULL \
                 WHERE status = 'in_flight' AND lease_owner = $1 AND NOT (id = ANY($2))",
            )
            .bind(owner)
            .bind(held)
            .bind(now)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    fn dead_letter_unknown_sinks<'a>(
        &'a self,
        known: &'a [String],
        max_age: Duration,
        now: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO outbox_sinks AS s (sink, unconfigured_since) \
                 SELECT DISTINCT sink, $1::bigint FROM outbox WHERE status = 'pending' AND sink <> ALL($2::text[]) \
                 ON CONFLICT (sink) DO UPDATE SET unconfigured_since = coalesce(s.unconfigured_since, excluded.unconfigured_since)",
            )
            .bind(now)
            .bind(known)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE outbox_sinks s SET unconfigured_since = NULL \
                 WHERE unconfigured_since IS NOT NULL \
                   AND (sink = ANY($1::text[]) \
                        OR NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sink = s.sink AND o.status = 'pending'))",
            )
            .bind(known)
            .execute(&mut *tx)
            .await?;
            // One statement: the rows deleted are exactly the rows moved.
            let done = sqlx::query(
                "WITH moved AS ( \
                    DELETE FROM outbox \
                    WHERE status = 'pending' AND next_attempt_at <= $1 AND sink <> ALL($2::text[]) \
                      AND coalesce(requeued_at, created_at) <= $3 \
                    RETURNING *) \
                 INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, ordering_key, \
                                          created_at, attempts, kind, reason, last_reply, flow_state, dead_at) \
                 SELECT id, sink, event_type, idempotency_key, payload, ordering_key, created_at, attempts, 'unknown_sink', \
                        'sink ' || quote_literal(sink) || ' is not configured: add [sinks.' || sink || '] to the config, or fix the producer, then requeue', \
                        NULL, flow_state, $1 FROM moved ORDER BY id",
            )
            .bind(now)
            .bind(known)
            .bind(now - crate::clock::ms(max_age))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }

    fn paused_sinks(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT sink FROM outbox_sinks WHERE paused ORDER BY sink COLLATE \"C\"",
            )
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn set_paused<'a>(
        &'a self,
        sink: &'a str,
        paused: bool,
        note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
            "INSERT INTO outbox_sinks (sink, paused, paused_at, note) VALUES ($1, $2, CASE WHEN $2 THEN $3 END, $4) \
             ON CONFLICT (sink) DO UPDATE SET paused = excluded.paused, paused_at = excluded.paused_at, note = excluded.note",
        )
        .bind(sink)
        .bind(paused)
        .bind(crate::clock::now_ms())
        .bind(note)
        .execute(&self.pool)
        .await?;
            Ok(())
        })
    }

    fn open_rows(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>>> {
        Box::pin(async move {
            Ok(sqlx::query_as(
                "SELECT sink, count(*) FROM outbox WHERE status IN ('pending', 'in_flight') \
                 GROUP BY sink",
            )
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn stats(&self, now: i64) -> BoxFuture<'_, Result<Vec<SinkStats>>> {
        Box::pin(async move {
            // Unfinished rows through their partial indexes (`outbox_due`, `outbox_leased`; one
            // arm each, since `status IN (..)` would prove neither index's predicate), the last
            // hour's deliveries through `outbox_finished`, and one sequential pass for the
            // totals over every kept final row, which no index narrows.
            let rows = sqlx::query(
            "WITH open AS ( \
                SELECT sink, status, next_attempt_at, attempts, coalesce(requeued_at, created_at) AS created_at, \
                       last_error, last_attempt_at \
                FROM outbox WHERE status = 'pending' \
                UNION ALL \
                SELECT sink, status, next_attempt_at, attempts, coalesce(requeued_at, created_at) AS created_at, \
                       last_error, last_attempt_at \
                FROM outbox WHERE status = 'in_flight'), \
             o AS ( \
                SELECT sink, \
                  count(*) FILTER (WHERE status = 'pending') AS pending, \
                  count(*) FILTER (WHERE status = 'in_flight') AS in_flight, \
                  count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= $1) AS due_now, \
                  count(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS retrying, \
                  min(created_at) AS oldest, \
                  (array_agg(last_error ORDER BY last_attempt_at DESC NULLS LAST) \
                     FILTER (WHERE last_error IS NOT NULL))[1] AS last_error \
                FROM open GROUP BY sink), \
             r AS ( \
                SELECT sink, count(*) AS delivered_hour FROM outbox \
                WHERE status IN ('delivered', 'done', 'superseded', 'cancelled') AND finished_at >= $1 - 3600000 AND status = 'delivered' \
                GROUP BY sink), \
             f AS ( \
                SELECT sink, count(*) FILTER (WHERE status = 'delivered') AS delivered, \
                  count(*) FILTER (WHERE status IN ('done', 'superseded')) AS done, \
                  count(*) FILTER (WHERE status = 'cancelled') AS cancelled, \
                  count(hint) FILTER (WHERE status <> 'cancelled') AS hints \
                FROM outbox WHERE status IN ('delivered', 'done', 'superseded', 'cancelled') GROUP BY sink), \
             d AS (SELECT sink, count(*) AS dead FROM outbox_dead GROUP BY sink), \
             sinks AS (SELECT sink FROM o UNION SELECT sink FROM f UNION SELECT sink FROM d \
                       UNION SELECT sink FROM outbox_sinks UNION SELECT sink FROM outbox_key_repeats) \
             SELECT s.sink, \
               coalesce(o.pending, 0) AS pending, coalesce(o.in_flight, 0) AS in_flight, \
               coalesce(o.due_now, 0) AS due_now, o.oldest, \
               coalesce(f.delivered, 0) AS delivered, coalesce(r.delivered_hour, 0) AS delivered_hour, \
               coalesce(f.done, 0) AS done, coalesce(f.cancelled, 0) AS cancelled, \
               coalesce(o.retrying, 0) AS retrying, \
               coalesce(d.dead, 0) AS dead, coalesce(f.hints, 0) AS hints, \
               coalesce(p.paused, false) AS paused, o.last_error, p.unconfigured_since, \
               coalesce(k.ignored, 0) AS ignored_reinserts \
             FROM sinks s LEFT JOIN o ON o.sink = s.sink LEFT JOIN r ON r.sink = s.sink \
                  LEFT JOIN f ON f.sink = s.sink LEFT JOIN d ON d.sink = s.sink \
                  LEFT JOIN outbox_sinks p ON p.sink = s.sink \
                  LEFT JOIN outbox_key_repeats k ON k.sink = s.sink \
             ORDER BY s.sink COLLATE \"C\"",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
            super::map_rows(&rows, |r| super::sink_stats(r, now))
        })
    }

    fn row<'a>(&'a self, sink: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<RowView>>> {
        Box::pin(async move {
            let r = sqlx::query(
            "SELECT id, sink, event_type, idempotency_key, status, attempts, next_attempt_at, last_error, hint, result \
             FROM outbox WHERE sink = $1 AND idempotency_key = $2",
        )
        .bind(sink)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
            Ok(r.as_ref().map(super::row_view).transpose()?)
        })
    }

    fn dead_list<'a>(
        &'a self,
        sink: Option<&'a str>,
        since: Option<i64>,
        reason: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeadRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM outbox_dead \
             WHERE ($1::text IS NULL OR sink = $1) AND ($2::bigint IS NULL OR dead_at >= $2) \
               AND ($3::text IS NULL OR strpos(lower(reason), lower($3)) > 0) \
             ORDER BY id LIMIT $4",
            )
            .bind(sink)
            .bind(since)
            .bind(reason)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            super::map_rows(&rows, super::dead_row)
        })
    }

    fn dead_get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeadRow>>> {
        Box::pin(async move {
            let r = sqlx::query("SELECT * FROM outbox_dead WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            Ok(r.as_ref().map(super::dead_row).transpose()?)
        })
    }

    fn attempts(&self, outbox_id: i64) -> BoxFuture<'_, Result<Vec<AttemptRow>>> {
        Box::pin(async move {
            let rows = sqlx::query(
            "SELECT attempt, started_at, duration_ms, http_status, reply_code, hint, outcome, error, reply \
             FROM outbox_attempts WHERE outbox_id = $1 ORDER BY id",
        )
        .bind(outbox_id)
        .fetch_all(&self.pool)
        .await?;
            super::map_rows(&rows, super::attempt_row)
        })
    }

    fn requeue(&self, dead_id: i64, now: i64, latest: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // Locked, so two operators requeueing the same row at once requeue it once.
            let Some(d) = sqlx::query("SELECT * FROM outbox_dead WHERE id = $1 FOR UPDATE")
                .bind(dead_id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Err(StoreError::NotFound(format!(
                    "no dead-lettered row with id {dead_id} (see `outboxd dead list`)"
                )));
            };
            let d = super::dead_row(&d)?;
            let payload = match (&d.correction_payload, latest) {
                (Some(corrected), true) => corrected,
                _ => &d.payload,
            };
            // The key's record points at this row again: the known-key trigger lets an
            // insert under the row's old id through, and only this one.
            sqlx::query(
                "INSERT INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (sink, idempotency_key) DO UPDATE SET outbox_id = excluded.outbox_id",
            )
            .bind(&d.sink)
            .bind(&d.idempotency_key)
            .bind(d.outbox_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // Same id as before, so the attempt history stays attached and ordering keys keep
            // the row's original place; a multi-step flow resumes from its last state (an
            // lbbtech row that died while verifying verifies again, it does not start again).
            let inserted = sqlx::query(
            "INSERT INTO outbox (id, sink, event_type, idempotency_key, payload, ordering_key, created_at, \
                                 next_attempt_at, requeued_at, last_error, flow_state) \
             VALUES ($1, $2, $3, $4, $5, $6, $9, $7, $7, 'requeued by an operator', \
                     (SELECT flow_state FROM outbox_dead WHERE id = $8)) ON CONFLICT DO NOTHING",
        )
        .bind(d.outbox_id)
        .bind(&d.sink)
        .bind(&d.event_type)
        .bind(&d.idempotency_key)
        .bind(payload)
        .bind(&d.ordering_key)
        .bind(now)
        .bind(dead_id)
        .bind(d.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                "dead row {dead_id} not requeued: sink {} already has a row with key {:?} in the outbox",
                d.sink, d.idempotency_key
            )));
            }
            sqlx::query("DELETE FROM outbox_dead WHERE id = $1")
                .bind(dead_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn dead_ids<'a>(&'a self, sink: &'a str) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT id FROM outbox_dead WHERE sink = $1 ORDER BY id")
                    .bind(sink)
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
    }

    fn purge_dead(&self, older_than: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
            "DELETE FROM outbox_attempts WHERE outbox_id IN (SELECT outbox_id FROM outbox_dead WHERE dead_at < $1) \
               AND outbox_id NOT IN (SELECT id FROM outbox)",
        )
        .bind(older_than)
        .execute(&mut *tx)
        .await?;
            let n = sqlx::query("DELETE FROM outbox_dead WHERE dead_at < $1")
                .bind(older_than)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n)
        })
    }

    fn prune_keys(
        &self,
        now: i64,
        key_retention: Duration,
        batch: i64,
    ) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let before = now - crate::clock::ms(key_retention);
            let done = sqlx::query(
                "DELETE FROM outbox_keys WHERE (sink, idempotency_key) IN ( \
                    SELECT k.sink, k.idempotency_key FROM outbox_keys k WHERE k.first_seen < $1 \
                      AND NOT EXISTS (SELECT 1 FROM outbox o \
                                      WHERE o.sink = k.sink AND o.idempotency_key = k.idempotency_key) \
                      AND NOT EXISTS (SELECT 1 FROM outbox_dead d \
                                      WHERE d.sink = k.sink AND d.idempotency_key = k.idempotency_key) \
                    LIMIT $2)",
            )
            .bind(before)
            .bind(batch)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    fn prune_finished(&self, before: i64, batch: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            // One statement: both deletes see the same chosen ids.
            let n = sqlx::query(
                "WITH doomed AS ( \
                SELECT id FROM outbox WHERE status IN ('delivered', 'done', 'superseded', 'cancelled') AND finished_at < $1 \
                ORDER BY finished_at LIMIT $2), \
             history AS (DELETE FROM outbox_attempts WHERE outbox_id IN (SELECT id FROM doomed)) \
             DELETE FROM outbox WHERE id IN (SELECT id FROM doomed)",
            )
            .bind(before)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(n)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.pool.close().await;
        })
    }
}
