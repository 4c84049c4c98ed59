//! The one error type of the HTTP API.
//!
//! Policy: a caller's mistake is a 4xx whose message names the offending
//! field (`specs[3].endpoints[0].method: …`); anything else is an opaque 5xx
//! whose cause chain is logged once, here, and never sent to the caller.
//! Every error body is `{"error": {"code", "message", "field"?}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::spec::FieldError;
use crate::store::StoreError;
use crate::telemetry::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; `field` says where.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// 401: no valid bearer token (see [`super::auth`]).
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token's scope does not allow the request.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0} not found")]
    NotFound(String),
    /// 409: the request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 408: the body did not arrive in time; the connection is closed.
    #[error("{0}")]
    BodyTimeout(String),
    /// 503: a dependency is down; the request may succeed later.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 500: our fault. The cause is logged, not returned.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what.to_owned()),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            e if e.is_transient() => ApiError::Unavailable(format!("database: {e}")),
            e => ApiError::Internal(Box::new(e)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = match &self {
            ApiError::Invalid { field, message } => {
                json!({"error": {"code": code, "message": format!("{field}: {message}"), "field": field}})
            }
            ApiError::Internal(cause) => {
                error!(error = %error_chain(cause.as_ref()), "internal error serving a request");
                json!({"error": {"code": code, "message": "internal error; see the dispatcher's log"}})
            }
            ApiError::Unavailable(cause) => {
                error!(error = %cause, "dependency unavailable serving a request");
                json!({"error": {"code": code, "message": self.to_string()}})
            }
            other => json!({"error": {"code": code, "message": other.to_string()}}),
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::BodyTimeout(_)) {
            // The rest of the body may never come: do not wait for it to
            // reuse the connection.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
