-- The LLM layer's accounting: what every attempt cost, which faults it met,
-- which prompt wording produced it, and result reuse.

-- Every provider or sandbox fault met by the attempt, in order:
-- [{"kind": "llm"|"sandbox", "class", "message", "at"}], capped by the writer.
ALTER TABLE attempts ADD COLUMN faults jsonb NOT NULL DEFAULT '[]'::jsonb;
-- Price of this attempt's tokens by the configured price table (NULL: no price known).
ALTER TABLE attempts ADD COLUMN cost_usd double precision;
-- The wording of the prompts (kiln::prompt::PROMPT_VERSION); part of the cache key.
ALTER TABLE attempts ADD COLUMN prompt_version text NOT NULL DEFAULT '';
-- Tokens set aside for the attempt's request while it is in flight, so
-- concurrent requests of one batch cannot overrun its budget together.
ALTER TABLE attempts ADD COLUMN reserved_tokens integer NOT NULL DEFAULT 0;
-- Set when this attempt reused a passing result instead of calling the model.
ALTER TABLE attempts ADD COLUMN cached_from uuid REFERENCES attempts (id);

-- Finding a passing result of an identical spec.
CREATE INDEX jobs_spec_sha256 ON jobs (spec_sha256);
CREATE INDEX attempts_passed ON attempts (job_id) WHERE state = 'passed';
