-- Superseded rows: a producer may set supersede_key (for example a connector's id on its
-- status rows). Among rows of the same (sink, supersede_key) only the newest (highest id)
-- is ever sent: the claim finishes older pending rows as 'superseded' (finished_at set,
-- never sent), and retention prunes them like delivered and done rows.
ALTER TABLE outbox ADD COLUMN supersede_key TEXT;
CREATE INDEX outbox_supersede ON outbox (sink, supersede_key, id) WHERE supersede_key IS NOT NULL;
DROP INDEX outbox_finished;
CREATE INDEX outbox_finished ON outbox (finished_at) WHERE status IN ('delivered', 'done', 'superseded');

-- outbox_outcomes shows a superseded row's outcome as 'superseded' (see 0002 and 0003).
DROP VIEW outbox_outcomes;
CREATE VIEW outbox_outcomes AS
SELECT o.sink,
       o.idempotency_key,
       o.status,
       CASE WHEN o.status IN ('delivered', 'done')
            THEN coalesce(CASE WHEN json_valid(o.result) THEN json_extract(o.result, '$.outcome') END,
                          o.status)
            WHEN o.status = 'superseded' THEN 'superseded'
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
