-- Human review of passing jobs (`options.review`): a passing job of such a
-- batch waits in `awaiting_review`, its files kept as its result, until a
-- person approves it (`succeeded`) or rejects it (`failed`,
-- `rejected_in_review`) with `POST /v1/jobs/{id}/review`.

-- The new job state.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'awaiting_review', 'succeeded', 'failed', 'cancelled'));

-- Every decision ever made, oldest first: a rejected job can be retried
-- and reviewed again, so this is a history, never overwritten.
CREATE TABLE reviews (
    id         bigserial   PRIMARY KEY,
    job_id     uuid        NOT NULL REFERENCES jobs (id),
    run        integer     NOT NULL,
    -- The passing attempt whose files were judged.
    attempt_id uuid        NOT NULL REFERENCES attempts (id),
    decision   text        NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment    text,
    -- The token that decided (NULL with KILN_AUTH=off).
    token_id   uuid        REFERENCES api_tokens (id),
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviews_job ON reviews (job_id, id);

-- Jobs awaiting review per batch. A batch is finished only once none is
-- queued, running or awaiting review; `finished_at` of a job awaiting
-- review stays NULL until the decision, so the batch's `finished_at` is
-- the time of its last decision.
ALTER TABLE batch_counts ADD COLUMN awaiting_review bigint NOT NULL DEFAULT 0;

-- kiln_count_jobs of migrations/0015, counting the new state too.
CREATE OR REPLACE FUNCTION kiln_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_counts AS c (batch_id, queued, running, awaiting_review, succeeded, failed, cancelled,
                                       started, finished_at)
        SELECT n.batch_id,
               count(*) FILTER (WHERE n.state = 'queued'),
               count(*) FILTER (WHERE n.state = 'running'),
               count(*) FILTER (WHERE n.state = 'awaiting_review'),
               count(*) FILTER (WHERE n.state = 'succeeded'),
               count(*) FILTER (WHERE n.state = 'failed'),
               count(*) FILTER (WHERE n.state = 'cancelled'),
               count(*) FILTER (WHERE n.run > 1 OR n.state <> 'queued'),
               max(n.finished_at)
        FROM new_jobs n
        GROUP BY n.batch_id
        ORDER BY n.batch_id
        ON CONFLICT (batch_id) DO UPDATE SET
            queued = c.queued + EXCLUDED.queued,
            running = c.running + EXCLUDED.running,
            awaiting_review = c.awaiting_review + EXCLUDED.awaiting_review,
            succeeded = c.succeeded + EXCLUDED.succeeded,
            failed = c.failed + EXCLUDED.failed,
            cancelled = c.cancelled + EXCLUDED.cancelled,
            started = c.started + EXCLUDED.started,
            finished_at = greatest(c.finished_at, EXCLUDED.finished_at);
    ELSE
        INSERT INTO batch_counts AS c (batch_id, queued, running, awaiting_review, succeeded, failed, cancelled,
                                       started, finished_at)
        SELECT n.batch_id,
               sum((n.state = 'queued')::int - (o.state = 'queued')::int),
               sum((n.state = 'running')::int - (o.state = 'running')::int),
               sum((n.state = 'awaiting_review')::int - (o.state = 'awaiting_review')::int),
               sum((n.state = 'succeeded')::int - (o.state = 'succeeded')::int),
               sum((n.state = 'failed')::int - (o.state = 'failed')::int),
               sum((n.state = 'cancelled')::int - (o.state = 'cancelled')::int),
               sum((n.run > 1 OR n.state <> 'queued')::int - (o.run > 1 OR o.state <> 'queued')::int),
               max(n.finished_at)
        FROM new_jobs n JOIN old_jobs o ON o.id = n.id
        WHERE n.state <> o.state OR n.run <> o.run OR n.finished_at IS DISTINCT FROM o.finished_at
        GROUP BY n.batch_id
        ORDER BY n.batch_id
        ON CONFLICT (batch_id) DO UPDATE SET
            queued = c.queued + EXCLUDED.queued,
            running = c.running + EXCLUDED.running,
            awaiting_review = c.awaiting_review + EXCLUDED.awaiting_review,
            succeeded = c.succeeded + EXCLUDED.succeeded,
            failed = c.failed + EXCLUDED.failed,
            cancelled = c.cancelled + EXCLUDED.cancelled,
            started = c.started + EXCLUDED.started,
            finished_at = greatest(c.finished_at, EXCLUDED.finished_at);
    END IF;
    RETURN NULL;
END
$$;
