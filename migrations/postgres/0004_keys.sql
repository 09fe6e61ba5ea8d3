-- Every idempotency key ever accepted, kept for `key_retention` (default 400 days, far
-- longer than the retention of delivered rows), so an event is never applied twice: a
-- producer's insert of a known key is a silent no-op, whether the row is still in
-- `outbox`, was dead-lettered, or was pruned. `INSERT ... ON CONFLICT DO NOTHING` and a
-- plain `INSERT` both stay harmless. Only an operator's `outboxd dead requeue` sends a
-- known key again (it re-inserts the row under its old id, which the key remembers).
CREATE TABLE outbox_keys (
    sink            TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    outbox_id       BIGINT  NOT NULL,
    first_seen      BIGINT  NOT NULL,
    PRIMARY KEY (sink, idempotency_key)
);
CREATE INDEX outbox_keys_age ON outbox_keys (first_seen);

-- Ignored re-inserts of known keys, per sink (shown by `outboxd status` and /metrics).
CREATE TABLE outbox_key_repeats (
    sink     TEXT    PRIMARY KEY,
    ignored  BIGINT  NOT NULL DEFAULT 0,
    last_at  BIGINT
);

-- A re-insert of a dead-lettered key with a different payload is a producer's correction:
-- kept beside the dead row, shown by `dead show`, sent by `dead requeue --latest`.
ALTER TABLE outbox_dead ADD COLUMN correction_payload TEXT;
ALTER TABLE outbox_dead ADD COLUMN correction_at BIGINT;

INSERT INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen)
SELECT sink, idempotency_key, id, created_at FROM outbox
ON CONFLICT DO NOTHING;
INSERT INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen)
SELECT DISTINCT ON (sink, idempotency_key) sink, idempotency_key, outbox_id, created_at
FROM outbox_dead ORDER BY sink, idempotency_key, id DESC
ON CONFLICT DO NOTHING;

-- Returning NULL from a BEFORE trigger skips the row: no error, no insert. NEW.id holds
-- the identity value already, which differs from the key's unless a requeue set the old id.
CREATE FUNCTION outbox_known_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outbox_keys k
                   WHERE k.sink = NEW.sink AND k.idempotency_key = NEW.idempotency_key
                     AND k.outbox_id IS DISTINCT FROM NEW.id) THEN
        RETURN NEW;
    END IF;
    INSERT INTO outbox_key_repeats AS r (sink, ignored, last_at) VALUES (NEW.sink, 1, now_ms)
    ON CONFLICT (sink) DO UPDATE SET ignored = r.ignored + 1, last_at = excluded.last_at;
    UPDATE outbox_dead
    SET correction_payload = NEW.payload, correction_at = now_ms
    WHERE id = (SELECT max(d.id) FROM outbox_dead d
                WHERE d.sink = NEW.sink AND d.idempotency_key = NEW.idempotency_key)
      AND payload IS DISTINCT FROM NEW.payload
      AND NOT EXISTS (SELECT 1 FROM outbox o
                      WHERE o.sink = NEW.sink AND o.idempotency_key = NEW.idempotency_key);
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_known_key BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_known_key();

CREATE FUNCTION outbox_remember_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_keys (sink, idempotency_key, outbox_id, first_seen)
    VALUES (NEW.sink, NEW.idempotency_key, NEW.id,
            (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_remember_key AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_remember_key();
