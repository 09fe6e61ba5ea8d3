-- Operators' bulk actions (issue 16).
--
-- cancelled: a final status an operator gives a pending row (`outboxd cancel`): never sent
-- again, kept with its attempt history, its key still remembered (outbox_keys), pruned by
-- retention like delivered, done and superseded rows. `cancel_note` says who and why.
ALTER TABLE outbox ADD COLUMN cancel_note TEXT;
DROP INDEX outbox_finished;
CREATE INDEX outbox_finished ON outbox (finished_at)
    WHERE status IN ('delivered', 'done', 'superseded', 'cancelled');

-- `outboxd retry-now` on a sink the daemon holds (sink health lives in the daemon's memory):
-- the request travels through this column, read at housekeeping with the pauses; a daemon
-- holding the sink probes it at once when the value is newer than the last it saw.
ALTER TABLE outbox_sinks ADD COLUMN probe_requested_at INTEGER;

-- outbox_outcomes shows a cancelled row's outcome as 'cancelled' (see 0002, 0003, 0007).
DROP VIEW outbox_outcomes;
CREATE VIEW outbox_outcomes AS
SELECT o.sink,
       o.idempotency_key,
       o.status,
       CASE WHEN o.status IN ('delivered', 'done')
            THEN coalesce(CASE WHEN json_valid(o.result) THEN json_extract(o.result, '$.outcome') END,
                          o.status)
            WHEN o.status IN ('superseded', 'cancelled') THEN o.status
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
