//! The SQLite backend: the embedded default, one station, zero setup.
//!
//! - WAL, so producers in other processes write while the worker drains;
//!   `synchronous = FULL`, so a power cut never loses a committed event (WAL + NORMAL can).
//! - Write transactions start with `BEGIN IMMEDIATE` or are a single statement: a deferred
//!   `BEGIN` that reads and then writes fails at once with SQLITE_BUSY, busy timeout or not.
//! - The daemon uses one connection: SQLite has one writer anyway, and it keeps our own
//!   statements from contending with each other.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite};

use futures_util::future::BoxFuture;

use super::{
    Action, AttemptRow, Backend, Completion, DeadRow, Engine, OpenOptions, Result, RowView,
    SchemaState, SinkStats, StoreError,
};
use crate::event::{ClaimedRow, NewEvent, MAX_PAYLOAD_BYTES};

/// A write transaction (`BEGIN IMMEDIATE`) that leaves no trace when it fails: a connection
/// whose transaction did not commit is taken out of the pool and closed (SQLite rolls back
/// on close), and the pool opens a fresh one. A failed `COMMIT` (a full disk: SQLITE_FULL)
/// can otherwise leave the connection inside a transaction, and every later write on it
/// fails until the daemon restarts.
struct WriteTx {
    conn: Option<sqlx::pool::PoolConnection<Sqlite>>,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool) -> Result<WriteTx> {
        let mut conn = pool.acquire().await?;
        // A failed BEGIN leaves no transaction open: the connection goes back as it is.
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(WriteTx { conn: Some(conn) })
    }

    async fn commit(mut self) -> Result<()> {
        let mut conn = self.conn.take().expect("a transaction commits once");
        match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                drop(conn.detach());
                Err(e.into())
            }
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        self.conn.as_ref().expect("open transaction")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn.as_mut().expect("open transaction")
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        // Not committed (an error, or an early return): discard the connection.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: Option<PathBuf>,
}

/// Inserts an event through any SQLite executor, so a producer can enqueue inside its own
/// transaction, atomically with its business rows. Returns whether the row was new.
pub async fn enqueue_in<'c, E>(executor: E, ev: &NewEvent) -> Result<bool>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let done = sqlx::query(
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload, ordering_key, not_before, supersede_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (sink, idempotency_key) DO NOTHING",
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

// Producers' text columns are read as bytes: SQLite stores whatever a producer wrote (a BLOB,
// invalid UTF-8), and one such row must not make every claim of its sink fail.
// An oversized payload (above `?6`, MAX_PAYLOAD_BYTES) is measured, not loaded.
// Times likewise: a producer may write a REAL (`time.time() * 1000`) or text there; the
// claim reads them cast, with their type, and marks the row instead of failing.
const CLAIMED_COLUMNS: &str = "id, sink, CAST(event_type AS BLOB) AS event_type, \
     CAST(idempotency_key AS BLOB) AS idempotency_key, \
     CASE WHEN octet_length(payload) > ?6 THEN X'' ELSE CAST(payload AS BLOB) END AS payload, \
     octet_length(payload) AS payload_bytes, \
     CAST(ordering_key AS BLOB) AS ordering_key, \
     CAST(coalesce(requeued_at, created_at) AS INTEGER) AS created_at, \
     typeof(created_at) AS created_at_type, typeof(next_attempt_at) AS next_attempt_at_type, \
     CAST(attempts AS INTEGER) AS attempts, flow_state, CAST(in_doubt AS INTEGER) AS in_doubt";

/// The time columns a producer can set (directly, or through `not_before`).
const PRODUCER_TIMES: [&str; 2] = ["created_at", "next_attempt_at"];

/// A producer's text column, or a note saying why it is not text.
fn producer_text(
    r: &SqliteRow,
    col: &str,
    bad: &mut Vec<String>,
) -> std::result::Result<String, sqlx::Error> {
    let bytes: Vec<u8> = r.try_get::<Option<Vec<u8>>, _>(col)?.unwrap_or_default();
    Ok(String::from_utf8(bytes).unwrap_or_else(|e| {
        bad.push(format!(
            "`{col}` is not valid UTF-8 text ({} bytes)",
            e.as_bytes().len()
        ));
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    }))
}

fn claimed(r: &SqliteRow) -> std::result::Result<ClaimedRow, sqlx::Error> {
    let mut bad = Vec::new();
    let event_type = producer_text(r, "event_type", &mut bad)?;
    let idempotency_key = producer_text(r, "idempotency_key", &mut bad)?;
    let payload = producer_text(r, "payload", &mut bad)?;
    let ordering_key = r
        .try_get::<Option<Vec<u8>>, _>("ordering_key")?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    for col in PRODUCER_TIMES {
        let ty: String = r.try_get(format!("{col}_type").as_str())?;
        if ty != "integer" {
            bad.push(format!(
                "`{col}` holds a {ty} value, not integer epoch milliseconds"
            ));
        }
    }
    let payload_bytes: i64 = r.try_get_unchecked("payload_bytes")?;
    if payload_bytes > MAX_PAYLOAD_BYTES as i64 {
        bad.push(super::oversized(payload_bytes));
    }
    let defect = (!bad.is_empty()).then(|| bad.join("; "));
    Ok(ClaimedRow {
        id: r.try_get("id")?,
        sink: r.try_get("sink")?,
        event_type,
        idempotency_key,
        payload,
        ordering_key,
        created_at: r.try_get("created_at")?,
        attempts: r.try_get::<i64, _>("attempts")?.max(0) as u32,
        flow_state: r.try_get("flow_state")?,
        in_doubt: r.try_get::<i64, _>("in_doubt")? != 0,
        defect,
    })
}

impl super::Cols for SqliteRow {
    fn int(&self, col: &str) -> std::result::Result<i64, sqlx::Error> {
        Ok(self.opt_int(col)?.unwrap_or_default())
    }
    /// SQLite's own conversion (a REAL truncated, text parsed): a producer's odd value in
    /// a time column must not break listing or status.
    fn opt_int(&self, col: &str) -> std::result::Result<Option<i64>, sqlx::Error> {
        self.try_get_unchecked(col)
    }
    /// Text, or bytes shown lossily, so an operator can still list and inspect a row a
    /// producer wrote as a BLOB or invalid UTF-8.
    fn opt_text(&self, col: &str) -> std::result::Result<Option<String>, sqlx::Error> {
        match self.try_get::<Option<String>, _>(col) {
            Ok(v) => Ok(v),
            Err(_) => Ok(self
                .try_get_unchecked::<Option<Vec<u8>>, _>(col)?
                .map(|b| String::from_utf8_lossy(&b).into_owned())),
        }
    }
    fn flag(&self, col: &str) -> std::result::Result<bool, sqlx::Error> {
        Ok(self.try_get::<i64, _>(col)? != 0)
    }
}

impl SqliteStore {
    pub async fn open(url: &str, opts: &OpenOptions) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(opts.busy_timeout)
            // Negative: in KiB (see `OpenOptions::cache_kib`).
            .pragma("cache_size", format!("-{}", opts.cache_kib.max(64)))
            .create_if_missing(opts.create);
        let path = Some(options.get_filename().to_path_buf())
            .filter(|p| !p.as_os_str().is_empty() && p.to_str() != Some(":memory:"));
        if let Some(p) = &path {
            if !opts.create && !p.exists() {
                return Err(StoreError::Schema(format!(
                    "database file {} does not exist (is its volume mounted?): to create a new, empty outbox there, run `outbox-migrate --create --database-url {url}`",
                    p.display()
                )));
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .min_connections(1)
            // One connection for the daemon's lifetime: don't recycle it.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool, path })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file, when it is one (not `:memory:`).
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The WAL file's (modification time, size): changes whenever any process commits.
    /// A `stat` is far cheaper than a query, so an idle worker can check it every few ms.
    pub fn wal_signature(&self) -> Option<(SystemTime, u64)> {
        let p = self.path.as_ref()?;
        let mut wal = p.clone().into_os_string();
        wal.push("-wal");
        let m = std::fs::metadata(wal).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    async fn applied(&self) -> Result<Vec<i64>> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Finishes, as `superseded`, the pending rows of `sink` that have a newer row (higher id)
/// with the same `supersede_key`: only the newest row of a key is ever sent. Runs before
/// each claim of the sink; the partial index `outbox_supersede` keeps it cheap.
async fn supersede_in(conn: &mut sqlx::SqliteConnection, sink: &str, now: i64) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE outbox SET status = 'superseded', finished_at = ?2 \
         WHERE sink = ?1 AND status = 'pending' AND supersede_key IS NOT NULL \
           AND EXISTS (SELECT 1 FROM outbox n WHERE n.sink = outbox.sink \
                       AND n.supersede_key = outbox.supersede_key AND n.id > outbox.id)",
    )
    .bind(sink)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

async fn claim_in(
    conn: &mut sqlx::SqliteConnection,
    sink: &str,
    owner: &str,
    limit: u32,
    now: i64,
    lease_until: i64,
) -> Result<Vec<ClaimedRow>> {
    supersede_in(conn, sink, now).await?;
    // One statement: it takes the write lock before reading, so it waits on the busy
    // timeout instead of failing when a producer is writing. A paused sink is checked here,
    // in the claiming statement, so a pause takes effect when `outboxd pause` commits, not
    // at the worker's next housekeeping (the subquery on `outbox_sinks` is not correlated:
    // evaluated once, it leaves the scan on `outbox_due`).
    let sql = format!(
        "UPDATE outbox SET status = 'in_flight', lease_owner = ?1, lease_expires_at = ?2, \
                    attempts = attempts + 1, last_attempt_at = ?3 \
             WHERE id IN ( \
                SELECT o.id FROM outbox o \
                WHERE o.sink = ?4 AND o.status = 'pending' AND o.next_attempt_at <= ?3 \
                  AND NOT EXISTS (SELECT 1 FROM outbox_sinks z WHERE z.sink = ?4 AND z.paused = 1) \
                  AND (o.ordering_key IS NULL OR NOT EXISTS ( \
                        SELECT 1 FROM outbox e \
                        WHERE e.ordering_key = o.ordering_key AND e.id <> o.id \
                          AND ((e.id < o.id AND e.status = 'pending') OR e.status = 'in_flight'))) \
                ORDER BY o.next_attempt_at, o.id LIMIT ?5) \
             RETURNING {CLAIMED_COLUMNS}"
    );
    let rows = sqlx::query(&sql)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(sink)
        .bind(i64::from(limit))
        .bind(MAX_PAYLOAD_BYTES as i64)
        .fetch_all(&mut *conn)
        .await?;
    let mut claimed_rows = rows
        .iter()
        .map(claimed)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // RETURNING order is unspecified; deliver in due order.
    claimed_rows.sort_by_key(|r| r.id);
    Ok(claimed_rows)
}

async fn complete_in(
    tx: &mut sqlx::SqliteConnection,
    owner: &str,
    batch: &[Completion],
    now: i64,
) -> Result<u64> {
    let mut lost = 0;
    // The common case, a plain delivery, and the attempt history are written with one
    // statement each for the whole batch (JSON arrays through json_each): per-row
    // statements would cost more than the fsync of the commit.
    let mut plain: Vec<i64> = Vec::new();
    let mut attempts: Vec<serde_json::Value> = Vec::new();
    for c in batch {
        if let Some(info) = &c.info {
            attempts.push(serde_json::json!([
                c.id,
                c.sink,
                c.attempt,
                info.started_at,
                info.duration_ms,
                info.http_status,
                info.reply_code,
                info.hint,
                c.outcome_label,
                info.error,
                info.reply
            ]));
        }
        if matches!(
            &c.action,
            Action::Delivered {
                hint: None,
                result: None
            }
        ) {
            plain.push(c.id);
            continue;
        }
        let affected = apply_action(&mut *tx, owner, c, now).await?;
        if affected == 0 {
            lost += 1;
        }
    }
    if !plain.is_empty() {
        let ids = serde_json::to_string(&plain).expect("integers serialise");
        let done = sqlx::query(
                "UPDATE outbox SET status = 'delivered', hint = NULL, result = NULL, finished_at = ?3, \
                        last_error = NULL, in_doubt = 0, lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'in_flight' AND lease_owner = ?2",
            )
            .bind(&ids)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        lost += plain.len() as u64 - done.rows_affected();
    }
    insert_attempts(tx, attempts).await?;
    Ok(lost)
}

/// Applies one completion's action to its row, if this owner still holds it; returns the
/// rows affected (0: the lease was lost).
async fn apply_action(
    tx: &mut sqlx::SqliteConnection,
    owner: &str,
    c: &Completion,
    now: i64,
) -> Result<u64> {
    let owned = "id = ?1 AND status = 'in_flight' AND lease_owner = ?2";
    Ok(match &c.action {
                Action::Delivered { hint, result } => sqlx::query(&format!(
                    "UPDATE outbox SET status = 'delivered', hint = ?3, result = ?4, finished_at = ?5, \
                            last_error = NULL, in_doubt = 0, lease_owner = NULL, lease_expires_at = NULL WHERE {owned}"
                ))
                .bind(c.id)
                .bind(owner)
                .bind(hint)
                .bind(result)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Action::Done { note, result } => sqlx::query(&format!(
                    "UPDATE outbox SET status = 'done', last_error = ?3, result = ?4, finished_at = ?5, \
                            in_doubt = 0, lease_owner = NULL, lease_expires_at = NULL WHERE {owned}"
                ))
                .bind(c.id)
                .bind(owner)
                .bind(note)
                .bind(result)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Action::Retry { next_at, error } => sqlx::query(&format!(
                    "UPDATE outbox SET status = 'pending', next_attempt_at = ?3, last_error = ?4, \
                            lease_owner = NULL, lease_expires_at = NULL WHERE {owned}"
                ))
                .bind(c.id)
                .bind(owner)
                .bind(next_at)
                .bind(error)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Action::Continue { state, next_at, note } => sqlx::query(&format!(
                    "UPDATE outbox SET status = 'pending', flow_state = ?3, next_attempt_at = ?4, last_error = ?5, \
                            attempts = 0, in_doubt = 0, lease_owner = NULL, lease_expires_at = NULL WHERE {owned}"
                ))
                .bind(c.id)
                .bind(owner)
                .bind(state)
                .bind(next_at)
                .bind(note)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Action::Release { in_doubt } => sqlx::query(&format!(
                    "UPDATE outbox SET status = 'pending', next_attempt_at = ?3, \
                            attempts = CASE WHEN ?4 THEN attempts ELSE max(attempts - 1, 0) END, \
                            in_doubt = CASE WHEN ?4 THEN 1 ELSE in_doubt END, \
                            lease_owner = NULL, lease_expires_at = NULL WHERE {owned}"
                ))
                .bind(c.id)
                .bind(owner)
                .bind(now)
                .bind(*in_doubt)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Action::Dead { kind, reason, last_reply } => {
                    let moved = sqlx::query(&format!(
                        "INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, ordering_key, \
                                                  created_at, attempts, kind, reason, last_reply, flow_state, dead_at) \
                         SELECT id, sink, event_type, idempotency_key, payload, ordering_key, created_at, attempts, \
                                ?6, ?3, ?4, flow_state, ?5 FROM outbox WHERE {owned}"
                    ))
                    .bind(c.id)
                    .bind(owner)
                    .bind(reason)
                    .bind(last_reply)
                    .bind(now)
                    .bind(kind.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved == 1 {
                        sqlx::query("DELETE FROM outbox WHERE id = ?1").bind(c.id).execute(&mut *tx).await?;
                    }
                    moved
                }
    })
}

/// The attempt history of a batch, in one statement.
async fn insert_attempts(
    tx: &mut sqlx::SqliteConnection,
    attempts: Vec<serde_json::Value>,
) -> Result<()> {
    if !attempts.is_empty() {
        let rows = serde_json::Value::Array(attempts).to_string();
        sqlx::query(
                "INSERT INTO outbox_attempts (outbox_id, sink, attempt, started_at, duration_ms, http_status, \
                                              reply_code, hint, outcome, error, reply) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
                        value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10 \
                 FROM json_each(?1)",
            )
            .bind(&rows)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

impl Backend for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn engine(&self) -> Engine<'_> {
        Engine::Sqlite(self)
    }

    fn migrate(&self) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            let before = self.applied().await?;
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

    fn claim<'a>(
        &'a self,
        sink: &'a str,
        owner: &'a str,
        limit: u32,
        now: i64,
        lease_until: i64,
    ) -> BoxFuture<'a, Result<Vec<ClaimedRow>>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            claim_in(&mut conn, sink, owner, limit, now, lease_until).await
        })
    }

    /// One transaction (one fsync) for a whole worker cycle: the verdicts of finished
    /// deliveries, then new claims for the sinks with free slots. Returns the lost-lease
    /// count and the claimed rows per requested sink.
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
            let mut tx = WriteTx::begin(&self.pool).await?;
            let lost = if batch.is_empty() {
                0
            } else {
                complete_in(&mut tx, owner, batch, now).await?
            };
            if !renew.is_empty() {
                renew_in(&mut tx, owner, renew, lease_until).await?;
            }
            let mut claimed = Vec::with_capacity(claims.len());
            for (sink, limit) in claims {
                claimed.push(claim_in(&mut tx, sink, owner, *limit, now, lease_until).await?);
            }
            tx.commit().await?;
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
            let held = serde_json::to_string(held).expect("integers serialise");
            let done = sqlx::query(
                "UPDATE outbox SET status = 'pending', in_doubt = 1, next_attempt_at = ?1, \
                        last_error = 'lease of worker ' || coalesce(lease_owner, '?') || ' expired mid-delivery; the previous attempt may have reached the platform', \
                        lease_owner = NULL, lease_expires_at = NULL \
                 WHERE status = 'in_flight' AND lease_expires_at < ?1 \
                   AND NOT (lease_owner IS ?2 AND id IN (SELECT value FROM json_each(?3)))",
            )
            .bind(now)
            .bind(owner)
            .bind(&held)
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
            let held = serde_json::to_string(held).expect("integers serialise");
            let done = sqlx::query(
                "UPDATE outbox SET status = 'pending', next_attempt_at = ?3, \
                        attempts = max(attempts - 1, 0), lease_owner = NULL, lease_expires_at = NULL \
                 WHERE status = 'in_flight' AND lease_owner = ?1 \
                   AND id NOT IN (SELECT value FROM json_each(?2))",
            )
            .bind(owner)
            .bind(&held)
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
            let known_json = serde_json::to_string(known).expect("strings serialise");
            let mut tx = WriteTx::begin(&self.pool).await?;
            sqlx::query(
                "INSERT INTO outbox_sinks (sink, unconfigured_since) \
                 SELECT DISTINCT sink, ?1 FROM outbox \
                 WHERE status = 'pending' AND sink NOT IN (SELECT value FROM json_each(?2)) \
                 ON CONFLICT (sink) DO UPDATE SET unconfigured_since = coalesce(unconfigured_since, excluded.unconfigured_since)",
            )
            .bind(now)
            .bind(&known_json)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE outbox_sinks SET unconfigured_since = NULL \
                 WHERE unconfigured_since IS NOT NULL \
                   AND (sink IN (SELECT value FROM json_each(?1)) \
                        OR NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sink = outbox_sinks.sink AND o.status = 'pending'))",
            )
            .bind(&known_json)
            .execute(&mut *tx)
            .await?;
            let filter = "status = 'pending' AND next_attempt_at <= ?1 \
                          AND sink NOT IN (SELECT value FROM json_each(?2)) \
                          AND coalesce(requeued_at, created_at) <= ?3";
            let oldest = now - crate::clock::ms(max_age);
            sqlx::query(&format!(
                "INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, ordering_key, \
                                          created_at, attempts, kind, reason, last_reply, flow_state, dead_at) \
                 SELECT id, sink, event_type, idempotency_key, payload, ordering_key, created_at, attempts, 'unknown_sink', \
                        'sink ' || quote(sink) || ' is not configured: add [sinks.' || sink || '] to the config, or fix the producer, then requeue', \
                        NULL, flow_state, ?1 FROM outbox WHERE {filter}"
            ))
            .bind(now)
            .bind(&known_json)
            .bind(oldest)
            .execute(&mut *tx)
            .await?;
            let done = sqlx::query(&format!("DELETE FROM outbox WHERE {filter}"))
                .bind(now)
                .bind(&known_json)
                .bind(oldest)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }

    fn paused_sinks(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT sink FROM outbox_sinks WHERE paused = 1 ORDER BY sink")
                    .fetch_all(&self.pool)
                    .await?,
            )
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
            "INSERT INTO outbox_sinks (sink, paused, paused_at, note) VALUES (?1, ?2, CASE WHEN ?2 THEN ?3 END, ?4) \
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
                "SELECT sink, count(*) FROM ( \
                    SELECT sink FROM outbox INDEXED BY outbox_due WHERE status = 'pending' \
                    UNION ALL \
                    SELECT sink FROM outbox INDEXED BY outbox_leased WHERE status = 'in_flight') \
                 GROUP BY sink",
            )
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn stats(&self, now: i64) -> BoxFuture<'_, Result<Vec<SinkStats>>> {
        Box::pin(async move {
            // One statement (one snapshot), one pass per figure group, each through the index
            // that holds just those rows: pending rows via `outbox_due`, in-flight via
            // `outbox_leased`, the last hour's deliveries via `outbox_finished`. `INDEXED BY`
            // pins them: grouping by sink, the planner otherwise prefers walking the
            // (sink, idempotency_key) index over the whole table. Only the totals over every
            // kept final row (delivered, done, hints) need a full pass: sequential, and once.
            let rows = sqlx::query(
            "WITH pending AS ( \
                SELECT sink, count(*) AS pending, sum(next_attempt_at <= ?1) AS due_now, \
                       sum(attempts > 0) AS retrying, min(coalesce(requeued_at, created_at)) AS oldest \
                FROM outbox INDEXED BY outbox_due WHERE status = 'pending' GROUP BY sink), \
             flight AS ( \
                SELECT sink, count(*) AS in_flight, min(coalesce(requeued_at, created_at)) AS oldest \
                FROM outbox INDEXED BY outbox_leased WHERE status = 'in_flight' GROUP BY sink), \
             recent AS ( \
                SELECT sink, count(*) AS delivered_hour FROM outbox INDEXED BY outbox_finished \
                WHERE status IN ('delivered', 'done', 'superseded', 'cancelled') AND finished_at >= ?1 - 3600000 AND status = 'delivered' \
                GROUP BY sink), \
             final AS ( \
                SELECT sink, sum(status = 'delivered') AS delivered, sum(status IN ('done', 'superseded')) AS done, \
                       sum(status = 'cancelled') AS cancelled, count(CASE WHEN status <> 'cancelled' THEN hint END) AS hints \
                FROM outbox NOT INDEXED WHERE status IN ('delivered', 'done', 'superseded', 'cancelled') GROUP BY sink), \
             dead AS (SELECT sink, count(*) AS dead FROM outbox_dead GROUP BY sink), \
             errors AS ( \
                SELECT sink, last_error, max(coalesce(last_attempt_at, 0)) FROM ( \
                    SELECT sink, last_error, last_attempt_at FROM outbox INDEXED BY outbox_due \
                    WHERE status = 'pending' AND last_error IS NOT NULL \
                    UNION ALL \
                    SELECT sink, last_error, last_attempt_at FROM outbox INDEXED BY outbox_leased \
                    WHERE status = 'in_flight' AND last_error IS NOT NULL) \
                GROUP BY sink), \
             sinks AS ( \
                SELECT sink FROM pending UNION SELECT sink FROM flight UNION SELECT sink FROM final \
                UNION SELECT sink FROM dead UNION SELECT sink FROM outbox_sinks \
                UNION SELECT sink FROM outbox_key_repeats) \
             SELECT s.sink AS sink, \
                    coalesce(p.pending, 0) AS pending, coalesce(f.in_flight, 0) AS in_flight, \
                    coalesce(p.due_now, 0) AS due_now, \
                    min(coalesce(p.oldest, f.oldest), coalesce(f.oldest, p.oldest)) AS oldest, \
                    coalesce(x.delivered, 0) AS delivered, coalesce(r.delivered_hour, 0) AS delivered_hour, \
                    coalesce(x.done, 0) AS done, coalesce(x.cancelled, 0) AS cancelled, \
                    coalesce(p.retrying, 0) AS retrying, \
                    coalesce(d.dead, 0) AS dead, coalesce(x.hints, 0) AS hints, \
                    coalesce(z.paused, 0) AS paused, e.last_error AS last_error, \
                    z.unconfigured_since AS unconfigured_since, \
                    coalesce(k.ignored, 0) AS ignored_reinserts \
             FROM sinks s \
             LEFT JOIN pending p ON p.sink = s.sink \
             LEFT JOIN flight f ON f.sink = s.sink \
             LEFT JOIN recent r ON r.sink = s.sink \
             LEFT JOIN final x ON x.sink = s.sink \
             LEFT JOIN dead d ON d.sink = s.sink \
             LEFT JOIN errors e ON e.sink = s.sink \
             LEFT JOIN outbox_sinks z ON z.sink = s.sink \
             LEFT JOIN outbox_key_repeats k ON k.sink = s.sink \
             ORDER BY s.sink",
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
             FROM outbox WHERE sink = ?1 AND idempotency_key = ?2",
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
             WHERE (?1 IS NULL OR sink = ?1) AND (?2 IS NULL OR dead_at >= ?2) \
               AND (?3 IS NULL OR instr(lower(reason), lower(?3)) > 0) \
             ORDER BY id LIMIT ?4",
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
            let r = sqlx::query("SELECT * FROM outbox_dead WHERE id = ?1")
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
             FROM outbox_attempts WHERE outbox_id = ?1 ORDER BY id",
        )
        .bind(outbox_id)
        .fetch_all(&self.pool)
        .await?;
            super::map_rows(&rows, super::attempt_row)
        })
    }

    fn requeue(&self, dead_id: i64, now: i64, latest: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = WriteTx::begin(&self.pool).await?;
            let Some(d) = sqlx::query("SELECT * FROM outbox_dead WHERE id = ?1")
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
                "INSERT INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen) VALUES (?1, ?2, ?3, ?4) \
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
            "INSERT INTO outbox (id, sink, event_type, idempotency_key, payload, ordering_key, created_at, next_attempt_at, \
                                 requeued_at, last_error, flow_state) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?9, ?7, ?7, 'requeued by an operator', \
                     (SELECT flow_state FROM outbox_dead WHERE id = ?8)) ON CONFLICT DO NOTHING",
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
            sqlx::query("DELETE FROM outbox_dead WHERE id = ?1")
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
                sqlx::query_scalar("SELECT id FROM outbox_dead WHERE sink = ?1 ORDER BY id")
                    .bind(sink)
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
    }

    fn purge_dead(&self, older_than: i64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            // A batch per write transaction: one statement over a large dead-letter table would
            // hold SQLite's only write lock long enough to stall the daemon (about 1 s per
            // 100k rows with their history).
            const BATCH: i64 = 1000;
            let mut purged = 0;
            loop {
                let mut tx = WriteTx::begin(&self.pool).await?;
                let ids: Vec<i64> =
                    sqlx::query_scalar("SELECT id FROM outbox_dead WHERE dead_at < ?1 LIMIT ?2")
                        .bind(older_than)
                        .bind(BATCH)
                        .fetch_all(&mut *tx)
                        .await?;
                if ids.is_empty() {
                    return Ok(purged);
                }
                let ids_json = serde_json::to_string(&ids).expect("integers serialise");
                sqlx::query(
                "DELETE FROM outbox_attempts WHERE outbox_id IN \
                   (SELECT outbox_id FROM outbox_dead WHERE id IN (SELECT value FROM json_each(?1))) \
                   AND outbox_id NOT IN (SELECT id FROM outbox)",
            )
            .bind(&ids_json)
            .execute(&mut *tx)
            .await?;
                purged += sqlx::query(
                    "DELETE FROM outbox_dead WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(&ids_json)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                if (ids.len() as i64) < BATCH {
                    return Ok(purged);
                }
            }
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
                "DELETE FROM outbox_keys WHERE rowid IN ( \
                    SELECT k.rowid FROM outbox_keys k WHERE k.first_seen < ?1 \
                      AND NOT EXISTS (SELECT 1 FROM outbox o \
                                      WHERE o.sink = k.sink AND o.idempotency_key = k.idempotency_key) \
                      AND NOT EXISTS (SELECT 1 FROM outbox_dead d \
                                      WHERE d.sink = k.sink AND d.idempotency_key = k.idempotency_key) \
                    LIMIT ?2)",
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
            let mut tx = WriteTx::begin(&self.pool).await?;
            let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM outbox WHERE status IN ('delivered', 'done', 'superseded', 'cancelled') AND finished_at < ?1 ORDER BY finished_at LIMIT ?2",
        )
        .bind(before)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
            if ids.is_empty() {
                return Ok(0);
            }
            let ids_json = serde_json::to_string(&ids).expect("integers serialise");
            sqlx::query(
                "DELETE FROM outbox_attempts WHERE outbox_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(&ids_json)
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(&ids_json)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.pool.close().await;
        })
    }
}

async fn renew_in(
    conn: &mut sqlx::SqliteConnection,
    owner: &str,
    ids: &[i64],
    lease_until: i64,
) -> Result<u64> {
    let ids = serde_json::to_string(ids).expect("integers serialise");
    let done = sqlx::query(
        "UPDATE outbox SET lease_expires_at = max(lease_expires_at, ?3) \
         WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'in_flight' AND lease_owner = ?2",
    )
    .bind(&ids)
    .bind(owner)
    .bind(lease_until)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
