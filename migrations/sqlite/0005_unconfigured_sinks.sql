-- Rows addressed to a sink that a worker's config does not have are held, not
-- dead-lettered at once (another worker may have the sink, or a reload renamed it): the
-- worker marks the sink here, `outboxd status` and /metrics show it, and the rows are
-- dead-lettered only once older than max_age. A worker that has the sink clears the mark.
ALTER TABLE outbox_sinks ADD COLUMN unconfigured_since INTEGER;
