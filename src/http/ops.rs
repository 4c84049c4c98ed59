//! Probes and metrics: `/healthz` (the process answers), `/readyz` (Postgres
//! and Redis reachable), `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::{ApiError, AppState};

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
    pub error: Option<super::error::ErrorDetail>,
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
        error: (!ready).then(|| super::error::ErrorDetail {
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
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, body = super::error::ErrorBody), (status = 500, body = super::error::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let t = state.store.totals().await?;
    let mut out = String::new();
    out.push_str("# HELP kiln_jobs Jobs by state.\n# TYPE kiln_jobs gauge\n");
    for (s, n) in &t.jobs_by_state {
        let _ = writeln!(out, "kiln_jobs{{state=\"{s}\"}} {n}");
    }
    out.push_str("# HELP kiln_attempts Attempts by state.\n# TYPE kiln_attempts gauge\n");
    for (s, n) in &t.attempts_by_state {
        let _ = writeln!(out, "kiln_attempts{{state=\"{s}\"}} {n}");
    }
    let feeder = &state.feeder_stats;
    let rows = [
        (
            "kiln_tokens_prompt_total",
            "counter",
            "Prompt tokens used by all attempts.",
            t.prompt_tokens,
        ),
        (
            "kiln_tokens_completion_total",
            "counter",
            "Completion tokens used by all attempts.",
            t.completion_tokens,
        ),
        (
            "kiln_llm_faults_total",
            "counter",
            "Provider faults retried (they spent no attempt).",
            t.llm_faults,
        ),
        (
            "kiln_sandbox_faults_total",
            "counter",
            "Sandbox faults retried (they spent no attempt).",
            t.sandbox_faults,
        ),
        (
            "kiln_queue_window_jobs",
            "gauge",
            "Jobs waiting in Redis (bounded by KILN_QUEUE_WINDOW).",
            t.in_window,
        ),
        (
            "kiln_feeder_pushed_total",
            "counter",
            "Messages this dispatcher pushed to Redis.",
            feeder.pushed.load(Ordering::Relaxed) as i64,
        ),
        (
            "kiln_feeder_redis_losses_total",
            "counter",
            "Times this dispatcher found Redis had lost its data.",
            feeder.redis_losses.load(Ordering::Relaxed) as i64,
        ),
        (
            "kiln_feeder_expired_leases_total",
            "counter",
            "Running jobs re-queued because their lease expired.",
            feeder.expired_leases.load(Ordering::Relaxed) as i64,
        ),
        (
            "kiln_feeder_dead_workers_total",
            "counter",
            "Worker processes this dispatcher found dead (liveness lock gone).",
            feeder.dead_workers.load(Ordering::Relaxed) as i64,
        ),
        (
            "kiln_feeder_dead_worker_jobs_total",
            "counter",
            "Running jobs re-queued at once because their worker died.",
            feeder.dead_worker_jobs.load(Ordering::Relaxed) as i64,
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
