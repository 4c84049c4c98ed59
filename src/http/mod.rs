//! The dispatcher's HTTP API v1 (see `ARCHITECTURE.md`): axum routes over
//! the store. [`crate::dispatcher`] serves them beside the feeder.
//!
//! # Layout
//! - [`access`]: request ids and the access log, around every request.
//! - [`error`]: [`ApiError`], the only error type handlers return.
//! - [`auth`]: the bearer-token check wrapped around every `/v1` route.
//! - [`batches`]: create, status, job listing, report, retry, rejudge and
//!   cancel of batches.
//! - [`jobs`]: job status, attempts, artifacts, files, retry, rejudge, cancel and review.
//! - [`overview`]: the batch listing and the live workers.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`dashboard`]: the web dashboard at `/`, embedded in the binary.
//! - [`openapi`]: the OpenAPI 3.1 document at `/openapi.json`, generated
//!   from the handlers and the types they answer with.
//!
//! Every error answer, including axum's own 404, 405 and rejections and a
//! caught panic, has the body `{"error": {"code", "message", "field"?}}`
//! ([`error::envelope`]).

pub mod access;
pub mod auth;
pub mod batches;
pub mod dashboard;
pub mod error;
pub mod jobs;
pub mod openapi;
pub mod ops;
pub mod overview;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{MethodFilter, MethodRouter, get, on};
use tokio::sync::Notify;
use tower_http::catch_panic::CatchPanicLayer;
use uuid::Uuid;

pub use error::ApiError;

use crate::auth::{Authenticator, Scope};
use crate::config::ApiSettings;
use crate::feeder::FeederStats;
use crate::queue::Producer;
use crate::store::Store;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub producer: Producer,
    pub limits: ApiSettings,
    /// Checks bearer tokens (or lets everyone in with `KILN_AUTH=off`).
    pub auth: Authenticator,
    /// Wakes the feeder when a batch or retry makes jobs ready.
    pub feeder_wake: Arc<Notify>,
    pub feeder_stats: Arc<FeederStats>,
}

/// A route of API v1 and the least scope a token needs to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Route {
    pub method: Method,
    /// In axum's syntax (`/v1/jobs/{id}/files/{*path}`).
    pub path: &'static str,
    pub scope: Scope,
}

fn route<H, T>(method: Method, path: &'static str, scope: Scope, handler: H) -> (V1Route, MethodRouter<AppState>)
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    (V1Route { method, path, scope }, on(filter, handler))
}

/// Every route of API v1 with its handler and scope. The router is built
/// from this list alone, so a `/v1` route cannot exist without a scope, and
/// the tests that check authentication walk the same list.
fn v1() -> Vec<(V1Route, MethodRouter<AppState>)> {
    use Method as M;
    use Scope::{Admin, Read, Submit};
    vec![
        route(M::GET, "/v1/batches", Read, overview::list),
        route(M::POST, "/v1/batches", Submit, batches::create),
        route(M::GET, "/v1/batches/{id}", Read, batches::status),
        route(M::PATCH, "/v1/batches/{id}", Submit, batches::update),
        route(M::GET, "/v1/batches/{id}/jobs", Read, batches::jobs),
        route(M::GET, "/v1/batches/{id}/report", Read, batches::report),
        route(M::POST, "/v1/batches/{id}/retry", Submit, batches::retry),
        route(M::POST, "/v1/batches/{id}/rejudge", Submit, batches::rejudge),
        route(M::POST, "/v1/batches/{id}/cancel", Submit, batches::cancel),
        route(M::GET, "/v1/jobs/{id}", Read, jobs::status),
        route(M::GET, "/v1/jobs/{id}/attempts", Read, jobs::attempts),
        route(M::GET, "/v1/jobs/{id}/artifacts", Read, jobs::artifacts),
        route(M::GET, "/v1/jobs/{id}/files/{*path}", Read, jobs::file),
        route(M::POST, "/v1/jobs/{id}/retry", Submit, jobs::retry),
        route(M::POST, "/v1/jobs/{id}/rejudge", Submit, jobs::rejudge),
        route(M::POST, "/v1/jobs/{id}/cancel", Submit, jobs::cancel),
        // A person's decision, kept apart from the tokens that submit work.
        route(M::POST, "/v1/jobs/{id}/review", Admin, jobs::review),
        route(M::GET, "/v1/workers", Read, overview::workers),
    ]
}

/// The routes of API v1 and the scope each needs.
pub fn v1_routes() -> Vec<V1Route> {
    v1().into_iter().map(|(route, _)| route).collect()
}

/// All routes: API v1, each behind [`auth::require`] with its scope, and
/// the unauthenticated probes.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    for (route, handler) in v1() {
        let guard = auth::Guard {
            auth: state.auth.clone(),
            scope: route.scope,
        };
        api = api.route(
            route.path,
            handler.route_layer(from_fn_with_state(guard, auth::require)),
        );
    }
    api.route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
        // Inside the routes, where the matched pattern is known.
        .route_layer(from_fn(ops::track))
        // Bodies are read with Kiln's own limit, which answers 413 in the
        // API's error format.
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::new())
        .layer(from_fn(error::envelope))
        // Outermost: the id and the span cover everything below.
        .layer(from_fn(access::serve))
        .with_state(state)
}

/// Parses an id from the path, naming it when it is not a UUID.
pub(crate) fn parse_id(raw: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid(field, format!("{raw:?} is not a UUID")))
}
