//! Review: a person's decision on a passing job of a batch with
//! `options.review` (`POST /v1/jobs/{id}/review`).
//!
//! The pipeline leaves such a job in `awaiting_review` with its result and
//! no lease ([`super::jobs::JobOutcome::AwaitingReview`]). A decision moves
//! it to `succeeded` (approve) or `failed` with
//! [`ErrorCode::RejectedInReview`] (reject), and appends a row to `reviews`,
//! in one transaction.
//!
//! # Invariants
//! - A job is decided at most once per run: the decision locks the job row
//!   and goes ahead only while the job is `awaiting_review`, so of two
//!   concurrent decisions the second waits for the first and is refused.
//! - Decisions are never overwritten: a rejected job retried and reviewed
//!   again adds a row.

use uuid::Uuid;

use super::{Store, StoreError, storable};
use crate::domain::{ErrorCode, JobState, ReviewDecision};
use crate::views::{Creator, ReviewView};

/// The message of a job rejected without a comment.
pub const REJECTED: &str = "rejected in review";

impl Store {
    /// Records a person's decision on a job awaiting review: approve →
    /// `succeeded` with its result; reject → `failed` with
    /// [`ErrorCode::RejectedInReview`] and the comment as its message (its
    /// files stay readable as its attempt's). `by` is the deciding token.
    ///
    /// [`StoreError::NotFound`] for an unknown job; [`StoreError::Conflict`]
    /// naming the job's state when it is not awaiting review (already
    /// decided, cancelled, or never in a review batch).
    pub async fn review(
        &self,
        job_id: Uuid,
        decision: ReviewDecision,
        comment: Option<&str>,
        by: Option<Uuid>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row lock orders concurrent decisions: the second reads the
        // state the first left and is refused below.
        let job = sqlx::query!(
            "SELECT state, run, result_attempt_id FROM jobs WHERE id = $1 FOR UPDATE",
            job_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("job"))?;
        let state: JobState = job.state.parse()?;
        let (JobState::AwaitingReview, Some(attempt_id)) = (state, job.result_attempt_id) else {
            return Err(StoreError::Conflict(format!(
                "job is {state}; only a job awaiting review can be reviewed"
            )));
        };
        let comment = comment.map(storable);
        let (state, code, message, result) = match decision {
            ReviewDecision::Approve => (JobState::Succeeded, None, None, Some(attempt_id)),
            ReviewDecision::Reject => (
                JobState::Failed,
                Some(ErrorCode::RejectedInReview),
                Some(comment.as_deref().filter(|c| !c.trim().is_empty()).unwrap_or(REJECTED)),
                None,
            ),
        };
        sqlx::query!(
            r#"UPDATE jobs
               SET state = $2, error_code = $3, error_message = $4, result_attempt_id = $5,
                   finished_at = now(), updated_at = now()
               WHERE id = $1"#,
            job_id,
            state.as_str(),
            code.map(ErrorCode::as_str),
            message,
            result,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            r#"INSERT INTO reviews (job_id, run, attempt_id, decision, comment, token_id)
               VALUES ($1, $2, $3, $4, $5, $6)"#,
            job_id,
            job.run,
            attempt_id,
            decision.as_str(),
            comment.as_deref(),
            by,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        crate::metrics::job_ended(state.as_str(), code.map(ErrorCode::as_str), 1);
        Ok(())
    }

    /// Every decision on a job, oldest first.
    pub async fn reviews(&self, job_id: Uuid) -> Result<Vec<ReviewView>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT r.run, a.n, r.decision, r.comment, r.at, r.token_id, t.name AS "token_name?"
               FROM reviews r
               JOIN attempts a ON a.id = r.attempt_id
               LEFT JOIN api_tokens t ON t.id = r.token_id
               WHERE r.job_id = $1
               ORDER BY r.id"#,
            job_id
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ReviewView {
                    run: r.run,
                    attempt: r.n,
                    decision: r.decision.parse()?,
                    comment: r.comment,
                    at: r.at,
                    by: r.token_id.map(|token_id| Creator {
                        token_id,
                        name: r.token_name,
                    }),
                })
            })
            .collect()
    }
}
