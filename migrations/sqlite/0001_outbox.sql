-- outboxd schema, SQLite. Times are epoch milliseconds (INTEGER). Every default here must
-- work for producers on SQLite 3.40 (Debian 12, Python's sqlite3): julianday() does, while
-- unixepoch('subsec') would need 3.42.

-- The producer contract: producers insert sink, event_type, idempotency_key, payload and
-- optionally ordering_key and not_before; every other column has a default.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    sink             TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    ordering_key     TEXT,
    not_before       INTEGER,
    created_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    -- pending: waiting to be claimed (first attempt, retry, or next step of a flow)
    -- in_flight: claimed under a lease; delivered / done: final, kept until retention
    status           TEXT    NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    in_doubt         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_attempt_at  INTEGER,
    hint             TEXT,
    flow_state       TEXT,
    result           TEXT,
    finished_at      INTEGER,
    UNIQUE (sink, idempotency_key)
);

-- The due-scan: only pending rows, per sink, by due time. Stays small however many
-- delivered rows the table keeps.
CREATE INDEX outbox_due ON outbox (sink, next_attempt_at) WHERE status = 'pending';
-- Crash recovery: in-flight rows by lease expiry.
CREATE INDEX outbox_leased ON outbox (lease_expires_at) WHERE status = 'in_flight';
-- Ordering keys: is there an earlier unfinished row with the same key?
CREATE INDEX outbox_ordering ON outbox (ordering_key, id)
    WHERE ordering_key IS NOT NULL AND status IN ('pending', 'in_flight');
-- Retention of final rows.
CREATE INDEX outbox_finished ON outbox (finished_at) WHERE status IN ('delivered', 'done');

-- A producer's not_before becomes the first due time.
CREATE TRIGGER outbox_not_before AFTER INSERT ON outbox
WHEN NEW.not_before IS NOT NULL
BEGIN
    UPDATE outbox SET next_attempt_at = NEW.not_before WHERE id = NEW.id;
END;

-- Rows that could not be delivered, for an operator to inspect and requeue.
CREATE TABLE outbox_dead (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id        INTEGER NOT NULL,
    sink             TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    ordering_key     TEXT,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    reason           TEXT    NOT NULL,
    last_reply       TEXT,
    flow_state       TEXT,
    dead_at          INTEGER NOT NULL
);
CREATE INDEX outbox_dead_sink ON outbox_dead (sink, dead_at);
CREATE INDEX outbox_dead_key ON outbox_dead (sink, idempotency_key);

-- One row per delivery step, kept with the outbox row (and after it is dead-lettered).
CREATE TABLE outbox_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id    INTEGER NOT NULL,
    sink         TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    http_status  INTEGER,
    reply_code   TEXT,
    hint         TEXT,
    outcome      TEXT    NOT NULL,
    error        TEXT,
    reply        TEXT
);
CREATE INDEX outbox_attempts_row ON outbox_attempts (outbox_id);
CREATE INDEX outbox_attempts_time ON outbox_attempts (started_at);

-- Operator switches per sink (pause), read by the daemon at every poll.
CREATE TABLE outbox_sinks (
    sink       TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    paused_at  INTEGER,
    note       TEXT
);
