//! Bearer-token authentication of API v1 (architecture: Authentication).
//!
//! The router wraps every `/v1` route in [`require`] with the scope the
//! route was declared with ([`super::v1_routes`]); `/healthz`, `/readyz` and
//! `/metrics` are outside it. [`require`] answers 401 `unauthorized` without
//! a valid `Authorization: Bearer <token>`, 403 `forbidden` when the token's
//! scope is too small, and otherwise hands the handler the [`Caller`] as a
//! request extension. With `KILN_AUTH=off` every request is an anonymous
//! caller with every scope.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::auth::{Authenticator, Caller, Scope};
use crate::config::AuthMode;

/// What [`require`] checks for one route.
#[derive(Clone)]
pub(crate) struct Guard {
    pub auth: Authenticator,
    /// The least scope the route needs.
    pub scope: Scope,
}

const MISSING: &str = "missing bearer token: send \"Authorization: Bearer <token>\" \
     (tokens are made with `kiln-dispatcher token create`; the kiln CLI reads KILN_TOKEN)";

/// Middleware: authenticates and authorises a request before its handler.
pub(crate) async fn require(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    // Only `Sync` parts of the request are held across the token lookup.
    let checked = authorize(&guard, request.headers(), request.method(), request.uri().path()).await;
    match checked {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            let unauthorized = matches!(e, ApiError::Unauthorized(_));
            let mut response = e.into_response();
            if unauthorized {
                // RFC 6750: a 401 names the scheme the client should use.
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

async fn authorize(guard: &Guard, headers: &HeaderMap, method: &Method, path: &str) -> Result<Caller, ApiError> {
    if guard.auth.mode() == AuthMode::Off {
        return Ok(Caller {
            token_id: None,
            scope: Scope::Admin,
        });
    }
    let token = bearer(headers)?;
    let caller = guard
        .auth
        .check(token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked token".into()))?;
    if !caller.scope.allows(guard.scope) {
        return Err(ApiError::Forbidden(format!(
            "this token's scope is {}; {} {} needs {}",
            caller.scope, method, path, guard.scope
        )));
    }
    Ok(caller)
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized(MISSING.into()))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be \"Bearer <token>\"".into()))
}
