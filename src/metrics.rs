//! Prometheus metrics of this process (OpenMetrics text, `prometheus-client`).
//!
//! Every process has its own counters and histograms, kept in memory in
//! [`METRICS`] and observed where the work happens: the store records phase
//! durations, queue waits and endings as it persists them, the model client
//! its requests, the guard its breaker and rate-limit waits, the sandbox its
//! runs, the HTTP layer its requests. Nothing here reads the database.
//!
//! Each binary exposes the families it feeds: [`worker_registry`] on the
//! worker's own `/metrics` (`KILN_WORKER_METRICS_ADDR`), [`dispatcher_registry`]
//! on the dispatcher's, which adds the state of the world (jobs by state,
//! queue depth, the oldest ready job's age…) read per scrape from
//! maintained counts (`crate::http::ops`). Prometheus sums the per-process
//! counters across processes; a restarted process starts from zero, which
//! `rate()` and `increase()` handle.
//!
//! Label values come from closed vocabularies (`crate::domain`'s states,
//! phases and error codes, the model error classes, sandbox outcomes), plus
//! the model name, which a deployment configures (a handful).

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of duration histograms, in seconds: from a fast static check
/// (milliseconds) to a slow model answer or a long queue (ten minutes).
const SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Upper bounds of the attempts-per-success histogram (at most 20 attempts per run).
const ATTEMPTS: [f64; 10] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0];

/// A step of a job that is timed: `model` (the answered request), `validate`,
/// `sandbox` (the whole test step, slot wait included) and `queue_wait`
/// (queued until claimed).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelOutcomeLabels {
    pub model: String,
    /// `ok`, or the error's class (`rate_limited`, `timeout`, …).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelKindLabels {
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

/// How a job or an attempt ended; `error_code` is `none` when it passed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub state: &'static str,
    pub error_code: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SandboxLabels {
    pub backend: &'static str,
    /// `passed` (exit 0), `exited` (another exit), `signalled`, `timed_out`,
    /// `oom_killed` or `fault` (the sandbox could not run it).
    pub outcome: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// `llm` or `sandbox`.
    pub kind: &'static str,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route's pattern (`/v1/batches/{id}`), never the raw path.
    pub route: String,
    pub status: u16,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    Histogram::new(SECONDS)
}

/// Every metric this process keeps. Clones of a metric share its value, so
/// a family can be registered in both registries.
pub struct Metrics {
    pub phase_seconds: Histograms<PhaseLabels>,
    pub llm_request_seconds: Histograms<ModelOutcomeLabels>,
    pub llm_tokens: Family<ModelKindLabels, Counter>,
    pub llm_cost_usd: Family<ModelLabels, Counter<f64, AtomicU64>>,
    pub llm_rate_limit_wait_seconds: Histograms<ModelLabels>,
    pub llm_in_flight_wait_seconds: Histograms<ProviderLabels>,
    /// 1 while this process last saw the provider's breaker open.
    pub llm_breaker_open: Family<ProviderLabels, Gauge>,
    pub faults: Family<FaultLabels, Counter>,
    pub jobs_ended: Family<EndLabels, Counter>,
    pub attempts_ended: Family<EndLabels, Counter>,
    pub attempts_per_success: Histogram,
    pub sandbox_runs: Family<SandboxLabels, Counter>,
    pub sandbox_run_seconds: Histograms<SandboxLabels>,
    pub http_request_seconds: Histograms<HttpLabels>,
    pub feeder_tick_seconds: Histogram,
}

/// This process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    phase_seconds: Family::new_with_constructor(seconds),
    llm_request_seconds: Family::new_with_constructor(seconds),
    llm_tokens: Family::default(),
    llm_cost_usd: Family::default(),
    llm_rate_limit_wait_seconds: Family::new_with_constructor(seconds),
    llm_in_flight_wait_seconds: Family::new_with_constructor(seconds),
    llm_breaker_open: Family::default(),
    faults: Family::default(),
    jobs_ended: Family::default(),
    attempts_ended: Family::default(),
    attempts_per_success: Histogram::new(ATTEMPTS),
    sandbox_runs: Family::default(),
    sandbox_run_seconds: Family::new_with_constructor(seconds),
    http_request_seconds: Family::new_with_constructor(seconds),
    feeder_tick_seconds: seconds(),
});

/// The families a worker feeds, for its `/metrics`.
pub fn worker_registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
        let m = &*METRICS;
        let mut r = Registry::default();
        r.register(
            "kiln_phase_duration_seconds",
            "Time spent in each step of a job: model (answered request), validate, sandbox (test step), queue_wait (queued until claimed).",
            m.phase_seconds.clone(),
        );
        r.register(
            "kiln_llm_request_duration_seconds",
            "Model requests by model and outcome (ok or the error class), from sending to the last byte.",
            m.llm_request_seconds.clone(),
        );
        r.register(
            "kiln_llm_tokens",
            "Tokens the provider reported, by model and kind (prompt, completion).",
            m.llm_tokens.clone(),
        );
        r.register(
            "kiln_llm_cost_usd",
            "Cost of the answered requests by model, at KILN_LLM_PRICES.",
            m.llm_cost_usd.clone(),
        );
        r.register(
            "kiln_llm_rate_limit_wait_seconds",
            "Waits imposed by the shared rate limiter (KILN_LLM_RPM, KILN_LLM_TPM) before a request, by model.",
            m.llm_rate_limit_wait_seconds.clone(),
        );
        r.register(
            "kiln_llm_in_flight_wait_seconds",
            "Waits for a place among the provider's requests in flight (KILN_LLM_MAX_IN_FLIGHT).",
            m.llm_in_flight_wait_seconds.clone(),
        );
        r.register(
            "kiln_llm_breaker_open",
            "1 while the provider's circuit breaker was open when this worker last looked, else 0.",
            m.llm_breaker_open.clone(),
        );
        r.register(
            "kiln_worker_faults",
            "Provider and sandbox faults met by this worker (retried; they spend no attempt), by kind and class.",
            m.faults.clone(),
        );
        register_endings(&mut r);
        r.register(
            "kiln_attempts_ended",
            "Attempts this worker ended, by state and error code.",
            m.attempts_ended.clone(),
        );
        r.register(
            "kiln_attempts_per_success",
            "Attempts of the run a succeeded job needed.",
            m.attempts_per_success.clone(),
        );
        r.register(
            "kiln_sandbox_runs",
            "Sandbox runs by backend and outcome.",
            m.sandbox_runs.clone(),
        );
        r.register(
            "kiln_sandbox_run_duration_seconds",
            "Sandbox runs by backend and outcome, slot wait excluded.",
            m.sandbox_run_seconds.clone(),
        );
        r
    });
    &REGISTRY
}

/// The families a dispatcher feeds (the state of the world is added per
/// scrape by `crate::http::ops`).
pub fn dispatcher_registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
        let m = &*METRICS;
        let mut r = Registry::default();
        r.register(
            "kiln_http_request_duration_seconds",
            "HTTP requests by method, route pattern and status.",
            m.http_request_seconds.clone(),
        );
        r.register(
            "kiln_feeder_tick_duration_seconds",
            "Feeder rounds: sending ready jobs to Redis and reconciling.",
            m.feeder_tick_seconds.clone(),
        );
        register_endings(&mut r);
        r
    });
    &REGISTRY
}

fn register_endings(r: &mut Registry) {
    r.register(
        "kiln_jobs_ended",
        "Jobs this process ended, by state and error code (workers: succeeded and failed; dispatchers: cancelled).",
        METRICS.jobs_ended.clone(),
    );
}

/// The registry as OpenMetrics text, `# EOF` included.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// Records a timed phase.
pub fn observe_phase(phase: &'static str, took: Duration) {
    METRICS
        .phase_seconds
        .get_or_create(&PhaseLabels { phase })
        .observe(took.as_secs_f64());
}

/// Counts `n` jobs ended in `state` with `error_code` (`None`: passed).
pub fn job_ended(state: &'static str, error_code: Option<&'static str>, n: u64) {
    METRICS
        .jobs_ended
        .get_or_create(&EndLabels {
            state,
            error_code: error_code.unwrap_or("none"),
        })
        .inc_by(n);
}

/// Counts an attempt ended in `state` with `error_code` (`None`: none).
pub fn attempt_ended(state: &'static str, error_code: Option<&'static str>) {
    METRICS
        .attempts_ended
        .get_or_create(&EndLabels {
            state,
            error_code: error_code.unwrap_or("none"),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observed_phase_shows_in_the_worker_registry_with_its_label_and_buckets() {
        observe_phase("validate", Duration::from_millis(3));
        let text = encode(worker_registry());
        assert!(text.contains("# TYPE kiln_phase_duration_seconds histogram"), "{text}");
        assert!(
            text.contains("kiln_phase_duration_seconds_bucket{le=\"0.005\",phase=\"validate\"}")
                || text.contains("kiln_phase_duration_seconds_bucket{phase=\"validate\",le=\"0.005\"}"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The dispatcher does not expose what only workers feed.
        assert!(!encode(dispatcher_registry()).contains("kiln_phase_duration_seconds"));
    }
}
