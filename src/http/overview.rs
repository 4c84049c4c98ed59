//! `GET /v1/batches` (the listing, newest first, filtered and paged) and
//! `GET /v1/workers` (the live worker processes and the jobs in their hands).

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::store::batches::BATCH_STATES;
use crate::store::overview::{BatchCursor, BatchFilter};
use crate::views::{BatchPage, ErrorBody, WorkerList};

/// Largest page of `GET /v1/batches`.
pub const MAX_BATCH_PAGE: i64 = 1000;
/// Page size of `GET /v1/batches` without `limit`.
pub const DEFAULT_BATCH_PAGE: i64 = 50;

/// The query of `GET /v1/batches`. Every value arrives as text so that a bad
/// one is a 400 naming its parameter.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchesQuery {
    /// Only batches in this state (as `GET /v1/batches/{id}` shows it).
    #[param(value_type = Option<String>, pattern = "^(queued|running|awaiting_review|succeeded|failed|cancelled)$")]
    state: Option<String>,
    /// Only batches whose name contains this, ignoring case.
    name: Option<String>,
    /// Only batches created at or after this RFC 3339 time.
    #[param(value_type = Option<String>, format = DateTime)]
    created_after: Option<String>,
    /// Only batches created before this RFC 3339 time.
    #[param(value_type = Option<String>, format = DateTime)]
    created_before: Option<String>,
    /// Page size, 1 to 1,000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn timestamp(raw: Option<&String>, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                ApiError::invalid(
                    field,
                    format!("{raw:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z ({e})"),
                )
            })
    })
    .transpose()
}

impl BatchesQuery {
    fn filter(self) -> Result<BatchFilter, ApiError> {
        if let Some(s) = &self.state
            && !BATCH_STATES.contains(&s.as_str())
        {
            return Err(ApiError::invalid(
                "state",
                format!("{s:?} is not one of {}", BATCH_STATES.join(", ")),
            ));
        }
        if let Some(n) = &self.name
            && n.contains('\0')
        {
            return Err(ApiError::invalid("name", "contains the NUL character (U+0000)"));
        }
        let limit = match &self.limit {
            None => DEFAULT_BATCH_PAGE,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=MAX_BATCH_PAGE).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid("limit", format!("{raw:?} is not a number from 1 to {MAX_BATCH_PAGE}"))
                })?,
        };
        let cursor = match &self.cursor {
            None => None,
            Some(raw) => Some(
                BatchCursor::decode(raw)
                    .ok_or_else(|| ApiError::invalid("cursor", format!("{raw:?} is not a cursor from this API")))?,
            ),
        };
        Ok(BatchFilter {
            created_after: timestamp(self.created_after.as_ref(), "created_after")?,
            created_before: timestamp(self.created_before.as_ref(), "created_before")?,
            state: self.state,
            name: self.name.filter(|n| !n.is_empty()),
            cursor,
            limit,
        })
    }
}

#[utoipa::path(get, path = "/v1/batches", tag = "batches", params(BatchesQuery),
    responses((status = 200, body = BatchPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/batches?state=&name=&created_after=&created_before=&limit=&cursor=`.
pub async fn list(State(state): State<AppState>, Query(q): Query<BatchesQuery>) -> Result<Json<BatchPage>, ApiError> {
    let filter = q.filter()?;
    Ok(Json(state.store.list_batches(&filter).await?))
}

#[utoipa::path(get, path = "/v1/workers", tag = "workers",
    responses((status = 200, body = WorkerList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody), (status = 500, body = ErrorBody)))]
/// `GET /v1/workers`.
pub async fn workers(State(state): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    Ok(Json(state.store.workers().await?))
}
