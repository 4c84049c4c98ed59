-- Kiln's system of record. Redis only delivers `{job_id}` messages; every fact
-- about a batch, job, attempt or artifact lives here.
--
-- Migrations are append-only: never edit this file after it has landed; add
-- a new one.

CREATE TABLE batches (
    id              uuid PRIMARY KEY,
    name            text,
    -- Options as submitted (normalised), applied to every job of the batch.
    options         jsonb       NOT NULL,
    -- Idempotency-Key header and the sha256 of the request body it came with:
    -- the same key with a different body is a caller mistake (409).
    idempotency_key text UNIQUE,
    request_sha256  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    batch_id          uuid        NOT NULL REFERENCES batches (id),
    -- Position of the spec in the submitted batch (job ids are returned in this order).
    position          integer     NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('function', 'service')),
    spec              jsonb       NOT NULL,
    -- sha256 of the canonical spec JSON; the key for result reuse.
    spec_sha256       text        NOT NULL,
    state             text        NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- A retry starts a new run with a fresh attempt budget; attempts of
    -- earlier runs are kept.
    run               integer     NOT NULL DEFAULT 1,
    max_attempts      integer     NOT NULL CHECK (max_attempts > 0),
    priority          integer     NOT NULL DEFAULT 0,
    -- The lease: who owns the job, until when, and the fencing epoch every
    -- write of the owner is conditional on. The epoch only ever grows.
    lease_owner       text,
    lease_epoch       bigint      NOT NULL DEFAULT 0,
    lease_expires_at  timestamptz,
    -- Times the job was taken over from a worker that never released it,
    -- in the current run (crash accounting, `crash_loop`).
    crashes           integer     NOT NULL DEFAULT 0,
    -- When the feeder last put a message for this job into Redis; NULL means
    -- the job is not in the Redis window and the feeder may send it.
    dispatched_at     timestamptz,
    -- Earliest time the feeder may send the job again (infrastructure backoff).
    not_before        timestamptz,
    error_code        text,
    error_message     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (batch_id, position)
);

-- The feeder's scan: ready jobs not yet in Redis, by batch and priority.
CREATE INDEX jobs_ready ON jobs (batch_id, priority DESC, position)
    WHERE state = 'queued' AND dispatched_at IS NULL;
-- Window size and reconciliation of messages that may have been lost.
CREATE INDEX jobs_dispatched ON jobs (dispatched_at) WHERE state = 'queued' AND dispatched_at IS NOT NULL;
-- Reconciler: running jobs whose lease ran out.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- Batch status counts and the jobs listing filtered by state.
CREATE INDEX jobs_batch_state ON jobs (batch_id, state, position);

CREATE TABLE attempts (
    id                uuid PRIMARY KEY,
    job_id            uuid        NOT NULL REFERENCES jobs (id),
    run               integer     NOT NULL,
    n                 integer     NOT NULL CHECK (n > 0),
    -- Last persisted step: prompted -> generated -> validated -> tested.
    -- A worker that takes the job over resumes after it.
    phase             text        NOT NULL DEFAULT 'prompted'
                      CHECK (phase IN ('prompted', 'generated', 'validated', 'tested')),
    -- running | passed | failed (the model's failure: spends the attempt)
    -- | error (ended by infrastructure, cancellation or crashes: see error_code).
    state             text        NOT NULL DEFAULT 'running'
                      CHECK (state IN ('running', 'passed', 'failed', 'error')),
    model             text        NOT NULL,
    prompt            jsonb       NOT NULL,
    response          text,
    finish_reason     text,
    prompt_tokens     integer     NOT NULL DEFAULT 0,
    completion_tokens integer     NOT NULL DEFAULT 0,
    validation        jsonb,
    tests             jsonb,
    -- Provider and sandbox faults seen while running this attempt; each kind
    -- is retried under its own limit and never spends the attempt.
    llm_faults        integer     NOT NULL DEFAULT 0,
    sandbox_faults    integer     NOT NULL DEFAULT 0,
    last_fault        text,
    error_code        text,
    error_message     text,
    timings_ms        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    worker_id         text        NOT NULL,
    lease_epoch       bigint      NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    generated_at      timestamptz,
    finished_at       timestamptz,
    -- Exactly-once effect: one row per (job, run, attempt number).
    UNIQUE (job_id, run, n)
);

CREATE TABLE artifacts (
    attempt_id uuid    NOT NULL REFERENCES attempts (id),
    path       text    NOT NULL,
    content    bytea   NOT NULL,
    sha256     text    NOT NULL,
    size       integer NOT NULL,
    PRIMARY KEY (attempt_id, path)
);

-- The attempt whose files are the job's result (set when the job succeeds).
ALTER TABLE jobs ADD COLUMN result_attempt_id uuid REFERENCES attempts (id);
