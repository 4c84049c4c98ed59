-- Re-judging (POST /v1/jobs/{id}/rejudge, /v1/batches/{id}/rejudge): a new
-- run whose one attempt replays a stored answer through today's judge,
-- without asking the model.

-- Set with the requeue that starts a re-judge run, in the same statement, to
-- the attempt whose answer the run replays; NULL for an ordinary run (a
-- retry clears it). The queue message is only the job id, so this column is
-- what tells any worker — the first, or one taking over after a crash —
-- that the current run must not call the model.
ALTER TABLE jobs ADD COLUMN rejudge_attempt_id uuid REFERENCES attempts (id);

-- On the replaying attempt: the attempt whose stored answer it judged again.
ALTER TABLE attempts ADD COLUMN rejudged_from uuid REFERENCES attempts (id);
