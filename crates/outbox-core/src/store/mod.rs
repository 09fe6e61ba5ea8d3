//! The outbox store: one interface, two plain backends (SQLite, the embedded default, and
//! Postgres), chosen once at start-up from the `database_url` scheme. Each backend writes
//! its own SQL; there is no `sqlx::Any` (it cannot map the types we need).

pub mod postgres;
pub mod sqlite;
pub mod wake;

use std::time::Duration;

use serde::Serialize;

use crate::event::{ClaimedRow, NewEvent};
use crate::outcome::AttemptInfo;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database_url {0:?}: use sqlite:///path/to/outbox.db or postgres://user@host/db")]
    UnsupportedUrl(String),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What happens to a claimed row after a delivery step, as decided by the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Final success (`status = 'delivered'`), with the platform's hint if any.
    Delivered {
        hint: Option<String>,
        result: Option<String>,
    },
    /// Final, not an error, nothing more to send (`status = 'done'`), e.g. "no parking record".
    Done {
        note: String,
        result: Option<String>,
    },
    /// Back to pending, due again at `next_at`.
    Retry { next_at: i64, error: String },
    /// A multi-step flow moved on: new state, next step due at `next_at`; the step's attempt
    /// counter starts again.
    Continue {
        state: String,
        next_at: i64,
        note: String,
    },
    /// Move to `outbox_dead`.
    Dead {
        reason: String,
        last_reply: Option<String>,
    },
    /// Give the row back without counting the attempt (graceful shutdown before it started);
    /// `in_doubt` when it had started and may have reached the platform.
    Release { in_doubt: bool },
}

/// One row's completion, written in a batch with others.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: i64,
    pub sink: String,
    pub attempt: u32,
    pub action: Action,
    /// The attempt history entry; `None` when nothing was attempted (a release).
    pub info: Option<AttemptInfo>,
    pub outcome_label: &'static str,
}

/// Where a claim stands against the schema this build expects.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaState {
    Current,
    /// No outboxd tables at all.
    Empty,
    /// Older: these migrations are missing.
    Behind(Vec<i64>),
    /// The database has migrations this build does not know: it is older than the schema.
    Ahead(Vec<i64>),
}

/// Per-sink figures for `outboxd status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SinkStats {
    pub sink: String,
    pub pending: i64,
    pub in_flight: i64,
    pub due_now: i64,
    pub oldest_pending_ms: Option<i64>,
    pub delivered: i64,
    pub delivered_last_hour: i64,
    pub done: i64,
    pub retrying: i64,
    pub dead: i64,
    pub hints: i64,
    pub paused: bool,
    pub last_error: Option<String>,
}

/// A dead-lettered row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadRow {
    pub id: i64,
    pub outbox_id: i64,
    pub sink: String,
    pub event_type: String,
    pub idempotency_key: String,
    pub payload: String,
    pub ordering_key: Option<String>,
    pub created_at: i64,
    pub attempts: i64,
    pub reason: String,
    pub last_reply: Option<String>,
    pub dead_at: i64,
    /// Where a multi-step flow stood (lbbtech); a requeue resumes from it.
    pub flow_state: Option<String>,
}

impl DeadRow {
    /// Whether requeueing may apply the event a second time: the platform may already have
    /// applied it (outcome unknown), and there is no flow state to resume safely from.
    pub fn requeue_may_duplicate(&self) -> bool {
        self.reason.starts_with("outcome unknown") && self.flow_state.is_none()
    }
}

/// One entry of the attempt history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRow {
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub http_status: Option<i64>,
    pub reply_code: Option<String>,
    pub hint: Option<String>,
    pub outcome: String,
    pub error: Option<String>,
    pub reply: Option<String>,
}

/// The outbox row as producers and operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowView {
    pub id: i64,
    pub sink: String,
    pub event_type: String,
    pub idempotency_key: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub hint: Option<String>,
    pub result: Option<String>,
}

/// A connected store.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Settings for opening a store.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Create the database file if missing (the migrator does; the daemon does not).
    pub create: bool,
    pub busy_timeout: Duration,
    pub max_connections: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            create: false,
            busy_timeout: Duration::from_secs(5),
            max_connections: 1,
        }
    }
}

impl Store {
    pub async fn open(url: &str, opts: &OpenOptions) -> Result<Store> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::SqliteStore::open(url, opts).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(postgres::PgStore::open(url, opts).await?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_string()))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn migrate(&self) -> Result<Vec<i64>> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    pub async fn schema_state(&self) -> Result<SchemaState> {
        match self {
            Store::Sqlite(s) => s.schema_state().await,
            Store::Postgres(s) => s.schema_state().await,
        }
    }

    /// Fails with a message that names the fix unless the schema is current.
    pub async fn require_current_schema(&self, database_url: &str) -> Result<()> {
        let url_for_message = crate::config::redact_url(database_url);
        match self.schema_state().await? {
            SchemaState::Current => Ok(()),
            SchemaState::Empty => Err(StoreError::Schema(format!(
                "the database has no outbox schema yet: run `outbox-migrate --database-url {url_for_message}` first"
            ))),
            SchemaState::Behind(missing) => Err(StoreError::Schema(format!(
                "the database schema is outdated (missing migrations {missing:?}): run `outbox-migrate --database-url {url_for_message}`"
            ))),
            SchemaState::Ahead(unknown) => Err(StoreError::Schema(format!(
                "the database schema is newer than this outboxd (unknown migrations {unknown:?}): upgrade outboxd"
            ))),
        }
    }

    /// Inserts an event unless one with the same (sink, idempotency_key) exists. Returns
    /// whether it was inserted.
    pub async fn enqueue(&self, ev: &NewEvent) -> Result<bool> {
        match self {
            Store::Sqlite(s) => s.enqueue(ev).await,
            Store::Postgres(s) => s.enqueue(ev).await,
        }
    }

    /// Claims up to `limit` due rows of `sink` for `owner` until `lease_until`.
    pub async fn claim(
        &self,
        sink: &str,
        owner: &str,
        limit: u32,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<ClaimedRow>> {
        match self {
            Store::Sqlite(s) => s.claim(sink, owner, limit, now, lease_until).await,
            Store::Postgres(s) => s.claim(sink, owner, limit, now, lease_until).await,
        }
    }

    /// Returns rows whose lease expired (their worker died) to pending, marked in doubt.
    pub async fn reclaim_expired(&self, now: i64) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.reclaim_expired(now).await,
            Store::Postgres(s) => s.reclaim_expired(now).await,
        }
    }

    /// Dead-letters due rows addressed to sinks that are not configured.
    pub async fn dead_letter_unknown_sinks(&self, known: &[String], now: i64) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.dead_letter_unknown_sinks(known, now).await,
            Store::Postgres(s) => s.dead_letter_unknown_sinks(known, now).await,
        }
    }

    /// Writes a batch of completions in one transaction, checking each lease is still
    /// `owner`'s. Returns how many rows had lost their lease (and were left alone).
    pub async fn complete(&self, owner: &str, batch: &[Completion], now: i64) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.complete(owner, batch, now).await,
            Store::Postgres(s) => s.complete(owner, batch, now).await,
        }
    }

    pub async fn paused_sinks(&self) -> Result<Vec<String>> {
        match self {
            Store::Sqlite(s) => s.paused_sinks().await,
            Store::Postgres(s) => s.paused_sinks().await,
        }
    }

    pub async fn set_paused(&self, sink: &str, paused: bool, note: Option<&str>) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.set_paused(sink, paused, note).await,
            Store::Postgres(s) => s.set_paused(sink, paused, note).await,
        }
    }

    pub async fn stats(&self, now: i64) -> Result<Vec<SinkStats>> {
        match self {
            Store::Sqlite(s) => s.stats(now).await,
            Store::Postgres(s) => s.stats(now).await,
        }
    }

    pub async fn row(&self, sink: &str, key: &str) -> Result<Option<RowView>> {
        match self {
            Store::Sqlite(s) => s.row(sink, key).await,
            Store::Postgres(s) => s.row(sink, key).await,
        }
    }

    pub async fn dead_list(
        &self,
        sink: Option<&str>,
        since: Option<i64>,
        reason: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadRow>> {
        match self {
            Store::Sqlite(s) => s.dead_list(sink, since, reason, limit).await,
            Store::Postgres(s) => s.dead_list(sink, since, reason, limit).await,
        }
    }

    pub async fn dead_get(&self, id: i64) -> Result<Option<DeadRow>> {
        match self {
            Store::Sqlite(s) => s.dead_get(id).await,
            Store::Postgres(s) => s.dead_get(id).await,
        }
    }

    pub async fn attempts(&self, outbox_id: i64) -> Result<Vec<AttemptRow>> {
        match self {
            Store::Sqlite(s) => s.attempts(outbox_id).await,
            Store::Postgres(s) => s.attempts(outbox_id).await,
        }
    }

    /// Moves a dead row back to pending with its attempts reset (history kept). Fails with
    /// `Conflict` if a row with the same (sink, key) is already in the outbox.
    pub async fn requeue(&self, dead_id: i64, now: i64) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.requeue(dead_id, now).await,
            Store::Postgres(s) => s.requeue(dead_id, now).await,
        }
    }

    pub async fn dead_ids(&self, sink: &str) -> Result<Vec<i64>> {
        match self {
            Store::Sqlite(s) => s.dead_ids(sink).await,
            Store::Postgres(s) => s.dead_ids(sink).await,
        }
    }

    pub async fn purge_dead(&self, older_than: i64) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.purge_dead(older_than).await,
            Store::Postgres(s) => s.purge_dead(older_than).await,
        }
    }

    /// Deletes up to `batch` final rows (and their history) finished before `before`.
    pub async fn prune_finished(&self, before: i64, batch: i64) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.prune_finished(before, batch).await,
            Store::Postgres(s) => s.prune_finished(before, batch).await,
        }
    }

    /// Records `batch` and claims rows for `claims` (sink, limit), in one transaction (one
    /// commit, one fsync, per worker round). Returns
    /// the lost-lease count and the claimed rows per entry of `claims`.
    pub async fn cycle(
        &self,
        owner: &str,
        batch: &[Completion],
        claims: &[(String, u32)],
        now: i64,
        lease_until: i64,
    ) -> Result<(u64, Vec<Vec<ClaimedRow>>)> {
        match self {
            Store::Sqlite(s) => s.cycle(owner, batch, claims, now, lease_until).await,
            Store::Postgres(s) => s.cycle(owner, batch, claims, now, lease_until).await,
        }
    }

    /// A cheap round trip to the database (for `/healthz`).
    pub async fn ping(&self) -> Result<()> {
        self.schema_state().await.map(|_| ())
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    /// [`Store::cycle`], also renewing the leases of `renew` (rows this worker still
    /// delivers) until `lease_until`, in the same transaction.
    pub async fn cycle_renewing(
        &self,
        owner: &str,
        batch: &[Completion],
        claims: &[(String, u32)],
        renew: &[i64],
        now: i64,
        lease_until: i64,
    ) -> Result<(u64, Vec<Vec<ClaimedRow>>)> {
        match self {
            Store::Sqlite(s) => {
                s.cycle_renewing(owner, batch, claims, renew, now, lease_until)
                    .await
            }
            Store::Postgres(s) => {
                s.cycle_renewing(owner, batch, claims, renew, now, lease_until)
                    .await
            }
        }
    }

    /// Extends the leases of `ids` still held by `owner` until `lease_until` (never
    /// shortens one). Returns how many were renewed.
    pub async fn renew_leases(&self, owner: &str, ids: &[i64], lease_until: i64) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.renew_leases(owner, ids, lease_until).await,
            Store::Postgres(s) => s.renew_leases(owner, ids, lease_until).await,
        }
    }

    /// Returns rows whose lease expired to pending, marked in doubt, except the rows
    /// `owner` (a live worker) still holds (`held`).
    pub async fn reclaim_expired_except(&self, now: i64, owner: &str, held: &[i64]) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.reclaim_expired_except(now, owner, held).await,
            Store::Postgres(s) => s.reclaim_expired_except(now, owner, held).await,
        }
    }

    /// Gives back every row leased to `owner` except `held`, due at `now`, not in doubt and
    /// without counting the attempt: rows a failed round may have claimed but never sent.
    pub async fn release_unsent(&self, owner: &str, held: &[i64], now: i64) -> Result<u64> {
        match self {
            Store::Sqlite(s) => s.release_unsent(owner, held, now).await,
            Store::Postgres(s) => s.release_unsent(owner, held, now).await,
        }
    }
}

/// Compares the migrations a database has applied with those this build embeds.
pub(crate) fn compare_schema(applied: &[i64], embedded: impl Iterator<Item = i64>) -> SchemaState {
    let embedded: Vec<i64> = embedded.collect();
    if applied.is_empty() {
        return SchemaState::Empty;
    }
    let unknown: Vec<i64> = applied
        .iter()
        .copied()
        .filter(|v| !embedded.contains(v))
        .collect();
    if !unknown.is_empty() {
        return SchemaState::Ahead(unknown);
    }
    let missing: Vec<i64> = embedded
        .into_iter()
        .filter(|v| !applied.contains(v))
        .collect();
    if missing.is_empty() {
        SchemaState::Current
    } else {
        SchemaState::Behind(missing)
    }
}
