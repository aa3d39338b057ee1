-- depends: 0011_cache_notify
-- Idempotent usage flushes. Each server process's usage buffer is a writer with an id of its
-- own; it numbers its flushes 1, 2, 3... and has at most one in flight. A flush adds its
-- counts only if its number is above the writer's last one, and records the number in the
-- same transaction: a batch whose COMMIT succeeded but whose reply was lost is retried with
-- the same number and adds nothing. Rows of writers silent for 7 days are pruned by flushes.

CREATE TABLE usage_flush_writers (
    writer     uuid PRIMARY KEY,
    batch      bigint NOT NULL CHECK (batch > 0),
    written_at timestamptz NOT NULL DEFAULT now()
);
