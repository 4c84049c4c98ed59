//! Jobs: the lease life cycle (claim → heartbeat → finish or release) and the
//! client's verbs (read, cancel, retry, rejudge, review).
//!
//! A job's state moves `queued → running → succeeded | failed | cancelled`;
//! in a batch with `options.review` a passing job stops at `awaiting_review`
//! instead, without a lease, until a person's decision moves it to
//! `succeeded` or `failed` ([`Store::review`]). Retry moves a failed or
//! cancelled job back to `queued` with `run + 1`, and so does a re-judge,
//! whose new run replays a stored answer (`rejudge_attempt_id`, set in the
//! same statement) instead of asking the model.
//! Claims, cancels and retries bump `lease_epoch`, which fences out whoever
//! held the job before (see [`super::Lease::fence`]).

use std::time::Duration;

use uuid::Uuid;

use super::{Lease, Store, StoreError, storable};
use crate::domain::{ErrorCode, JobState, TakeoverCause};
use crate::spec::{Options, Spec};
use crate::views::{FileView, JobErrorView, JobView, ResultView, TakeoverView};

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
    /// Those of them blamed on the job (see [`Activity::in_worker`]).
    pub blamed_crashes: i32,
    /// A death was blamed on the job: run it alone in the worker.
    pub isolate: bool,
    /// Set when this run re-judges a stored answer: the attempt whose answer
    /// the run's one attempt replays. Such a run never calls the model.
    pub rejudge_from: Option<Uuid>,
}

/// What a job's lease holder is doing, persisted at each step so that a
/// takeover can tell whether the job could have killed its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Claimed, waiting for room in the worker (an isolated job waits for
    /// the others to finish).
    Claimed,
    /// Reading what is stored and building from it, on what the model
    /// wrote: the prompt (a repair prompt quotes the previous answer and its
    /// reports), a sandbox run's input (the model's files), a resumed
    /// attempt's files and reports, a failed job's final message.
    Preparing,
    /// Waiting for the model (or for its rate limits and backoff).
    Model,
    /// Parsing and statically validating the model's answer.
    Validating,
    /// Waiting for a sandbox slot or a sandbox run (a separate process).
    Sandbox,
    /// Reading a sandbox run's report (what the model's code printed and
    /// returned), judging it and recording the test report.
    Reporting,
    /// A step's result is stored; recording the attempt's end or the
    /// verdict (waiting on Postgres).
    Finishing,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Claimed => "claimed",
            Activity::Preparing => "preparing",
            Activity::Model => "model",
            Activity::Validating => "validating",
            Activity::Sandbox => "sandbox",
            Activity::Reporting => "reporting",
            Activity::Finishing => "finishing",
        }
    }

    pub fn parse(s: &str) -> Option<Activity> {
        [
            Activity::Claimed,
            Activity::Preparing,
            Activity::Model,
            Activity::Validating,
            Activity::Sandbox,
            Activity::Reporting,
            Activity::Finishing,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }

    /// True when the job's own work runs inside the worker process, so the
    /// process's death may be the job's doing; false while the job only
    /// waits (for room, the model, or the sandbox's separate process).
    pub fn in_worker(self) -> bool {
        matches!(self, Activity::Preparing | Activity::Validating | Activity::Reporting)
    }

    fn doing(self) -> &'static str {
        match self {
            Activity::Claimed => "was waiting for room in the worker",
            Activity::Preparing => "was preparing a step inside the worker (prompt, sandbox input or stored answer)",
            Activity::Model => "was waiting for the model",
            Activity::Validating => "was parsing and validating the model's answer inside the worker",
            Activity::Sandbox => "was waiting for the sandbox (a separate process)",
            Activity::Reporting => "was reading its sandbox report and building its test report inside the worker",
            Activity::Finishing => "was recording a step's outcome (waiting on Postgres)",
        }
    }
}

/// Whether a worker's death is counted against the job, and why: only when
/// the job was doing its own work inside the dead process.
///
/// `before_restart` says the recorded step began before Postgres last
/// started. Every step inside the worker ends with a write; a step caught
/// by a database outage sits waiting on that write, so its record says
/// "inside the worker" while the job's own work is long done. A death then
/// is as likely the outage's doing (or a kill that came meanwhile) as the
/// job's, so it is counted, not blamed: a poison job is blamed at its next
/// death, which needs no outage to find it. A panic is the job's own doing
/// whenever it happened.
pub fn blame(activity: Option<Activity>, cause: TakeoverCause, before_restart: bool) -> (bool, String) {
    let how = match cause {
        TakeoverCause::WorkerDied => "its worker died (liveness lock gone)",
        TakeoverCause::LeaseExpired => "its lease expired without being released",
        TakeoverCause::Panic => "it panicked in its worker",
    };
    match activity {
        Some(a) if a.in_worker() && before_restart && cause != TakeoverCause::Panic => (
            false,
            format!(
                "{how} while the job {}, a step begun before Postgres last restarted: not blamed",
                a.doing()
            ),
        ),
        Some(a) if a.in_worker() => (true, format!("{how} while the job {}: blamed", a.doing())),
        Some(a) => (false, format!("{how} while the job {}: not blamed", a.doing())),
        None => (false, format!("{how} before the job recorded any step: not blamed")),
    }
}

/// How a job ended, as recorded by its lease holder.
#[derive(Debug, Clone, Copy)]
pub enum JobOutcome<'a> {
    Succeeded {
        attempt_id: Uuid,
    },
    /// The attempt passed in a batch with `options.review`: the job leaves
    /// the worker with its result, to wait for a person's decision.
    AwaitingReview {
        attempt_id: Uuid,
    },
    Failed {
        code: ErrorCode,
        message: &'a str,
    },
}

impl Store {
    /// Takes the lease on a job if nobody holds a live one.
    ///
    /// Succeeds for a queued job, or a running job whose lease expired (a
    /// takeover). Either way, if the previous holder never released the job
    /// it died under it (or was cut off): the claim counts a crash, records
    /// the takeover, and blames it on the job only if the job was doing its
    /// own work inside that worker ([`blame`]). Returns `None` — a cheap
    /// refusal, one indexed lookup — when the job is terminal or another
    /// worker holds a live lease: duplicate messages end here.
    pub async fn claim(&self, job_id: Uuid, owner: &str, ttl: Duration) -> Result<Option<Claimed>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(before) = sqlx::query!(
            r#"SELECT lease_owner, activity, lost_cause, run,
                      coalesce(activity_since < pg_postmaster_start_time(), false) AS "before_restart!",
                      CASE WHEN state = 'queued' THEN extract(epoch FROM now() - updated_at)::float8 END AS queued_for
               FROM jobs
               WHERE id = $1 AND (state = 'queued' OR (state = 'running' AND lease_expires_at < now()))
               FOR UPDATE"#,
            job_id,
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let takeover = match before.lease_owner {
            Some(lost_by) => {
                // No cause recorded: nobody saw the holder go; its lease ran out.
                let cause = before
                    .lost_cause
                    .as_deref()
                    .map_or(Ok(TakeoverCause::LeaseExpired), str::parse)?;
                let activity = before.activity.as_deref().and_then(Activity::parse);
                let (blamed, reason) = blame(activity, cause, before.before_restart);
                Some((lost_by, cause, blamed, reason))
            }
            None => None,
        };
        let blamed = takeover.as_ref().is_some_and(|t| t.2);
        let row = sqlx::query!(
            r#"UPDATE jobs j
               SET state = 'running',
                   lease_owner = $2,
                   lease_epoch = j.lease_epoch + 1,
                   lease_expires_at = now() + make_interval(secs => $3),
                   crashes = j.crashes + $4,
                   blamed_crashes = j.blamed_crashes + $5,
                   isolate = j.isolate OR $5 > 0,
                   activity = 'claimed',
                   activity_since = now(),
                   lost_cause = NULL,
                   dispatched_at = NULL,
                   updated_at = now()
               FROM batches b
               WHERE j.id = $1 AND b.id = j.batch_id
               RETURNING j.lease_epoch, j.batch_id, j.run, j.spec, j.max_attempts, j.crashes, j.blamed_crashes,
                         j.isolate, j.rejudge_attempt_id, b.options"#,
            job_id,
            owner,
            ttl.as_secs_f64(),
            i32::from(takeover.is_some()),
            i32::from(blamed),
        )
        .fetch_one(&mut *tx)
        .await?;
        if let Some((lost_by, cause, blamed, reason)) = &takeover {
            sqlx::query!(
                r#"INSERT INTO takeovers (job_id, run, attempt, lost_by, taken_by, cause, activity, blamed, reason)
                   SELECT $1, $2, (SELECT max(n) FROM attempts WHERE job_id = $1 AND run = $2), $3, $4, $5, $6, $7, $8"#,
                job_id,
                before.run,
                lost_by,
                owner,
                cause.as_str(),
                before.activity,
                blamed,
                reason,
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if let Some(waited) = before.queued_for {
            crate::metrics::observe_phase("queue_wait", Duration::from_secs_f64(waited.max(0.0)));
        }
        let spec: Spec = serde_json::from_value(row.spec).map_err(|error| StoreError::Unreadable {
            what: format!("spec of job {job_id}"),
            error,
        })?;
        let options = serde_json::from_value(row.options).map_err(|error| StoreError::Unreadable {
            what: format!("options of batch {}", row.batch_id),
            error,
        })?;
        Ok(Some(Claimed {
            lease: Lease {
                job_id,
                owner: owner.to_owned(),
                epoch: row.lease_epoch,
            },
            batch_id: row.batch_id,
            run: row.run,
            spec,
            options,
            max_attempts: row.max_attempts,
            crashes: row.crashes,
            blamed_crashes: row.blamed_crashes,
            isolate: row.isolate,
            rejudge_from: row.rejudge_attempt_id,
        }))
    }

    /// Records what the lease holder is doing now: one small update, not
    /// fenced by a row lock (a stale holder's write changes nothing that
    /// matters, and the epoch condition refuses it anyway).
    pub async fn set_activity(&self, lease: &Lease, activity: Activity) -> Result<(), StoreError> {
        // Committed without waiting for the WAL flush (`set_config(…,
        // true)` lasts until this statement's own transaction commits): a
        // mark is visible to every other session at once, and only a
        // Postgres crash can lose one, after which every activity begun
        // before the restart is counted, not blamed, anyway (`blame`). A job
        // marks its activity about eight times; each waited for a flush.
        let updated = sqlx::query_scalar!(
            r#"WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
               UPDATE jobs SET activity = $4, activity_since = now()
               FROM relaxed
               WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3 AND state = 'running'
               RETURNING 1 AS "updated!""#,
            lease.job_id,
            lease.epoch,
            lease.owner,
            activity.as_str(),
        )
        .fetch_optional(&self.pool)
        .await?;
        updated.map(|_| ()).ok_or(StoreError::LeaseLost)
    }

    /// The job panicked in its worker: a crash of this job alone, blamed on
    /// it. Records the panic as a fault of its running attempt and the
    /// takeover, and hands the job back to the queue at once for another
    /// worker (isolated from now on). Returns the job's blamed crashes.
    pub async fn release_after_panic(&self, lease: &Lease, message: &str) -> Result<i32, StoreError> {
        let mut tx = self.fenced(lease).await?;
        let job = sqlx::query!(
            r#"UPDATE jobs
               SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL,
                   not_before = NULL, crashes = crashes + 1, blamed_crashes = blamed_crashes + 1, isolate = true,
                   activity = NULL, lost_cause = NULL, updated_at = now()
               WHERE id = $1
               RETURNING run, blamed_crashes"#,
            lease.job_id,
        )
        .fetch_one(&mut *tx)
        .await?;
        let attempt = sqlx::query!(
            r#"UPDATE attempts
               SET last_fault = $3,
                   faults = CASE WHEN jsonb_array_length(faults) < 50
                            THEN faults || jsonb_build_array(jsonb_build_object(
                                'kind', 'panic', 'class', 'panic', 'message', $3::text, 'at', now()))
                            ELSE faults END
               WHERE job_id = $1 AND run = $2 AND state = 'running'
               RETURNING n"#,
            lease.job_id,
            job.run,
            message,
        )
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query!(
            r#"INSERT INTO takeovers (job_id, run, attempt, lost_by, cause, blamed, reason)
               VALUES ($1, $2, $3, $4, 'panic', true, $5)"#,
            lease.job_id,
            job.run,
            attempt.map(|a| a.n),
            lease.owner,
            format!("the job panicked in its worker: blamed ({message})"),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(job.blamed_crashes)
    }

    /// Every takeover of a job, oldest first.
    pub async fn takeovers(&self, job_id: Uuid) -> Result<Vec<TakeoverView>, StoreError> {
        Ok(sqlx::query_as!(
            TakeoverView,
            r#"SELECT run, attempt, lost_by, taken_by, cause, activity, blamed, reason, at
               FROM takeovers WHERE job_id = $1 ORDER BY id"#,
            job_id
        )
        .fetch_all(&self.pool)
        .await?)
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
        let mut tx = self.fenced(lease).await?;
        let ended = end_job_row(&mut tx, lease, outcome).await?;
        tx.commit().await?;
        ended.observe();
        Ok(())
    }

    pub async fn job(&self, job_id: Uuid) -> Result<JobView, StoreError> {
        let j = sqlx::query!(
            r#"SELECT j.id, j.batch_id, j.kind, j.state, j.run, j.max_attempts, j.crashes, j.blamed_crashes,
                      j.isolate, j.activity, j.error_code,
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
        let takeovers = self.takeovers(job_id).await?;
        let reviews = self.reviews(job_id).await?;
        let activity = j.activity.filter(|_| j.state == "running");
        Ok(JobView {
            job_id: j.id,
            batch_id: j.batch_id,
            kind: j.kind,
            state: j.state,
            run: j.run,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            crashes: j.crashes,
            blamed_crashes: j.blamed_crashes,
            isolated: j.isolate,
            activity,
            takeovers,
            reviews,
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

    /// Cancels a job that has not ended (queued, running or awaiting review).
    /// Bumping the epoch fences out a worker running it; its heartbeat sees
    /// the loss and stops the run.
    pub async fn cancel_job(&self, job_id: Uuid) -> Result<u64, StoreError> {
        let n = self.cancel(None, Some(job_id)).await?;
        if n == 0 {
            self.job_exists(job_id).await?;
        }
        Ok(n)
    }

    /// Cancels every job of the batch that has not ended (awaiting review
    /// included).
    pub async fn cancel_batch(&self, batch_id: Uuid) -> Result<u64, StoreError> {
        self.batch_exists(batch_id).await?;
        self.cancel(Some(batch_id), None).await
    }

    async fn cancel(&self, batch_id: Option<Uuid>, job_id: Option<Uuid>) -> Result<u64, StoreError> {
        // A result awaiting review was never accepted: a cancelled job has none.
        let n = sqlx::query!(
            r#"UPDATE jobs
               SET state = 'cancelled', error_code = 'cancelled', error_message = 'cancelled by request',
                   result_attempt_id = NULL,
                   lease_epoch = lease_epoch + 1, lease_owner = NULL, lease_expires_at = NULL,
                   finished_at = now(), updated_at = now()
               WHERE ($1::uuid IS NULL OR batch_id = $1) AND ($2::uuid IS NULL OR id = $2)
                 AND state IN ('queued', 'running', 'awaiting_review')"#,
            batch_id,
            job_id,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        crate::metrics::job_ended(JobState::Cancelled.as_str(), Some(ErrorCode::Cancelled.as_str()), n);
        Ok(n)
    }

    /// Starts a new run of a failed or cancelled job: fresh attempt budget,
    /// crash count and error; every earlier attempt is kept.
    pub async fn retry_job(&self, job_id: Uuid) -> Result<u64, StoreError> {
        let n = self
            .requeue(
                None,
                Some(job_id),
                &["failed".to_owned(), "cancelled".to_owned()],
                false,
            )
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
        self.requeue(Some(batch_id), None, states, false).await
    }

    /// Starts a re-judge run of a finished job: its one attempt replays the
    /// job's latest stored answer ([`Store::requeue`] says which) through
    /// today's validation and sandbox, without a model request. A conflict
    /// when the job has not finished or no attempt of it ever got an answer.
    pub async fn rejudge_job(&self, job_id: Uuid) -> Result<u64, StoreError> {
        let finished = ["succeeded".to_owned(), "failed".to_owned(), "cancelled".to_owned()];
        let n = self.requeue(None, Some(job_id), &finished, true).await?;
        if n == 0 {
            let job = self.job(job_id).await?;
            return Err(StoreError::Conflict(if finished.contains(&job.state) {
                format!(
                    "job is {} but has no stored answer to re-judge: no attempt of any run got an answer from \
                     the model; retry it instead",
                    job.state
                )
            } else {
                format!(
                    "job is {}; only succeeded, failed or cancelled jobs can be re-judged",
                    job.state
                )
            }));
        }
        Ok(n)
    }

    /// Starts a re-judge run of every job of the batch in one of `states`
    /// (terminal states only) that has a stored answer; the others are left
    /// as they are.
    pub async fn rejudge_batch(&self, batch_id: Uuid, states: &[String]) -> Result<u64, StoreError> {
        self.batch_exists(batch_id).await?;
        self.requeue(Some(batch_id), None, states, true).await
    }

    /// Moves the matching finished jobs to `queued` with `run + 1`. With
    /// `rejudge`, only jobs with a stored answer move, each marked in the
    /// same statement with the attempt whose answer its new run replays:
    /// the result attempt of a succeeded job, else the latest attempt (by
    /// run, then number) that got an answer. Without it the mark is cleared.
    async fn requeue(
        &self,
        batch_id: Option<Uuid>,
        job_id: Option<Uuid>,
        states: &[String],
        rejudge: bool,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            r#"UPDATE jobs j
               SET state = 'queued', run = run + 1, crashes = 0, blamed_crashes = 0, isolate = false, activity = NULL,
                   lost_cause = NULL, error_code = NULL, error_message = NULL,
                   result_attempt_id = NULL, finished_at = NULL, dispatched_at = NULL, not_before = NULL,
                   lease_epoch = lease_epoch + 1, lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
                   rejudge_attempt_id = CASE WHEN $4 THEN (
                       SELECT a.id FROM attempts a
                       WHERE a.job_id = j.id AND a.response IS NOT NULL
                       ORDER BY a.id = j.result_attempt_id DESC NULLS LAST, a.run DESC, a.n DESC
                       LIMIT 1) END
               WHERE ($1::uuid IS NULL OR batch_id = $1) AND ($2::uuid IS NULL OR id = $2)
                 AND state = ANY($3) AND state IN ('failed', 'cancelled', 'succeeded')
                 AND (NOT $4 OR EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = j.id AND a.response IS NOT NULL))"#,
            batch_id,
            job_id,
            states,
            rejudge,
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

/// What ending a job wrote, for the metrics once it is committed.
pub(super) struct JobEnded {
    state: JobState,
    code: Option<&'static str>,
    succeeded_after: Option<i64>,
}

impl JobEnded {
    pub(super) fn observe(&self) {
        crate::metrics::job_ended(self.state.as_str(), self.code, 1);
        if let Some(attempts) = self.succeeded_after {
            crate::metrics::METRICS.attempts_per_success.observe(attempts as f64);
        }
    }
}

/// The end of a job, inside a transaction fenced by `lease`.
pub(super) async fn end_job_row(
    tx: &mut sqlx::PgConnection,
    lease: &Lease,
    outcome: JobOutcome<'_>,
) -> Result<JobEnded, StoreError> {
    let (state, code, message, attempt) = match outcome {
        JobOutcome::Succeeded { attempt_id } => (JobState::Succeeded, None, None, Some(attempt_id)),
        JobOutcome::AwaitingReview { attempt_id } => (JobState::AwaitingReview, None, None, Some(attempt_id)),
        JobOutcome::Failed { code, message } => (JobState::Failed, Some(code.as_str()), Some(message), None),
    };
    let message = message.map(storable);
    // A job awaiting review has not finished: its `finished_at` is the
    // decision's time, so the batch's is its last decision's.
    let attempts = sqlx::query_scalar!(
        r#"UPDATE jobs
           SET state = $2, error_code = $3, error_message = $4, result_attempt_id = $5,
               lease_owner = NULL, lease_expires_at = NULL,
               finished_at = CASE WHEN $2 = 'awaiting_review' THEN NULL ELSE now() END, updated_at = now()
           WHERE id = $1
           RETURNING (SELECT count(*) FROM attempts a WHERE a.job_id = jobs.id AND a.run = jobs.run) AS "attempts!""#,
        lease.job_id,
        state.as_str(),
        code,
        message.as_deref(),
        attempt,
    )
    .fetch_one(tx)
    .await?;
    Ok(JobEnded {
        state,
        code,
        succeeded_after: attempt.map(|_| attempts),
    })
}
