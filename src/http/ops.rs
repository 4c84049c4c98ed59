//! Probes and metrics: `/healthz` (the process answers), `/readyz` (Postgres
//! and Redis reachable), `/metrics` (OpenMetrics text: the process's own
//! metrics from [`crate::metrics`], then the state of the world).

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::{ApiError, AppState};
use crate::domain::JobState;
use crate::feeder::FeederStats;
use crate::metrics::HttpLabels;
use crate::store::feed::World;

/// The body of `/healthz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String)]
    pub status: &'static str,
}

/// The body of `/readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// `ok` or `unreachable`.
    #[schema(value_type = String)]
    pub postgres: &'static str,
    /// `ok` or `unreachable`.
    #[schema(value_type = String)]
    pub redis: &'static str,
    /// Present when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::views::ErrorDetail>,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "the process answers", body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Readiness), (status = 503, description = "`error` names what is unreachable", body = Readiness)))]
/// 200 when Postgres and Redis answer; otherwise 503 with the error
/// envelope naming what is unreachable (the cause goes to the log only).
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let check = |name: &'static str, result: Result<(), String>| match result {
        Ok(()) => "ok",
        Err(cause) => {
            tracing::error!(dependency = name, error = %cause, "readiness check failed");
            "unreachable"
        }
    };
    let postgres = check("postgres", state.store.ping().await.map_err(|e| e.to_string()));
    let redis = check("redis", state.producer.ping().await.map_err(|e| e.to_string()));
    let down: Vec<&str> = [("postgres", postgres), ("redis", redis)]
        .into_iter()
        .filter(|(_, s)| *s != "ok")
        .map(|(name, _)| name)
        .collect();
    let ready = down.is_empty();
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        postgres,
        redis,
        error: (!ready).then(|| crate::views::ErrorDetail {
            code: "unavailable".into(),
            message: format!("service unavailable: {} unreachable", down.join(" and ")),
            field: None,
        }),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "OpenMetrics text: this process's counters and histograms, then the state of the world (jobs by state, queue depth, the oldest ready job's age, totals), read from maintained counts", content_type = "application/openmetrics-text", body = String),
        (status = 503, body = crate::views::ErrorBody), (status = 500, body = crate::views::ErrorBody)))]
/// `/metrics`: [`crate::metrics::dispatcher_registry`] and the state of the
/// world, one statement over `batch_counts` (a row per batch, kept by
/// triggers) and three index lookups, whatever the history's size.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let world = state.store.world().await?;
    let mut out = String::new();
    prometheus_client::encoding::text::encode_registry(&mut out, crate::metrics::dispatcher_registry())
        .and_then(|()| {
            prometheus_client::encoding::text::encode(&mut out, &world_registry(&world, &state.feeder_stats))
        })
        .expect("writing to a String cannot fail");
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], out))
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The world as this scrape found it, and the feeder's counters.
fn world_registry(w: &World, feeder: &FeederStats) -> Registry {
    let mut r = Registry::default();
    let jobs = Family::<StateLabels, Gauge>::default();
    for (s, n) in &w.jobs {
        jobs.get_or_create(&StateLabels { state: s.as_str() }).set(*n);
    }
    r.register("kiln_jobs", "Jobs by state.", jobs);
    let attempts = Family::<StateLabels, Gauge>::default();
    for (s, n) in &w.attempts {
        attempts.get_or_create(&StateLabels { state: s.as_str() }).set(*n);
    }
    r.register("kiln_attempts", "Attempts by state, every run.", attempts);
    let queued = w
        .jobs
        .iter()
        .find(|(s, _)| *s == JobState::Queued)
        .map_or(0, |(_, n)| *n);
    r.register(
        "kiln_queue_depth",
        "Jobs waiting to run (queued), in Redis or not yet sent.",
        ConstGauge::new(queued),
    );
    r.register(
        "kiln_queue_window_jobs",
        "Jobs waiting in Redis (bounded by KILN_QUEUE_WINDOW).",
        ConstGauge::new(w.in_window),
    );
    r.register(
        "kiln_queue_oldest_ready_age_seconds",
        "Age of the oldest queued job that may run now (0 when none waits).",
        ConstGauge::<f64>::new(w.oldest_ready_age_s),
    );
    r.register(
        "kiln_workers_alive",
        "Worker processes registered and not declared dead.",
        ConstGauge::new(w.workers),
    );
    let counters: [(&str, &str, i64); 4] = [
        (
            "kiln_tokens_prompt",
            "Prompt tokens used by all attempts.",
            w.prompt_tokens,
        ),
        (
            "kiln_tokens_completion",
            "Completion tokens used by all attempts.",
            w.completion_tokens,
        ),
        (
            "kiln_llm_faults",
            "Provider faults retried (they spent no attempt).",
            w.llm_faults,
        ),
        (
            "kiln_sandbox_faults",
            "Sandbox faults retried (they spent no attempt).",
            w.sandbox_faults,
        ),
    ];
    for (name, help, n) in counters {
        r.register(name, help, ConstCounter::new(n.max(0) as u64));
    }
    r.register(
        "kiln_cost_usd",
        "Cost of all attempts at KILN_LLM_PRICES (attempts without a price count 0).",
        ConstCounter::new(w.cost_usd.max(0.0)),
    );
    let feeder_counters = [
        (
            "kiln_feeder_pushed",
            "Messages this dispatcher pushed to Redis.",
            &feeder.pushed,
        ),
        (
            "kiln_feeder_redis_losses",
            "Times this dispatcher found Redis had lost its data.",
            &feeder.redis_losses,
        ),
        (
            "kiln_feeder_expired_leases",
            "Running jobs re-queued because their lease expired.",
            &feeder.expired_leases,
        ),
        (
            "kiln_feeder_dead_workers",
            "Worker processes this dispatcher found dead (liveness lock gone).",
            &feeder.dead_workers,
        ),
        (
            "kiln_feeder_dead_worker_jobs",
            "Running jobs re-queued at once because their worker died.",
            &feeder.dead_worker_jobs,
        ),
    ];
    for (name, help, n) in feeder_counters {
        r.register(name, help, ConstCounter::new(n.load(Ordering::Relaxed)));
    }
    r
}

/// Times every routed request by method, route pattern and status.
pub async fn track(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched
        .as_ref()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        // For the access log, written outside the router (`access::serve`).
        response.extensions_mut().insert(matched);
    }
    crate::metrics::METRICS
        .http_request_seconds
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}
