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
    /// 503: a dependency is down; the request may succeed later. `what`
    /// names the dependency for the caller; `cause` is only logged.
    #[error("service unavailable: {what} is unreachable; retry later")]
    Unavailable { what: &'static str, cause: String },
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
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
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
            e if e.is_transient() => ApiError::Unavailable {
                what: "the database",
                cause: e.to_string(),
            },
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
            ApiError::Unavailable { cause, .. } => {
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

/// The `code` of an error answer that no [`ApiError`] made.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "body_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    }
}

/// At most this much of a request path is repeated in a message or a log
/// line.
const PATH_ECHO: usize = 200;

/// A request path cut to [`PATH_ECHO`] bytes (`…` marks a cut).
pub(crate) fn echo_path(path: &str) -> String {
    crate::text::clip(path, PATH_ECHO)
}

/// Middleware: every error answer carries the API's envelope
/// `{"error": {"code", "message"}}`. Handlers answer with [`ApiError`]
/// already (JSON, left alone); this covers what axum answers by itself — 404
/// for an unknown path, 405 for a known path with another method (its
/// `Allow` header kept), an extractor's rejection of a malformed query — and
/// a panic caught below it, whose 500 says nothing about the panic.
pub(crate) async fn envelope(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = echo_path(request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let message = match status {
        StatusCode::NOT_FOUND => format!("no such route: {method} {path}"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            format!("{method} is not allowed on {path}; allowed: {allowed}")
        }
        s if s.is_server_error() => {
            error!(%status, %method, %path, "a request ended in an error outside the API's error type");
            "internal error; see the dispatcher's log".to_owned()
        }
        _ => {
            // axum's rejections say what was wrong with the request
            // (`Failed to deserialize query string: full: …`): the caller's
            // own input, safe to repeat.
            let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&text).trim().to_owned();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text
            }
        }
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let body = json!({"error": {"code": code_for(status), "message": message}});
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}
