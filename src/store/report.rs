//! A batch's report (`GET /v1/batches/{id}/report`): how often the model
//! passed at each attempt, what a success cost, where the time went, and
//! why jobs failed.
//!
//! # Which runs count
//!
//! Outcomes (pass rates, failures, diagnostics by rule) and phase times are
//! read from each job's *current* run only: a retry starts a new run with a
//! fresh attempt budget, and the earlier run's outcome is what it replaced.
//! A re-judge is such a run too: its one attempt replays a stored answer,
//! so that answer's new verdict counts at attempt 1.
//! Money is the exception: `usage` is every run's tokens and cost (the
//! batch status's `usage`, from `batch_counts`), because earlier runs were
//! paid for too, and `per_success` divides that by the jobs that succeeded.
//!
//! # Cost
//!
//! Every figure is a Postgres aggregate over the batch's jobs joined to
//! their current run's attempts (`jobs_batch_state`, then the attempts'
//! `(job_id, run, n)` key), a few rows back per query: nothing is loaded
//! row by row into Rust, so a 200,000-job batch is a few scans, not a
//! transfer (see the `metrics` bench).

use uuid::Uuid;

use super::{Store, StoreError};
use crate::views::{
    AttemptFailures, AttemptPassRate, BatchReport, CodeCount, PerSuccess, PhaseTimes, RuleCount, Usage,
};

/// How many rules [`BatchReport::rules`] lists at most.
pub const TOP_RULES: i64 = 20;

/// Per-attempt counts as the first query reads them.
struct AttemptCounts {
    n: i32,
    jobs: i64,
    passed: i64,
    failed: i64,
    errored: i64,
    running: i64,
}

/// Pass rates and cumulative pass rates from the counts per attempt
/// number, which come in order of `n`. The denominator of the cumulative
/// rate is the jobs that reached attempt 1.
fn pass_rates(rows: Vec<AttemptCounts>) -> Vec<AttemptPassRate> {
    let started = rows.iter().find(|r| r.n == 1).map_or(0, |r| r.jobs);
    let ratio = |part: i64, whole: i64| if whole == 0 { 0.0 } else { part as f64 / whole as f64 };
    let mut passed_by_now = 0;
    rows.into_iter()
        .map(|r| {
            passed_by_now += r.passed;
            AttemptPassRate {
                n: r.n,
                jobs: r.jobs,
                passed: r.passed,
                failed: r.failed,
                errored: r.errored,
                running: r.running,
                pass_rate: ratio(r.passed, r.jobs),
                passed_by_now,
                cumulative_pass_rate: ratio(passed_by_now, started),
            }
        })
        .collect()
}

fn per_success(usage: &Usage, succeeded: i64) -> Option<PerSuccess> {
    (succeeded > 0).then(|| {
        let n = succeeded as f64;
        PerSuccess {
            prompt_tokens: usage.prompt_tokens as f64 / n,
            completion_tokens: usage.completion_tokens as f64 / n,
            cost_usd: usage.cost_usd.map(|c| c / n),
        }
    })
}

impl Store {
    /// The report of a batch (see the module docs for what counts). Its
    /// queries run side by side, each on its own connection.
    pub async fn batch_report(&self, batch_id: Uuid) -> Result<BatchReport, StoreError> {
        // Counts and usage from the trigger-kept row; also the 404.
        let status = self.batch(batch_id).await?;
        let (attempts, phases, (failures, attempt_failures), rules) = tokio::try_join!(
            self.pass_counts(batch_id),
            self.phase_times(batch_id),
            self.failures(batch_id),
            self.failing_rules(batch_id),
        )?;
        Ok(BatchReport {
            batch_id,
            total: status.total,
            per_success: per_success(&status.usage, status.counts.succeeded),
            counts: status.counts,
            attempts: pass_rates(attempts),
            usage: status.usage,
            phases,
            failures,
            attempt_failures,
            rules,
        })
    }

    /// Attempts of the current runs by number and state.
    async fn pass_counts(&self, batch_id: Uuid) -> Result<Vec<AttemptCounts>, StoreError> {
        Ok(sqlx::query_as!(
            AttemptCounts,
            r#"SELECT a.n, count(*) AS "jobs!",
                      count(*) FILTER (WHERE a.state = 'passed') AS "passed!",
                      count(*) FILTER (WHERE a.state = 'failed') AS "failed!",
                      count(*) FILTER (WHERE a.state = 'error') AS "errored!",
                      count(*) FILTER (WHERE a.state = 'running') AS "running!"
               FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.run = j.run
               WHERE j.batch_id = $1
               GROUP BY a.n
               ORDER BY a.n"#,
            batch_id
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Percentiles of each phase's duration, in pipeline order.
    async fn phase_times(&self, batch_id: Uuid) -> Result<Vec<PhaseTimes>, StoreError> {
        // One row, one sort per phase. The keys are the ones
        // `store::attempts` writes; `percentile_cont(1)` is the maximum.
        // Unpivoting `timings_ms` (`jsonb_each`) and grouping by key
        // instead sorted every measurement twice and took three times as
        // long on the 200,000-job bench batch. Each sort holds all of its
        // phase's measurements: at 200,000 the default 4 MB of `work_mem`
        // spills them to disk, so this transaction gets more.
        let mut tx = self.pool.begin().await?;
        sqlx::query!("SET LOCAL work_mem = '64MB'").execute(&mut *tx).await?;
        let r = sqlx::query!(
            r#"SELECT count(queue) AS "queue_n!",
                      percentile_cont(ARRAY[0.5, 0.9, 0.99, 1]) WITHIN GROUP (ORDER BY queue) AS queue,
                      count(t->'llm') AS "llm_n!",
                      percentile_cont(ARRAY[0.5, 0.9, 0.99, 1]) WITHIN GROUP (ORDER BY (t->>'llm')::float8) AS llm,
                      count(t->'validate') AS "validate_n!",
                      percentile_cont(ARRAY[0.5, 0.9, 0.99, 1])
                          WITHIN GROUP (ORDER BY (t->>'validate')::float8) AS validate,
                      count(t->'sandbox') AS "sandbox_n!",
                      percentile_cont(ARRAY[0.5, 0.9, 0.99, 1])
                          WITHIN GROUP (ORDER BY (t->>'sandbox')::float8) AS sandbox,
                      count(t->'total') AS "total_n!",
                      percentile_cont(ARRAY[0.5, 0.9, 0.99, 1]) WITHIN GROUP (ORDER BY (t->>'total')::float8) AS total
               FROM (SELECT CASE WHEN a.cached_from IS NULL THEN a.timings_ms END AS t,
                            CASE WHEN j.run = 1 AND a.n = 1
                                 THEN extract(epoch FROM a.started_at - j.created_at)::float8 * 1000 END AS queue
                     FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.run = j.run
                     WHERE j.batch_id = $1) measured"#,
            batch_id
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let phases = [
            ("queue", r.queue_n, r.queue),
            ("llm", r.llm_n, r.llm),
            ("validate", r.validate_n, r.validate),
            ("sandbox", r.sandbox_n, r.sandbox),
            ("total", r.total_n, r.total),
        ];
        Ok(phases
            .into_iter()
            .filter_map(|(phase, count, percentiles)| match percentiles.as_deref() {
                Some(&[p50_ms, p90_ms, p99_ms, max_ms]) if count > 0 => Some(PhaseTimes {
                    phase: phase.to_owned(),
                    count,
                    p50_ms,
                    p90_ms,
                    p99_ms,
                    max_ms,
                }),
                _ => None,
            })
            .collect())
    }

    /// Failed jobs by error code, and not-passed attempts by how they ended.
    async fn failures(&self, batch_id: Uuid) -> Result<(Vec<CodeCount>, Vec<AttemptFailures>), StoreError> {
        let failures = sqlx::query!(
            r#"SELECT error_code AS "code!", count(*) AS "count!"
               FROM jobs
               WHERE batch_id = $1 AND state = 'failed' AND error_code IS NOT NULL
               GROUP BY error_code
               ORDER BY count(*) DESC, error_code"#,
            batch_id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(CodeCount {
                code: r.code.parse()?,
                count: r.count,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let attempt_failures = sqlx::query!(
            r#"SELECT a.state, a.phase, a.error_code, count(*) AS "count!"
               FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.run = j.run
               WHERE j.batch_id = $1 AND a.state IN ('failed', 'error')
               GROUP BY a.state, a.phase, a.error_code
               ORDER BY count(*) DESC, a.state, a.phase, a.error_code"#,
            batch_id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(AttemptFailures {
                state: r.state.parse()?,
                phase: r.phase.parse()?,
                code: r.error_code.as_deref().map(str::parse).transpose()?,
                count: r.count,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((failures, attempt_failures))
    }

    /// The [`TOP_RULES`] rules with the most error diagnostics.
    async fn failing_rules(&self, batch_id: Uuid) -> Result<Vec<RuleCount>, StoreError> {
        // Only answers that failed their checks carry error diagnostics
        // (`ok` is false exactly then), so passing ones are not expanded.
        Ok(sqlx::query_as!(
            RuleCount,
            r#"SELECT d->>'rule' AS "rule!", count(*) AS "diagnostics!",
                      count(DISTINCT a.id) AS "attempts!", count(DISTINCT a.job_id) AS "jobs!"
               FROM jobs j
               JOIN attempts a ON a.job_id = j.id AND a.run = j.run
               CROSS JOIN LATERAL jsonb_array_elements(a.validation->'diagnostics') d
               WHERE j.batch_id = $1 AND a.validation @> '{"ok": false}'
                 AND jsonb_typeof(a.validation->'diagnostics') = 'array'
                 AND d->>'severity' = 'error' AND d->>'rule' IS NOT NULL
               GROUP BY d->>'rule'
               ORDER BY count(*) DESC, d->>'rule'
               LIMIT $2"#,
            batch_id,
            TOP_RULES,
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: i32, jobs: i64, passed: i64) -> AttemptCounts {
        AttemptCounts {
            n,
            jobs,
            passed,
            failed: jobs - passed,
            errored: 0,
            running: 0,
        }
    }

    #[test]
    fn the_cumulative_pass_rate_is_over_the_jobs_that_made_a_first_attempt() {
        let rates = pass_rates(vec![counts(1, 10, 4), counts(2, 6, 3), counts(3, 3, 0)]);
        let got: Vec<(i64, f64, f64)> = rates
            .iter()
            .map(|r| (r.passed_by_now, r.pass_rate, r.cumulative_pass_rate))
            .collect();
        assert_eq!(got, vec![(4, 0.4, 0.4), (7, 0.5, 0.7), (7, 0.0, 0.7)]);
    }

    #[test]
    fn nothing_is_per_success_until_a_job_succeeds() {
        let usage = Usage {
            prompt_tokens: 300,
            completion_tokens: 30,
            cost_usd: Some(0.3),
        };
        assert_eq!(per_success(&usage, 0), None);
        let each = per_success(&usage, 3).unwrap();
        assert_eq!((each.prompt_tokens, each.completion_tokens), (100.0, 10.0));
        assert!((each.cost_usd.unwrap() - 0.1).abs() < 1e-12);
    }
}
