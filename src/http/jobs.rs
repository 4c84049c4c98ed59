//! `/v1/jobs/{id}…`: status, attempts, artifacts, files, retry, rejudge, cancel,
//! review.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use uuid::Uuid;

use super::batches::{read_body, typed_body};
use super::{ApiError, AppState, parse_id};
use crate::auth::Caller;
use crate::domain::ReviewDecision;
use crate::views::{AttemptView, Cancelled, ErrorBody, JobView, Rejudged, Requeued};

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/jobs/{id}`.
pub async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id, "job_id")?;
    Ok(Json(state.store.job(id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptsQuery {
    /// Also the prompt messages and the raw response.
    full: Option<bool>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/attempts", tag = "jobs", params(("id" = Uuid, Path, description = "job id"), AttemptsQuery),
    responses((status = 200, body = Vec<AttemptView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/jobs/{id}/attempts[?full=true]`: every attempt of every run;
/// with `full`, also the prompt messages and the raw response.
pub async fn attempts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<AttemptsQuery>,
) -> Result<Json<Vec<AttemptView>>, ApiError> {
    let id = parse_id(&id, "job_id")?;
    Ok(Json(state.store.attempts(id, q.full.unwrap_or(false)).await?))
}

/// Selects whose files to serve: the job's result by default, or any
/// attempt with `?run=&attempt=` (to look at what a failed attempt wrote).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesQuery {
    /// Run of the attempt (default: the current run).
    run: Option<i32>,
    /// Attempt number within the run.
    attempt: Option<i32>,
}

async fn files_attempt(state: &AppState, job_id: Uuid, q: &FilesQuery) -> Result<Uuid, ApiError> {
    match (q.run, q.attempt) {
        (None, None) => {
            if let Some(id) = state.store.result_attempt(job_id).await? {
                return Ok(id);
            }
            let job = state.store.job(job_id).await?;
            Err(ApiError::NotFound(format!(
                "result of job {job_id} (it is {}; pass ?run=&attempt= for an attempt's files)",
                job.state
            )))
        }
        (run, Some(n)) => {
            let run = match run {
                Some(r) => r,
                None => state.store.job(job_id).await?.run,
            };
            state
                .store
                .attempt(job_id, run, Some(n))
                .await?
                .map(|a| a.id)
                .ok_or_else(|| ApiError::NotFound(format!("attempt {n} of run {run}")))
        }
        (Some(_), None) => Err(ApiError::invalid("attempt", "required with `run`")),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts", tag = "jobs", params(("id" = Uuid, Path, description = "job id"), FilesQuery),
    responses(
        (status = 200, description = "tar.gz of the files; `X-Kiln-Skipped-Files` counts those left out", content_type = "application/gzip", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/jobs/{id}/artifacts` → the files as `application/gzip` (tar.gz).
/// Files whose paths failed validation (`../x`, `/etc/x`, `..\\x.py`) are
/// left out, so unpacking never writes outside the directory; the header
/// `X-Kiln-Skipped-Files` counts them (their text stays readable one by one
/// under `/files/`).
pub async fn artifacts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FilesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = parse_id(&id, "job_id")?;
    let attempt = files_attempt(&state, job_id, &q).await?;
    let (files, skipped): (Vec<_>, Vec<_>) = state
        .store
        .artifacts(attempt)
        .await?
        .into_iter()
        .partition(|f| crate::validate::paths::is_safe(&f.path));
    let archive = crate::files::tar_gz(&files).map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{job_id}.tar.gz\""),
            ),
            (
                header::HeaderName::from_static("x-kiln-skipped-files"),
                skipped.len().to_string(),
            ),
        ],
        archive,
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/files/{path}", tag = "jobs",
    params(("id" = Uuid, Path, description = "job id"), ("path" = String, Path, description = "the file's path in the answer"), FilesQuery),
    responses((status = 200, description = "the file", content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/jobs/{id}/files/{path}` → one file as text.
pub async fn file(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<FilesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = parse_id(&id, "job_id")?;
    if path.contains('\0') {
        return Err(ApiError::invalid("path", "contains the NUL character (U+0000)"));
    }
    let attempt = files_attempt(&state, job_id, &q).await?;
    let content = state.store.artifact(attempt, &path).await.map_err(|e| match e {
        crate::store::StoreError::NotFound(_) => ApiError::NotFound(format!("file {path:?}")),
        other => other.into(),
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], content))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = Uuid, Path, description = "job id")),
    responses((status = 202, body = Requeued), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/jobs/{id}/retry` → `202 {"requeued": 1}`: a new run with a
/// fresh attempt budget; earlier attempts are kept.
pub async fn retry(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job_id")?;
    let requeued = state.store.retry_job(id).await?;
    state.feeder_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued })))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/rejudge", tag = "jobs", params(("id" = Uuid, Path, description = "job id")),
    responses((status = 202, body = Rejudged), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/jobs/{id}/rejudge` → `202 {"rejudged": 1}`: a new run that
/// judges the job's latest stored answer again with today's validation and
/// sandbox, without a model request. `409` while the job is queued or
/// running, or when no attempt of it ever got an answer.
pub async fn rejudge(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job_id")?;
    let rejudged = state.store.rejudge_job(id).await?;
    state.feeder_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(Rejudged { rejudged })))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path, description = "job id")),
    responses((status = 202, body = Cancelled), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/jobs/{id}/cancel` → `202 {"cancelled": 0|1}`.
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job_id")?;
    let cancelled = state.store.cancel_job(id).await?;
    Ok((StatusCode::ACCEPTED, Json(Cancelled { cancelled })))
}

/// The body of `POST /v1/jobs/{id}/review`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// `approve` (the job succeeds with its result) or `reject` (it fails
    /// with `rejected_in_review`).
    #[schema(value_type = String, pattern = "^(approve|reject)$")]
    decision: Option<String>,
    /// Why; a rejected job's error message. At most 10,000 characters.
    #[serde(default)]
    #[schema(max_length = 10000)]
    comment: Option<String>,
}

/// Longest review comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 10_000;

#[utoipa::path(post, path = "/v1/jobs/{id}/review", tag = "jobs", params(("id" = Uuid, Path, description = "job id")),
    request_body = ReviewBody,
    responses((status = 200, description = "decided: the job as `GET /v1/jobs/{id}` shows it now", body = JobView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the job is not awaiting review (the message says its state)", body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `POST /v1/jobs/{id}/review` with `{"decision": "approve"|"reject",
/// "comment"?}` → the job: a person's decision on a job `awaiting_review`
/// (batches with `options.review`). Needs an `admin` token: the decision
/// is a person's, apart from the tokens that submit work.
pub async fn review(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id, "job_id")?;
    let bytes = read_body(body, 64 * 1024, state.limits.body_timeout).await?;
    let body: ReviewBody = typed_body(&bytes)?;
    let decision = body
        .decision
        .ok_or_else(|| ApiError::invalid("decision", "required: approve or reject"))?;
    let decision: ReviewDecision = decision
        .parse()
        .map_err(|_| ApiError::invalid("decision", format!("{decision:?} is not one of approve, reject")))?;
    if let Some(comment) = &body.comment
        && comment.chars().count() > MAX_COMMENT_CHARS
    {
        return Err(ApiError::invalid(
            "comment",
            format!("longer than {MAX_COMMENT_CHARS} characters"),
        ));
    }
    state
        .store
        .review(id, decision, body.comment.as_deref(), caller.token_id)
        .await?;
    Ok(Json(state.store.job(id).await?))
}
