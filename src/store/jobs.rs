//! Jobs: the lease life cycle (claim → heartbeat → finish or release) and the
//! client's verbs (read, cancel, retry).
//!
//! A job's state moves `queued → running → succeeded | failed | cancelled`;
//! retry moves a failed or cancelled job back to `queued` with `run + 1`.
//! Claims, cancels and retries bump `lease_epoch`, which fences out whoever
//! held the job before (see [`super::Lease::fence`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Lease, Store, StoreError, storable};
use crate::spec::{Options, Spec};

/// What a successful claim hands the worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    pub batch_id: Uuid,
    pub run: i32,
    pub spec: Spec,
    pub options: Options,
    pub max_attempts: i32,
    /// Takeovers from dead workers so far in this run, this one included.
    pub crashes: i32,
}

/// How a job ended, as recorded by its lease holder.
#[derive(Debug, Clone, Copy)]
pub enum JobOutcome<'a> {
    Succeeded { attempt_id: Uuid },
    Failed { code: &'a str, message: &'a str },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobErrorView {
    pub code: String,
    pub message: String,
}

impl JobErrorView {
    pub(crate) fn from_columns(code: Option<String>, message: Option<String>) -> Option<JobErrorView> {
        code.map(|code| JobErrorView {
            code,
            message: message.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileView {
    pub path: String,
    pub size: i32,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResultView {
    /// Number of the passing attempt within its run.
    pub attempt: i32,
    pub run: i32,
    pub files: Vec<FileView>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub kind: String,
    pub state: String,
    pub run: i32,
    /// Attempts started in the current run.
    pub attempts: i64,
    pub max_attempts: i32,
    pub crashes: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobErrorView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultView>,
    pub spec: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Takes the lease on a job if nobody holds a live one.
    ///
    /// Succeeds for a queued job, or a running job whose lease expired (a
    /// takeover). Either way, if the previous holder never released the job
    /// it died under it, and the claim counts a crash. Returns `None` — a
    /// cheap refusal, one indexed update — when the job is terminal or
    /// another worker holds a live lease: duplicate messages end here.
    pub async fn claim(&self, job_id: Uuid, owner: &str, ttl: Duration) -> Result<Option<Claimed>, StoreError> {
        let row = sqlx::query!(
            r#"UPDATE jobs j
               SET state = 'running',
                   lease_owner = $2,
                   lease_epoch = j.lease_epoch + 1,
                   lease_expires_at = now() + make_interval(secs => $3),
                   crashes = j.crashes + CASE WHEN j.lease_owner IS NOT NULL THEN 1 ELSE 0 END,
                   dispatched_at = NULL,
                   updated_at = now()
               FROM batches b
               WHERE j.id = $1 AND b.id = j.batch_id
                 AND (j.state = 'queued' OR (j.state = 'running' AND j.lease_expires_at < now()))
               RETURNING j.lease_epoch, j.batch_id, j.run, j.spec, j.max_attempts, j.crashes, b.options"#,
            job_id,
            owner,
            ttl.as_secs_f64(),
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let spec: Spec = serde_json::from_value(row.spec)
            .map_err(|e| StoreError::Conflict(format!("job {job_id} has an unreadable spec: {e}")))?;
        Ok(Some(Claimed {
            lease: Lease {
                job_id,
                owner: owner.to_owned(),
                epoch: row.lease_epoch,
            },
            batch_id: row.batch_id,
            run: row.run,
            spec,
            options: serde_json::from_value(row.options).unwrap_or_default(),
            max_attempts: row.max_attempts,
            crashes: row.crashes,
        }))
    }

    /// Extends a live lease. [`StoreError::LeaseLost`] once the job was taken
    /// over, cancelled or retried: the holder must stop.
    pub async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        let renewed = sqlx::query_scalar!(
            r#"UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4)
               WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3 AND state = 'running'
               RETURNING 1 AS "renewed!""#,
            lease.job_id,
            lease.epoch,
            lease.owner,
            ttl.as_secs_f64(),
        )
        .fetch_optional(&self.pool)
        .await?;
        renewed.map(|_| ()).ok_or(StoreError::LeaseLost)
    }

    /// Gives a job back without finishing it (shutdown, backoff): it returns to
    /// `queued` for the feeder to send again, not before `not_before`. Not a
    /// crash: the next claim does not count one.
    pub async fn release(&self, lease: &Lease, not_before: Option<Duration>) -> Result<(), StoreError> {
        let released = sqlx::query_scalar!(
            r#"UPDATE jobs
               SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL,
                   not_before = CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $4) END,
                   updated_at = now()
               WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3 AND state = 'running'
               RETURNING 1 AS "released!""#,
            lease.job_id,
            lease.epoch,
            lease.owner,
            not_before.map(|d| d.as_secs_f64()),
        )
        .fetch_optional(&self.pool)
        .await?;
        released.map(|_| ()).ok_or(StoreError::LeaseLost)
    }

    /// Records the job's end under its lease. A job reaches `succeeded` at
    /// most once per run: the fence fails for anyone but the current holder.
    pub async fn finish_job(&self, lease: &Lease, outcome: JobOutcome<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lease.fence(&mut tx).await?;
        let (state, code, message, attempt) = match outcome {
            JobOutcome::Succeeded { attempt_id } => ("succeeded", None, None, Some(attempt_id)),
            JobOutcome::Failed { code, message } => ("failed", Some(code), Some(message), None),
        };
        let (code, message) = (code.map(storable), message.map(storable));
        sqlx::query!(
            r#"UPDATE jobs
               SET state = $2, error_code = $3, error_message = $4, result_attempt_id = $5,
                   lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
               WHERE id = $1"#,
            lease.job_id,
            state,
            code.as_deref(),
            message.as_deref(),
            attempt,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn job(&self, job_id: Uuid) -> Result<JobView, StoreError> {
        let j = sqlx::query!(
            r#"SELECT j.id, j.batch_id, j.kind, j.state, j.run, j.max_attempts, j.crashes, j.error_code,
                      j.error_message, j.result_attempt_id, j.spec, j.created_at, j.updated_at, j.finished_at,
                      (SELECT count(*) FROM attempts a WHERE a.job_id = j.id AND a.run = j.run) AS "attempts!"
               FROM jobs j WHERE j.id = $1"#,
            job_id
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("job"))?;
        let result = match j.result_attempt_id {
            None => None,
            Some(attempt_id) => {
                let a = sqlx::query!("SELECT run, n FROM attempts WHERE id = $1", attempt_id)
                    .fetch_one(&self.pool)
                    .await?;
                let files = sqlx::query_as!(
                    FileView,
                    "SELECT path, size, sha256 FROM artifacts WHERE attempt_id = $1 ORDER BY path",
                    attempt_id
                )
                .fetch_all(&self.pool)
                .await?;
                Some(ResultView {
                    attempt: a.n,
                    run: a.run,
                    files,
                })
            }
        };
        Ok(JobView {
            job_id: j.id,
            batch_id: j.batch_id,
            kind: j.kind,
            state: j.state,
            run: j.run,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            crashes: j.crashes,
            error: JobErrorView::from_columns(j.error_code, j.error_message),
            result,
            spec: j.spec,
            created_at: j.created_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
        })
    }

    /// The attempt whose files are the job's result, if it succeeded.
    pub async fn result_attempt(&self, job_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        sqlx::query_scalar!("SELECT result_attempt_id FROM jobs WHERE id = $1", job_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("job"))
    }

    /// Cancels a job that has not ended. Bumping the epoch fences out a worker
    /// running it; its heartbeat sees the loss and stops the run.
    pub async fn cancel_job(&self, job_id: Uuid) -> Result<u64, StoreError> {
        let n = self.cancel(None, Some(job_id)).await?;
        if n == 0 {
            self.job_exists(job_id).await?;
        }
        Ok(n)
    }

    /// Cancels every job of the batch that has not ended.
    pub async fn cancel_batch(&self, batch_id: Uuid) -> Result<u64, StoreError> {
        self.batch_exists(batch_id).await?;
        self.cancel(Some(batch_id), None).await
    }

    async fn cancel(&self, batch_id: Option<Uuid>, job_id: Option<Uuid>) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            r#"UPDATE jobs
               SET state = 'cancelled', error_code = 'cancelled', error_message = 'cancelled by request',
                   lease_epoch = lease_epoch + 1, lease_owner = NULL, lease_expires_at = NULL,
                   finished_at = now(), updated_at = now()
               WHERE ($1::uuid IS NULL OR batch_id = $1) AND ($2::uuid IS NULL OR id = $2)
                 AND state IN ('queued', 'running')"#,
            batch_id,
            job_id,
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Starts a new run of a failed or cancelled job: fresh attempt budget,
    /// crash count and error; every earlier attempt is kept.
    pub async fn retry_job(&self, job_id: Uuid) -> Result<u64, StoreError> {
        let n = self
            .requeue(None, Some(job_id), &["failed".to_owned(), "cancelled".to_owned()])
            .await?;
        if n == 0 {
            let job = self.job(job_id).await?;
            return Err(StoreError::Conflict(format!(
                "job is {}; only failed or cancelled jobs can be retried",
                job.state
            )));
        }
        Ok(n)
    }

    /// Starts a new run of every job of the batch in one of `states`
    /// (terminal states only).
    pub async fn retry_batch(&self, batch_id: Uuid, states: &[String]) -> Result<u64, StoreError> {
        self.batch_exists(batch_id).await?;
        self.requeue(Some(batch_id), None, states).await
    }

    async fn requeue(
        &self,
        batch_id: Option<Uuid>,
        job_id: Option<Uuid>,
        states: &[String],
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            r#"UPDATE jobs
               SET state = 'queued', run = run + 1, crashes = 0, error_code = NULL, error_message = NULL,
                   result_attempt_id = NULL, finished_at = NULL, dispatched_at = NULL, not_before = NULL,
                   lease_epoch = lease_epoch + 1, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
               WHERE ($1::uuid IS NULL OR batch_id = $1) AND ($2::uuid IS NULL OR id = $2)
                 AND state = ANY($3) AND state IN ('failed', 'cancelled', 'succeeded')"#,
            batch_id,
            job_id,
            states,
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn job_exists(&self, job_id: Uuid) -> Result<(), StoreError> {
        sqlx::query_scalar!("SELECT 1 AS \"x!\" FROM jobs WHERE id = $1", job_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|_| ())
            .ok_or(StoreError::NotFound("job"))
    }

    pub(crate) async fn batch_exists(&self, batch_id: Uuid) -> Result<(), StoreError> {
        sqlx::query_scalar!("SELECT 1 AS \"x!\" FROM batches WHERE id = $1", batch_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|_| ())
            .ok_or(StoreError::NotFound("batch"))
    }
}
