-- Liveness of worker processes and crash blame with evidence.

-- One row per registration of a worker process. While the process lives it
-- holds the session-level advisory lock (KILN_LIVENESS_LOCK_CLASS, lock_key)
-- on a connection of its own: the lock goes with the connection, so when the
-- process dies the reconciler sees at once that the lock is gone.
CREATE SEQUENCE worker_lock_keys AS integer;
CREATE TABLE workers (
    lock_key           integer     PRIMARY KEY,
    -- The worker id: what the process writes as `lease_owner`.
    id                 text        NOT NULL,
    started_at         timestamptz NOT NULL DEFAULT now(),
    -- First time the reconciler found the lock missing (cleared when it is
    -- back): a worker is declared dead only after a short grace, so that a
    -- Postgres restart, which drops every lock at once, kills no one.
    lock_missing_since timestamptz,
    died_at            timestamptz
);
CREATE INDEX workers_alive ON workers (id) WHERE died_at IS NULL;

-- What the job's lease holder is doing right now, written at each step
-- (`claimed`, `preparing`, `model`, `validating`, `sandbox`, `reporting`,
-- `finishing`):
-- the evidence for blaming a worker's death on the job or not.
ALTER TABLE jobs ADD COLUMN activity text;
-- Why the reconciler took the lease back (`worker_died`, `lease_expired`),
-- read by the claim that takes the job over.
ALTER TABLE jobs ADD COLUMN lost_cause text;
-- Takeovers counted against the job (`crashes` counts all of them): the
-- job was running inside the worker when it died, or it panicked.
ALTER TABLE jobs ADD COLUMN blamed_crashes integer NOT NULL DEFAULT 0;
-- Set once a death was blamed on the job: it then runs alone in its worker,
-- so a further death is its own and no other job dies with it.
ALTER TABLE jobs ADD COLUMN isolate boolean NOT NULL DEFAULT false;

-- Every takeover of a job from a worker that did not release it, and why it
-- was or was not blamed on the job.
CREATE TABLE takeovers (
    id          bigserial   PRIMARY KEY,
    job_id      uuid        NOT NULL REFERENCES jobs (id),
    run         integer     NOT NULL,
    -- The attempt that was running (NULL before the first one).
    attempt     integer,
    -- The worker that lost the job and the one that took it (NULL when the
    -- job was handed back without a new owner yet, after a panic).
    lost_by     text        NOT NULL,
    taken_by    text,
    -- `worker_died`, `lease_expired` or `panic`.
    cause       text        NOT NULL,
    activity    text,
    blamed      boolean     NOT NULL,
    reason      text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX takeovers_job ON takeovers (job_id, id);
