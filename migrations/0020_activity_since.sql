-- When the lease holder recorded its current activity (set with it by
-- `Store::set_activity`). A takeover blames a death on the job only if the
-- job was working inside the worker; that evidence is only as good as its
-- date: a step begun before Postgres last started may have been stalled
-- on the outage (its closing write never landed), not running the job's
-- work. Such deaths are counted, not blamed. NULL on rows written before
-- this column existed (read as "no date": blamed as before).
ALTER TABLE jobs ADD COLUMN activity_since timestamptz;
