//! What the feeder and the reconciler read and mark.
//!
//! The backlog lives here; Redis holds at most a window of it (invariant 6).
//! A job is "in the window" while it is `queued` with `dispatched_at` set.
//! Claiming clears `dispatched_at`, so running jobs do not count against it.

use std::time::Duration;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{Store, StoreError};

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

/// Totals for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub jobs_by_state: Vec<(String, i64)>,
    pub attempts_by_state: Vec<(String, i64)>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub llm_faults: i64,
    pub sandbox_faults: i64,
    /// Jobs sent to Redis and not yet claimed (the window in use).
    pub in_window: i64,
}

impl Store {
    pub async fn totals(&self) -> Result<Totals, StoreError> {
        let jobs = sqlx::query!(r#"SELECT state, count(*) AS "n!" FROM jobs GROUP BY state ORDER BY state"#)
            .fetch_all(&self.pool)
            .await?;
        let attempts = sqlx::query!(
            r#"SELECT state, count(*) AS "n!", coalesce(sum(prompt_tokens), 0)::int8 AS "prompt!",
                      coalesce(sum(completion_tokens), 0)::int8 AS "completion!",
                      coalesce(sum(llm_faults), 0)::int8 AS "llm_faults!",
                      coalesce(sum(sandbox_faults), 0)::int8 AS "sandbox_faults!"
               FROM attempts GROUP BY state ORDER BY state"#
        )
        .fetch_all(&self.pool)
        .await?;
        let in_window = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM jobs WHERE state = 'queued' AND dispatched_at IS NOT NULL"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Totals {
            jobs_by_state: jobs.into_iter().map(|r| (r.state, r.n)).collect(),
            prompt_tokens: attempts.iter().map(|r| r.prompt).sum(),
            completion_tokens: attempts.iter().map(|r| r.completion).sum(),
            llm_faults: attempts.iter().map(|r| r.llm_faults).sum(),
            sandbox_faults: attempts.iter().map(|r| r.sandbox_faults).sum(),
            attempts_by_state: attempts.into_iter().map(|r| (r.state, r.n)).collect(),
            in_window,
        })
    }
}
