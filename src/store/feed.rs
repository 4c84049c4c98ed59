//! What the feeder and the reconciler read and mark.
//!
//! The backlog lives here; Redis holds at most a window of it (invariant 6).
//! A job is "in the window" while it is `queued` with `dispatched_at` set.
//! Claiming clears `dispatched_at`, so running jobs do not count against it.

use std::time::Duration;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{AttemptState, JobState};

/// An open feeding round: the jobs chosen to send, locked against other
/// feeders until [`FeedRound::mark_dispatched`] commits.
pub struct FeedRound {
    tx: Transaction<'static, Postgres>,
    pub job_ids: Vec<Uuid>,
}

impl FeedRound {
    /// Records that the chosen jobs are now in Redis. Called after the push:
    /// a crash in between re-sends them later, which duplicates are refused for.
    pub async fn mark_dispatched(mut self) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE jobs SET dispatched_at = now() WHERE id = ANY($1) AND state = 'queued'",
            &self.job_ids
        )
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Starts a feeding round for `queue`: picks up to `window` minus the jobs
    /// already waiting in Redis, highest priority first and round-robin across
    /// batches of equal priority, so one huge batch cannot starve the others.
    /// Returns `None` when another dispatcher is feeding this queue right now
    /// or there is nothing to send.
    pub async fn begin_feed(&self, queue: &str, window: usize) -> Result<Option<FeedRound>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock(hashtext('kiln-feeder:' || $1)) AS "locked!""#,
            queue
        )
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(None);
        }
        let waiting = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM jobs WHERE state = 'queued' AND dispatched_at IS NOT NULL"#
        )
        .fetch_one(&mut *tx)
        .await?;
        let room = (window as i64 - waiting).max(0);
        if room == 0 {
            return Ok(None);
        }
        let job_ids = sqlx::query_scalar!(
            r#"WITH ready AS (
                   SELECT id, priority,
                          row_number() OVER (PARTITION BY batch_id ORDER BY position) AS rn
                   FROM jobs
                   WHERE state = 'queued' AND dispatched_at IS NULL
                     AND (not_before IS NULL OR not_before <= now())
               )
               SELECT id AS "id!" FROM ready ORDER BY priority DESC, rn, id LIMIT $1"#,
            room
        )
        .fetch_all(&mut *tx)
        .await?;
        if job_ids.is_empty() {
            return Ok(None);
        }
        Ok(Some(FeedRound { tx, job_ids }))
    }

    /// Running jobs whose lease ran out (their worker died unseen or is cut
    /// off) go back to `queued` for the feeder to send again. The lease owner
    /// is kept, so the next claim records the takeover.
    pub async fn requeue_expired_leases(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            r#"UPDATE jobs SET state = 'queued', dispatched_at = NULL, lost_cause = 'lease_expired', updated_at = now()
               WHERE state = 'running' AND lease_expires_at < now()"#
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Forgets that one queued job was sent, so the feeder sends it again at
    /// its next tick (a worker declining the message it got).
    pub async fn redispatch(&self, job_id: Uuid) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE jobs SET dispatched_at = NULL WHERE id = $1 AND state = 'queued'",
            job_id
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets that queued jobs were sent, so the feeder sends them again:
    /// all of them when Redis lost its data (`older_than = None`), otherwise
    /// those waiting longer than `older_than` (a message may have been lost).
    pub async fn forget_dispatched(&self, older_than: Option<Duration>) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            r#"UPDATE jobs SET dispatched_at = NULL
               WHERE state = 'queued' AND dispatched_at IS NOT NULL
                 AND ($1::float8 IS NULL OR dispatched_at < now() - make_interval(secs => $1))"#,
            older_than.map(|d| d.as_secs_f64())
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// The state of the world for the dispatcher's `/metrics`, read with a few
/// cheap statements: sums over `batch_counts` (one row per batch, kept by
/// triggers), the Redis window (at most `KILN_QUEUE_WINDOW` rows of an
/// index), the first entry of the `jobs_queued_since` index and the live
/// workers. Nothing here reads the history of jobs or attempts.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Jobs by state, in [`JobState::ALL`] order.
    pub jobs: Vec<(JobState, i64)>,
    /// Attempts by state, in [`AttemptState::ALL`] order.
    pub attempts: Vec<(AttemptState, i64)>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub llm_faults: i64,
    pub sandbox_faults: i64,
    /// Jobs sent to Redis and not yet claimed (the window in use).
    pub in_window: i64,
    /// Seconds since the oldest queued job that may run now was queued
    /// (0 when none waits).
    pub oldest_ready_age_s: f64,
    /// Worker processes registered and not declared dead.
    pub workers: i64,
}

impl Store {
    pub async fn world(&self) -> Result<World, StoreError> {
        let c = sqlx::query!(
            r#"SELECT coalesce(sum(queued), 0)::int8 AS "queued!", coalesce(sum(running), 0)::int8 AS "running!",
                      coalesce(sum(awaiting_review), 0)::int8 AS "awaiting_review!",
                      coalesce(sum(succeeded), 0)::int8 AS "succeeded!", coalesce(sum(failed), 0)::int8 AS "failed!",
                      coalesce(sum(cancelled), 0)::int8 AS "cancelled!",
                      coalesce(sum(attempts_running), 0)::int8 AS "a_running!",
                      coalesce(sum(attempts_passed), 0)::int8 AS "a_passed!",
                      coalesce(sum(attempts_failed), 0)::int8 AS "a_failed!",
                      coalesce(sum(attempts_error), 0)::int8 AS "a_error!",
                      coalesce(sum(prompt_tokens), 0)::int8 AS "prompt!",
                      coalesce(sum(completion_tokens), 0)::int8 AS "completion!",
                      coalesce(sum(cost_usd), 0)::float8 AS "cost!",
                      coalesce(sum(llm_faults), 0)::int8 AS "llm_faults!",
                      coalesce(sum(sandbox_faults), 0)::int8 AS "sandbox_faults!",
                      (SELECT count(*) FROM jobs WHERE state = 'queued' AND dispatched_at IS NOT NULL) AS "in_window!",
                      (SELECT coalesce(extract(epoch FROM now() - min(updated_at)), 0)::float8 FROM jobs
                        WHERE state = 'queued' AND (not_before IS NULL OR not_before <= now())) AS "oldest!",
                      (SELECT count(*) FROM workers WHERE died_at IS NULL) AS "workers!"
               FROM batch_counts"#
        )
        .fetch_one(&self.pool)
        .await?;
        let jobs = JobState::ALL
            .iter()
            .map(|&s| {
                let n = match s {
                    JobState::Queued => c.queued,
                    JobState::Running => c.running,
                    JobState::AwaitingReview => c.awaiting_review,
                    JobState::Succeeded => c.succeeded,
                    JobState::Failed => c.failed,
                    JobState::Cancelled => c.cancelled,
                };
                (s, n)
            })
            .collect();
        let attempts = AttemptState::ALL
            .iter()
            .map(|&s| {
                let n = match s {
                    AttemptState::Running => c.a_running,
                    AttemptState::Passed => c.a_passed,
                    AttemptState::Failed => c.a_failed,
                    AttemptState::Error => c.a_error,
                };
                (s, n)
            })
            .collect();
        Ok(World {
            jobs,
            attempts,
            prompt_tokens: c.prompt,
            completion_tokens: c.completion,
            cost_usd: c.cost,
            llm_faults: c.llm_faults,
            sandbox_faults: c.sandbox_faults,
            in_window: c.in_window,
            oldest_ready_age_s: c.oldest.max(0.0),
            workers: c.workers,
        })
    }
}
