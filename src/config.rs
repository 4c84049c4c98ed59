//! Typed configuration for every Kiln process.
//!
//! Settings come from the environment (`KILN_…`), optionally layered over a
//! TOML file named by `KILN_CONFIG` whose keys are the variable names without
//! the prefix, in lower case (`worker_concurrency = 8`). The environment wins.
//! Every field below documents its variable and default; `.env.example` at
//! the repository root is the same list with comments.
//!
//! Invariant: [`SETTINGS`] is the one list of names. An unknown `KILN_…`
//! variable (outside [`NOT_SETTINGS`]) or file key stops start-up with an
//! error naming it and the closest setting, since a typo silently ignored
//! leaves a default in force; every setting is reachable from both.
//!
//! Secrets (the LLM API key) are [`SecretString`]s: they print as
//! `[REDACTED]`, are never serialised, and are only exposed at the one place
//! that builds the provider's HTTP header (architecture invariant 7).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

/// Why configuration could not be loaded. Messages name the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {message}")]
    Invalid { var: &'static str, message: String },
    // The cause is in the message, so the field is not named `source`
    // (which would make it the error's source too, printed twice in a chain).
    #[error("reading config file {path}: {error}")]
    File { path: PathBuf, error: std::io::Error },
    #[error("parsing config file {path}: {message}")]
    FileFormat { path: PathBuf, message: String },
    /// `names`: each unknown variable with the closest setting.
    #[error("unknown variable {names}; every setting is listed in .env.example")]
    UnknownVar { names: String },
    #[error("config file {path}: unknown key {key} (did you mean {suggestion}?)")]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: String,
    },
}

/// Which LLM wire protocol the worker speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProvider {
    /// OpenAI chat completions, and every server that speaks it (vLLM,
    /// Ollama, llama.cpp, LM Studio, LiteLLM, `kiln-mock-llm`).
    OpenAi,
    /// Azure OpenAI: deployments (the model name is the deployment), an
    /// `api-version` query parameter and an `api-key` header.
    Azure,
    /// Anthropic Messages.
    Anthropic,
}

impl LlmProvider {
    /// The provider's public endpoint, used when `KILN_LLM_BASE_URL` is unset.
    pub fn default_base_url(self) -> &'static str {
        match self {
            LlmProvider::OpenAi => "https://api.openai.com/v1",
            // Azure has no public default: every resource has its own host.
            LlmProvider::Azure => "",
            LlmProvider::Anthropic => "https://api.anthropic.com/v1",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LlmProvider::OpenAi => "openai",
            LlmProvider::Azure => "azure",
            LlmProvider::Anthropic => "anthropic",
        }
    }
}

/// How the model is asked for JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonMode {
    /// `response_format: json_object` (OpenAI-compatible), a forced tool
    /// (Anthropic).
    Object,
    /// `response_format: json_schema` with Kiln's files schema, strict.
    Schema,
    /// Prompt only, for servers that reject `response_format`.
    Off,
}

/// Which request field carries the completion cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokensParam {
    /// `max_tokens`: every OpenAI-compatible server (vLLM, Ollama,
    /// llama.cpp, LM Studio) and OpenAI's older models.
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's reasoning models refuse `max_tokens`.
    MaxCompletionTokens,
}

impl TokensParam {
    pub fn as_str(self) -> &'static str {
        match self {
            TokensParam::MaxTokens => "max_tokens",
            TokensParam::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

impl JsonMode {
    /// The value of `KILN_LLM_JSON_MODE` that selects this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            JsonMode::Object => "json_object",
            JsonMode::Schema => "json_schema",
            JsonMode::Off => "off",
        }
    }
}

/// Price of a model's tokens, US dollars per million.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub prompt_per_mtok: f64,
    pub completion_per_mtok: f64,
}

/// Which sandbox backend runs untrusted code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxKind {
    /// bubblewrap, a process per run (fast; Linux namespaces).
    Process,
    /// A Docker container per run, through the engine's API (bollard).
    Docker,
}

/// Whether the dispatcher's `/v1` routes demand a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every `/v1` request needs `Authorization: Bearer <token>` with a scope
    /// that allows it (see [`crate::auth`]).
    Required,
    /// No token is asked for. Only for a dispatcher listening on loopback
    /// (development, tests): [`crate::dispatcher::Dispatcher::build`] refuses it
    /// on any other address.
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// All of Kiln's configuration. Each process reads the parts it needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `KILN_DATABASE_URL` (default `postgres://127.0.0.1:5432/kiln`): the
    /// system of record; created and migrated at start-up if missing.
    pub database_url: String,
    /// `KILN_REDIS_URL` (default `redis://127.0.0.1:6379`): queue delivery only.
    pub redis_url: String,
    /// `KILN_QUEUE` (default `kiln`): namespace of every Redis key, so several
    /// deployments or test runs can share one Redis.
    pub queue: String,
    /// `KILN_HTTP_ADDR` (default `127.0.0.1:8080`): dispatcher listen address.
    pub http_addr: SocketAddr,
    /// `KILN_AUTH` (`required` or `off`, default `required`): whether the
    /// API asks for bearer tokens. `off` is refused unless `KILN_HTTP_ADDR`
    /// is a loopback address.
    pub auth: AuthMode,
    /// `KILN_LOG` (default: `RUST_LOG`, else `info`): which logs are
    /// written, as a `tracing` filter (`info,kiln::llm=debug`).
    pub log_filter: String,
    /// `KILN_LOG_FORMAT` (`text` or `json`, default `text`).
    pub log_format: LogFormat,
    pub llm: LlmSettings,
    pub worker: WorkerSettings,
    pub sandbox: SandboxSettings,
    pub feeder: FeederSettings,
    pub api: ApiSettings,
}

/// How the worker reaches the model provider.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// `KILN_LLM_PROVIDER` (`openai` or `anthropic`, default `openai`).
    pub provider: LlmProvider,
    /// `KILN_LLM_BASE_URL` (default: the provider's public URL). Point it at a
    /// vLLM or Ollama server, or at `kiln-mock-llm`.
    pub base_url: String,
    /// `KILN_LLM_API_KEY`, or the contents of the file named by
    /// `KILN_LLM_API_KEY_FILE`. Never stored, logged, prompted or passed on.
    pub api_key: Option<SecretString>,
    /// `KILN_LLM_MODEL`: model used when a batch names none.
    pub model: Option<String>,
    /// `KILN_LLM_MAX_TOKENS` (default 8192): completion cap per request.
    pub max_tokens: u32,
    /// `KILN_LLM_TOKENS_PARAM` (`max_tokens` or `max_completion_tokens`,
    /// default `max_tokens`): the field the cap is sent in
    /// (OpenAI-compatible providers; Anthropic always takes `max_tokens`).
    pub tokens_param: TokensParam,
    /// `KILN_LLM_TEMPERATURE` (default 0.2; `off` sends none, for models
    /// that accept only their own): sampling temperature of first requests.
    /// A retry whose answer repeated an earlier one is sent warmer.
    pub temperature: Option<f32>,
    /// `KILN_LLM_EXTRA_BODY` (default none): a JSON object (a table in the
    /// config file) whose fields are added to every request body, such as
    /// `{"reasoning_effort": "low"}`; they replace Kiln's own fields of the
    /// same name except [`RESERVED_BODY_FIELDS`]. A batch's
    /// `options.extra_body` is laid over it.
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// `KILN_LLM_MAX_IN_FLIGHT` (default 0 = no cap): requests in flight at
    /// once per provider across every worker, through Redis. Local servers
    /// have one or few slots; waiting for this cap does not count toward
    /// `KILN_LLM_TIMEOUT_S`.
    pub max_in_flight: u32,
    /// `KILN_LLM_TIMEOUT_S` (default 300): one request, headers to last byte.
    pub request_timeout: Duration,
    /// `KILN_LLM_MAX_RETRIES` (default 8): provider faults (429, 5xx,
    /// timeouts, resets) tolerated per attempt before the job fails with
    /// `llm_unavailable`. They never spend an attempt.
    pub max_retries: u32,
    /// `KILN_LLM_BACKOFF_MS` (default 500): first backoff; doubles per fault,
    /// with jitter, up to `KILN_LLM_BACKOFF_MAX_MS` (default 30000).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// `KILN_LLM_MAX_WAIT_S` (default 600): the longest wait a provider may
    /// ask for (`retry-after` and the like) that is honoured; a longer one
    /// (a date years ahead, `1e300` seconds) is cut to this, so a header can
    /// never park a job.
    pub max_wait: Duration,
    /// `KILN_LLM_JSON_MODE` (`json_object`, `json_schema` or `off`; default
    /// `json_object`).
    pub json_mode: JsonMode,
    /// `KILN_LLM_API_VERSION` (Azure only; default `2024-10-21`).
    pub api_version: String,
    /// `KILN_LLM_RPM` (default 0 = no limit): requests per minute per
    /// provider and model, shared by every worker through Redis.
    pub rpm: u32,
    /// `KILN_LLM_TPM` (default 0 = no limit): tokens per minute per provider
    /// and model (prompt estimate + `max_tokens`, as providers count them).
    pub tpm: u32,
    /// `KILN_LLM_BREAKER_FAILURES` (default 5): consecutive provider faults,
    /// across all workers, that open the circuit breaker.
    pub breaker_failures: u32,
    /// `KILN_LLM_BREAKER_COOLDOWN_S` (default 30): how long an open breaker
    /// keeps jobs waiting before the provider is tried again (doubles while
    /// it keeps failing, up to ten times this).
    pub breaker_cooldown: Duration,
    /// `KILN_LLM_PRICES`: `model=prompt/completion` US dollars per million
    /// tokens, comma-separated (`gpt-4o-mini=0.15/0.60,gpt-4o=2.5/10`).
    pub prices: std::collections::BTreeMap<String, Price>,
}

/// How a worker process runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `KILN_WORKER_CONCURRENCY` (default 16): jobs in flight per process.
    pub concurrency: usize,
    /// `KILN_WORKER_ID` (default: host name, pid and a random suffix). Must be
    /// unique per process: apalis-redis silently misbehaves when a restarted
    /// worker reuses a name.
    pub worker_id: Option<String>,
    /// `KILN_LEASE_TTL_S` (default 30): a lease not renewed for this long may
    /// be taken over by another worker. Renewed every third of it.
    pub lease_ttl: Duration,
    /// `KILN_SHUTDOWN_GRACE_S` (default 20): after SIGTERM, how long in-flight
    /// jobs may run before their leases are released for others to resume.
    pub shutdown_grace: Duration,
    /// `KILN_CRASH_LIMIT` (default 3): worker deaths blamed on a job (it was
    /// running inside the worker, or it panicked) before the job fails with
    /// `crash_loop`; deaths while it waited are counted but not blamed.
    pub crash_limit: u32,
    /// `KILN_SANDBOX_MAX_RETRIES` (default 3): sandbox infrastructure faults
    /// tolerated per attempt before the job fails with `sandbox_unavailable`.
    pub sandbox_max_retries: u32,
    /// `KILN_SANDBOX_BACKOFF_MS` (default 500) and `KILN_SANDBOX_BACKOFF_MAX_MS`
    /// (default 10000): the wait after a sandbox fault, doubling per fault up
    /// to the cap. Apart from the model's: a sandbox is this host's (a Docker
    /// engine restarting, a full disk) and recovers on its own clock.
    pub sandbox_backoff_base: Duration,
    pub sandbox_backoff_max: Duration,
    /// `KILN_WORKER_DB_CONNECTIONS` (default 8): the worker's Postgres pool,
    /// apart from its one liveness connection. Jobs hold a connection only
    /// for a statement or a short transaction, never across a model call or
    /// a sandbox run, so a few serve many jobs; every process's pool counts
    /// against the server's `max_connections` (100 by default).
    pub db_connections: u32,
    /// `KILN_WORKER_METRICS_ADDR` (default: none): where the worker serves
    /// its own `/metrics` (`0.0.0.0:9464` in a container); unset, it serves
    /// none. Each worker process needs its own port.
    pub metrics_addr: Option<SocketAddr>,
}

/// Limits and location of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// `KILN_SANDBOX` (`process` or `docker`, default `process`).
    pub kind: SandboxKind,
    /// `KILN_SANDBOX_RUNTIME` (default `/opt/kiln/sandbox`): the Python virtual
    /// environment built from `sandbox/requirements.txt` by
    /// `scripts/setup-sandbox-runtime`; mounted read-only into every run.
    pub runtime: PathBuf,
    /// `KILN_SANDBOX_IMAGE` (default `kiln-sandbox:latest`): the Docker backend's image.
    pub image: String,
    /// `KILN_SANDBOX_TIMEOUT_S` (default 60): wall clock per run unless the
    /// batch sets `options.timeout_s`; the whole process tree is killed after it.
    pub timeout: Duration,
    /// `KILN_SANDBOX_MEMORY_MB` (default 1024): memory per run.
    pub memory_mb: u64,
    /// `KILN_SANDBOX_PIDS` (default 256): processes and threads per run.
    pub pids: u64,
    /// `KILN_SANDBOX_TMPFS_MB` (default 128): size of the writable work dir.
    pub tmpfs_mb: u64,
    /// `KILN_SANDBOX_OUTPUT_KB` (default 256): captured output per stream;
    /// the rest is discarded while the run goes on.
    pub output_kb: u64,
    /// `KILN_SANDBOX_SLOTS` (default: the machine's cores): sandbox runs in
    /// progress at once per worker. Separate from `KILN_WORKER_CONCURRENCY`
    /// (jobs in flight, mostly waiting for the model), so that waiting for
    /// the model never oversubscribes the CPU with sandbox runs.
    pub slots: usize,
}

/// The dispatcher's feeder and reconciler.
#[derive(Debug, Clone)]
pub struct FeederSettings {
    /// `KILN_QUEUE_WINDOW` (default 1000): most jobs waiting in Redis per
    /// queue (apalis-redis 1.0 breaks with ~8,000 due at once).
    pub window: usize,
    /// `KILN_FEEDER_TICK_MS` (default 250).
    pub tick: Duration,
    /// `KILN_REDELIVER_AFTER_S` (default 900): a job waiting in Redis for this
    /// long is sent again in case its message was lost (duplicates are refused).
    pub redeliver_after: Duration,
}

/// Default of `KILN_MAX_BODY_MB`; also what `kiln validate` checks
/// against, offline.
pub const DEFAULT_MAX_BODY_MB: usize = 64;
/// Default of `KILN_MAX_SPECS`.
pub const DEFAULT_MAX_SPECS: usize = 50_000;
/// Default of `KILN_MAX_SPEC_KB`.
pub const DEFAULT_MAX_SPEC_KB: usize = 256;

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `KILN_MAX_BODY_MB` (default 64): largest request body.
    pub max_body_bytes: usize,
    /// `KILN_MAX_SPECS` (default 50000): most specs per batch.
    pub max_specs: usize,
    /// `KILN_MAX_SPEC_KB` (default 256): largest single spec (as JSON).
    pub max_spec_bytes: usize,
    /// `KILN_HTTP_BODY_TIMEOUT_S` (default 30): time to receive a request's
    /// whole body; then 408 and the connection is closed.
    pub body_timeout: Duration,
}

/// Every setting's variable: the one list of names. [`Source`] refuses to
/// read a name missing from it, so a new setting cannot be forgotten here;
/// a `KILN_…` variable that is neither listed nor in [`NOT_SETTINGS`] stops
/// start-up naming the closest setting; and the config file's keys are
/// exactly these names without `KILN_`, in lower case, so every setting can
/// be given either way.
pub const SETTINGS: &[&str] = &[
    "KILN_DATABASE_URL",
    "KILN_REDIS_URL",
    "KILN_QUEUE",
    "KILN_HTTP_ADDR",
    "KILN_AUTH",
    "KILN_LOG",
    "KILN_LOG_FORMAT",
    "KILN_LLM_PROVIDER",
    "KILN_LLM_BASE_URL",
    "KILN_LLM_API_KEY",
    "KILN_LLM_API_KEY_FILE",
    "KILN_LLM_MODEL",
    "KILN_LLM_MAX_TOKENS",
    "KILN_LLM_TOKENS_PARAM",
    "KILN_LLM_TEMPERATURE",
    "KILN_LLM_EXTRA_BODY",
    "KILN_LLM_MAX_IN_FLIGHT",
    "KILN_LLM_TIMEOUT_S",
    "KILN_LLM_MAX_RETRIES",
    "KILN_LLM_BACKOFF_MS",
    "KILN_LLM_BACKOFF_MAX_MS",
    "KILN_LLM_MAX_WAIT_S",
    "KILN_LLM_JSON_MODE",
    "KILN_LLM_API_VERSION",
    "KILN_LLM_RPM",
    "KILN_LLM_TPM",
    "KILN_LLM_BREAKER_FAILURES",
    "KILN_LLM_BREAKER_COOLDOWN_S",
    "KILN_LLM_PRICES",
    "KILN_WORKER_CONCURRENCY",
    "KILN_WORKER_ID",
    "KILN_LEASE_TTL_S",
    "KILN_SHUTDOWN_GRACE_S",
    "KILN_CRASH_LIMIT",
    "KILN_SANDBOX_MAX_RETRIES",
    "KILN_SANDBOX_BACKOFF_MS",
    "KILN_SANDBOX_BACKOFF_MAX_MS",
    "KILN_WORKER_DB_CONNECTIONS",
    "KILN_WORKER_METRICS_ADDR",
    "KILN_SANDBOX",
    "KILN_SANDBOX_RUNTIME",
    "KILN_SANDBOX_IMAGE",
    "KILN_SANDBOX_TIMEOUT_S",
    "KILN_SANDBOX_MEMORY_MB",
    "KILN_SANDBOX_PIDS",
    "KILN_SANDBOX_TMPFS_MB",
    "KILN_SANDBOX_OUTPUT_KB",
    "KILN_SANDBOX_SLOTS",
    "KILN_QUEUE_WINDOW",
    "KILN_FEEDER_TICK_MS",
    "KILN_REDELIVER_AFTER_S",
    "KILN_MAX_BODY_MB",
    "KILN_MAX_SPECS",
    "KILN_MAX_SPEC_KB",
    "KILN_HTTP_BODY_TIMEOUT_S",
];

/// `KILN_…` variables that are not settings yet belong in a Kiln process's
/// environment, so they do not stop it: `KILN_CONFIG` (names the file); the
/// CLI's `KILN_URL` and `KILN_TOKEN` (one shell often runs both); the
/// test-only fault markers ([`crate::fault`]); and the knobs of tests,
/// benches, scripts and docker compose, whose environment reaches the
/// binaries they start. A test scans the repository for `KILN_` names, so a
/// new knob elsewhere cannot silently stop the binaries.
pub const NOT_SETTINGS: &[&str] = &[
    "KILN_CONFIG",
    "KILN_URL",
    "KILN_TOKEN",
    "KILN_FAULT_ABORT_MARKER",
    "KILN_FAULT_PANIC_MARKER",
    "KILN_FUZZ_SEED",
    "KILN_HUMANEVAL",
    "KILN_CI_TARGET_DIR",
    "KILN_DEBIAN_MIRROR",
    "KILN_SANDBOX_PYTHON",
    "KILN_MODEL_VENV",
    "KILN_MODEL_BUILD_PYTHON",
    "KILN_BUILD_TARGET",
    "KILN_PORT",
    "KILN_POSTGRES_IMAGE",
    "KILN_REDIS_IMAGE",
    "KILN_DOCKER_GID",
];

/// Prefixes of the knobs of tests, benches, the demo script and
/// `kiln-mock-llm`: whole families, let through like [`NOT_SETTINGS`].
pub const NOT_SETTINGS_PREFIXES: &[&str] = &["KILN_TEST_", "KILN_BENCH_", "KILN_CHAOS_", "KILN_DEMO_", "KILN_MOCK_"];

/// Request body fields Kiln owns: an extra body (`KILN_LLM_EXTRA_BODY`,
/// `options.extra_body`) may not replace them, since Kiln depends on what
/// it sent there (the model it records and prices, the conversation, a
/// whole non-streamed answer).
pub const RESERVED_BODY_FIELDS: &[&str] = &["model", "messages", "stream"];

/// Checks an extra request body: a JSON object that leaves Kiln's own
/// fields alone.
pub fn check_extra_body(body: &serde_json::Value) -> Result<&serde_json::Map<String, serde_json::Value>, String> {
    let map = body
        .as_object()
        .ok_or_else(|| "expected a JSON object of request fields".to_owned())?;
    if let Some(field) = RESERVED_BODY_FIELDS.iter().find(|f| map.contains_key(**f)) {
        return Err(format!(
            "{field:?} is set by Kiln and cannot be replaced (reserved: {})",
            RESERVED_BODY_FIELDS.join(", ")
        ));
    }
    Ok(map)
}

/// Whether a `KILN_…` variable may be in the environment.
fn is_known_var(name: &str) -> bool {
    SETTINGS.contains(&name)
        || NOT_SETTINGS.contains(&name)
        || NOT_SETTINGS_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The candidate closest to `name` by edit distance (the first on a tie).
fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> &'a str {
    candidates
        .into_iter()
        .min_by_key(|c| strsim::levenshtein(name, c))
        .expect("SETTINGS is not empty")
}

/// The config file's key for a setting's variable.
fn file_key(var: &str) -> String {
    var.trim_start_matches("KILN_").to_ascii_lowercase()
}

/// Refuses unknown `KILN_…` variables, each named with its closest setting.
fn check_var_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let mut unknown: Vec<&str> = names.filter(|n| n.starts_with("KILN_") && !is_known_var(n)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    let listed = unknown
        .iter()
        .map(|name| {
            let suggestion = closest(name, SETTINGS.iter().chain(&["KILN_CONFIG"]).copied());
            format!("{name} (did you mean {suggestion}?)")
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(ConfigError::UnknownVar { names: listed })
}

impl Settings {
    /// Loads settings from the process environment (and `KILN_CONFIG`).
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_vars(std::env::vars())
    }

    /// Loads settings from the given variables (and the file named by their
    /// `KILN_CONFIG`, if any); the seam tests use. An unknown `KILN_…`
    /// variable or file key is an error naming the closest setting: a typo
    /// silently ignored would leave a default in force.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = vars.into_iter().collect();
        check_var_names(env.keys().map(String::as_str))?;
        let mut source = match env.get("KILN_CONFIG") {
            Some(path) => read_file(PathBuf::from(path))?,
            None => HashMap::new(),
        };
        let rust_log = env.get("RUST_LOG").filter(|v| !v.is_empty()).cloned();
        source.extend(env.into_iter().filter(|(k, _)| SETTINGS.contains(&k.as_str())));
        let src = Source(source);
        Ok(Settings {
            database_url: src.string("KILN_DATABASE_URL", "postgres://127.0.0.1:5432/kiln"),
            redis_url: src.string("KILN_REDIS_URL", "redis://127.0.0.1:6379"),
            queue: src.string("KILN_QUEUE", "kiln"),
            http_addr: src.parse("KILN_HTTP_ADDR", "127.0.0.1:8080".parse().expect("valid default"))?,
            auth: src.choice("KILN_AUTH", &[("required", AuthMode::Required), ("off", AuthMode::Off)])?,
            log_filter: src.get("KILN_LOG").or(rust_log).unwrap_or_else(|| "info".to_owned()),
            log_format: src.choice(
                "KILN_LOG_FORMAT",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?,
            llm: LlmSettings::read(&src)?,
            worker: WorkerSettings::read(&src)?,
            sandbox: SandboxSettings::read(&src)?,
            feeder: FeederSettings {
                window: src.positive("KILN_QUEUE_WINDOW", 1000)?,
                tick: src.millis("KILN_FEEDER_TICK_MS", 250)?,
                redeliver_after: src.secs("KILN_REDELIVER_AFTER_S", 900)?,
            },
            api: ApiSettings {
                max_body_bytes: src.positive::<usize>("KILN_MAX_BODY_MB", DEFAULT_MAX_BODY_MB)? * 1024 * 1024,
                max_specs: src.positive("KILN_MAX_SPECS", DEFAULT_MAX_SPECS)?,
                max_spec_bytes: src.positive::<usize>("KILN_MAX_SPEC_KB", DEFAULT_MAX_SPEC_KB)? * 1024,
                body_timeout: src.secs("KILN_HTTP_BODY_TIMEOUT_S", 30)?,
            },
        })
    }
}

impl LlmSettings {
    fn read(src: &Source) -> Result<LlmSettings, ConfigError> {
        let provider = src.choice(
            "KILN_LLM_PROVIDER",
            &[
                ("openai", LlmProvider::OpenAi),
                ("azure", LlmProvider::Azure),
                ("anthropic", LlmProvider::Anthropic),
            ],
        )?;
        if provider == LlmProvider::Azure && src.get("KILN_LLM_BASE_URL").is_none() {
            return Err(ConfigError::Invalid {
                var: "KILN_LLM_BASE_URL",
                message: "required with KILN_LLM_PROVIDER=azure (https://RESOURCE.openai.azure.com)".into(),
            });
        }
        let prices = match src.get("KILN_LLM_PRICES") {
            None => std::collections::BTreeMap::new(),
            Some(raw) => parse_prices(&raw).map_err(|message| ConfigError::Invalid {
                var: "KILN_LLM_PRICES",
                message,
            })?,
        };
        Ok(LlmSettings {
            provider,
            base_url: src
                .string("KILN_LLM_BASE_URL", provider.default_base_url())
                .trim_end_matches('/')
                .to_owned(),
            api_key: read_api_key(src)?,
            model: src.get("KILN_LLM_MODEL"),
            max_tokens: src.positive("KILN_LLM_MAX_TOKENS", 8192)?,
            tokens_param: src.choice(
                "KILN_LLM_TOKENS_PARAM",
                &[
                    ("max_tokens", TokensParam::MaxTokens),
                    ("max_completion_tokens", TokensParam::MaxCompletionTokens),
                ],
            )?,
            temperature: read_temperature(src)?,
            extra_body: read_extra_body(src)?,
            max_in_flight: src.parse("KILN_LLM_MAX_IN_FLIGHT", 0)?,
            request_timeout: src.secs("KILN_LLM_TIMEOUT_S", 300)?,
            max_retries: src.parse("KILN_LLM_MAX_RETRIES", 8)?,
            backoff_base: src.millis("KILN_LLM_BACKOFF_MS", 500)?,
            backoff_max: src.millis("KILN_LLM_BACKOFF_MAX_MS", 30_000)?,
            max_wait: src.secs("KILN_LLM_MAX_WAIT_S", 600)?,
            json_mode: src.choice(
                "KILN_LLM_JSON_MODE",
                &[
                    ("json_object", JsonMode::Object),
                    ("json_schema", JsonMode::Schema),
                    ("off", JsonMode::Off),
                ],
            )?,
            api_version: src.string("KILN_LLM_API_VERSION", "2024-10-21"),
            rpm: src.parse("KILN_LLM_RPM", 0)?,
            tpm: src.parse("KILN_LLM_TPM", 0)?,
            breaker_failures: src.positive("KILN_LLM_BREAKER_FAILURES", 5)?,
            breaker_cooldown: src.secs("KILN_LLM_BREAKER_COOLDOWN_S", 30)?,
            prices,
        })
    }
}

/// `KILN_LLM_API_KEY`, else the contents of `KILN_LLM_API_KEY_FILE`.
fn read_api_key(src: &Source) -> Result<Option<SecretString>, ConfigError> {
    match (src.get("KILN_LLM_API_KEY"), src.get("KILN_LLM_API_KEY_FILE")) {
        (Some(key), _) => Ok(Some(SecretString::from(key))),
        (None, Some(path)) => {
            let key = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                var: "KILN_LLM_API_KEY_FILE",
                message: format!("reading {path}: {e}"),
            })?;
            Ok(Some(SecretString::from(key.trim().to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// `KILN_LLM_TEMPERATURE`: 0 to 2, or `off` for none.
fn read_temperature(src: &Source) -> Result<Option<f32>, ConfigError> {
    match src.get("KILN_LLM_TEMPERATURE").as_deref().map(str::trim) {
        None => Ok(Some(0.2)),
        Some("off") => Ok(None),
        Some(raw) => match raw.parse::<f32>() {
            Ok(t) if (0.0..=2.0).contains(&t) => Ok(Some(t)),
            _ => Err(ConfigError::Invalid {
                var: "KILN_LLM_TEMPERATURE",
                message: format!("{raw:?}: expected a number from 0 to 2, or \"off\""),
            }),
        },
    }
}

/// `KILN_LLM_EXTRA_BODY`: a JSON object (a table in the config file).
fn read_extra_body(src: &Source) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let var = "KILN_LLM_EXTRA_BODY";
    let Some(raw) = src.get(var) else {
        return Ok(serde_json::Map::new());
    };
    let invalid = |message: String| ConfigError::Invalid { var, message };
    let value: serde_json::Value = serde_json::from_str(&raw).map_err(|e| invalid(format!("{raw:?}: {e}")))?;
    check_extra_body(&value).cloned().map_err(invalid)
}

impl WorkerSettings {
    fn read(src: &Source) -> Result<WorkerSettings, ConfigError> {
        Ok(WorkerSettings {
            concurrency: src.positive("KILN_WORKER_CONCURRENCY", 16)?,
            worker_id: src.get("KILN_WORKER_ID"),
            lease_ttl: src.secs("KILN_LEASE_TTL_S", 30)?,
            shutdown_grace: src.secs("KILN_SHUTDOWN_GRACE_S", 20)?,
            crash_limit: src.parse("KILN_CRASH_LIMIT", 3)?,
            sandbox_max_retries: src.parse("KILN_SANDBOX_MAX_RETRIES", 3)?,
            sandbox_backoff_base: src.millis("KILN_SANDBOX_BACKOFF_MS", 500)?,
            sandbox_backoff_max: src.millis("KILN_SANDBOX_BACKOFF_MAX_MS", 10_000)?,
            db_connections: src.positive("KILN_WORKER_DB_CONNECTIONS", 8)?,
            metrics_addr: match src.get("KILN_WORKER_METRICS_ADDR") {
                None => None,
                Some(raw) => Some(raw.trim().parse().map_err(|e| ConfigError::Invalid {
                    var: "KILN_WORKER_METRICS_ADDR",
                    message: format!("{raw:?}: {e} (expected an address and port, such as 0.0.0.0:9464)"),
                })?),
            },
        })
    }
}

impl SandboxSettings {
    fn read(src: &Source) -> Result<SandboxSettings, ConfigError> {
        Ok(SandboxSettings {
            kind: src.choice(
                "KILN_SANDBOX",
                &[("process", SandboxKind::Process), ("docker", SandboxKind::Docker)],
            )?,
            runtime: PathBuf::from(src.string("KILN_SANDBOX_RUNTIME", "/opt/kiln/sandbox")),
            image: src.string("KILN_SANDBOX_IMAGE", "kiln-sandbox:latest"),
            timeout: src.secs("KILN_SANDBOX_TIMEOUT_S", 60)?,
            memory_mb: src.positive("KILN_SANDBOX_MEMORY_MB", 1024)?,
            pids: src.positive("KILN_SANDBOX_PIDS", 256)?,
            tmpfs_mb: src.positive("KILN_SANDBOX_TMPFS_MB", 128)?,
            output_kb: src.positive("KILN_SANDBOX_OUTPUT_KB", 256)?,
            slots: src.positive(
                "KILN_SANDBOX_SLOTS",
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )?,
        })
    }
}

/// Parses `model=prompt/completion,…` (US dollars per million tokens).
fn parse_prices(raw: &str) -> Result<std::collections::BTreeMap<String, Price>, String> {
    let mut out = std::collections::BTreeMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (model, price) = entry
            .rsplit_once('=')
            .ok_or_else(|| format!("{entry:?}: expected model=prompt/completion"))?;
        let (prompt, completion) = price
            .split_once('/')
            .ok_or_else(|| format!("{entry:?}: expected model=prompt/completion"))?;
        let number = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{entry:?}: {s:?} is not a price"))
        };
        out.insert(
            model.trim().to_owned(),
            Price {
                prompt_per_mtok: number(prompt)?,
                completion_per_mtok: number(completion)?,
            },
        );
    }
    Ok(out)
}

/// Reads a TOML config file into `KILN_…` variables. Every key must be a
/// setting's; a table (`llm_extra_body = { reasoning_effort = "low" }`)
/// becomes its JSON text.
fn read_file(path: PathBuf) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::File {
        path: path.clone(),
        error,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::FileFormat {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (key, value) in table {
        let var = format!("KILN_{}", key.to_ascii_uppercase());
        if !SETTINGS.contains(&var.as_str()) {
            let suggestion = file_key(closest(&var, SETTINGS.iter().copied()));
            return Err(ConfigError::UnknownKey { path, key, suggestion });
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(t) => serde_json::to_string(&t).expect("a TOML table is JSON"),
            other => {
                return Err(ConfigError::FileFormat {
                    path,
                    message: format!(
                        "{key}: expected a string, number, boolean or table, found {}",
                        other.type_str()
                    ),
                });
            }
        };
        out.insert(var, value);
    }
    Ok(out)
}

/// The merged settings (file, then environment), read by variable name.
struct Source(HashMap<String, String>);

impl Source {
    fn get(&self, var: &str) -> Option<String> {
        // Every read goes through here: a setting missing from SETTINGS
        // would be refused as unknown, so fail the first test that reads it.
        debug_assert!(SETTINGS.contains(&var), "{var} is read but missing from SETTINGS");
        self.0.get(var).filter(|v| !v.is_empty()).cloned()
    }

    /// One of a fixed set of words; the first is the default.
    fn choice<T: Copy>(&self, var: &'static str, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(choices[0].1);
        };
        if let Some((_, value)) = choices.iter().find(|(word, _)| *word == raw) {
            return Ok(*value);
        }
        let words: Vec<String> = choices.iter().map(|(word, _)| format!("{word:?}")).collect();
        let (last, rest) = words.split_last().expect("choices are not empty");
        Err(ConfigError::Invalid {
            var,
            message: format!("unknown value {raw:?}, expected {} or {last}", rest.join(", ")),
        })
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or_else(|| default.to_owned())
    }

    fn parse<T: FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                var,
                message: format!("{raw:?}: {e}"),
            }),
        }
    }

    fn positive<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialEq + Default,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(var, default)?;
        if value == T::default() {
            return Err(ConfigError::Invalid {
                var,
                message: "must be greater than zero".into(),
            });
        }
        Ok(value)
    }

    fn secs(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        let value: f64 = self.parse(var, default as f64)?;
        if !(value.is_finite() && value > 0.0) {
            return Err(ConfigError::Invalid {
                var,
                message: "must be a positive number of seconds".into(),
            });
        }
        Duration::try_from_secs_f64(value).map_err(|_| ConfigError::Invalid {
            var,
            message: "too many seconds".into(),
        })
    }

    fn millis(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.positive(var, default)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_match_the_architecture_table() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.database_url, "postgres://127.0.0.1:5432/kiln");
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(s.queue, "kiln");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.auth, AuthMode::Required);
        assert_eq!(s.llm.provider, LlmProvider::OpenAi);
        assert_eq!(s.llm.base_url, "https://api.openai.com/v1");
        assert!(s.llm.api_key.is_none());
        assert_eq!(s.worker.concurrency, 16);
        assert_eq!(s.sandbox.kind, SandboxKind::Process);
        assert_eq!(s.feeder.window, 1000);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Settings::from_vars(vars(&[("KILN_WORKER_CONCURRENCY", "many")])).unwrap_err();
        assert!(
            err.to_string().starts_with("KILN_WORKER_CONCURRENCY: \"many\""),
            "{err}"
        );
        let err = Settings::from_vars(vars(&[("KILN_SANDBOX", "vm")])).unwrap_err();
        assert!(err.to_string().starts_with("KILN_SANDBOX:"), "{err}");
        let err = Settings::from_vars(vars(&[("KILN_AUTH", "none")])).unwrap_err();
        assert!(err.to_string().starts_with("KILN_AUTH:"), "{err}");
        let err = Settings::from_vars(vars(&[("KILN_QUEUE_WINDOW", "0")])).unwrap_err();
        assert!(err.to_string().contains("greater than zero"), "{err}");
    }

    /// A TOML file in a fresh directory; removed with the directory by the caller.
    fn config_file(text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("kiln-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kiln.toml");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    #[test]
    fn a_typo_in_a_variable_stops_loading_naming_it_and_the_closest_setting() {
        let err = Settings::from_vars(vars(&[("KILN_WORKER_CONCURENCY", "8")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable KILN_WORKER_CONCURENCY (did you mean KILN_WORKER_CONCURRENCY?); \
             every setting is listed in .env.example"
        );
        let err = Settings::from_vars(vars(&[("KILN_SANBOX_PIDS", "8"), ("KILN_CONFG", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable KILN_CONFG (did you mean KILN_CONFIG?), \
             KILN_SANBOX_PIDS (did you mean KILN_SANDBOX_PIDS?); every setting is listed in .env.example"
        );
    }

    #[test]
    fn a_typo_in_a_config_file_key_stops_loading_naming_it_and_the_closest_key() {
        for (text, key, suggestion) in [
            ("worker_concurency = 8\n", "worker_concurency", "worker_concurrency"),
            // Not settings: the file cannot name another file, nor hold the CLI's token.
            ("config = \"other.toml\"\n", "config", "log"),
            ("token = \"kiln_x\"\n", "token", "log"),
        ] {
            let (dir, file) = config_file(text);
            let err = Settings::from_vars(vars(&[("KILN_CONFIG", file.to_str().unwrap())])).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "config file {}: unknown key {key} (did you mean {suggestion}?)",
                    file.display()
                )
            );
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn variables_of_other_programs_tests_and_scripts_do_not_stop_loading() {
        let s = Settings::from_vars(vars(&[
            ("KILN_TOKEN", "kiln_x"),
            ("KILN_URL", "http://127.0.0.1:8080"),
            ("KILN_FAULT_ABORT_MARKER", "M"),
            ("KILN_TEST_POSTGRES", "postgres://x"),
            ("KILN_BENCH_JOBS", "10"),
            ("KILN_CHAOS_LOCAL", "1"),
            ("KILN_MOCK_ADDR", "127.0.0.1:1"),
            ("KILN_DEMO_HTTP_ADDR", "127.0.0.1:1"),
            ("KILN_SANDBOX_PYTHON", "/usr/bin/python3"),
            ("OTHER_PROGRAM_SETTING", "x"),
        ]))
        .unwrap();
        assert_eq!(s.queue, "kiln");
    }

    #[test]
    fn every_kiln_name_in_the_deployment_examples_is_a_setting() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for file in ["deploy/k8s/kiln.yaml", "docker-compose.yml", ".env.example"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            for (at, _) in text.match_indices("KILN_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // A prefix named in prose (`KILN_TEST_*`), or compose's own
                // interpolation variables: not settings.
                if name.ends_with('_')
                    || [
                        "KILN_BUILD_TARGET",
                        "KILN_PORT",
                        "KILN_POSTGRES_IMAGE",
                        "KILN_REDIS_IMAGE",
                        "KILN_DOCKER_GID",
                    ]
                    .contains(&name.as_str())
                {
                    continue;
                }
                assert!(
                    SETTINGS.contains(&name.as_str())
                        || name == "KILN_CONFIG"
                        || name == "KILN_TOKEN"
                        || name == "KILN_URL",
                    "{file} names {name}, which is not a setting"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} names found");
    }

    /// A valid value other than the default for every setting.
    fn example_values(key_file: &str) -> Vec<(&'static str, String)> {
        [
            ("KILN_DATABASE_URL", "postgres://db/other"),
            ("KILN_REDIS_URL", "redis://other:6379"),
            ("KILN_QUEUE", "other"),
            ("KILN_HTTP_ADDR", "127.0.0.1:9999"),
            ("KILN_AUTH", "off"),
            ("KILN_LOG", "debug"),
            ("KILN_LOG_FORMAT", "json"),
            ("KILN_LLM_PROVIDER", "anthropic"),
            ("KILN_LLM_BASE_URL", "http://llm.local/v1"),
            ("KILN_LLM_API_KEY", "sk-example"),
            ("KILN_LLM_API_KEY_FILE", key_file),
            ("KILN_LLM_MODEL", "m"),
            ("KILN_LLM_MAX_TOKENS", "100"),
            ("KILN_LLM_TOKENS_PARAM", "max_completion_tokens"),
            ("KILN_LLM_TEMPERATURE", "off"),
            ("KILN_LLM_EXTRA_BODY", r#"{"reasoning_effort": "low"}"#),
            ("KILN_LLM_MAX_IN_FLIGHT", "2"),
            ("KILN_LLM_TIMEOUT_S", "7"),
            ("KILN_LLM_MAX_RETRIES", "1"),
            ("KILN_LLM_BACKOFF_MS", "7"),
            ("KILN_LLM_BACKOFF_MAX_MS", "70"),
            ("KILN_LLM_MAX_WAIT_S", "7"),
            ("KILN_LLM_JSON_MODE", "off"),
            ("KILN_LLM_API_VERSION", "2025-01-01"),
            ("KILN_LLM_RPM", "60"),
            ("KILN_LLM_TPM", "6000"),
            ("KILN_LLM_BREAKER_FAILURES", "2"),
            ("KILN_LLM_BREAKER_COOLDOWN_S", "7"),
            ("KILN_LLM_PRICES", "m=1/2"),
            ("KILN_WORKER_CONCURRENCY", "3"),
            ("KILN_WORKER_ID", "w-1"),
            ("KILN_LEASE_TTL_S", "7"),
            ("KILN_SHUTDOWN_GRACE_S", "7"),
            ("KILN_CRASH_LIMIT", "9"),
            ("KILN_SANDBOX_MAX_RETRIES", "9"),
            ("KILN_SANDBOX_BACKOFF_MS", "7"),
            ("KILN_SANDBOX_BACKOFF_MAX_MS", "70"),
            ("KILN_WORKER_DB_CONNECTIONS", "3"),
            ("KILN_WORKER_METRICS_ADDR", "127.0.0.1:9464"),
            ("KILN_SANDBOX", "docker"),
            ("KILN_SANDBOX_RUNTIME", "/elsewhere"),
            ("KILN_SANDBOX_IMAGE", "other:1"),
            ("KILN_SANDBOX_TIMEOUT_S", "7"),
            ("KILN_SANDBOX_MEMORY_MB", "7"),
            ("KILN_SANDBOX_PIDS", "7"),
            ("KILN_SANDBOX_TMPFS_MB", "7"),
            ("KILN_SANDBOX_OUTPUT_KB", "7"),
            ("KILN_SANDBOX_SLOTS", "977"),
            ("KILN_QUEUE_WINDOW", "7"),
            ("KILN_FEEDER_TICK_MS", "7"),
            ("KILN_REDELIVER_AFTER_S", "7"),
            ("KILN_MAX_BODY_MB", "7"),
            ("KILN_MAX_SPECS", "7"),
            ("KILN_MAX_SPEC_KB", "7"),
            ("KILN_HTTP_BODY_TIMEOUT_S", "7"),
        ]
        .into_iter()
        .map(|(var, value)| (var, value.to_owned()))
        .collect()
    }

    #[test]
    fn every_setting_changes_the_settings_and_reads_alike_from_the_environment_and_the_file() {
        let (dir, key_file) = config_file("");
        std::fs::write(&key_file, "sk-from-file\n").unwrap();
        let examples = example_values(key_file.to_str().unwrap());
        let mut named: Vec<&str> = examples.iter().map(|(var, _)| *var).collect();
        let mut listed = SETTINGS.to_vec();
        named.sort_unstable();
        listed.sort_unstable();
        assert_eq!(named, listed, "every setting needs an example value here");
        let defaults = format!("{:?}", Settings::from_vars(vars(&[])).unwrap());
        for (var, value) in &examples {
            let from_env = format!("{:?}", Settings::from_vars(vars(&[(var, value)])).unwrap());
            assert_ne!(from_env, defaults, "{var}={value} changed nothing: is it read?");
            let file = dir.join("kiln.toml");
            std::fs::write(&file, format!("{} = '{value}'\n", file_key(var))).unwrap();
            let from_file = Settings::from_vars(vars(&[("KILN_CONFIG", file.to_str().unwrap())]))
                .unwrap_or_else(|e| panic!("{var} from the file: {e}"));
            assert_eq!(
                format!("{from_file:?}"),
                from_env,
                "{var} reads differently from the file"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_log_filter_is_a_setting_read_from_the_file_too_and_rust_log_comes_last() {
        let (dir, file) = config_file("log = \"warn\"\n");
        let path = file.to_str().unwrap();
        let filter = |pairs: &[(&str, &str)]| Settings::from_vars(vars(pairs)).unwrap().log_filter;
        assert_eq!(filter(&[]), "info");
        assert_eq!(filter(&[("RUST_LOG", "error")]), "error");
        assert_eq!(filter(&[("RUST_LOG", "error"), ("KILN_CONFIG", path)]), "warn");
        assert_eq!(
            filter(&[("RUST_LOG", "error"), ("KILN_CONFIG", path), ("KILN_LOG", "debug")]),
            "debug"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn extra_body_fields_are_an_object_from_json_or_a_toml_table_and_leave_kilns_fields_alone() {
        let s = Settings::from_vars(vars(&[("KILN_LLM_EXTRA_BODY", r#"{"reasoning_effort": "low"}"#)])).unwrap();
        assert_eq!(s.llm.extra_body["reasoning_effort"], "low");
        let (dir, file) = config_file("[llm_extra_body]\nreasoning_effort = \"high\"\ntop_p = 0.5\n");
        let s = Settings::from_vars(vars(&[("KILN_CONFIG", file.to_str().unwrap())])).unwrap();
        assert_eq!(
            serde_json::Value::Object(s.llm.extra_body),
            serde_json::json!({"reasoning_effort": "high", "top_p": 0.5})
        );
        std::fs::remove_dir_all(dir).unwrap();
        for (raw, message) in [
            ("[1]", "expected a JSON object of request fields"),
            (r#"{"model": "x"}"#, "\"model\" is set by Kiln and cannot be replaced"),
            ("{", "\"{\": EOF while parsing an object"),
        ] {
            let err = Settings::from_vars(vars(&[("KILN_LLM_EXTRA_BODY", raw)])).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("KILN_LLM_EXTRA_BODY: {message}")),
                "{err}"
            );
        }
    }

    /// Tests, benches, scripts and docker compose pass their environment on
    /// to the binaries they start: each `KILN_` name they use must be a
    /// setting or let through, or it would stop those binaries.
    #[test]
    fn every_kiln_variable_named_in_the_repository_is_a_setting_or_let_through() {
        // Names in the repository that are no variable: a constant of the
        // sandbox harness, one of the liveness SQL, values inside programs
        // run by tests, and the typos tests/config_processes.rs makes on
        // purpose (this file's own are skipped with it).
        const NOT_VARIABLES: &[&str] = &[
            "KILN_DIR",
            "KILN_LIVENESS_LOCK_CLASS",
            "KILN_LEFT_BEHIND",
            "KILN_NOT_SET",
            "KILN_WORKER_CONCURENCY",
        ];
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut pending: Vec<PathBuf> = [
            "src",
            "cli",
            "worker",
            "dispatcher",
            "mock-llm",
            "tests",
            "benches",
            "scripts",
            "sandbox",
            "migrations",
            ".ci",
        ]
        .iter()
        .map(|d| root.join(d))
        .chain(["docker-compose.yml", ".env.example", "Dockerfile", "README.md"].map(|f| root.join(f)))
        .collect();
        let word = regex::Regex::new(r"KILN_[A-Z0-9_]*").unwrap();
        let mut unknown = std::collections::BTreeSet::new();
        while let Some(path) = pending.pop() {
            if path.ends_with("src/config.rs") {
                continue;
            }
            if path.is_dir() {
                pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for name in word.find_iter(&text).map(|m| m.as_str()) {
                // Prefixes in prose (`KILN_LLM_…`) end in `_`.
                if !name.ends_with('_') && !is_known_var(name) && !NOT_VARIABLES.contains(&name) {
                    unknown.insert(format!("{name} ({})", path.strip_prefix(&root).unwrap().display()));
                }
            }
        }
        assert!(unknown.is_empty(), "neither settings nor let through: {unknown:?}");
    }

    #[test]
    fn the_environment_overrides_the_config_file() {
        let dir = std::env::temp_dir().join(format!("kiln-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kiln.toml");
        std::fs::write(&file, "queue = \"from-file\"\nworker_concurrency = 4\n").unwrap();
        let s = Settings::from_vars(vars(&[
            ("KILN_CONFIG", file.to_str().unwrap()),
            ("KILN_QUEUE", "from-env"),
        ]))
        .unwrap();
        assert_eq!(s.queue, "from-env");
        assert_eq!(s.worker.concurrency, 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn prices_are_read_per_model() {
        let s = Settings::from_vars(vars(&[("KILN_LLM_PRICES", "gpt-4o-mini=0.15/0.60, claude-x=3/15")])).unwrap();
        assert!((s.llm.prices["claude-x"].completion_per_mtok - 15.0).abs() < 1e-12);
        let err = Settings::from_vars(vars(&[("KILN_LLM_PRICES", "gpt=cheap")])).unwrap_err();
        assert!(err.to_string().starts_with("KILN_LLM_PRICES:"), "{err}");
    }

    #[test]
    fn request_parameters_are_read_and_bad_ones_name_their_variable() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.llm.temperature, Some(0.2));
        assert_eq!(s.llm.tokens_param, TokensParam::MaxTokens);
        assert_eq!(s.llm.max_in_flight, 0);
        let s = Settings::from_vars(vars(&[
            ("KILN_LLM_TEMPERATURE", "off"),
            ("KILN_LLM_TOKENS_PARAM", "max_completion_tokens"),
            ("KILN_LLM_MAX_IN_FLIGHT", "2"),
        ]))
        .unwrap();
        assert_eq!(s.llm.temperature, None);
        assert_eq!(s.llm.tokens_param, TokensParam::MaxCompletionTokens);
        assert_eq!(s.llm.max_in_flight, 2);
        for (var, value) in [
            ("KILN_LLM_TEMPERATURE", "hot"),
            ("KILN_LLM_TEMPERATURE", "3"),
            ("KILN_LLM_TOKENS_PARAM", "tokens"),
            ("KILN_LLM_MAX_TOKENS", "0"),
        ] {
            let err = Settings::from_vars(vars(&[(var, value)])).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{var}:")), "{err}");
        }
    }

    #[test]
    fn azure_needs_its_resource_url() {
        let err = Settings::from_vars(vars(&[("KILN_LLM_PROVIDER", "azure")])).unwrap_err();
        assert!(err.to_string().starts_with("KILN_LLM_BASE_URL:"), "{err}");
    }

    /// docker compose keeps the model key from every role but the workers
    /// by setting both variables empty over what .env gives them: empty
    /// must mean no key, not an empty key nor a file named "".
    #[test]
    fn an_empty_api_key_and_key_file_mean_no_key_even_over_the_config_file() {
        let (dir, file) = config_file("llm_api_key = \"sk-from-the-file\"\n");
        let config = file.to_str().unwrap();
        let with_file = Settings::from_vars(vars(&[("KILN_CONFIG", config)])).unwrap();
        assert_eq!(with_file.llm.api_key.unwrap().expose_secret(), "sk-from-the-file");
        let blanked = Settings::from_vars(vars(&[
            ("KILN_CONFIG", config),
            ("KILN_LLM_API_KEY", ""),
            ("KILN_LLM_API_KEY_FILE", ""),
        ]))
        .unwrap();
        assert!(blanked.llm.api_key.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_api_key_is_redacted_when_printed() {
        let s = Settings::from_vars(vars(&[("KILN_LLM_API_KEY", "sk-very-secret")])).unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("sk-very-secret"), "{printed}");
        assert_eq!(s.llm.api_key.unwrap().expose_secret(), "sk-very-secret");
    }
}
