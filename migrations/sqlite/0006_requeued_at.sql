-- A requeued row's age clock: max_age counts from the operator's requeue, not from the
-- producer's created_at, which the row keeps. The claim returns coalesce(requeued_at,
-- created_at) as the row's age base.
ALTER TABLE outbox ADD COLUMN requeued_at INTEGER;
