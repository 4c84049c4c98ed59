//! Batches: created in one transaction with all their jobs, read back as
//! status with counts and token usage.
//!
//! Counts and usage come from the batch's `batch_counts` rows (a few
//! shards, added up by the `batch_totals` view), which triggers on `jobs`
//! and `attempts` keep in the same transactions as the writes they count
//! (migrations/0015, 0021): a status read never counts jobs.

use uuid::Uuid;

use super::{Store, StoreError};
use crate::spec::{Options, Spec};
use crate::views::{BatchView, Counts, CreatedBatch, Creator, JobErrorView, JobPage, JobSummary, Usage};

/// The states a batch can be in, as [`batch_state`] derives them.
pub const BATCH_STATES: [&str; 6] = [
    "queued",
    "running",
    "awaiting_review",
    "succeeded",
    "failed",
    "cancelled",
];

/// A batch's state from its jobs' counts and how many of them ever started:
/// `queued` (nothing started), `running`, `awaiting_review` (no job queued
/// or running, and some wait for a person's decision), or once every job is
/// terminal: `failed` if any failed, else `cancelled` if any was, else
/// `succeeded`. The batch listing's SQL filter (`store::overview`) says the
/// same in SQL; a test checks that the two agree.
pub fn batch_state(counts: &Counts, started: i64) -> &'static str {
    let in_flight = counts.queued + counts.running > 0;
    match (counts.done(), in_flight, started > 0) {
        (false, true, false) => "queued",
        (false, true, true) => "running",
        (false, false, _) => "awaiting_review",
        (true, ..) if counts.failed > 0 => "failed",
        (true, ..) if counts.cancelled > 0 => "cancelled",
        (true, ..) => "succeeded",
    }
}

/// A batch to create.
#[derive(Debug)]
pub struct NewBatch<'a> {
    pub name: Option<&'a str>,
    pub options: &'a Options,
    pub specs: &'a [Spec],
    pub idempotency_key: Option<&'a str>,
    /// sha256 of the request body, compared when an idempotency key is reused.
    pub request_sha256: &'a str,
    /// The API token that made the request (`None` with `KILN_AUTH=off`).
    pub created_by: Option<Uuid>,
}

/// What `PATCH /v1/batches/{id}` does to `budget_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetChange {
    Keep,
    Remove,
    Set(u64),
}

impl Store {
    /// Inserts a batch and all its jobs in one transaction: one statement for
    /// the batch, one bulk statement for every job. With an idempotency key
    /// already used for the same body, returns the earlier batch instead.
    pub async fn create_batch(&self, new: NewBatch<'_>) -> Result<CreatedBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let batch_id = Uuid::now_v7();
        let options = serde_json::to_value(new.options).expect("options serialise");
        let inserted = sqlx::query_scalar!(
            r#"INSERT INTO batches (id, name, options, idempotency_key, request_sha256, created_by)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (idempotency_key) DO NOTHING
               RETURNING id"#,
            batch_id,
            new.name,
            options,
            new.idempotency_key,
            new.request_sha256,
            new.created_by,
        )
        .fetch_optional(&mut *tx)
        .await?;

        if inserted.is_none() {
            // The key was used before (ON CONFLICT waited for that transaction
            // to commit, so the row is visible now).
            let key = new.idempotency_key.expect("only keyed inserts conflict");
            let earlier = sqlx::query!("SELECT id, request_sha256 FROM batches WHERE idempotency_key = $1", key)
                .fetch_one(&mut *tx)
                .await?;
            if earlier.request_sha256.as_deref() != Some(new.request_sha256) {
                return Err(StoreError::Conflict(format!(
                    "Idempotency-Key {key:?} was already used with a different request body"
                )));
            }
            let job_ids = sqlx::query_scalar!("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY position", earlier.id)
                .fetch_all(&mut *tx)
                .await?;
            return Ok(CreatedBatch {
                batch_id: earlier.id,
                job_ids,
                replayed: true,
            });
        }

        let n = new.specs.len();
        let mut ids = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut specs = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        for (i, spec) in new.specs.iter().enumerate() {
            ids.push(Uuid::now_v7());
            positions.push(i as i32);
            kinds.push(spec.kind().as_str().to_owned());
            specs.push(serde_json::to_value(spec).expect("specs serialise"));
            hashes.push(spec.sha256());
        }
        sqlx::query!(
            r#"INSERT INTO jobs (id, batch_id, position, kind, spec, spec_sha256, max_attempts, priority)
               SELECT t.id, $6, t.position, t.kind, t.spec, t.sha, $7, $8
               FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::jsonb[], $5::text[])
                    AS t(id, position, kind, spec, sha)"#,
            &ids,
            &positions,
            &kinds,
            &specs,
            &hashes,
            batch_id,
            new.options.max_attempts as i32,
            new.options.priority,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CreatedBatch {
            batch_id,
            job_ids: ids,
            replayed: false,
        })
    }

    /// A batch's status: one row of `batches` and its `batch_totals` (the
    /// few shards of its counts, kept by triggers, migrations/0015 and
    /// 0021), so it costs the same for a job or for 200,000.
    pub async fn batch(&self, batch_id: Uuid) -> Result<BatchView, StoreError> {
        let b = sqlx::query!(
            r#"SELECT b.name, b.options, b.created_at, b.created_by, t.name AS "token_name?",
                      coalesce(c.queued, 0) AS "queued!", coalesce(c.running, 0) AS "running!",
                      coalesce(c.awaiting_review, 0) AS "awaiting_review!",
                      coalesce(c.succeeded, 0) AS "succeeded!", coalesce(c.failed, 0) AS "failed!",
                      coalesce(c.cancelled, 0) AS "cancelled!", coalesce(c.started, 0) AS "started!",
                      c.finished_at AS "finished_at?",
                      coalesce(c.prompt_tokens, 0) AS "prompt_tokens!",
                      coalesce(c.completion_tokens, 0) AS "completion_tokens!", c.cost_usd AS "cost_usd?"
               FROM batches b
               LEFT JOIN api_tokens t ON t.id = b.created_by
               LEFT JOIN batch_totals c ON c.batch_id = b.id
               WHERE b.id = $1"#,
            batch_id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("batch"))?;
        let counts = Counts {
            queued: b.queued,
            running: b.running,
            awaiting_review: b.awaiting_review,
            succeeded: b.succeeded,
            failed: b.failed,
            cancelled: b.cancelled,
        };
        let total = counts.total();
        let done = counts.done();
        let state = batch_state(&counts, b.started).to_owned();
        Ok(BatchView {
            batch_id,
            name: b.name,
            state,
            total,
            counts,
            usage: Usage {
                prompt_tokens: b.prompt_tokens,
                completion_tokens: b.completion_tokens,
                cost_usd: b.cost_usd,
            },
            options: b.options,
            created_by: b.created_by.map(|token_id| Creator {
                token_id,
                name: b.token_name,
            }),
            created_at: b.created_at,
            finished_at: if done { b.finished_at } else { None },
        })
    }

    /// Changes the options that may change under a running batch:
    /// `budget_tokens` (raise it, then retry the jobs that stopped with
    /// `budget_exhausted`) and `priority`. Returns the new options.
    pub async fn update_batch_options(
        &self,
        batch_id: Uuid,
        budget: BudgetChange,
        priority: Option<i32>,
    ) -> Result<Options, StoreError> {
        let mut tx = self.pool.begin().await?;
        let raw = sqlx::query_scalar!("SELECT options FROM batches WHERE id = $1 FOR UPDATE", batch_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("batch"))?;
        let mut options: Options = serde_json::from_value(raw).map_err(|error| StoreError::Unreadable {
            what: format!("options of batch {batch_id}"),
            error,
        })?;
        match budget {
            BudgetChange::Keep => {}
            BudgetChange::Remove => options.budget_tokens = None,
            BudgetChange::Set(n) => options.budget_tokens = Some(n),
        }
        if let Some(priority) = priority {
            options.priority = priority;
            sqlx::query!("UPDATE jobs SET priority = $2 WHERE batch_id = $1", batch_id, priority)
                .execute(&mut *tx)
                .await?;
        }
        let value = serde_json::to_value(&options).expect("options serialise");
        sqlx::query!("UPDATE batches SET options = $2 WHERE id = $1", batch_id, value)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(options)
    }

    /// A page of a batch's jobs in submission order, optionally of one state.
    /// The cursor is the position of the last job of the previous page.
    pub async fn batch_jobs(
        &self,
        batch_id: Uuid,
        state: Option<&str>,
        limit: i64,
        cursor: Option<i32>,
    ) -> Result<JobPage, StoreError> {
        if sqlx::query_scalar!("SELECT 1 AS \"x!\" FROM batches WHERE id = $1", batch_id)
            .fetch_optional(&self.pool)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound("batch"));
        }
        let rows = sqlx::query!(
            r#"SELECT j.id, j.position, j.kind, j.state, j.run, j.error_code, j.error_message,
                      coalesce(j.spec->>'entry_point', j.spec->>'service_name', j.kind) AS "label!",
                      (SELECT count(*) FROM attempts a WHERE a.job_id = j.id AND a.run = j.run) AS "attempts!"
               FROM jobs j
               WHERE j.batch_id = $1 AND ($2::text IS NULL OR j.state = $2) AND j.position > $3
               ORDER BY j.position
               LIMIT $4"#,
            batch_id,
            state,
            cursor.unwrap_or(-1),
            limit,
        )
        .fetch_all(&self.pool)
        .await?;
        let next_cursor = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|r| r.position.to_string()))
            .flatten();
        let jobs = rows
            .into_iter()
            .map(|r| JobSummary {
                job_id: r.id,
                position: r.position,
                kind: r.kind,
                label: r.label,
                state: r.state,
                run: r.run,
                attempts: r.attempts,
                error: JobErrorView::from_columns(r.error_code, r.error_message),
            })
            .collect();
        Ok(JobPage { jobs, next_cursor })
    }
}
