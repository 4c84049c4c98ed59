//! One job, from claim to outcome: generate → validate → sandbox-test →
//! repair-and-retry, each step persisted before the next starts.
//!
//! The pipeline is re-entrant: given a claimed job it looks at what Postgres
//! already holds for the current run and continues from there. An attempt
//! whose response is stored is never sent to the model again; an attempt
//! already tested is only judged (invariant 4).
//!
//! Faults are classified as they happen: the model's failures (unparseable,
//! truncated, invalid or failing code) spend an attempt; provider and
//! sandbox faults are retried with backoff under their own limits and, when
//! those run out, end the job with a code that says so (invariant 5).
//!
//! A re-judge run ([`Claimed::rejudge_from`]) has one attempt, a replay of a
//! stored answer: it starts at `generated`, so it is only validated and
//! tested, never sent to the model, and a failure ends the job without repair.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::config::Price;
use crate::domain::ErrorCode;
use crate::files::File;
use crate::llm::guard::{Guard, estimate_tokens};
use crate::llm::{Answer, ChatRequest, Disposition, LlmClient, Message};
use crate::parse::parse_response;
use crate::prompt::{self, Failure};
use crate::report::{Diagnostic, TestReport, ValidationReport};
use crate::sandbox::{RunLimits, Sandbox, harness};
use crate::spec::Spec;
use crate::store::attempts::{AttemptRecord, AttemptState, FaultKind, Phase, StoredAnswer};
use crate::store::jobs::{Activity, Claimed, JobOutcome};
use crate::store::{Lease, Store, StoreError};
use crate::validate;

/// Knobs of the pipeline (from [`crate::config::Settings`]).
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Model used when the batch names none.
    pub default_model: Option<String>,
    pub max_tokens: u32,
    /// Temperature of a first request (`None`: the model's default).
    pub temperature: Option<f32>,
    /// Provider faults tolerated per attempt.
    pub llm_max_retries: u32,
    /// Sandbox faults tolerated per attempt.
    pub sandbox_max_retries: u32,
    /// Waits after provider faults.
    pub llm_backoff: Backoff,
    /// Waits after sandbox faults.
    pub sandbox_backoff: Backoff,
    /// Longest provider-requested wait honoured.
    pub llm_max_wait: Duration,
    /// Worker deaths blamed on a job (see [`crate::store::jobs::blame`])
    /// tolerated per run.
    pub crash_limit: u32,
    pub limits: RunLimits,
    /// US dollars per million tokens, by model.
    pub prices: std::collections::BTreeMap<String, Price>,
}

/// Waits between retries of one kind of fault: `base` after the first,
/// doubling per fault, never above `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// How a call to [`Pipeline::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    /// Passed in a batch with `options.review`: the job left the worker
    /// (lease released, nothing more to run) to wait for a person.
    AwaitingReview,
    Failed {
        code: ErrorCode,
    },
    /// Stopped on request (shutdown) before an outcome; the caller releases
    /// the lease so another worker resumes.
    Interrupted,
    /// The provider's circuit breaker is open: the caller hands the job back
    /// to the queue, not to be sent again before this long. Nothing is spent.
    Deferred(Duration),
    /// The lease was taken over, or the job cancelled or retried: stop
    /// without writing anything more.
    LeaseLost,
}

/// Failures of the pipeline itself (not of the job).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything one job needs; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    pub store: Store,
    pub llm: Arc<dyn LlmClient>,
    /// Shared rate limits and circuit breaker of the provider.
    pub guard: Guard,
    pub sandbox: Arc<dyn Sandbox>,
    pub settings: PipelineSettings,
    /// Taken by every job's own work inside the worker process (see
    /// [`Pipeline::enter`]): shared by ordinary jobs, exclusive for an
    /// isolated one. One per worker process.
    pub in_worker: Arc<RwLock<()>>,
}

/// Held while a job's own work runs inside the worker.
struct InWorker<'a> {
    _shared: Option<RwLockReadGuard<'a, ()>>,
    _alone: Option<RwLockWriteGuard<'a, ()>>,
}

/// Why an attempt stopped before a verdict.
enum Stop {
    /// Infrastructure limits ran out or the provider refused: job fails with `code`.
    Fail {
        code: ErrorCode,
        message: String,
    },
    Interrupted,
    Defer(Duration),
    LeaseLost,
    /// The database failed for longer than retries cover: leave the job to
    /// its lease (it will be re-delivered), rather than fail it wrongly.
    Store(StoreError),
}

/// The verdict on one attempt.
enum Verdict {
    Passed,
    /// The model's code failed; the attempt is spent. `reason`: the first
    /// problem, for the log.
    Failed {
        reason: String,
    },
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        match e {
            StoreError::LeaseLost => Stop::LeaseLost,
            e @ (StoreError::Database(_)
            | StoreError::Migrate(_)
            | StoreError::NotFound(_)
            | StoreError::Conflict(_)
            | StoreError::Corrupt(_)
            | StoreError::Unreadable { .. }) => Stop::Store(e),
        }
    }
}

impl Pipeline {
    /// Drives a claimed job until it ends, is interrupted, or the lease is lost.
    pub async fn run(&self, job: &Claimed, cancel: &CancellationToken) -> Result<JobEnd, PipelineError> {
        let lease = &job.lease;
        if job.blamed_crashes >= self.settings.crash_limit as i32 {
            return self.fail_crash_loop(job, cancel).await;
        }
        loop {
            if cancel.is_cancelled() {
                return Ok(JobEnd::Interrupted);
            }
            let latest = self
                .retry_db(cancel, || self.store.attempt(lease.job_id, job.run, None))
                .await?;
            // Whether the job is already marked as waiting on the model (a
            // fresh attempt's start marks it so), which saves its request
            // a mark of its own.
            let (attempt, model_marked) = match latest {
                Some(a) if a.state == AttemptState::Running => (a, false),
                Some(a) if a.state == AttemptState::Passed => {
                    // Passed but the job was not marked: finish what a dead worker started.
                    return self.end_job(lease, passed(job, a.id), cancel).await;
                }
                Some(a) if a.state == AttemptState::Error => {
                    let code = a.error_code.unwrap_or(ErrorCode::Internal);
                    let message = a.error_message.clone().unwrap_or_default();
                    return self
                        .end_job(
                            lease,
                            JobOutcome::Failed {
                                code,
                                message: &message,
                            },
                            cancel,
                        )
                        .await;
                }
                Some(a) if job.rejudge_from.is_some() || a.n >= job.max_attempts => {
                    // The message quotes the model's last diagnostics or test
                    // failures: read inside the worker until the end is stored.
                    let _in_worker = match self.enter(job, Activity::Preparing, cancel).await {
                        Ok(held) => held,
                        Err(stop) => return self.stopped(lease, None, stop, cancel).await,
                    };
                    let ended = if job.rejudge_from.is_some() {
                        // A re-judge run has one attempt and no repair: the
                        // stored answer failed today's judge, and so does the job.
                        failure(&a, "re-judged, the stored answer fails: ").map(|f| {
                            f.unwrap_or((
                                ErrorCode::AttemptsExhausted,
                                "re-judged, the stored answer fails".into(),
                            ))
                        })
                    } else {
                        exhausted(&a, job.max_attempts)
                    };
                    let (code, message) = match ended {
                        Ok(end) => end,
                        Err(stop) => return self.stopped(lease, None, stop, cancel).await,
                    };
                    return self
                        .end_job(
                            lease,
                            JobOutcome::Failed {
                                code,
                                message: &message,
                            },
                            cancel,
                        )
                        .await;
                }
                previous => match self.start(job, previous.as_ref(), cancel).await {
                    Ok(a) if a.state == AttemptState::Passed => {
                        info!(job_id = %lease.job_id, "reused a cached passing result");
                        return self.end_job(lease, passed(job, a.id), cancel).await;
                    }
                    Ok(a) => (a, job.rejudge_from.is_none()),
                    Err(stop) => return self.stopped(lease, None, stop, cancel).await,
                },
            };
            let span = tracing::info_span!("attempt", run = job.run, attempt = attempt.n);
            match self
                .run_attempt(job, &attempt, model_marked, cancel)
                .instrument(span)
                .await
            {
                Ok(Verdict::Passed) => {
                    info!(job_id = %lease.job_id, attempt = attempt.n, "attempt passed");
                    return self.end_passed(lease, &attempt, passed(job, attempt.id), cancel).await;
                }
                Ok(Verdict::Failed { reason }) => {
                    self.end_attempt(lease, &attempt, AttemptState::Failed, None, cancel)
                        .await?;
                    info!(job_id = %lease.job_id, attempt = attempt.n, %reason, "attempt failed");
                }
                Err(stop) => return self.stopped(lease, Some(&attempt), stop, cancel).await,
            }
        }
    }

    /// Ends a job that workers died running too often (`crash_limit`),
    /// without running it again: its running attempt, if any, and the job
    /// fail with [`ErrorCode::CrashLoop`].
    async fn fail_crash_loop(&self, job: &Claimed, cancel: &CancellationToken) -> Result<JobEnd, PipelineError> {
        let lease = &job.lease;
        let message = format!(
            "workers died {} times while this job was running inside them (limit {}); it is not run again \
             ({} takeovers in all, each listed with why it was or was not blamed)",
            job.blamed_crashes, self.settings.crash_limit, job.crashes
        );
        if let Some(a) = self
            .retry_db(cancel, || self.store.attempt(lease.job_id, job.run, None))
            .await?
            && a.state == AttemptState::Running
        {
            self.end_attempt(
                lease,
                &a,
                AttemptState::Error,
                Some((ErrorCode::CrashLoop, &message)),
                cancel,
            )
            .await?;
        }
        self.end_job(
            lease,
            JobOutcome::Failed {
                code: ErrorCode::CrashLoop,
                message: &message,
            },
            cancel,
        )
        .await
    }

    /// Creates the next attempt: in a re-judge run, the replay of the
    /// stored answer it judges again; else a prompt for the model.
    async fn start(
        &self,
        job: &Claimed,
        previous: Option<&AttemptRecord>,
        cancel: &CancellationToken,
    ) -> Result<AttemptRecord, Stop> {
        match job.rejudge_from {
            Some(source) => Ok(self
                .retry_db(cancel, || self.store.start_rejudge(&job.lease, job.run, 1, source))
                .await?),
            None => self.start_attempt(job, previous, cancel).await,
        }
    }

    /// Creates the next attempt with its prompt (a repair prompt after a failure).
    async fn start_attempt(
        &self,
        job: &Claimed,
        previous: Option<&AttemptRecord>,
        cancel: &CancellationToken,
    ) -> Result<AttemptRecord, Stop> {
        let n = previous.map_or(1, |p| p.n + 1);
        let Some(model) = job
            .options
            .model_for_attempt(n as u32)
            .map(str::to_owned)
            .or_else(|| self.settings.default_model.clone())
        else {
            return Err(Stop::Fail {
                code: ErrorCode::NoModel,
                message: "the batch names no model (options.model) and KILN_LLM_MODEL is not set".into(),
            });
        };
        let in_worker = self.enter(job, Activity::Preparing, cancel).await?;
        let messages = match previous {
            None => vec![
                Message::system(self.system_prompt(job, cancel).await?),
                Message::user(prompt::spec_prompt(&job.spec)),
            ],
            Some(p) => {
                let first: Vec<Message> = stored(p, "prompt", &p.prompt)?;
                let validation: Option<ValidationReport> =
                    stored_report(p, "validation report", p.validation.as_ref())?;
                let tests: Option<TestReport> = stored_report(p, "test report", p.tests.as_ref())?;
                let failure = Failure {
                    validation: validation.as_ref(),
                    tests: tests.as_ref(),
                    other: None,
                };
                if self.answers_of_run(job, n, cancel).await?.last_repeated {
                    // The same answer again would fail the same way: ask
                    // afresh, without the answer the model keeps copying.
                    prompt::fresh_repair_messages(&first, REPEAT_NOTE, &failure, n as u32, job.max_attempts as u32)
                } else {
                    prompt::repair_messages(
                        &first,
                        p.response.as_deref().unwrap_or(""),
                        &failure,
                        n as u32,
                        job.max_attempts as u32,
                    )
                }
            }
        };
        let prompt = serde_json::to_value(&messages).expect("messages serialise");
        if job.options.cache
            && previous.is_none()
            && let Some(cached) = self
                .retry_db(cancel, || {
                    self.store
                        .reuse_cached(&job.lease, job.run, n, &model, &prompt, prompt::PROMPT_VERSION)
                })
                .await?
        {
            self.leave(&job.lease, in_worker, Activity::Finishing, cancel).await?;
            return Ok(cached);
        }
        let attempt = self
            .retry_db(cancel, || {
                self.store
                    .start_attempt(&job.lease, job.run, n, &model, &prompt, prompt::PROMPT_VERSION)
            })
            .await?;
        self.leave(&job.lease, in_worker, Activity::Model, cancel).await?;
        Ok(attempt)
    }

    /// The first request's system message, with the batch's
    /// `options.examples` past successes. Built once: the attempt stores
    /// its prompt, and repairs and resumed jobs read it back.
    async fn system_prompt(&self, job: &Claimed, cancel: &CancellationToken) -> Result<String, Stop> {
        if job.options.examples == 0 {
            return Ok(prompt::system_prompt(&job.spec));
        }
        let past = self
            .retry_db(cancel, || {
                self.store
                    .past_successes(job.lease.job_id, job.options.examples as usize, EXAMPLE_MAX_BYTES)
            })
            .await?;
        let mut examples = Vec::new();
        for p in past {
            match Spec::from_value(p.spec, "example") {
                Ok(spec) => examples.push((spec, p.files)),
                // Another job's spec that no longer reads (an older
                // format): an example less, not a reason to fail this job.
                Err(e) => warn!(job_id = %job.lease.job_id, error = %e, "skipped an example whose spec does not read"),
            }
        }
        Ok(prompt::system_prompt_with_examples(&job.spec, &examples))
    }

    /// Runs an attempt from its last persisted phase to a verdict.
    async fn run_attempt(
        &self,
        job: &Claimed,
        attempt: &AttemptRecord,
        model_marked: bool,
        cancel: &CancellationToken,
    ) -> Result<Verdict, Stop> {
        let lease = &job.lease;
        let response = match (attempt.phase, &attempt.response) {
            (Phase::Prompted, _) | (_, None) if job.rejudge_from.is_some() => {
                // Cannot happen (the replay is stored with its answer), but
                // a re-judge must never cost a model request.
                return Err(Stop::Fail {
                    code: ErrorCode::Internal,
                    message: "the re-judge attempt has no stored answer to judge".into(),
                });
            }
            (Phase::Prompted, _) | (_, None) => self.generate(job, attempt, model_marked, cancel).await?,
            (_, Some(stored)) => AttemptAnswer {
                content: stored.clone(),
                finish_reason: attempt.finish_reason.clone(),
            },
        };

        // Resuming from a stored phase reads the model's files and reports
        // back: the job's own work on what the model wrote, inside the worker.
        let (files, validation) = if attempt.phase >= Phase::Validated {
            let in_worker = self.enter(job, Activity::Preparing, cancel).await?;
            let files = self.retry_db(cancel, || self.store.artifacts(attempt.id)).await?;
            let validation: ValidationReport =
                stored_report(attempt, "validation report", attempt.validation.as_ref())?.ok_or_else(|| {
                    unreadable(
                        attempt,
                        "validation report",
                        "it is missing though the attempt is validated",
                    )
                })?;
            self.leave(lease, in_worker, Activity::Finishing, cancel).await?;
            (files, validation)
        } else {
            let in_worker = self.enter(job, Activity::Validating, cancel).await?;
            #[cfg(feature = "fault-injection")]
            crate::fault::while_validating(&response.content);
            let started = Instant::now();
            let (files, validation) = check_answer(&job.spec, &response.content, response.finish_reason.as_deref())
                .await
                .map_err(|e| Stop::Fail {
                    code: ErrorCode::Internal,
                    message: format!("could not validate the answer: {e}"),
                })?;
            let report = serde_json::to_value(&validation).expect("reports serialise");
            let ms = started.elapsed().as_millis() as u64;
            self.retry_db(cancel, || {
                self.store.record_validation(lease, attempt.id, &files, &report, ms)
            })
            .await?;
            drop(in_worker);
            (files, validation)
        };
        if !validation.ok {
            return Ok(Verdict::Failed {
                reason: validation_failure(&validation),
            });
        }

        let tests: TestReport = if attempt.phase >= Phase::Tested {
            let in_worker = self.enter(job, Activity::Preparing, cancel).await?;
            let tests = stored_report(attempt, "test report", attempt.tests.as_ref())?
                .ok_or_else(|| unreadable(attempt, "test report", "it is missing though the attempt is tested"))?;
            self.leave(lease, in_worker, Activity::Finishing, cancel).await?;
            tests
        } else {
            let started = Instant::now();
            let (report, in_worker) = self.test(job, attempt, &files, cancel).await?;
            let value = serde_json::to_value(&report).expect("reports serialise");
            let ms = started.elapsed().as_millis() as u64;
            self.retry_db(cancel, || self.store.record_tests(lease, attempt.id, &value, ms))
                .await?;
            drop(in_worker);
            report
        };
        Ok(if tests.all_passed() {
            Verdict::Passed
        } else {
            Verdict::Failed {
                reason: tests_failure(&tests),
            }
        })
    }

    /// Calls the model, retrying provider faults under their limit, and
    /// stores the answer the moment it arrives.
    async fn generate(
        &self,
        job: &Claimed,
        attempt: &AttemptRecord,
        model_marked: bool,
        cancel: &CancellationToken,
    ) -> Result<AttemptAnswer, Stop> {
        let lease = &job.lease;
        let request = self.chat_request(job, attempt, cancel).await?;
        let tokens = estimate_tokens(&request.messages, request.max_tokens);
        if !model_marked {
            self.mark(lease, Activity::Model, cancel).await?;
        }
        loop {
            let closed_in = self.guard.breaker_wait().await;
            if !closed_in.is_zero() {
                return Err(Stop::Defer(closed_in));
            }
            let within_budget = self
                .retry_db(cancel, || {
                    self.store
                        .reserve_budget(lease, attempt.id, job.batch_id, tokens as i64)
                })
                .await?;
            if !within_budget {
                return Err(Stop::Fail {
                    code: ErrorCode::BudgetExhausted,
                    message: format!(
                        "the batch's budget_tokens would be exceeded: this request may use {tokens} tokens \
                         (prompt estimate + max_tokens); raise the budget (PATCH /v1/batches/{}) and retry the batch",
                        job.batch_id
                    ),
                });
            }
            self.sleep(self.guard.pace(&request.model, tokens).await, cancel)
                .await?;
            // Waiting for a place happens before the request is sent, so
            // it never counts toward the request's timeout.
            let place = tokio::select! {
                () = cancel.cancelled() => return Err(Stop::Interrupted),
                p = self.guard.take_place() => p,
            };
            let started = Instant::now();
            let result = tokio::select! {
                () = cancel.cancelled() => None,
                r = self.llm.chat(&request) => Some(r),
            };
            self.guard.leave(place).await;
            let Some(result) = result else {
                return Err(Stop::Interrupted);
            };
            self.guard.record(&request.model, result.as_ref().map(|_| ())).await;
            match result {
                Ok(answer) => {
                    let ms = started.elapsed().as_millis() as u64;
                    return self
                        .store_answer(job, attempt, &request.model, answer, ms, cancel)
                        .await;
                }
                Err(e) => match e.disposition() {
                    Disposition::Fail(code) => {
                        return Err(Stop::Fail {
                            code,
                            message: e.to_string(),
                        });
                    }
                    Disposition::Retry(after) => {
                        let message = e.to_string();
                        let count = self
                            .retry_db(cancel, || {
                                self.store
                                    .record_fault(lease, attempt.id, FaultKind::Llm, e.class(), &message)
                            })
                            .await?;
                        warn!(job_id = %lease.job_id, attempt = attempt.n, faults = count, error = %message, "model provider fault");
                        if count > self.settings.llm_max_retries as i32 {
                            return Err(Stop::Fail {
                                code: ErrorCode::LlmUnavailable,
                                message: format!("the model provider failed {count} times in a row; last: {message}"),
                            });
                        }
                        let wait = backoff(
                            &self.settings.llm_backoff,
                            count as u32,
                            after,
                            self.settings.llm_max_wait,
                        );
                        self.sleep(wait, cancel).await?;
                    }
                },
            }
        }
    }

    /// The request of an attempt: its stored prompt, at a temperature
    /// warmed for repairs.
    async fn chat_request(
        &self,
        job: &Claimed,
        attempt: &AttemptRecord,
        cancel: &CancellationToken,
    ) -> Result<ChatRequest, Stop> {
        let messages: Vec<Message> = stored(attempt, "prompt", &attempt.prompt)?;
        // The batch's request parameters over the settings'. A repair is
        // warmer than the first request by a step per earlier attempt, and
        // a step more per earlier answer that repeated one before it: at
        // the first request's temperature a small model answers a repair
        // prompt with its previous answer about half the time
        // (benches/real_model.rs). A temperature left to the model, `off`,
        // is not touched.
        let repeats = if attempt.n > 1 {
            self.answers_of_run(job, attempt.n, cancel).await?.repeats
        } else {
            0
        };
        let earlier = u32::try_from(attempt.n - 1).unwrap_or(0);
        let options = &job.options;
        let temperature = options
            .temperature
            .map_or(self.settings.temperature, crate::spec::Temperature::to_request);
        Ok(ChatRequest {
            model: attempt.model.clone(),
            messages,
            max_tokens: options.max_tokens.unwrap_or(self.settings.max_tokens),
            temperature: temperature.map(|t| (t + WARMING * (earlier + repeats) as f32).min(MAX_WARMED_TEMPERATURE)),
            tokens_param: options.tokens_param,
            extra_body: options.extra_body.clone().unwrap_or_default(),
            json: true,
            attempt_id: attempt.id.to_string(),
        })
    }

    /// Stores the model's answer with its usage, cost and time, and warns
    /// when it repeats an earlier answer of the run.
    async fn store_answer(
        &self,
        job: &Claimed,
        attempt: &AttemptRecord,
        model: &str,
        answer: Answer,
        llm_ms: u64,
        cancel: &CancellationToken,
    ) -> Result<AttemptAnswer, Stop> {
        let lease = &job.lease;
        let cost = self.settings.prices.get(model).map(|p| {
            (answer.usage.prompt_tokens as f64 * p.prompt_per_mtok
                + answer.usage.completion_tokens as f64 * p.completion_per_mtok)
                / 1_000_000.0
        });
        let stored = StoredAnswer {
            response: &answer.content,
            finish_reason: answer.finish_reason.as_deref(),
            usage: answer.usage,
            cost_usd: cost,
            llm_ms,
        };
        self.retry_db(cancel, || self.store.record_generation(lease, attempt.id, &stored))
            .await?;
        if attempt.n > 1 {
            let earlier = self.answers_of_run(job, attempt.n, cancel).await?;
            if earlier.contains(&answer.content) {
                warn!(job_id = %lease.job_id, attempt = attempt.n, "the answer repeats an earlier answer of this run byte for byte");
            }
        }
        Ok(AttemptAnswer {
            content: answer.content,
            finish_reason: answer.finish_reason,
        })
    }

    /// The stored answers of the job's current run before attempt `n`.
    async fn answers_of_run(&self, job: &Claimed, n: i32, cancel: &CancellationToken) -> Result<Answers, Stop> {
        let attempts = self
            .retry_db(cancel, || self.store.attempts(job.lease.job_id, true))
            .await?;
        let mut answers = Answers::default();
        for a in attempts.into_iter().filter(|a| a.run == job.run && a.n < n) {
            let Some(response) = a.response else {
                continue;
            };
            let repeated = answers.seen.contains(&response);
            answers.repeats += u32::from(repeated);
            answers.last_repeated = repeated && a.n == n - 1;
            answers.seen.insert(response);
        }
        Ok(answers)
    }

    /// Runs the tests in the sandbox, retrying sandbox faults under their
    /// limit. Building the run's input and reading its report are the job's
    /// own work on what the model wrote, inside the worker; the run itself
    /// (and the wait for a sandbox slot) is a wait on another process. The
    /// report comes back with the worker still entered for
    /// [`Activity::Reporting`], until the caller stores it.
    async fn test(
        &self,
        job: &Claimed,
        attempt: &AttemptRecord,
        files: &[File],
        cancel: &CancellationToken,
    ) -> Result<(TestReport, InWorker<'_>), Stop> {
        let mut limits = self.settings.limits;
        if let Some(t) = job.options.timeout_s {
            limits.timeout = Duration::from_secs(u64::from(t));
        }
        loop {
            let in_worker = self.enter(job, Activity::Preparing, cancel).await?;
            let request = harness::request(&job.spec, files, &limits);
            self.leave(&job.lease, in_worker, Activity::Sandbox, cancel).await?;
            let run = tokio::select! {
                () = cancel.cancelled() => return Err(Stop::Interrupted),
                r = harness::run(self.sandbox.as_ref(), &request, &limits) => r,
            };
            let fault = match run {
                Ok(output) => {
                    let in_worker = self.enter(job, Activity::Reporting, cancel).await?;
                    match harness::judge(&job.spec, &request, &output, &limits) {
                        Ok(report) => return Ok((report, in_worker)),
                        Err(e) => {
                            // Back to waiting on the sandbox (the next run).
                            self.leave(&job.lease, in_worker, Activity::Sandbox, cancel).await?;
                            e
                        }
                    }
                }
                Err(e) => e,
            };
            let message = fault.to_string();
            let class = fault.class();
            let count = self
                .retry_db(cancel, || {
                    self.store
                        .record_fault(&job.lease, attempt.id, FaultKind::Sandbox, class, &message)
                })
                .await?;
            warn!(job_id = %job.lease.job_id, attempt = attempt.n, faults = count, error = %message, "sandbox fault");
            if count > self.settings.sandbox_max_retries as i32 {
                return Err(Stop::Fail {
                    code: ErrorCode::SandboxUnavailable,
                    message: format!("the sandbox failed {count} times in a row; last: {message}"),
                });
            }
            self.sleep(
                backoff(&self.settings.sandbox_backoff, count as u32, None, Duration::ZERO),
                cancel,
            )
            .await?;
        }
    }

    /// Records why the job stopped, as far as the lease allows.
    async fn stopped(
        &self,
        lease: &Lease,
        attempt: Option<&AttemptRecord>,
        stop: Stop,
        cancel: &CancellationToken,
    ) -> Result<JobEnd, PipelineError> {
        match stop {
            Stop::Interrupted => Ok(JobEnd::Interrupted),
            Stop::Defer(wait) => Ok(JobEnd::Deferred(wait)),
            Stop::LeaseLost => Ok(JobEnd::LeaseLost),
            Stop::Store(e) => Err(e.into()),
            Stop::Fail { code, message } => {
                warn!(job_id = %lease.job_id, %code, %message, "job stopped");
                if let Some(a) = attempt {
                    match self
                        .end_attempt(lease, a, AttemptState::Error, Some((code, &message)), cancel)
                        .await
                    {
                        Err(PipelineError::Store(StoreError::LeaseLost)) => return Ok(JobEnd::LeaseLost),
                        other => other?,
                    }
                }
                self.end_job(
                    lease,
                    JobOutcome::Failed {
                        code,
                        message: &message,
                    },
                    cancel,
                )
                .await
            }
        }
    }

    async fn end_attempt(
        &self,
        lease: &Lease,
        attempt: &AttemptRecord,
        state: AttemptState,
        error: Option<(ErrorCode, &str)>,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        Ok(self
            .retry_db(cancel, || self.store.finish_attempt(lease, attempt.id, state, error))
            .await?)
    }

    async fn end_job(
        &self,
        lease: &Lease,
        outcome: JobOutcome<'_>,
        cancel: &CancellationToken,
    ) -> Result<JobEnd, PipelineError> {
        match self.retry_db(cancel, || self.store.finish_job(lease, outcome)).await {
            Ok(()) => Ok(job_end(outcome)),
            Err(StoreError::LeaseLost) => Ok(JobEnd::LeaseLost),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends a passing attempt and its job (`outcome`) in one write.
    async fn end_passed(
        &self,
        lease: &Lease,
        attempt: &AttemptRecord,
        outcome: JobOutcome<'_>,
        cancel: &CancellationToken,
    ) -> Result<JobEnd, PipelineError> {
        let ended = self
            .retry_db(cancel, || {
                self.store
                    .finish_attempt_and_job(lease, attempt.id, AttemptState::Passed, outcome)
            })
            .await;
        match ended {
            Ok(()) => Ok(job_end(outcome)),
            Err(StoreError::LeaseLost) => Ok(JobEnd::LeaseLost),
            Err(e) => Err(e.into()),
        }
    }

    /// Retries a database call while the database is unreachable (restart,
    /// failover), so a blink does not fail jobs. Gives up after ~2 minutes
    /// or when the job is interrupted.
    async fn retry_db<T, F, Fut>(&self, cancel: &CancellationToken, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = Instant::now() + Duration::from_mins(2);
        crate::store::retry_while_unavailable(
            Duration::from_millis(100),
            Duration::from_secs(5),
            || Instant::now() < deadline && !cancel.is_cancelled(),
            call,
        )
        .await
    }

    /// Starts a step of the job's own work inside the worker process (one
    /// that could kill it), held until the step's result is stored. An
    /// isolated job (a death was blamed on it) runs such steps alone: no other
    /// job of this worker runs one meanwhile, so if the process dies then, the
    /// death is the isolated job's, and the jobs that were only waiting are
    /// taken over unblamed.
    async fn enter(&self, job: &Claimed, activity: Activity, cancel: &CancellationToken) -> Result<InWorker<'_>, Stop> {
        let held = if job.isolate {
            InWorker {
                _shared: None,
                _alone: Some(self.in_worker.write().await),
            }
        } else {
            InWorker {
                _shared: Some(self.in_worker.read().await),
                _alone: None,
            }
        };
        self.mark(&job.lease, activity, cancel).await?;
        Ok(held)
    }

    /// Ends an in-worker step whose result is not stored by a write that
    /// also moves the activity on (as `record_validation` and `record_tests`
    /// do): records the next activity first, then lets other jobs in, so an
    /// isolated job's death can never find another job still marked as
    /// working inside the worker.
    async fn leave(
        &self,
        lease: &Lease,
        held: InWorker<'_>,
        next: Activity,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let marked = self.mark(lease, next, cancel).await;
        drop(held);
        marked
    }

    /// Records what the job is doing now: the evidence a takeover is judged
    /// by if the worker dies meanwhile.
    async fn mark(&self, lease: &Lease, activity: Activity, cancel: &CancellationToken) -> Result<(), Stop> {
        Ok(self
            .retry_db(cancel, || self.store.set_activity(lease, activity))
            .await?)
    }

    async fn sleep(&self, duration: Duration, cancel: &CancellationToken) -> Result<(), Stop> {
        tokio::select! {
            () = cancel.cancelled() => Err(Stop::Interrupted),
            () = tokio::time::sleep(duration) => Ok(()),
        }
    }
}

/// How a run ends once `outcome` is stored.
fn job_end(outcome: JobOutcome<'_>) -> JobEnd {
    match outcome {
        JobOutcome::Succeeded { .. } => JobEnd::Succeeded,
        JobOutcome::AwaitingReview { .. } => JobEnd::AwaitingReview,
        JobOutcome::Failed { code, .. } => JobEnd::Failed { code },
    }
}

/// Said first in a repair prompt after an answer that repeated an earlier
/// one of the run byte for byte.
pub const REPEAT_NOTE: &str = "Your previous answer was byte for byte the same as an earlier answer, which \
     already failed. Do not send it again: write new code that fixes the failures below.";

/// How much warmer a request is per earlier attempt of its run and per
/// repeated answer before it, up to [`MAX_WARMED_TEMPERATURE`].
const WARMING: f32 = 0.5;
const MAX_WARMED_TEMPERATURE: f32 = 1.2;

/// The answers of a run before some attempt.
#[derive(Default)]
struct Answers {
    seen: std::collections::HashSet<String>,
    /// Answers that repeated an earlier one byte for byte.
    repeats: u32,
    /// Whether the latest of them was such a repeat.
    last_repeated: bool,
}

impl Answers {
    fn contains(&self, answer: &str) -> bool {
        self.seen.contains(answer)
    }
}

/// The stored or fresh answer of an attempt.
struct AttemptAnswer {
    content: String,
    finish_reason: Option<String>,
}

/// Largest example answer (`options.examples`), in bytes of files: a
/// service's answer can be tens of kilobytes, and every request of the job
/// pays for its examples again.
const EXAMPLE_MAX_BYTES: usize = 16 * 1024;

/// Stack of the thread that parses and validates one answer: enough for the
/// deepest syntax tree a file within the size limit can produce (measured:
/// half a million nested brackets, unoptimised, need under 128 MiB), so
/// dropping that tree cannot overflow. Only touched pages cost memory.
const CHECK_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Parses and validates an answer, as the pipeline does, on a thread of its
/// own with a [`CHECK_STACK_BYTES`] stack: the model controls how deeply its
/// code nests, and a worker's async threads have small stacks. A truncated,
/// unparseable or too deeply nested answer is the model's failure, reported
/// as a diagnostic like any other. Errors only if no thread can be started.
pub async fn check_answer(
    spec: &Spec,
    content: &str,
    finish_reason: Option<&str>,
) -> std::io::Result<(Vec<File>, ValidationReport)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (spec, content, finish_reason) = (spec.clone(), content.to_owned(), finish_reason.map(str::to_owned));
    std::thread::Builder::new()
        .name("kiln-validate".into())
        .stack_size(CHECK_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(check_answer_here(&spec, &content, finish_reason.as_deref()));
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the validation thread panicked"))
}

/// [`check_answer`] on the calling thread.
fn check_answer_here(spec: &Spec, content: &str, finish_reason: Option<&str>) -> (Vec<File>, ValidationReport) {
    let truncated = matches!(finish_reason, Some("length" | "max_tokens"));
    match parse_response(content, spec.into()) {
        Ok(files) => {
            let mut report = validate::validate(spec, &files);
            if truncated {
                report.diagnostics.insert(
                    0,
                    Diagnostic::error(
                        "",
                        0,
                        0,
                        "response-truncated",
                        "the answer was cut off at the token limit; answer more concisely",
                    ),
                );
                report.ok = false;
            }
            (files, report)
        }
        Err(e) => {
            let (rule, message) = if truncated {
                (
                    "response-truncated",
                    format!("the answer was cut off at the token limit and cannot be parsed: {e}"),
                )
            } else {
                ("response-format", e.0)
            };
            (
                Vec::new(),
                ValidationReport::from_diagnostics(vec![Diagnostic::error("", 0, 0, rule, message)]),
            )
        }
    }
}

/// The job's error once its last attempt failed: a code naming what failed
/// and a message with the last attempt's first problem.
/// How a job with a passing attempt ends: succeeded, or awaiting a
/// person's decision when its batch asks for review (`options.review`,
/// which cannot change after the batch is made). A cached result, or a
/// re-judged one, is reviewed like a fresh one.
fn passed(job: &Claimed, attempt_id: uuid::Uuid) -> JobOutcome<'static> {
    if job.options.review {
        JobOutcome::AwaitingReview { attempt_id }
    } else {
        JobOutcome::Succeeded { attempt_id }
    }
}

fn exhausted(last: &AttemptRecord, max: i32) -> Result<(ErrorCode, String), Stop> {
    Ok(failure(last, &format!("all {max} attempts failed; the last one: "))?
        .unwrap_or_else(|| (ErrorCode::AttemptsExhausted, format!("all {max} attempts failed"))))
}

/// What a failed attempt's reports say failed: a code and `prefix` followed
/// by the first problem. `None` when neither report says.
fn failure(last: &AttemptRecord, prefix: &str) -> Result<Option<(ErrorCode, String)>, Stop> {
    let validation: Option<ValidationReport> = stored_report(last, "validation report", last.validation.as_ref())?;
    let tests: Option<TestReport> = stored_report(last, "test report", last.tests.as_ref())?;
    if let Some(v) = validation.filter(|v| !v.ok) {
        let code = if v.errors().any(|d| d.rule.starts_with("response-")) {
            ErrorCode::InvalidResponse
        } else {
            ErrorCode::ValidationFailed
        };
        return Ok(Some((code, format!("{prefix}{}", validation_failure(&v)))));
    }
    let Some(t) = tests else { return Ok(None) };
    Ok(Some((ErrorCode::TestsFailed, format!("{prefix}{}", tests_failure(&t)))))
}

/// `2 static check errors, first: solution.py:3:1 [python-syntax] …`.
fn validation_failure(v: &ValidationReport) -> String {
    let first = v
        .errors()
        .next()
        .map(|d| format!("{} [{}] {}", d.location(), d.rule, d.message))
        .unwrap_or_default();
    let errors = v.errors().count();
    let plural = if errors == 1 { "" } else { "s" };
    format!("{errors} static check error{plural}, first: {first}")
}

/// `1 of 3 tests failed, first: case_1: clamp(50, 0, 10): expected 10, got 50`.
fn tests_failure(t: &TestReport) -> String {
    let first = t
        .problem
        .clone()
        .or_else(|| {
            t.cases
                .iter()
                .find(|c| c.outcome != crate::report::Outcome::Passed)
                .map(|c| format!("{}: {}", c.name, c.message))
        })
        .unwrap_or_default();
    format!(
        "{} of {} tests failed, first: {}",
        t.failed,
        t.total,
        crate::text::clip(&first, 500)
    )
}

/// A value an attempt stored, read back as the type Kiln wrote. One that
/// does not read is a defect (a changed format, a hand edit), never taken
/// for an empty prompt or a missing report: the job fails naming it.
fn stored<T: serde::de::DeserializeOwned>(
    attempt: &AttemptRecord,
    what: &str,
    value: &serde_json::Value,
) -> Result<T, Stop> {
    T::deserialize(value).map_err(|e| unreadable(attempt, what, &e.to_string()))
}

/// [`stored`] for a report an attempt may not have reached yet.
fn stored_report<T: serde::de::DeserializeOwned>(
    attempt: &AttemptRecord,
    what: &str,
    value: Option<&serde_json::Value>,
) -> Result<Option<T>, Stop> {
    value.map(|v| stored(attempt, what, v)).transpose()
}

fn unreadable(attempt: &AttemptRecord, what: &str, why: &str) -> Stop {
    Stop::Fail {
        code: ErrorCode::Internal,
        message: format!(
            "the stored {what} of run {} attempt {} cannot be read ({why}); Kiln wrote it, so this is a defect to report",
            attempt.run, attempt.n
        ),
    }
}

/// Exponential backoff with jitter, at least what the other party asked
/// for (`at_least`, honoured up to `max_wait`).
fn backoff(b: &Backoff, faults: u32, at_least: Option<Duration>, max_wait: Duration) -> Duration {
    let at_least = at_least.map(|d| d.min(max_wait)).unwrap_or_default();
    let exp = b.base.saturating_mul(1 << faults.saturating_sub(1).min(16));
    let cap = exp.min(b.max);
    let jittered = cap.mul_f64(rand::rng().random_range(0.5..=1.0));
    jittered.max(at_least).min(b.max.max(at_least))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FunctionSpec, TestCase};

    fn function_spec() -> Spec {
        Spec::Function(FunctionSpec {
            task_description: "add".into(),
            entry_point: Some("add".into()),
            prompt: None,
            input_types: None,
            output_type: None,
            constraints: vec![],
            test_cases: vec![TestCase {
                input: serde_json::json!([1, 2]),
                expected: serde_json::json!(3),
            }],
            test_code: None,
        })
    }

    #[test]
    fn a_truncated_answer_is_a_diagnostic_not_a_crash() {
        let content = r#"{"files": [{"path": "solution.py", "content": "def add(a, b):\n    return a +"#;
        let (files, report) = check_answer_here(&function_spec(), content, Some("length"));
        assert!(files.is_empty());
        assert!(!report.ok);
        assert_eq!(report.diagnostics[0].rule, "response-truncated");
    }

    #[test]
    fn an_unparseable_answer_fails_validation_with_what_was_expected() {
        let (_, report) = check_answer_here(&function_spec(), "Sorry, I can't.", Some("stop"));
        assert_eq!(report.diagnostics[0].rule, "response-format");
        assert!(report.diagnostics[0].message.contains("expected a JSON object"));
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_the_providers_wait() {
        let s = PipelineSettings {
            default_model: None,
            max_tokens: 1,
            temperature: None,
            llm_max_retries: 1,
            sandbox_max_retries: 1,
            llm_backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            sandbox_backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            llm_max_wait: Duration::from_secs(60),
            crash_limit: 3,
            prices: std::collections::BTreeMap::new(),
            limits: RunLimits {
                timeout: Duration::from_secs(1),
                memory_mb: 1,
                pids: 1,
                tmpfs_mb: 1,
                output_bytes: 1,
            },
        };
        let (llm, wait) = (&s.llm_backoff, s.llm_max_wait);
        assert!(backoff(llm, 1, None, wait) <= Duration::from_millis(100));
        assert!(backoff(llm, 20, None, wait) <= Duration::from_secs(2));
        assert!(backoff(llm, 1, Some(Duration::from_secs(5)), wait) >= Duration::from_secs(5));
        assert_eq!(backoff(llm, 1, Some(Duration::MAX), wait), Duration::from_secs(60));
        // Sandbox faults wait on their own settings, whatever the model's.
        assert!(backoff(&s.sandbox_backoff, 1, None, Duration::ZERO) <= Duration::from_millis(10));
        assert!(backoff(&s.sandbox_backoff, 1, None, Duration::ZERO) >= Duration::from_millis(5));
        assert!(backoff(&s.sandbox_backoff, 20, None, Duration::ZERO) <= Duration::from_millis(50));
    }
}
