//! `/v1/batches…`: create a batch, read its status, jobs and report, retry,
//! rejudge, cancel.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{ApiError, AppState, parse_id};
use crate::auth::Caller;
use crate::domain::JobState;
use crate::spec::{
    BatchRequest, Limits, Options, Spec, canonical_numbers, check_budget_tokens, find_nul, number_message,
};
use crate::store::batches::{BudgetChange, NewBatch};
use crate::views::{
    BatchReport, BatchView, Cancelled, CreatedBatch, ErrorBody, JobPage, PatchedBatch, Rejudged, Requeued,
};

/// The body of `POST /v1/batches` (read by `spec::BatchRequest`, which
/// names the field at fault; this type only describes it).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchRequestBody {
    pub name: Option<String>,
    /// At most `KILN_MAX_SPECS`, each at most `KILN_MAX_SPEC_KB`.
    pub specs: Vec<Spec>,
    pub options: Option<Options>,
}

/// Reads a request body up to `limit` bytes within `timeout`: a client that
/// promises a body and never sends it (slowloris) gets a 408 and its
/// connection closed.
pub(crate) async fn read_body(body: Body, limit: usize, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout(format!("body: not received within {} s", timeout.as_secs_f64())))?;
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(<dyn std::error::Error>::is::<http_body_util::LengthLimitError>)
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::TooLarge(format!("body: larger than the limit of {limit} bytes"))
        } else {
            ApiError::invalid("body", format!("could not read the body: {e}"))
        }
    })
}

/// Parses JSON, naming the position of a syntax error, or the field of a
/// string holding U+0000 (which the database cannot store as text).
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("invalid JSON at line {} column {}: {e}", e.line(), e.column()),
        )
    })?;
    if let Some(field) = find_nul(&value) {
        return Err(ApiError::invalid(field, "contains the NUL character (U+0000)"));
    }
    canonical_numbers(&mut value).map_err(|e| ApiError::invalid(e.field, e.message))?;
    Ok(value)
}

/// Parses a small JSON body, which must be an object, as `T`, naming the
/// field at fault. (serde would also read a struct from an array of its
/// fields in order: `["approve"]` is no review.)
pub(crate) fn typed_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = parse_json(bytes)?;
    if !value.is_object() {
        return Err(ApiError::invalid("body", "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(field, number_message(e.into_inner().to_string()))
    })
}

#[utoipa::path(post, path = "/v1/batches", tag = "batches",
    request_body = BatchRequestBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key with the same body returns the same batch")),
    responses(
        (status = 201, description = "created (or replayed: header `Idempotent-Replayed: true`)", body = CreatedBatch),
        (status = 400, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/batches` → `201 {"batch_id", "job_ids"}`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| ApiError::invalid("Idempotency-Key", "must be 1 to 200 visible ASCII characters"))?;
            Some(key.to_owned())
        }
    };
    let bytes = read_body(body, state.limits.max_body_bytes, state.limits.body_timeout).await?;
    let request = BatchRequest::from_value(
        parse_json(&bytes)?,
        Limits {
            max_specs: state.limits.max_specs,
            max_spec_bytes: state.limits.max_spec_bytes,
        },
    )?;
    let request_sha256 = hex::encode(Sha256::digest(&bytes));
    let created = state
        .store
        .create_batch(NewBatch {
            name: request.name.as_deref(),
            options: &request.options,
            specs: &request.specs,
            idempotency_key: key.as_deref(),
            request_sha256: &request_sha256,
            created_by: caller.token_id,
        })
        .await?;
    state.feeder_wake.notify_one();
    let mut response = (StatusCode::CREATED, Json(&created)).into_response();
    if created.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id")),
    responses((status = 200, body = BatchView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/batches/{id}`.
pub async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<BatchView>, ApiError> {
    let id = parse_id(&id, "batch_id")?;
    Ok(Json(state.store.batch(id).await?))
}

#[utoipa::path(get, path = "/v1/batches/{id}/report", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id")),
    responses((status = 200, body = BatchReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/batches/{id}/report`: pass rate per attempt, tokens and cost
/// per success, phase time percentiles, failures by code and rule.
pub async fn report(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<BatchReport>, ApiError> {
    let id = parse_id(&id, "batch_id")?;
    Ok(Json(state.store.batch_report(id).await?))
}

/// Every value arrives as text so that a bad one is a 400 naming it.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<String>, pattern = "^(queued|running|awaiting_review|succeeded|failed|cancelled)$")]
    state: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Largest page of `GET /v1/batches/{id}/jobs`.
pub const MAX_PAGE: i64 = 1000;

#[utoipa::path(get, path = "/v1/batches/{id}/jobs", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id"), JobsQuery),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/batches/{id}/jobs?state=&limit=&cursor=`.
pub async fn jobs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<JobsQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let id = parse_id(&id, "batch_id")?;
    if let Some(s) = &q.state
        && s.parse::<JobState>().is_err()
    {
        let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::invalid(
            "state",
            format!("{s:?} is not one of {}", names.join(", ")),
        ));
    }
    let limit = match &q.limit {
        None => 100,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::invalid("limit", format!("{raw:?} is not a number from 1 to {MAX_PAGE}")))?,
    };
    let cursor = match &q.cursor {
        None => None,
        Some(raw) => Some(
            raw.parse::<i32>()
                .map_err(|_| ApiError::invalid("cursor", format!("{raw:?} is not a cursor from this API")))?,
        ),
    };
    Ok(Json(
        state.store.batch_jobs(id, q.state.as_deref(), limit, cursor).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Job states to retry: `failed` (the default), `cancelled`, `succeeded`.
    #[serde(default = "default_retry_states")]
    states: Vec<String>,
}

fn default_retry_states() -> Vec<String> {
    Rerun::Retry
        .default_states()
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejudgeBody {
    /// Job states to re-judge: `succeeded` and `failed` (the default), `cancelled`.
    #[serde(default = "default_rejudge_states")]
    states: Vec<String>,
}

fn default_rejudge_states() -> Vec<String> {
    Rerun::Rejudge
        .default_states()
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect()
}

/// What starts new runs of a batch's finished jobs: a retry (a fresh
/// attempt budget) or a re-judge (a stored answer judged again).
#[derive(Debug, Clone, Copy)]
enum Rerun {
    Retry,
    Rejudge,
}

impl Rerun {
    /// The states an empty body (or one without `states`) asks for.
    fn default_states(self) -> &'static [JobState] {
        match self {
            Rerun::Retry => &[JobState::Failed],
            Rerun::Rejudge => &[JobState::Succeeded, JobState::Failed],
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Rerun::Retry => "retried",
            Rerun::Rejudge => "re-judged",
        }
    }
}

/// Reads a batch retry's or re-judge's body (none: the default states),
/// checks that it names finished states, starts the new runs and wakes the
/// feeder for the jobs they queued. Returns how many jobs were queued.
async fn rerun_batch(state: &AppState, id: &str, body: Body, rerun: Rerun) -> Result<u64, ApiError> {
    let id = parse_id(id, "batch_id")?;
    let bytes = read_body(body, 64 * 1024, state.limits.body_timeout).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return start_runs(state, id, rerun, rerun.default_states()).await;
    }
    let names = match rerun {
        Rerun::Retry => typed_body::<RetryBody>(&bytes)?.states,
        Rerun::Rejudge => typed_body::<RejudgeBody>(&bytes)?.states,
    };
    start_runs(state, id, rerun, &finished_states(&names, rerun.verb())?).await
}

async fn start_runs(state: &AppState, id: Uuid, rerun: Rerun, states: &[JobState]) -> Result<u64, ApiError> {
    // The store binds the states as text.
    let states: Vec<String> = states.iter().map(|s| s.as_str().to_owned()).collect();
    let queued = match rerun {
        Rerun::Retry => state.store.retry_batch(id, &states).await?,
        Rerun::Rejudge => state.store.rejudge_batch(id, &states).await?,
    };
    state.feeder_wake.notify_one();
    Ok(queued)
}

/// The states a retry or re-judge names, each a finished one: a queued,
/// running or awaiting-review job has not ended its run.
fn finished_states(names: &[String], verb: &str) -> Result<Vec<JobState>, ApiError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| match name.parse::<JobState>() {
            Ok(state @ (JobState::Failed | JobState::Cancelled | JobState::Succeeded)) => Ok(state),
            Ok(JobState::Queued | JobState::Running | JobState::AwaitingReview) | Err(_) => Err(ApiError::invalid(
                format!("states[{i}]"),
                format!("{name:?} cannot be {verb}; use failed, cancelled or succeeded"),
            )),
        })
        .collect()
}

#[utoipa::path(post, path = "/v1/batches/{id}/retry", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id")),
    request_body(content = Option<RetryBody>, description = "default: `{\"states\": [\"failed\"]}`"),
    responses((status = 202, body = Requeued), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/batches/{id}/retry` (`{"states": ["failed"]}` by default) →
/// `202 {"requeued": n}`: each matching job starts a new run.
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let requeued = rerun_batch(&state, &id, body, Rerun::Retry).await?;
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued })))
}

#[utoipa::path(post, path = "/v1/batches/{id}/rejudge", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id")),
    request_body(content = Option<RejudgeBody>, description = "default: `{\"states\": [\"succeeded\", \"failed\"]}`"),
    responses((status = 202, body = Rejudged), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/batches/{id}/rejudge` (`{"states": ["succeeded", "failed"]}` by
/// default) → `202 {"rejudged": n}`: each matching job with a stored answer
/// starts a re-judge run (no model request); jobs without one are skipped.
pub async fn rejudge(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let rejudged = rerun_batch(&state, &id, body, Rerun::Rejudge).await?;
    Ok((StatusCode::ACCEPTED, Json(Rejudged { rejudged })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    options: PatchOptions,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchOptions {
    /// A number sets the budget, `null` removes it, absent keeps it.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1)]
    budget_tokens: Option<Value>,
    /// −1000…1000, higher runs first.
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    priority: Option<i32>,
}

#[utoipa::path(patch, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id")),
    request_body = PatchBody,
    responses((status = 200, body = PatchedBatch), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `PATCH /v1/batches/{id}` with `{"options": {"budget_tokens"?, "priority"?}}`
/// → the batch's new options. Raising `budget_tokens` and then retrying the
/// batch resumes the jobs that stopped with `budget_exhausted`.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "batch_id")?;
    let bytes = read_body(body, 64 * 1024, state.limits.body_timeout).await?;
    let patch: PatchBody = typed_body(&bytes)?;
    let budget = match patch.options.budget_tokens {
        None => BudgetChange::Keep,
        Some(Value::Null) => BudgetChange::Remove,
        Some(v) => match v.as_u64() {
            Some(n) => {
                check_budget_tokens(n, "options.budget_tokens")?;
                BudgetChange::Set(n)
            }
            None => {
                return Err(ApiError::invalid(
                    "options.budget_tokens",
                    format!("{v} is not a positive number of tokens (or null to remove the budget)"),
                ));
            }
        },
    };
    if let Some(p) = patch.options.priority
        && !(-1000..=1000).contains(&p)
    {
        return Err(ApiError::invalid("options.priority", "must be between -1000 and 1000"));
    }
    let options = state
        .store
        .update_batch_options(id, budget, patch.options.priority)
        .await?;
    Ok(Json(PatchedBatch { batch_id: id, options }))
}

#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches",
    params(("id" = Uuid, Path, description = "batch id")),
    responses((status = 202, body = Cancelled), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/batches/{id}/cancel` → `202 {"cancelled": n}`.
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "batch_id")?;
    let cancelled = state.store.cancel_batch(id).await?;
    Ok((StatusCode::ACCEPTED, Json(Cancelled { cancelled })))
}
