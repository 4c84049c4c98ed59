-- `options.examples` shows the model the most recent passing answers of the
-- job's kind: walked newest first through passing, uncopied attempts only,
-- so the lookup costs the few rows it returns, not a scan of all attempts.
CREATE INDEX attempts_passed_recent ON attempts (finished_at DESC)
    WHERE state = 'passed' AND cached_from IS NULL;
