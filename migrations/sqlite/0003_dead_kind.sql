-- outbox_dead.kind: why a row was dead-lettered, as a typed value instead of a reason
-- text to match (the reason stays as it was, for people):
--   permanent     the platform refused it (fix the payload or the platform's data)
--   unknown       outcome unknown: the platform may have applied it; check before requeueing
--   expired       retries or max_age exhausted on transient failures
--   invalid       unreadable, oversized or of the wrong event type; never sent
--   internal      the delivery panicked (a bug: report it with the row)
--   unknown_sink  addressed to a sink this worker's config does not have
-- Existing rows are classified from their reason text, which outboxd wrote.
ALTER TABLE outbox_dead ADD COLUMN kind TEXT NOT NULL DEFAULT 'permanent'
    CHECK (kind IN ('permanent', 'unknown', 'expired', 'invalid', 'internal', 'unknown_sink'));

UPDATE outbox_dead SET kind = CASE
    WHEN reason LIKE 'outcome unknown%' THEN 'unknown'
    WHEN reason LIKE 'gave up after %' THEN 'expired'
    WHEN reason LIKE 'internal error while delivering%' THEN 'internal'
    WHEN reason LIKE 'sink % is not configured:%' THEN 'unknown_sink'
    WHEN reason LIKE 'the row cannot be read%'
      OR reason LIKE 'payload is % bytes, above the %'
      OR reason LIKE 'sink % (type %) delivers % events, not %' THEN 'invalid'
    ELSE 'permanent'
END;

-- outbox_outcomes reads the kind (see 0002 for what each column means).
DROP VIEW outbox_outcomes;
CREATE VIEW outbox_outcomes AS
SELECT o.sink,
       o.idempotency_key,
       o.status,
       CASE WHEN o.status IN ('delivered', 'done')
            THEN coalesce(CASE WHEN json_valid(o.result) THEN json_extract(o.result, '$.outcome') END,
                          o.status)
            ELSE 'pending'
       END AS outcome,
       o.result,
       coalesce(CASE WHEN json_valid(o.result) THEN json_extract(o.result, '$.reason') END,
                o.last_error) AS reason
FROM outbox o
UNION ALL
SELECT d.sink,
       d.idempotency_key,
       'dead' AS status,
       CASE WHEN d.kind = 'unknown' THEN 'unknown' ELSE 'dead' END AS outcome,
       json_object(
           'outcome', CASE WHEN d.kind = 'unknown' THEN 'unknown' ELSE 'dead' END,
           'orderNum', CASE WHEN json_valid(d.flow_state) THEN json_extract(d.flow_state, '$.order_num') END,
           'reason', d.reason) AS result,
       d.reason
FROM outbox_dead d
WHERE d.id = (SELECT max(d2.id) FROM outbox_dead d2
              WHERE d2.sink = d.sink AND d2.idempotency_key = d.idempotency_key)
  AND NOT EXISTS (SELECT 1 FROM outbox o2
                  WHERE o2.sink = d.sink AND o2.idempotency_key = d.idempotency_key);
