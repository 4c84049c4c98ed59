//! Attempts and their artifacts, persisted phase by phase.
//!
//! An attempt row is created (`prompted`) before the model is called, gets the
//! raw response and token usage (`generated`) the moment it arrives, then the
//! parsed files and diagnostics (`validated`), then the sandbox's report
//! (`tested`). A worker that takes the job over reads the row back and
//! continues after the last persisted phase, so a stored response is never
//! paid for twice (invariant 4). Rows are unique per (job, run, n): a
//! duplicate writer cannot create a second attempt 2 (invariant 3).

use serde_json::Value;
use uuid::Uuid;

use super::{Lease, Store, StoreError, storable, storable_json};
pub use crate::domain::{AttemptState, ErrorCode, FaultKind, Phase, TokenUsage};
use crate::files::File;
use crate::views::{AttemptRef, AttemptView, JobErrorView};

/// An attempt as the worker reads it back to resume or to build a repair prompt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: Uuid,
    pub run: i32,
    pub n: i32,
    pub phase: Phase,
    pub state: AttemptState,
    pub model: String,
    pub prompt: Value,
    pub response: Option<String>,
    pub finish_reason: Option<String>,
    pub validation: Option<Value>,
    pub tests: Option<Value>,
    pub error_code: Option<ErrorCode>,
    pub error_message: Option<String>,
}

/// A passing answer to another spec, shown to the model as an example.
#[derive(Debug, Clone)]
pub struct PastSuccess {
    /// The spec as stored (validated when it was submitted).
    pub spec: Value,
    pub files: Vec<File>,
}

/// A model answer as stored on its attempt.
#[derive(Debug, Clone, Copy)]
pub struct StoredAnswer<'a> {
    pub response: &'a str,
    pub finish_reason: Option<&'a str>,
    pub usage: TokenUsage,
    pub cost_usd: Option<f64>,
    pub llm_ms: u64,
}

/// Row shape of [`AttemptRecord`] as sqlx reads it.
struct AttemptRow {
    id: Uuid,
    run: i32,
    n: i32,
    phase: String,
    state: String,
    model: String,
    prompt: Value,
    response: Option<String>,
    finish_reason: Option<String>,
    validation: Option<Value>,
    tests: Option<Value>,
    error_code: Option<String>,
    error_message: Option<String>,
}

impl TryFrom<AttemptRow> for AttemptRecord {
    type Error = StoreError;

    /// The CHECK constraints keep unknown phases and states out; a name
    /// this build does not know (a newer version wrote it) is an error, not
    /// a guess: resuming from a wrong phase would pay for an answer twice.
    fn try_from(r: AttemptRow) -> Result<AttemptRecord, StoreError> {
        Ok(AttemptRecord {
            id: r.id,
            run: r.run,
            n: r.n,
            phase: r.phase.parse()?,
            state: r.state.parse()?,
            model: r.model,
            prompt: r.prompt,
            response: r.response,
            finish_reason: r.finish_reason,
            validation: r.validation,
            tests: r.tests,
            error_code: r.error_code.as_deref().map(str::parse).transpose()?,
            error_message: r.error_message,
        })
    }
}

impl Store {
    /// Attempt `n` of a run, or with `None` its highest-numbered attempt.
    pub async fn attempt(&self, job_id: Uuid, run: i32, n: Option<i32>) -> Result<Option<AttemptRecord>, StoreError> {
        let row = sqlx::query_as!(
            AttemptRow,
            r#"SELECT id, run, n, phase, state, model, prompt, response, finish_reason, validation, tests,
                      error_code, error_message
               FROM attempts
               WHERE job_id = $1 AND run = $2
                 AND n = coalesce($3, (SELECT max(n) FROM attempts WHERE job_id = $1 AND run = $2))"#,
            job_id,
            run,
            n
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(AttemptRecord::try_from).transpose()
    }

    /// Creates attempt `n` of `run` with the prompt about to be sent. If a
    /// row for (job, run, n) already exists it is returned unchanged: the
    /// caller resumes it instead of starting over. `prompt_version` names
    /// the wording of `prompt` (the caller's `prompt::PROMPT_VERSION`), so a
    /// cached answer is only reused for the same wording.
    pub async fn start_attempt(
        &self,
        lease: &Lease,
        run: i32,
        n: i32,
        model: &str,
        prompt: &Value,
        prompt_version: &str,
    ) -> Result<AttemptRecord, StoreError> {
        let prompt = storable_json(prompt);
        let prompt = prompt.as_ref();
        let mut tx = self.fenced(lease).await?;
        sqlx::query!(
            r#"INSERT INTO attempts (id, job_id, run, n, model, prompt, prompt_version, worker_id, lease_epoch)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (job_id, run, n) DO NOTHING"#,
            Uuid::now_v7(),
            lease.job_id,
            run,
            n,
            model,
            prompt,
            prompt_version,
            lease.owner,
            lease.epoch,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.attempt(lease.job_id, run, Some(n))
            .await?
            .ok_or(StoreError::NotFound("attempt"))
    }

    /// Stores the model's answer as soon as it arrives: from here on, a
    /// worker resuming this attempt does not call the model again.
    pub async fn record_generation(
        &self,
        lease: &Lease,
        attempt_id: Uuid,
        g: &StoredAnswer<'_>,
    ) -> Result<(), StoreError> {
        let (response, finish_reason) = (storable(g.response), g.finish_reason.map(storable));
        let mut tx = self.fenced(lease).await?;
        sqlx::query!(
            r#"UPDATE attempts
               SET phase = 'generated', response = $2, finish_reason = $3, prompt_tokens = $4,
                   completion_tokens = $5, cost_usd = $6, reserved_tokens = 0, generated_at = now(),
                   timings_ms = timings_ms || jsonb_build_object('llm', $7::int8)
               WHERE id = $1 AND phase = 'prompted'"#,
            attempt_id,
            response.as_ref(),
            finish_reason.as_deref(),
            g.usage.prompt_tokens as i32,
            g.usage.completion_tokens as i32,
            g.cost_usd,
            g.llm_ms as i64,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        crate::metrics::observe_phase("model", std::time::Duration::from_millis(g.llm_ms));
        Ok(())
    }

    /// Stores the files parsed from the response and the static diagnostics.
    pub async fn record_validation(
        &self,
        lease: &Lease,
        attempt_id: Uuid,
        files: &[File],
        validation: &Value,
        validate_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.fenced(lease).await?;
        let paths: Vec<String> = files.iter().map(|f| storable(&f.path).into_owned()).collect();
        let validation = storable_json(validation);
        let validation = validation.as_ref();
        let contents: Vec<Vec<u8>> = files.iter().map(|f| f.content.as_bytes().to_vec()).collect();
        let hashes: Vec<String> = files.iter().map(File::sha256).collect();
        let sizes: Vec<i32> = files.iter().map(|f| f.content.len() as i32).collect();
        sqlx::query!(
            r#"INSERT INTO artifacts (attempt_id, path, content, sha256, size)
               SELECT $1, t.path, t.content, t.sha, t.size
               FROM UNNEST($2::text[], $3::bytea[], $4::text[], $5::int4[]) AS t(path, content, sha, size)
               ON CONFLICT (attempt_id, path) DO NOTHING"#,
            attempt_id,
            &paths,
            &contents,
            &hashes,
            &sizes,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            r#"UPDATE attempts
               SET phase = 'validated', validation = $2,
                   timings_ms = timings_ms || jsonb_build_object('validate', $3::int8)
               WHERE id = $1"#,
            attempt_id,
            validation,
            validate_ms as i64,
        )
        .execute(&mut *tx)
        .await?;
        // The answer is checked; what follows is a wait on Postgres until
        // the next step says what it does.
        sqlx::query!("UPDATE jobs SET activity = 'finishing' WHERE id = $1", lease.job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        crate::metrics::observe_phase("validate", std::time::Duration::from_millis(validate_ms));
        Ok(())
    }

    /// Stores the sandbox's test report.
    pub async fn record_tests(
        &self,
        lease: &Lease,
        attempt_id: Uuid,
        tests: &Value,
        sandbox_ms: u64,
    ) -> Result<(), StoreError> {
        let tests = storable_json(tests);
        let tests = tests.as_ref();
        let mut tx = self.fenced(lease).await?;
        sqlx::query!(
            r#"UPDATE attempts
               SET phase = 'tested', tests = $2,
                   timings_ms = timings_ms || jsonb_build_object('sandbox', $3::int8)
               WHERE id = $1"#,
            attempt_id,
            tests,
            sandbox_ms as i64,
        )
        .execute(&mut *tx)
        .await?;
        // The report is built; what is left is recording the verdict.
        sqlx::query!("UPDATE jobs SET activity = 'finishing' WHERE id = $1", lease.job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        crate::metrics::observe_phase("sandbox", std::time::Duration::from_millis(sandbox_ms));
        Ok(())
    }

    /// Counts a provider or sandbox fault against the attempt's limit for
    /// its kind, appends it to the attempt's fault log (the first 50), and
    /// returns the new count. Persisted, so the limit holds across crashes
    /// and takeovers.
    pub async fn record_fault(
        &self,
        lease: &Lease,
        attempt_id: Uuid,
        kind: FaultKind,
        class: &str,
        message: &str,
    ) -> Result<i32, StoreError> {
        let (class, message) = (storable(class), storable(message));
        let mut tx = self.fenced(lease).await?;
        let count = sqlx::query_scalar!(
            r#"UPDATE attempts
               SET llm_faults = llm_faults + CASE WHEN $2 = 'llm' THEN 1 ELSE 0 END,
                   sandbox_faults = sandbox_faults + CASE WHEN $2 = 'sandbox' THEN 1 ELSE 0 END,
                   last_fault = $4,
                   faults = CASE WHEN jsonb_array_length(faults) < 50
                            THEN faults || jsonb_build_array(jsonb_build_object(
                                'kind', $2::text, 'class', $3::text, 'message', $4::text, 'at', now()))
                            ELSE faults END
               WHERE id = $1
               RETURNING CASE WHEN $2 = 'llm' THEN llm_faults ELSE sandbox_faults END AS "count!""#,
            attempt_id,
            kind.as_str(),
            class.as_ref(),
            message.as_ref(),
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        crate::metrics::METRICS
            .faults
            .get_or_create(&crate::metrics::FaultLabels {
                kind: kind.as_str(),
                class: class.into_owned(),
            })
            .inc();
        Ok(count)
    }

    /// Sets aside `tokens` of the batch's budget for this attempt's request.
    /// False when the batch's tokens used plus those set aside by its other
    /// in-flight requests plus these would exceed `options.budget_tokens`.
    /// Checks of one batch are serialised on its row, so concurrent workers
    /// cannot overrun the budget together.
    pub async fn reserve_budget(
        &self,
        lease: &Lease,
        attempt_id: Uuid,
        batch_id: Uuid,
        tokens: i64,
    ) -> Result<bool, StoreError> {
        // Most batches have no budget: answer those without the row lock,
        // which would otherwise serialise every request of the batch.
        let budgeted = sqlx::query_scalar!(
            r#"SELECT options ? 'budget_tokens' AS "budgeted!" FROM batches WHERE id = $1"#,
            batch_id
        )
        .fetch_one(&self.pool)
        .await?;
        if !budgeted {
            return Ok(true);
        }
        let mut tx = self.fenced(lease).await?;
        let budget = sqlx::query_scalar!(
            r#"SELECT (options->>'budget_tokens')::int8 AS budget FROM batches WHERE id = $1 FOR UPDATE"#,
            batch_id
        )
        .fetch_one(&mut *tx)
        .await?;
        if let Some(budget) = budget {
            let committed = sqlx::query_scalar!(
                r#"SELECT (coalesce(sum(a.prompt_tokens + a.completion_tokens), 0)
                           + coalesce(sum(a.reserved_tokens) FILTER (WHERE a.id <> $2), 0))::int8 AS "n!"
                   FROM attempts a JOIN jobs j ON j.id = a.job_id
                   WHERE j.batch_id = $1"#,
                batch_id,
                attempt_id,
            )
            .fetch_one(&mut *tx)
            .await?;
            if committed + tokens > budget {
                return Ok(false);
            }
        }
        sqlx::query!(
            "UPDATE attempts SET reserved_tokens = $2 WHERE id = $1",
            attempt_id,
            tokens as i32
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// With `options.examples`: up to `limit` of the most recent passing
    /// answers to other specs of this job's kind (never the same spec:
    /// that would be `cache`, not an example), one per spec, each at most
    /// `max_bytes` of files. Answers copied by the cache are skipped, as
    /// their originals are.
    pub async fn past_successes(
        &self,
        job_id: Uuid,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<PastSuccess>, StoreError> {
        // More rows than wanted, since some repeat a spec or are too long;
        // the partial index walks passing attempts newest first.
        let rows = sqlx::query!(
            r#"SELECT a.id, j.spec, j.spec_sha256
               FROM jobs me, attempts a
               JOIN jobs j ON j.id = a.job_id
               WHERE me.id = $1 AND a.state = 'passed' AND a.cached_from IS NULL
                 AND j.kind = me.kind AND j.spec_sha256 <> me.spec_sha256
               ORDER BY a.finished_at DESC
               LIMIT $2"#,
            job_id,
            (limit * 4) as i64,
        )
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let files = sqlx::query!(
            "SELECT attempt_id, path, content FROM artifacts WHERE attempt_id = ANY($1) ORDER BY attempt_id, path",
            &ids
        )
        .fetch_all(&self.pool)
        .await?;
        let mut seen = std::collections::HashSet::new();
        let mut past = Vec::new();
        for row in rows {
            if past.len() == limit || !seen.insert(row.spec_sha256) {
                continue;
            }
            let of_attempt: Vec<File> = files
                .iter()
                .filter(|f| f.attempt_id == row.id)
                .map(|f| File::new(&f.path, String::from_utf8_lossy(&f.content)))
                .collect();
            let bytes: usize = of_attempt.iter().map(|f| f.content.len()).sum();
            if !of_attempt.is_empty() && bytes <= max_bytes {
                past.push(PastSuccess {
                    spec: row.spec,
                    files: of_attempt,
                });
            }
        }
        Ok(past)
    }

    /// With `options.cache`: starts attempt `n` as a copy of a passing
    /// attempt of an identical spec (same kind and canonical spec hash),
    /// prompt version and model, if one exists and no person rejected it
    /// in review. The copy is marked with `cached_from`, costs no tokens
    /// and is already passed.
    pub async fn reuse_cached(
        &self,
        lease: &Lease,
        run: i32,
        n: i32,
        model: &str,
        prompt: &Value,
        prompt_version: &str,
    ) -> Result<Option<AttemptRecord>, StoreError> {
        let mut tx = self.fenced(lease).await?;
        let source = sqlx::query!(
            r#"SELECT a.id, a.response, a.finish_reason, a.validation, a.tests
               FROM jobs me
               JOIN jobs j ON j.spec_sha256 = me.spec_sha256 AND j.kind = me.kind
               JOIN attempts a ON a.job_id = j.id
               WHERE me.id = $1 AND a.state = 'passed' AND a.model = $2 AND a.prompt_version = $3
                 AND a.cached_from IS NULL
                 -- A person rejected it (or a copy of it) in review: passing
                 -- the judge is not enough to hand it out again.
                 AND NOT EXISTS (SELECT 1 FROM reviews r JOIN attempts ra ON ra.id = r.attempt_id
                                 WHERE r.decision = 'reject' AND (ra.id = a.id OR ra.cached_from = a.id))
               ORDER BY a.finished_at DESC
               LIMIT 1"#,
            lease.job_id,
            model,
            prompt_version,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(source) = source else { return Ok(None) };
        let id = Uuid::now_v7();
        let inserted = sqlx::query!(
            r#"INSERT INTO attempts (id, job_id, run, n, phase, state, model, prompt, prompt_version, response,
                                     finish_reason, validation, tests, worker_id, lease_epoch, cached_from,
                                     generated_at, finished_at, timings_ms)
               VALUES ($1, $2, $3, $4, 'tested', 'passed', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                       now(), now(), '{"total": 0}'::jsonb)
               ON CONFLICT (job_id, run, n) DO NOTHING"#,
            id,
            lease.job_id,
            run,
            n,
            model,
            prompt,
            prompt_version,
            source.response,
            source.finish_reason,
            source.validation,
            source.tests,
            lease.owner,
            lease.epoch,
            source.id,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // The attempt exists already (a resumed job): not a cache hit.
            return Ok(None);
        }
        sqlx::query!(
            r#"INSERT INTO artifacts (attempt_id, path, content, sha256, size)
               SELECT $1, path, content, sha256, size FROM artifacts WHERE attempt_id = $2"#,
            id,
            source.id,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.attempt(lease.job_id, run, Some(n)).await
    }

    /// Starts attempt `n` of a re-judge run as a replay of attempt `source`
    /// of the same job: the same prompt, model and raw answer, stored as
    /// `generated` with no tokens, so the pipeline goes on to validate and
    /// test it and can never send it to the model. If the attempt exists
    /// already (a resumed run) it is returned unchanged.
    pub async fn start_rejudge(
        &self,
        lease: &Lease,
        run: i32,
        n: i32,
        source: Uuid,
    ) -> Result<AttemptRecord, StoreError> {
        let mut tx = self.fenced(lease).await?;
        sqlx::query!(
            r#"INSERT INTO attempts (id, job_id, run, n, phase, model, prompt, prompt_version, response,
                                     finish_reason, worker_id, lease_epoch, rejudged_from, generated_at)
               SELECT $1, $2, $3, $4, 'generated', s.model, s.prompt, s.prompt_version, s.response,
                      s.finish_reason, $5, $6, s.id, s.generated_at
               FROM attempts s
               WHERE s.id = $7 AND s.job_id = $2 AND s.response IS NOT NULL
               ON CONFLICT (job_id, run, n) DO NOTHING"#,
            Uuid::now_v7(),
            lease.job_id,
            run,
            n,
            lease.owner,
            lease.epoch,
            source,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.attempt(lease.job_id, run, Some(n))
            .await?
            .ok_or(StoreError::NotFound("attempt"))
    }

    /// Ends an attempt.
    pub async fn finish_attempt(
        &self,
        lease: &Lease,
        attempt_id: Uuid,
        state: AttemptState,
        error: Option<(ErrorCode, &str)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.fenced(lease).await?;
        end_attempt_row(&mut tx, attempt_id, state, error).await?;
        // Whatever in-worker step led here is over: the job now waits on
        // Postgres until its next step says what it does.
        sqlx::query!("UPDATE jobs SET activity = 'finishing' WHERE id = $1", lease.job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        crate::metrics::attempt_ended(state.as_str(), error.map(|e| e.0.as_str()));
        Ok(())
    }

    /// Ends an attempt and, in the same transaction, its job: what a
    /// passing attempt leads to at once. One fenced write where
    /// [`Store::finish_attempt`] then [`Store::finish_job`] made two.
    pub async fn finish_attempt_and_job(
        &self,
        lease: &Lease,
        attempt_id: Uuid,
        state: AttemptState,
        outcome: super::jobs::JobOutcome<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.fenced(lease).await?;
        end_attempt_row(&mut tx, attempt_id, state, None).await?;
        let ended = super::jobs::end_job_row(&mut tx, lease, outcome).await?;
        tx.commit().await?;
        crate::metrics::attempt_ended(state.as_str(), None);
        ended.observe();
        Ok(())
    }

    /// Every attempt of every run of a job, oldest first.
    pub async fn attempts(&self, job_id: Uuid, full: bool) -> Result<Vec<AttemptView>, StoreError> {
        let takeovers = self.job(job_id).await?.takeovers;
        let rows = sqlx::query!(
            r#"SELECT a.run, a.n, a.state, a.phase, a.model, a.prompt_tokens, a.completion_tokens, a.validation,
                      a.tests, a.error_code, a.error_message, a.finish_reason, a.llm_faults, a.sandbox_faults,
                      a.last_fault, a.faults, a.cost_usd, a.cached_from, a.timings_ms, a.worker_id, a.started_at,
                      a.finished_at, a.prompt, a.response, s.run AS "source_run?", s.n AS "source_n?"
               FROM attempts a LEFT JOIN attempts s ON s.id = a.rejudged_from
               WHERE a.job_id = $1 ORDER BY a.run, a.n"#,
            job_id
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AttemptView {
                run: r.run,
                n: r.n,
                state: r.state,
                phase: r.phase,
                model: r.model,
                usage: TokenUsage {
                    prompt_tokens: i64::from(r.prompt_tokens),
                    completion_tokens: i64::from(r.completion_tokens),
                },
                validation: r.validation,
                tests: r.tests,
                error: JobErrorView::from_columns(r.error_code, r.error_message),
                finish_reason: r.finish_reason,
                llm_faults: r.llm_faults,
                sandbox_faults: r.sandbox_faults,
                last_fault: r.last_fault,
                faults: r.faults,
                cost_usd: r.cost_usd,
                cached_from: r.cached_from,
                rejudged_from: r.source_run.zip(r.source_n).map(|(run, n)| AttemptRef { run, n }),
                timings_ms: r.timings_ms,
                worker_id: r.worker_id,
                started_at: r.started_at,
                finished_at: r.finished_at,
                prompt: full.then_some(r.prompt),
                response: if full { r.response } else { None },
                takeovers: takeovers
                    .iter()
                    .filter(|t| t.run == r.run && t.attempt == Some(r.n))
                    .cloned()
                    .collect(),
            })
            .collect())
    }

    /// The files an attempt produced, by path.
    pub async fn artifacts(&self, attempt_id: Uuid) -> Result<Vec<File>, StoreError> {
        let rows = sqlx::query!(
            "SELECT path, content FROM artifacts WHERE attempt_id = $1 ORDER BY path",
            attempt_id
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| File {
                path: r.path,
                content: String::from_utf8_lossy(&r.content).into_owned(),
            })
            .collect())
    }

    /// One file of an attempt.
    pub async fn artifact(&self, attempt_id: Uuid, path: &str) -> Result<Vec<u8>, StoreError> {
        sqlx::query_scalar!(
            "SELECT content FROM artifacts WHERE attempt_id = $1 AND path = $2",
            attempt_id,
            path
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("file"))
    }
}

/// The end of an attempt, inside a fenced transaction.
async fn end_attempt_row(
    tx: &mut sqlx::PgConnection,
    attempt_id: Uuid,
    state: AttemptState,
    error: Option<(ErrorCode, &str)>,
) -> Result<(), StoreError> {
    let (code, message) = (error.map(|e| e.0.as_str()), error.map(|e| storable(e.1)));
    sqlx::query!(
        r#"UPDATE attempts
           SET state = $2, error_code = $3, error_message = $4, finished_at = now(), reserved_tokens = 0,
               timings_ms = timings_ms || jsonb_build_object(
                   'total', (extract(epoch FROM now() - started_at) * 1000)::int8)
           WHERE id = $1"#,
        attempt_id,
        state.as_str(),
        code,
        message.as_deref(),
    )
    .execute(tx)
    .await?;
    Ok(())
}
