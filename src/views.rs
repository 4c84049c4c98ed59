//! The API's wire types: what the dispatcher answers and the client reads,
//! each `Serialize` (the handlers' bodies), `Deserialize` (the client's and
//! the CLI's answers) and `ToSchema` (`/openapi.json` names its components
//! after them).
//!
//! The store fills most of them straight from its queries, and the HTTP
//! layer serialises them, so they live beside both rather than in either:
//! the store cannot import from `http` (which uses the store) without an
//! import cycle (tests/module_graph.rs). This module depends only on the
//! shared vocabulary ([`crate::domain`]) and, for the schema of fields kept
//! as JSON, on the types that describe them ([`crate::spec`],
//! [`crate::report`]).
//!
//! Deserialising accepts exactly what serialising writes: a field skipped
//! when absent reads back as absent (`#[serde(default)]`). Fields the store
//! keeps as JSON (a batch's options, a job's spec, an attempt's reports) stay
//! [`Value`]: they are passed through as stored, including rows written by
//! earlier versions, never re-shaped on the way out.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{AttemptState, ErrorCode, Phase, ReviewDecision, TokenUsage};
use crate::spec::Options;

/// The API token that made a batch or a review decision, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Creator {
    pub token_id: Uuid,
    pub name: Option<String>,
}

/// The result of creating (or replaying) a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedBatch {
    pub batch_id: Uuid,
    /// In the order of the submitted specs.
    pub job_ids: Vec<Uuid>,
    /// True when the idempotency key matched an earlier identical request
    /// (the dispatcher's own business: not sent, so `false` when read).
    #[serde(skip)]
    pub replayed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub queued: i64,
    pub running: i64,
    /// Passed, waiting for a person's decision (`options.review`).
    pub awaiting_review: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl Counts {
    pub fn total(&self) -> i64 {
        self.queued + self.running + self.awaiting_review + self.succeeded + self.failed + self.cancelled
    }

    /// No job is queued, running or awaiting review: every job has ended.
    pub fn done(&self) -> bool {
        self.queued == 0 && self.running == 0 && self.awaiting_review == 0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Sum of the priced attempts' costs; absent when no attempt's model
    /// has a price in `KILN_LLM_PRICES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// `GET /v1/batches/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchView {
    pub batch_id: Uuid,
    pub name: Option<String>,
    /// `queued` (nothing started), `running`, `awaiting_review` (nothing
    /// queued or running, some jobs wait for a person's decision), or once
    /// every job is terminal: `failed` if any failed, else `cancelled` if
    /// any was cancelled, else `succeeded`.
    #[schema(pattern = "^(queued|running|awaiting_review|succeeded|failed|cancelled)$")]
    pub state: String,
    pub total: i64,
    pub counts: Counts,
    pub usage: Usage,
    /// The options the batch was submitted with, defaults filled in.
    #[schema(value_type = crate::spec::Options)]
    pub options: Value,
    /// The token that created the batch; `null` when it was created with
    /// `KILN_AUTH=off`.
    pub created_by: Option<Creator>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One row of `GET /v1/batches/{id}/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub job_id: Uuid,
    pub position: i32,
    pub kind: String,
    pub label: String,
    pub state: String,
    pub run: i32,
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobErrorView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One takeover, as `GET /v1/jobs/{id}` and the attempts show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TakeoverView {
    pub run: i32,
    /// The attempt that was running (absent before the first one).
    pub attempt: Option<i32>,
    pub lost_by: String,
    pub taken_by: Option<String>,
    /// `worker_died`, `lease_expired` or `panic`.
    pub cause: String,
    pub activity: Option<String>,
    pub blamed: bool,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobErrorView {
    pub code: String,
    pub message: String,
}

impl JobErrorView {
    /// A job's or attempt's `error_code` and `error_message` columns: an
    /// error when a code is set.
    pub(crate) fn from_columns(code: Option<String>, message: Option<String>) -> Option<JobErrorView> {
        code.map(|code| JobErrorView {
            code,
            message: message.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileView {
    pub path: String,
    pub size: i32,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultView {
    /// Number of the passing attempt within its run.
    pub attempt: i32,
    pub run: i32,
    pub files: Vec<FileView>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub kind: String,
    pub state: String,
    pub run: i32,
    /// Attempts started in the current run.
    pub attempts: i64,
    pub max_attempts: i32,
    /// Takeovers from workers that died under the job, in the current run.
    pub crashes: i32,
    /// Those of them counted against the job (`crash_loop` at the limit).
    pub blamed_crashes: i32,
    /// The job runs alone in its worker since a death was blamed on it.
    pub isolated: bool,
    /// What the lease holder is doing now (while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// Every takeover of every run, oldest first, and why it was or was not blamed.
    pub takeovers: Vec<TakeoverView>,
    /// Every review decision of every run, oldest first (batches with
    /// `options.review`).
    pub reviews: Vec<ReviewView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobErrorView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultView>,
    #[schema(value_type = crate::spec::Spec)]
    pub spec: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One entry of `GET /v1/jobs/{id}/attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub run: i32,
    pub n: i32,
    pub state: String,
    pub phase: String,
    pub model: String,
    pub usage: TokenUsage,
    /// Static validation's findings (absent before the answer was validated).
    #[schema(value_type = Option<crate::report::ValidationReport>)]
    pub validation: Option<Value>,
    /// The sandbox's verdict (absent before the code was tested).
    #[schema(value_type = Option<crate::report::TestReport>)]
    pub tests: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobErrorView>,
    pub finish_reason: Option<String>,
    /// Provider faults retried during this attempt (they did not spend it).
    pub llm_faults: i32,
    /// Sandbox faults retried during this attempt.
    pub sandbox_faults: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fault: Option<String>,
    /// Every fault met: `[{"kind", "class", "message", "at"}]`.
    pub faults: Value,
    /// Price of the tokens (when the model is in `KILN_LLM_PRICES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Set when this attempt reused a passing result (`options.cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<Uuid>,
    /// Set when this attempt re-judged a stored answer (`POST …/rejudge`):
    /// the attempt of this job whose answer it replayed, without a model request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejudged_from: Option<AttemptRef>,
    pub timings_ms: Value,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The messages sent to the model (with `?full=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Value>,
    /// The model's raw answer (with `?full=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Takeovers that interrupted this attempt, and why each was or was not
    /// blamed on the job.
    pub takeovers: Vec<TakeoverView>,
}

/// An attempt of the same job, by run and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRef {
    pub run: i32,
    pub n: i32,
}

/// One decision on a job awaiting review, as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewView {
    /// The run whose passing result was judged.
    pub run: i32,
    /// Number of that passing attempt within its run.
    pub attempt: i32,
    #[schema(value_type = String, pattern = "^(approve|reject)$")]
    pub decision: ReviewDecision,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
    /// The token that decided; `null` with `KILN_AUTH=off`.
    pub by: Option<Creator>,
}

/// A page of `GET /v1/batches`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchPage {
    /// Newest first; each as `GET /v1/batches/{id}` shows it.
    pub batches: Vec<BatchView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A live worker process (`GET /v1/workers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerView {
    /// What the worker writes as the lease owner of its jobs.
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    /// Jobs it runs at once (`KILN_WORKER_CONCURRENCY`); null for a worker
    /// that did not record it.
    pub concurrency: Option<i32>,
    /// Slots taken: the running jobs whose lease it holds.
    pub slots_busy: i64,
    /// Set while its liveness lock is missing: it is declared dead, and its
    /// jobs handed to others, if the lock does not come back within about a
    /// second.
    pub lock_missing_since: Option<DateTime<Utc>>,
    /// The jobs in its hands, oldest claim first.
    pub jobs: Vec<WorkerJob>,
}

/// A job a worker holds the lease of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerJob {
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub run: i32,
    /// What the worker is doing for it (`model`, `sandbox`, …).
    pub activity: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// `GET /v1/workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerList {
    /// Registered and not declared dead, oldest first.
    pub workers: Vec<WorkerView>,
}

/// `GET /v1/batches/{id}/report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchReport {
    pub batch_id: Uuid,
    /// Jobs in the batch.
    pub total: i64,
    /// Jobs by state, as in the batch's status.
    pub counts: Counts,
    /// One entry per attempt number some job's current run reached, in
    /// order: attempt 1 first.
    pub attempts: Vec<AttemptPassRate>,
    /// Tokens and cost of every attempt of every run (what was paid).
    pub usage: Usage,
    /// `usage` divided by the succeeded jobs; absent while none succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_success: Option<PerSuccess>,
    /// Time spent per phase, in pipeline order, over the current runs'
    /// attempts (attempts reused from the cache, which took no time, are
    /// left out); a phase nothing measured yet is absent.
    pub phases: Vec<PhaseTimes>,
    /// Failed jobs by their error code, most frequent first.
    pub failures: Vec<CodeCount>,
    /// Attempts of the current runs that ended `failed` or `error`, by
    /// state, the last phase they stored and error code, most frequent
    /// first.
    pub attempt_failures: Vec<AttemptFailures>,
    /// Error-severity diagnostics of the current runs' attempts by rule,
    /// most frequent first, at most 20 rules.
    pub rules: Vec<RuleCount>,
}

/// How the jobs that reached attempt `n` of their current run fared at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptPassRate {
    /// The attempt number, from 1.
    pub n: i32,
    /// Jobs whose current run reached attempt `n`.
    pub jobs: i64,
    /// Of those, jobs whose attempt `n` passed.
    pub passed: i64,
    /// Whose attempt `n` failed: the model's answer was wrong.
    pub failed: i64,
    /// Whose attempt `n` was ended by something other than the model
    /// (provider, sandbox, budget, cancellation; see `attempt_failures`).
    pub errored: i64,
    /// Whose attempt `n` has not ended yet.
    pub running: i64,
    /// `passed / jobs`: how often attempt `n` passed when it was made.
    pub pass_rate: f64,
    /// Jobs that passed at attempt `n` or earlier.
    pub passed_by_now: i64,
    /// `passed_by_now` over the jobs that made at least one attempt: the
    /// batch's pass rate with an attempt budget of `n` (pass@n).
    pub cumulative_pass_rate: f64,
}

/// What one succeeded job cost on average, failed jobs' spending included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PerSuccess {
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    /// Absent when no attempt's model has a price in `KILN_LLM_PRICES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// Percentiles of one phase's duration, in milliseconds (continuous
/// percentiles: they may fall between two measured values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseTimes {
    /// `queue`: from the batch's submission to the start of the job's
    /// first attempt, for jobs still in their first run (a retry's wait is
    /// not recorded); or a key of the attempts' `timings_ms`: `llm` (the
    /// model's answer), `validate`, `sandbox`, `total` (the whole attempt).
    pub phase: String,
    /// Measurements the percentiles are over.
    pub count: i64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// How many jobs or attempts ended with an error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CodeCount {
    #[schema(value_type = String)]
    pub code: ErrorCode,
    pub count: i64,
}

/// How many attempts ended the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptFailures {
    /// `failed` (the model's answer was wrong) or `error` (something else
    /// ended the attempt: see `code`).
    #[schema(value_type = String)]
    pub state: AttemptState,
    /// The last step the attempt stored: a `failed` attempt at `validated`
    /// failed its static checks (an answer that could not be read as files
    /// too: see the `response-*` rules), at `tested` its tests.
    #[schema(value_type = String)]
    pub phase: Phase,
    /// What ended an `error` attempt; absent for `failed` ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub code: Option<ErrorCode>,
    pub count: i64,
}

/// How often one static-check rule failed an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleCount {
    /// The diagnostics' `rule` (`python-syntax`, `missing-file`, …).
    pub rule: String,
    /// Error-severity diagnostics with this rule.
    pub diagnostics: i64,
    /// Attempts with at least one of them.
    pub attempts: i64,
    /// Jobs with at least one such attempt.
    pub jobs: i64,
}

/// `202` of a retry: jobs that start a new run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Requeued {
    pub requeued: u64,
}

/// `202` of a re-judge: jobs that start a re-judge run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejudged {
    pub rejudged: u64,
}

/// `202` of a cancel: jobs cancelled (running ones stop within a heartbeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cancelled {
    pub cancelled: u64,
}

/// The answer of `PATCH /v1/batches/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PatchedBatch {
    pub batch_id: Uuid,
    pub options: Options,
}

/// Every error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `conflict`, `body_too_large`, `body_timeout`,
    /// `unsupported_media_type`, `unavailable`, `internal`.
    pub code: String,
    /// For people; a 4xx's message starts with the offending field.
    pub message: String,
    /// The offending field of a 400 (`specs[3].endpoints[0].method`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
