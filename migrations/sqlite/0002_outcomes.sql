-- outbox_outcomes: what became of an event, for its producer, in one query by
-- (sink, idempotency_key), whether the row is still in `outbox` or was dead-lettered:
--
--   SELECT status, outcome, result, reason FROM outbox_outcomes
--   WHERE sink = ?1 AND idempotency_key = ?2;
--
-- status:  the row's status (pending, in_flight, delivered, done), or 'dead'.
-- outcome: for a final row, its result's "outcome" (lbbtech: 'started' or 'failed'), else
--          its status ('delivered', 'done'); 'pending' while the row is not final;
--          'unknown' for a dead row whose reason starts with "outcome unknown" (a charge that
--          may have started: check the charger before refunding); 'dead' for any other dead
--          row (nothing was applied: invalid payload, configuration, retries exhausted).
-- result:  the sink's result JSON (lbbtech: {"outcome":"failed","refund":true,"reason":..,
--          "code":..,"orderNum":..}); for a dead row {"outcome":..,"orderNum":..,"reason":..}
--          with the order number its flow had reached, if any.
-- reason:  why: the result's "reason", else the row's last error or progress note.
--
-- At most one row per (sink, idempotency_key): a dead row is shown only while no row with
-- the same key is back in the outbox, and only the latest one. Both arms use the
-- (sink, idempotency_key) indexes. Portable to SQLite 3.40 (json_valid, json_extract and
-- json_object are built in since 3.38).
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
       CASE WHEN d.reason LIKE 'outcome unknown%' THEN 'unknown' ELSE 'dead' END AS outcome,
       json_object(
           'outcome', CASE WHEN d.reason LIKE 'outcome unknown%' THEN 'unknown' ELSE 'dead' END,
           'orderNum', CASE WHEN json_valid(d.flow_state) THEN json_extract(d.flow_state, '$.order_num') END,
           'reason', d.reason) AS result,
       d.reason
FROM outbox_dead d
WHERE d.id = (SELECT max(d2.id) FROM outbox_dead d2
              WHERE d2.sink = d.sink AND d2.idempotency_key = d.idempotency_key)
  AND NOT EXISTS (SELECT 1 FROM outbox o2
                  WHERE o2.sink = d.sink AND o2.idempotency_key = d.idempotency_key);
