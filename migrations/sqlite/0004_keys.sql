-- Every idempotency key ever accepted, kept for `key_retention` (default 400 days, far
-- longer than the retention of delivered rows), so an event is never applied twice: a
-- producer's insert of a known key is a silent no-op, whether the row is still in
-- `outbox`, was dead-lettered, or was pruned. `INSERT ... ON CONFLICT DO NOTHING` and a
-- plain `INSERT` both stay harmless. Only an operator's `outboxd dead requeue` sends a
-- known key again (it re-inserts the row under its old id, which the key remembers).
CREATE TABLE outbox_keys (
    sink            TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    outbox_id       INTEGER NOT NULL,
    first_seen      INTEGER NOT NULL,
    PRIMARY KEY (sink, idempotency_key)
);
CREATE INDEX outbox_keys_age ON outbox_keys (first_seen);

-- Ignored re-inserts of known keys, per sink (shown by `outboxd status` and /metrics).
CREATE TABLE outbox_key_repeats (
    sink     TEXT    PRIMARY KEY,
    ignored  INTEGER NOT NULL DEFAULT 0,
    last_at  INTEGER
);

-- A re-insert of a dead-lettered key with a different payload is a producer's correction:
-- kept beside the dead row, shown by `dead show`, sent by `dead requeue --latest`.
ALTER TABLE outbox_dead ADD COLUMN correction_payload TEXT;
ALTER TABLE outbox_dead ADD COLUMN correction_at INTEGER;

INSERT OR IGNORE INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen)
SELECT sink, idempotency_key, id, coalesce(CAST(created_at AS INTEGER), 0) FROM outbox;
INSERT OR IGNORE INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen)
SELECT sink, idempotency_key, outbox_id, created_at FROM outbox_dead ORDER BY id DESC;

-- RAISE(IGNORE) abandons the insert (no error, no row); the counter and the correction
-- written before it stay. NEW.id is -1 (or the producer's) unless a requeue sets the old id.
CREATE TRIGGER outbox_known_key BEFORE INSERT ON outbox
WHEN EXISTS (SELECT 1 FROM outbox_keys k
             WHERE k.sink = NEW.sink AND k.idempotency_key = NEW.idempotency_key
               AND k.outbox_id IS NOT NEW.id)
BEGIN
    INSERT INTO outbox_key_repeats (sink, ignored, last_at)
    VALUES (NEW.sink, 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
    ON CONFLICT (sink) DO UPDATE SET ignored = ignored + 1, last_at = excluded.last_at;
    UPDATE outbox_dead
    SET correction_payload = NEW.payload,
        correction_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE id = (SELECT max(d.id) FROM outbox_dead d
                WHERE d.sink = NEW.sink AND d.idempotency_key = NEW.idempotency_key)
      AND payload IS NOT NEW.payload
      AND NOT EXISTS (SELECT 1 FROM outbox o
                      WHERE o.sink = NEW.sink AND o.idempotency_key = NEW.idempotency_key);
    SELECT RAISE(IGNORE);
END;

CREATE TRIGGER outbox_remember_key AFTER INSERT ON outbox
BEGIN
    INSERT OR IGNORE INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen)
    VALUES (NEW.sink, NEW.idempotency_key, NEW.id,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
