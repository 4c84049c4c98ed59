//! What an operator looks at across batches and workers: the batch listing
//! (`GET /v1/batches`) and the live worker processes (`GET /v1/workers`).
//!
//! The listing pages newest first over the `batches_created` index with a
//! `(created_at, id)` cursor, so a page costs the same wherever it starts and
//! a batch created while a client pages never shifts the pages it has not
//! read yet. A batch's state is derived from its counts exactly as
//! [`super::batches::batch_state`] derives it for `GET /v1/batches/{id}`;
//! counts and usage come from `batch_totals` (kept by triggers), so a page
//! costs the same whatever the size of its batches.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::batches::batch_state;
use super::{Store, StoreError};
use crate::views::{BatchPage, BatchView, Counts, Creator, Usage, WorkerJob, WorkerList, WorkerView};

/// Filters and position of one page of the batch listing.
#[derive(Debug, Clone, Default)]
pub struct BatchFilter {
    /// One of [`super::batches::BATCH_STATES`].
    pub state: Option<String>,
    /// Case-insensitive substring of the batch's name.
    pub name: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created strictly before.
    pub created_before: Option<DateTime<Utc>>,
    /// The last batch of the previous page.
    pub cursor: Option<BatchCursor>,
    pub limit: i64,
}

/// Where a page of the listing starts: after this batch, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl BatchCursor {
    /// The opaque text form given to clients as `next_cursor`.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at.timestamp_micros(), self.id.simple())
    }

    /// Reads what [`BatchCursor::encode`] wrote; `None` for anything else.
    pub fn decode(raw: &str) -> Option<BatchCursor> {
        let (micros, id) = raw.split_once('_')?;
        Some(BatchCursor {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

impl Store {
    /// One page of batches, newest first, matching `filter`.
    pub async fn list_batches(&self, filter: &BatchFilter) -> Result<BatchPage, StoreError> {
        // The CASE below is `batch_state` in SQL, so the filter selects the
        // batches whose shown state is the one asked for.
        let rows = sqlx::query!(
            r#"SELECT b.id, b.name, b.options, b.created_at, b.created_by, t.name AS "token_name?",
                      c.queued AS "queued!", c.running AS "running!", c.awaiting_review AS "awaiting_review!",
                      c.succeeded AS "succeeded!",
                      c.failed AS "failed!", c.cancelled AS "cancelled!", c.started AS "started!",
                      c.finished_at, c.prompt_tokens AS "prompt_tokens!",
                      c.completion_tokens AS "completion_tokens!", c.cost_usd
               FROM batches b
               LEFT JOIN api_tokens t ON t.id = b.created_by
               CROSS JOIN LATERAL (
                   -- The batch's counts (migrations/0015, 0021), zeros if it has none.
                   SELECT coalesce(bc.queued, 0) AS queued, coalesce(bc.running, 0) AS running,
                          coalesce(bc.awaiting_review, 0) AS awaiting_review,
                          coalesce(bc.succeeded, 0) AS succeeded, coalesce(bc.failed, 0) AS failed,
                          coalesce(bc.cancelled, 0) AS cancelled, coalesce(bc.started, 0) AS started,
                          bc.finished_at, coalesce(bc.prompt_tokens, 0) AS prompt_tokens,
                          coalesce(bc.completion_tokens, 0) AS completion_tokens, bc.cost_usd
                   FROM (SELECT 1) one LEFT JOIN batch_totals bc ON bc.batch_id = b.id
               ) c
               WHERE ($1::text IS NULL OR $1 = CASE
                          WHEN c.queued + c.running > 0 THEN CASE WHEN c.started > 0 THEN 'running' ELSE 'queued' END
                          WHEN c.awaiting_review > 0 THEN 'awaiting_review'
                          WHEN c.failed > 0 THEN 'failed'
                          WHEN c.cancelled > 0 THEN 'cancelled'
                          ELSE 'succeeded' END)
                 AND ($2::text IS NULL OR strpos(lower(coalesce(b.name, '')), lower($2)) > 0)
                 AND ($3::timestamptz IS NULL OR b.created_at >= $3)
                 AND ($4::timestamptz IS NULL OR b.created_at < $4)
                 AND ($5::timestamptz IS NULL OR (b.created_at, b.id) < ($5, $6::uuid))
               ORDER BY b.created_at DESC, b.id DESC
               LIMIT $7"#,
            filter.state.as_deref(),
            filter.name.as_deref(),
            filter.created_after,
            filter.created_before,
            filter.cursor.map(|c| c.created_at),
            filter.cursor.map(|c| c.id),
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?;
        let next_cursor = (rows.len() as i64 == filter.limit)
            .then(|| {
                rows.last().map(|r| {
                    BatchCursor {
                        created_at: r.created_at,
                        id: r.id,
                    }
                    .encode()
                })
            })
            .flatten();
        let batches = rows
            .into_iter()
            .map(|r| {
                let counts = Counts {
                    queued: r.queued,
                    running: r.running,
                    awaiting_review: r.awaiting_review,
                    succeeded: r.succeeded,
                    failed: r.failed,
                    cancelled: r.cancelled,
                };
                BatchView {
                    batch_id: r.id,
                    name: r.name,
                    state: batch_state(&counts, r.started).to_owned(),
                    total: counts.total(),
                    finished_at: if counts.done() { r.finished_at } else { None },
                    counts,
                    usage: Usage {
                        prompt_tokens: r.prompt_tokens,
                        completion_tokens: r.completion_tokens,
                        cost_usd: r.cost_usd,
                    },
                    options: r.options,
                    created_by: r.created_by.map(|token_id| Creator {
                        token_id,
                        name: r.token_name,
                    }),
                    created_at: r.created_at,
                }
            })
            .collect();
        Ok(BatchPage { batches, next_cursor })
    }

    /// Every worker process registered and not declared dead, with the
    /// jobs whose leases it holds.
    pub async fn workers(&self) -> Result<WorkerList, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT id, started_at, concurrency, lock_missing_since
               FROM workers WHERE died_at IS NULL
               ORDER BY started_at, lock_key"#
        )
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        // Running jobs are few (bounded by the workers' concurrency) and
        // reached through the `jobs_running_lease` index.
        let jobs = sqlx::query!(
            r#"SELECT id, batch_id, run, activity, lease_owner AS "lease_owner!", lease_expires_at
               FROM jobs
               WHERE state = 'running' AND lease_owner = ANY($1)
               ORDER BY updated_at"#,
            &ids,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_owner: HashMap<String, Vec<WorkerJob>> = HashMap::new();
        for j in jobs {
            by_owner.entry(j.lease_owner).or_default().push(WorkerJob {
                job_id: j.id,
                batch_id: j.batch_id,
                run: j.run,
                activity: j.activity,
                lease_expires_at: j.lease_expires_at,
            });
        }
        let workers = rows
            .into_iter()
            .map(|r| {
                let jobs = by_owner.get(&r.id).cloned().unwrap_or_default();
                WorkerView {
                    slots_busy: jobs.len() as i64,
                    worker_id: r.id,
                    started_at: r.started_at,
                    concurrency: r.concurrency,
                    lock_missing_since: r.lock_missing_since,
                    jobs,
                }
            })
            .collect();
        Ok(WorkerList { workers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_the_batch_it_was_made_from() {
        let cursor = BatchCursor {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(BatchCursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "12", "x_y", "12_not-a-uuid", &format!("1e400_{}", cursor.id)] {
            assert_eq!(BatchCursor::decode(bad), None, "{bad}");
        }
    }
}
