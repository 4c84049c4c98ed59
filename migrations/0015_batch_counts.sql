-- Per-batch counts kept up to date by triggers, so that a batch's status,
-- the batch listing and /metrics read one row per batch instead of counting
-- every job and summing every attempt (a 200k-job batch cost seconds).
--
-- The triggers are statement-level with transition tables: a bulk insert of
-- 50,000 jobs or a cancel of a whole batch updates each batch's row once,
-- and a statement that changes nothing counted (a heartbeat, the feeder
-- marking jobs dispatched, a phase change) writes nothing. Rows are written
-- in batch id order so that two statements touching several batches lock
-- them in the same order. Every writer locks the job row before the batch's
-- counts row (fencing locks the job first), so the order is job, then batch.

CREATE TABLE batch_counts (
    batch_id          uuid PRIMARY KEY REFERENCES batches (id),
    -- Jobs by state.
    queued            bigint NOT NULL DEFAULT 0,
    running           bigint NOT NULL DEFAULT 0,
    succeeded         bigint NOT NULL DEFAULT 0,
    failed            bigint NOT NULL DEFAULT 0,
    cancelled         bigint NOT NULL DEFAULT 0,
    -- Jobs that ever started: run > 1 or not queued (queued vs running batch).
    started           bigint NOT NULL DEFAULT 0,
    -- The latest finished_at any job of the batch was given; shown as the
    -- batch's finished_at once no job is queued or running.
    finished_at       timestamptz,
    -- Attempts by state, every run.
    attempts_running  bigint NOT NULL DEFAULT 0,
    attempts_passed   bigint NOT NULL DEFAULT 0,
    attempts_failed   bigint NOT NULL DEFAULT 0,
    attempts_error    bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    -- NULL while no attempt of the batch had a price.
    cost_usd          double precision,
    llm_faults        bigint NOT NULL DEFAULT 0,
    sandbox_faults    bigint NOT NULL DEFAULT 0
);

CREATE FUNCTION kiln_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_counts AS c (batch_id, queued, running, succeeded, failed, cancelled, started, finished_at)
        SELECT n.batch_id,
               count(*) FILTER (WHERE n.state = 'queued'),
               count(*) FILTER (WHERE n.state = 'running'),
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
            succeeded = c.succeeded + EXCLUDED.succeeded,
            failed = c.failed + EXCLUDED.failed,
            cancelled = c.cancelled + EXCLUDED.cancelled,
            started = c.started + EXCLUDED.started,
            finished_at = greatest(c.finished_at, EXCLUDED.finished_at);
    ELSE
        INSERT INTO batch_counts AS c (batch_id, queued, running, succeeded, failed, cancelled, started, finished_at)
        SELECT n.batch_id,
               sum((n.state = 'queued')::int - (o.state = 'queued')::int),
               sum((n.state = 'running')::int - (o.state = 'running')::int),
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
            succeeded = c.succeeded + EXCLUDED.succeeded,
            failed = c.failed + EXCLUDED.failed,
            cancelled = c.cancelled + EXCLUDED.cancelled,
            started = c.started + EXCLUDED.started,
            finished_at = greatest(c.finished_at, EXCLUDED.finished_at);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();

CREATE FUNCTION kiln_count_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_counts AS c (batch_id, attempts_running, attempts_passed, attempts_failed, attempts_error,
                                       prompt_tokens, completion_tokens, cost_usd, llm_faults, sandbox_faults)
        SELECT j.batch_id,
               count(*) FILTER (WHERE n.state = 'running'),
               count(*) FILTER (WHERE n.state = 'passed'),
               count(*) FILTER (WHERE n.state = 'failed'),
               count(*) FILTER (WHERE n.state = 'error'),
               sum(n.prompt_tokens), sum(n.completion_tokens), sum(n.cost_usd),
               sum(n.llm_faults), sum(n.sandbox_faults)
        FROM new_attempts n JOIN jobs j ON j.id = n.job_id
        GROUP BY j.batch_id
        ORDER BY j.batch_id
        ON CONFLICT (batch_id) DO UPDATE SET
            attempts_running = c.attempts_running + EXCLUDED.attempts_running,
            attempts_passed = c.attempts_passed + EXCLUDED.attempts_passed,
            attempts_failed = c.attempts_failed + EXCLUDED.attempts_failed,
            attempts_error = c.attempts_error + EXCLUDED.attempts_error,
            prompt_tokens = c.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = c.completion_tokens + EXCLUDED.completion_tokens,
            cost_usd = CASE WHEN EXCLUDED.cost_usd IS NULL THEN c.cost_usd
                            ELSE coalesce(c.cost_usd, 0) + EXCLUDED.cost_usd END,
            llm_faults = c.llm_faults + EXCLUDED.llm_faults,
            sandbox_faults = c.sandbox_faults + EXCLUDED.sandbox_faults;
    ELSE
        INSERT INTO batch_counts AS c (batch_id, attempts_running, attempts_passed, attempts_failed, attempts_error,
                                       prompt_tokens, completion_tokens, cost_usd, llm_faults, sandbox_faults)
        SELECT j.batch_id,
               sum((n.state = 'running')::int - (o.state = 'running')::int),
               sum((n.state = 'passed')::int - (o.state = 'passed')::int),
               sum((n.state = 'failed')::int - (o.state = 'failed')::int),
               sum((n.state = 'error')::int - (o.state = 'error')::int),
               sum(n.prompt_tokens - o.prompt_tokens),
               sum(n.completion_tokens - o.completion_tokens),
               -- NULL (no price) unless a changed attempt has one.
               sum(coalesce(n.cost_usd, 0) - coalesce(o.cost_usd, 0))
                   FILTER (WHERE n.cost_usd IS NOT NULL OR o.cost_usd IS NOT NULL),
               sum(n.llm_faults - o.llm_faults),
               sum(n.sandbox_faults - o.sandbox_faults)
        FROM new_attempts n JOIN old_attempts o ON o.id = n.id JOIN jobs j ON j.id = n.job_id
        WHERE n.state <> o.state OR n.prompt_tokens <> o.prompt_tokens
           OR n.completion_tokens <> o.completion_tokens OR n.cost_usd IS DISTINCT FROM o.cost_usd
           OR n.llm_faults <> o.llm_faults OR n.sandbox_faults <> o.sandbox_faults
        GROUP BY j.batch_id
        ORDER BY j.batch_id
        ON CONFLICT (batch_id) DO UPDATE SET
            attempts_running = c.attempts_running + EXCLUDED.attempts_running,
            attempts_passed = c.attempts_passed + EXCLUDED.attempts_passed,
            attempts_failed = c.attempts_failed + EXCLUDED.attempts_failed,
            attempts_error = c.attempts_error + EXCLUDED.attempts_error,
            prompt_tokens = c.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = c.completion_tokens + EXCLUDED.completion_tokens,
            cost_usd = CASE WHEN EXCLUDED.cost_usd IS NULL THEN c.cost_usd
                            ELSE coalesce(c.cost_usd, 0) + EXCLUDED.cost_usd END,
            llm_faults = c.llm_faults + EXCLUDED.llm_faults,
            sandbox_faults = c.sandbox_faults + EXCLUDED.sandbox_faults;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER attempts_count_insert AFTER INSERT ON attempts
    REFERENCING NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_attempts();
CREATE TRIGGER attempts_count_update AFTER UPDATE ON attempts
    REFERENCING OLD TABLE AS old_attempts NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_attempts();

-- What the rows say for the batches that exist already.
INSERT INTO batch_counts (batch_id, queued, running, succeeded, failed, cancelled, started, finished_at)
SELECT batch_id,
       count(*) FILTER (WHERE state = 'queued'),
       count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'cancelled'),
       count(*) FILTER (WHERE run > 1 OR state <> 'queued'),
       max(finished_at)
FROM jobs GROUP BY batch_id;
UPDATE batch_counts c SET
    attempts_running = a.running, attempts_passed = a.passed, attempts_failed = a.failed,
    attempts_error = a.error, prompt_tokens = a.prompt, completion_tokens = a.completion,
    cost_usd = a.cost, llm_faults = a.llm_faults, sandbox_faults = a.sandbox_faults
FROM (
    SELECT j.batch_id,
           count(*) FILTER (WHERE a.state = 'running') AS running,
           count(*) FILTER (WHERE a.state = 'passed') AS passed,
           count(*) FILTER (WHERE a.state = 'failed') AS failed,
           count(*) FILTER (WHERE a.state = 'error') AS error,
           sum(a.prompt_tokens) AS prompt, sum(a.completion_tokens) AS completion, sum(a.cost_usd) AS cost,
           sum(a.llm_faults) AS llm_faults, sum(a.sandbox_faults) AS sandbox_faults
    FROM attempts a JOIN jobs j ON j.id = a.job_id
    GROUP BY j.batch_id
) a
WHERE c.batch_id = a.batch_id;

-- The age of the oldest job waiting to run (/metrics): the first entry of
-- this index, not a scan of the queue.
CREATE INDEX jobs_queued_since ON jobs (updated_at) WHERE state = 'queued';
