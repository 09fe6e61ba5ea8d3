//! The outbox store: one interface, two plain backends (SQLite, the embedded default, and
//! Postgres), chosen once at start-up from the `database_url` scheme. Each backend writes
//! its own SQL; there is no `sqlx::Any` (it cannot map the types we need).

pub mod filter;
pub mod ops;
pub mod postgres;
pub mod sqlite;
pub mod wake;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

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

/// How long accepted idempotency keys are remembered (so a re-insert is ignored): 400
/// days, far longer than any retention of delivered rows.
pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);

/// Why a row was dead-lettered: the typed `outbox_dead.kind` column. The reason text
/// beside it is for people; code reads this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadKind {
    /// The platform refused the event.
    Permanent,
    /// Outcome unknown: the platform may have applied it.
    Unknown,
    /// Retries or `max_age` exhausted on transient failures.
    Expired,
    /// Unreadable, oversized or of the wrong event type: never sent.
    Invalid,
    /// The delivery panicked.
    Internal,
    /// Addressed to a sink this worker's config does not have.
    UnknownSink,
}

impl DeadKind {
    pub const ALL: [DeadKind; 6] = [
        DeadKind::Permanent,
        DeadKind::Unknown,
        DeadKind::Expired,
        DeadKind::Invalid,
        DeadKind::Internal,
        DeadKind::UnknownSink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Permanent => "permanent",
            DeadKind::Unknown => "unknown",
            DeadKind::Expired => "expired",
            DeadKind::Invalid => "invalid",
            DeadKind::Internal => "internal",
            DeadKind::UnknownSink => "unknown_sink",
        }
    }
}

impl std::fmt::Display for DeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeadKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        DeadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown dead-letter kind {s:?}"))
    }
}

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
        kind: DeadKind,
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
    /// Rows an operator cancelled (`outboxd cancel`), kept until retention.
    pub cancelled: i64,
    pub retrying: i64,
    pub dead: i64,
    pub hints: i64,
    pub paused: bool,
    pub last_error: Option<String>,
    /// Producers' inserts of keys already known (delivered, dead-lettered or pruned rows),
    /// ignored so that nothing is applied twice.
    pub ignored_reinserts: i64,
    /// Since when a worker holds this sink's rows because its config lacks the sink
    /// (`pending` counts them); they are dead-lettered once older than `max_age`.
    pub unconfigured_since: Option<i64>,
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
    pub kind: DeadKind,
    pub reason: String,
    pub last_reply: Option<String>,
    pub dead_at: i64,
    /// Where a multi-step flow stood (lbbtech); a requeue resumes from it.
    pub flow_state: Option<String>,
    /// A payload the producer inserted again under this key after the row died (its
    /// correction), and when; `dead requeue --latest` sends it.
    pub correction_payload: Option<String>,
    pub correction_at: Option<i64>,
}

impl DeadRow {
    /// Whether requeueing may apply the event a second time: the platform may already have
    /// applied it (outcome unknown), and there is no flow state to resume safely from.
    pub fn requeue_may_duplicate(&self) -> bool {
        self.kind == DeadKind::Unknown && self.flow_state.is_none()
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

/// What each backend implements: every store operation, written once per backend in its
/// own SQL. [`Store`] is a cheap-clone handle to one of them and dereferences to this
/// trait, so callers write `store.claim(..).await` whatever the backend.
pub trait Backend: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The concrete backend, for what only one of them has (the SQLite file and its WAL,
    /// the Postgres listener, raw pools in tests and benchmarks).
    fn engine(&self) -> Engine<'_>;

    /// Applies the embedded migrations; returns the versions it applied.
    fn migrate(&self) -> BoxFuture<'_, Result<Vec<i64>>>;

    fn schema_state(&self) -> BoxFuture<'_, Result<SchemaState>>;

    /// Inserts an event unless one with the same (sink, idempotency_key) exists. Returns
    /// whether it was inserted.
    fn enqueue<'a>(&'a self, ev: &'a NewEvent) -> BoxFuture<'a, Result<bool>>;

    /// Claims up to `limit` due rows of `sink` for `owner` until `lease_until`.
    fn claim<'a>(
        &'a self,
        sink: &'a str,
        owner: &'a str,
        limit: u32,
        now: i64,
        lease_until: i64,
    ) -> BoxFuture<'a, Result<Vec<ClaimedRow>>>;

    /// Records `batch` (checking each lease is still `owner`'s), renews the leases of
    /// `renew` (rows this worker still delivers; never shortened) until `lease_until`, and
    /// claims rows for `claims` (sink, limit), in one transaction (one commit, one fsync,
    /// per worker round). Returns the lost-lease count and the claimed rows per entry of
    /// `claims`.
    fn cycle<'a>(
        &'a self,
        owner: &'a str,
        batch: &'a [Completion],
        claims: &'a [(String, u32)],
        renew: &'a [i64],
        now: i64,
        lease_until: i64,
    ) -> BoxFuture<'a, Result<(u64, Vec<Vec<ClaimedRow>>)>>;

    /// Gives back every row leased to `owner` except `held`, due at `now`, not in doubt and
    /// without counting the attempt: rows a failed round may have claimed but never sent.
    fn release_unsent<'a>(
        &'a self,
        owner: &'a str,
        held: &'a [i64],
        now: i64,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Returns rows whose lease expired (their worker died) to pending, marked in doubt,
    /// except the rows `owner` (a live worker) still holds (`held`): it renews their
    /// leases, and a stall that outlasted a lease must not cost the verdicts it holds.
    fn reclaim_expired<'a>(
        &'a self,
        now: i64,
        owner: &'a str,
        held: &'a [i64],
    ) -> BoxFuture<'a, Result<u64>>;

    /// Holds rows addressed to sinks missing from `known` (this worker's config): marks
    /// those sinks (`SinkStats::unconfigured_since`), clears the mark of known sinks, and
    /// dead-letters (kind `unknown_sink`) only due rows older than `max_age`. Returns how
    /// many rows it dead-lettered.
    fn dead_letter_unknown_sinks<'a>(
        &'a self,
        known: &'a [String],
        max_age: Duration,
        now: i64,
    ) -> BoxFuture<'a, Result<u64>>;

    fn paused_sinks(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    fn set_paused<'a>(
        &'a self,
        sink: &'a str,
        paused: bool,
        note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>>;

    fn stats(&self, now: i64) -> BoxFuture<'_, Result<Vec<SinkStats>>>;

    /// Pending plus in-flight rows per sink, read through the partial indexes that hold
    /// only those rows: what `run --until-idle` asks to know it is done, without the full
    /// pass of [`Backend::stats`] (which on a large outbox reads every final row and sorts
    /// them, memory included).
    fn open_rows(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>>>;

    fn row<'a>(&'a self, sink: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<RowView>>>;

    fn dead_list<'a>(
        &'a self,
        sink: Option<&'a str>,
        since: Option<i64>,
        reason: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeadRow>>>;

    fn dead_get(&self, id: i64) -> BoxFuture<'_, Result<Option<DeadRow>>>;

    fn attempts(&self, outbox_id: i64) -> BoxFuture<'_, Result<Vec<AttemptRow>>>;

    /// Moves a dead row back to pending with its attempts reset (history kept); with
    /// `latest`, with the producer's correction payload if one came. The only way a known
    /// key is sent again. Fails with `Conflict` if a row with the same (sink, key) is
    /// already in the outbox.
    fn requeue(&self, dead_id: i64, now: i64, latest: bool) -> BoxFuture<'_, Result<()>>;

    fn dead_ids<'a>(&'a self, sink: &'a str) -> BoxFuture<'a, Result<Vec<i64>>>;

    fn purge_dead(&self, older_than: i64) -> BoxFuture<'_, Result<u64>>;

    /// Deletes up to `batch` final rows (and their history) finished before `before`.
    fn prune_finished(&self, before: i64, batch: i64) -> BoxFuture<'_, Result<u64>>;

    /// Forgets up to `batch` accepted keys first seen more than `key_retention` before
    /// `now` whose rows are gone from `outbox` and `outbox_dead`: after that, an insert of
    /// the key is a new event again. See [`DEFAULT_KEY_RETENTION`].
    fn prune_keys(
        &self,
        now: i64,
        key_retention: Duration,
        batch: i64,
    ) -> BoxFuture<'_, Result<u64>>;

    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The concrete backend behind a [`Store`].
pub enum Engine<'a> {
    Sqlite(&'a sqlite::SqliteStore),
    Postgres(&'a postgres::PgStore),
}

/// A connected store: a cheap-clone handle to its [`Backend`].
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>);

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Settings for opening a store.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Create the database file if missing (the migrator does; the daemon does not).
    pub create: bool,
    pub busy_timeout: Duration,
    pub max_connections: u32,
    /// SQLite: page cache per connection, in KiB (`PRAGMA cache_size`). It also bounds the
    /// memory of a statement's sorter (the status query groups the whole table), so it is
    /// what a connection adds to RSS on a large outbox. SQLite's default (2 MiB) for the
    /// CLI and the admin listener; the daemon's worker connection takes more
    /// ([`OpenOptions::WORKER_CACHE_KIB`]).
    pub cache_kib: u32,
}

impl OpenOptions {
    /// The worker connection's page cache: the claim's and the verdicts' pages of a busy
    /// outbox stay in memory instead of being copied from the OS on every round. 8 MiB
    /// holds them (the 1,000,000-row drain ran as fast as with 16) and keeps the daemon
    /// under 64 MiB draining it (docs/BENCHMARKS.md).
    pub const WORKER_CACHE_KIB: u32 = 8 * 1024;
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            create: false,
            busy_timeout: Duration::from_secs(5),
            max_connections: 1,
            cache_kib: 2 * 1024,
        }
    }
}

impl Store {
    pub async fn open(url: &str, opts: &OpenOptions) -> Result<Store> {
        if url.starts_with("sqlite:") {
            Ok(Store(Arc::new(sqlite::SqliteStore::open(url, opts).await?)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store(Arc::new(postgres::PgStore::open(url, opts).await?)))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_string()))
        }
    }

    /// The SQLite backend, if this is one.
    pub fn sqlite(&self) -> Option<&sqlite::SqliteStore> {
        match self.engine() {
            Engine::Sqlite(s) => Some(s),
            Engine::Postgres(_) => None,
        }
    }

    /// The Postgres backend, if this is one.
    pub fn postgres(&self) -> Option<&postgres::PgStore> {
        match self.engine() {
            Engine::Postgres(p) => Some(p),
            Engine::Sqlite(_) => None,
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

    /// A cheap round trip to the database (for `/healthz`).
    pub async fn ping(&self) -> Result<()> {
        self.schema_state().await.map(|_| ())
    }
}

/// The defect of a row whose payload is too large to load (the words the worker used
/// when it measured payloads itself).
pub(crate) fn oversized(bytes: i64) -> String {
    format!(
        "payload is {bytes} bytes, above the {} byte limit: no platform accepts it",
        crate::event::MAX_PAYLOAD_BYTES
    )
}

/// Typed column access that both backends' rows provide, so rows the two backends return
/// alike are mapped once ([`dead_row`], [`row_view`], [`attempt_row`], [`sink_stats`]).
/// Integers of any width read as `i64`, flags as `bool`; SQLite text a producer wrote as
/// bytes reads lossily.
pub(crate) trait Cols {
    fn int(&self, col: &str) -> std::result::Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> std::result::Result<Option<i64>, sqlx::Error>;
    fn opt_text(&self, col: &str) -> std::result::Result<Option<String>, sqlx::Error>;
    fn flag(&self, col: &str) -> std::result::Result<bool, sqlx::Error>;
    fn text(&self, col: &str) -> std::result::Result<String, sqlx::Error> {
        Ok(self.opt_text(col)?.unwrap_or_default())
    }
}

pub(crate) fn dead_row(r: &impl Cols) -> std::result::Result<DeadRow, sqlx::Error> {
    Ok(DeadRow {
        id: r.int("id")?,
        outbox_id: r.int("outbox_id")?,
        sink: r.text("sink")?,
        event_type: r.text("event_type")?,
        idempotency_key: r.text("idempotency_key")?,
        payload: r.text("payload")?,
        ordering_key: r.opt_text("ordering_key")?,
        created_at: r.int("created_at")?,
        attempts: r.int("attempts")?,
        // The column's CHECK admits only known kinds.
        kind: r.text("kind")?.parse().unwrap_or(DeadKind::Permanent),
        reason: r.text("reason")?,
        last_reply: r.opt_text("last_reply")?,
        dead_at: r.int("dead_at")?,
        flow_state: r.opt_text("flow_state")?,
        correction_payload: r.opt_text("correction_payload")?,
        correction_at: r.opt_int("correction_at")?,
    })
}

pub(crate) fn row_view(r: &impl Cols) -> std::result::Result<RowView, sqlx::Error> {
    Ok(RowView {
        id: r.int("id")?,
        sink: r.text("sink")?,
        event_type: r.text("event_type")?,
        idempotency_key: r.text("idempotency_key")?,
        status: r.text("status")?,
        attempts: r.int("attempts")?,
        next_attempt_at: r.int("next_attempt_at")?,
        last_error: r.opt_text("last_error")?,
        hint: r.opt_text("hint")?,
        result: r.opt_text("result")?,
    })
}

pub(crate) fn attempt_row(r: &impl Cols) -> std::result::Result<AttemptRow, sqlx::Error> {
    Ok(AttemptRow {
        attempt: r.int("attempt")?,
        started_at: r.int("started_at")?,
        duration_ms: r.int("duration_ms")?,
        http_status: r.opt_int("http_status")?,
        reply_code: r.opt_text("reply_code")?,
        hint: r.opt_text("hint")?,
        outcome: r.text("outcome")?,
        error: r.opt_text("error")?,
        reply: r.opt_text("reply")?,
    })
}

/// One row of a backend's statistics query (same column names on both).
pub(crate) fn sink_stats(r: &impl Cols, now: i64) -> std::result::Result<SinkStats, sqlx::Error> {
    Ok(SinkStats {
        sink: r.text("sink")?,
        pending: r.int("pending")?,
        in_flight: r.int("in_flight")?,
        due_now: r.int("due_now")?,
        oldest_pending_ms: r.opt_int("oldest")?.map(|t| now - t),
        delivered: r.int("delivered")?,
        delivered_last_hour: r.int("delivered_hour")?,
        done: r.int("done")?,
        cancelled: r.int("cancelled")?,
        retrying: r.int("retrying")?,
        dead: r.int("dead")?,
        hints: r.int("hints")?,
        paused: r.flag("paused")?,
        last_error: r.opt_text("last_error")?,
        ignored_reinserts: r.int("ignored_reinserts")?,
        unconfigured_since: r.opt_int("unconfigured_since")?,
    })
}

/// Maps every row with `f`, as a store error.
pub(crate) fn map_rows<R, T>(
    rows: &[R],
    f: impl Fn(&R) -> std::result::Result<T, sqlx::Error>,
) -> Result<Vec<T>> {
    rows.iter()
        .map(f)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(StoreError::from)
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
