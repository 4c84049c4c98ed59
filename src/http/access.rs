//! Request ids and the access log, around every request the dispatcher
//! serves.
//!
//! Every answer carries `x-request-id`: the caller's own, when it is a short
//! token (so a proxy's or a client's id follows the request through), else
//! a fresh UUID v7. The request is served inside a `request` span carrying
//! the id, so every line logged while serving it (an internal error's cause,
//! a failed readiness check) names it; then one `info` line, `request
//! served`, gives the method, the matched route, the path, the status, the
//! latency and the id.
//!
//! Invariant: a request id is 1 to 64 characters of `A-Z a-z 0-9 - _ . :`,
//! whatever the caller sent, so it is safe in a header and a log line.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, info, info_span};
use uuid::Uuid;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller.
const MAX_LEN: usize = 64;

/// The caller's request id, if it is a token we can repeat as it is.
fn given(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    let sane = (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    sane.then_some(id)
}

/// Middleware, outermost: gives the request its id, serves it inside the
/// `request` span, logs the access line and sets `x-request-id` on the
/// answer.
pub(crate) async fn serve(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(given)
        .map_or_else(|| Uuid::now_v7().to_string(), ToOwned::to_owned);
    let method = request.method().clone();
    let path = super::error::echo_path(request.uri().path());
    let started = Instant::now();
    let mut response = next
        .run(request)
        .instrument(info_span!("request", request_id = %id))
        .await;
    // Set by `ops::track` once routing matched: the pattern, ids left out.
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    info!(
        request_id = %id,
        %method,
        route,
        %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_millis() as u64,
        "request served"
    );
    let value = HeaderValue::from_str(&id).expect("a request id is a header-safe token");
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_token_is_kept_and_anything_else_is_not() {
        let id = |s: &str| given(&HeaderValue::from_str(s).unwrap()).map(str::to_owned);
        assert_eq!(id("req-42_a.b:c").as_deref(), Some("req-42_a.b:c"));
        assert_eq!(id(&"a".repeat(64)).as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(id(&"a".repeat(65)), None);
        assert_eq!(id(""), None);
        assert_eq!(id("two words"), None);
        assert_eq!(id("a\"b"), None);
        assert_eq!(given(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()), None);
    }
}
