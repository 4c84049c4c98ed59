//! The pre-flight check: `kiln-worker check`, also run in the background
//! when a worker starts.
//!
//! Each dependency is tried for real, the way the worker will use it: the
//! model with the smallest request carrying the configured provider, model,
//! JSON mode, token field and temperature; Postgres by connecting (and
//! migrating, as the worker does); Redis with a PING; the sandbox by judging
//! a one-line function in it. A failure says what was tried, the server's
//! own complaint, and the setting to change, so a setting the provider
//! rejects is found before any job is spent on it.

use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::files::File;
use crate::llm::{ChatRequest, LlmError, Message};
use crate::queue::guard_state::GuardState;
use crate::spec::{FunctionSpec, Spec, TestCase};
use crate::store::Store;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `model`, `postgres`, `redis` or `sandbox`.
    pub name: &'static str,
    pub ok: bool,
    /// What was found; on failure, the complaint and the setting to change.
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:<8} {}",
            if self.ok { "ok  " } else { "FAIL" },
            self.name,
            self.detail
        )
    }
}

/// Runs every check, each bounded in time, the model's last.
pub async fn run(settings: &Settings) -> Vec<Check> {
    vec![
        postgres(settings).await,
        redis(settings).await,
        sandbox(settings).await,
        model(settings).await,
    ]
}

/// What a worker checks at start-up, once it is built (so Postgres, Redis
/// and the sandbox already answered): the model, in the background so a
/// busy model server does not delay the worker, its failure logged as an
/// error naming the setting to change.
pub async fn log_model_check(settings: Settings) {
    let check = model(&settings).await;
    if check.ok {
        tracing::info!("pre-flight check of the model passed: {}", check.detail);
    } else {
        tracing::error!("pre-flight check of the model failed: {}", check.detail);
    }
}

fn check(name: &'static str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check { name, ok: true, detail },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}

async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err(format!("{what} did not answer within {limit:?}")))
}

async fn postgres(settings: &Settings) -> Check {
    let result = within(Duration::from_secs(30), "Postgres", async {
        let store = Store::connect(&settings.database_url, 1)
            .await
            .map_err(|e| format!("{}: check KILN_DATABASE_URL", crate::telemetry::error_chain(&e)))?;
        store.pool().close().await;
        Ok("reachable, schema up to date".to_owned())
    })
    .await;
    check("postgres", result)
}

async fn redis(settings: &Settings) -> Check {
    let result = within(Duration::from_secs(10), "Redis", async {
        let shared = GuardState::connect(&settings.redis_url, &settings.queue)
            .await
            .map_err(|e| format!("{e}: check KILN_REDIS_URL"))?;
        shared.ping().await.map_err(|e| format!("{e}: check KILN_REDIS_URL"))?;
        Ok(format!("{} answers", settings.redis_url))
    })
    .await;
    check("redis", result)
}

async fn sandbox(settings: &Settings) -> Check {
    let result = within(Duration::from_secs(120), "the sandbox", async {
        let fix = match settings.sandbox.kind {
            crate::config::SandboxKind::Process => {
                "check KILN_SANDBOX_RUNTIME (scripts/setup-sandbox-runtime builds it)"
            }
            crate::config::SandboxKind::Docker => "check KILN_SANDBOX_IMAGE and the Docker engine",
        };
        let sandbox = crate::sandbox::build(&settings.sandbox)
            .await
            .map_err(|e| format!("{e}: {fix}"))?;
        let spec = Spec::Function(FunctionSpec {
            task_description: "pre-flight".into(),
            entry_point: Some("ping".into()),
            prompt: None,
            input_types: None,
            output_type: None,
            constraints: vec![],
            test_cases: vec![TestCase {
                input: serde_json::json!([]),
                expected: serde_json::json!(1),
            }],
            test_code: None,
        });
        let files = [File::new("solution.py", "def ping():\n    return 1\n")];
        let limits = crate::sandbox::RunLimits::from_settings(&settings.sandbox);
        let outcome = crate::sandbox::harness::run_tests(sandbox.as_ref(), &spec, &files, &limits).await;
        sandbox.shutdown().await;
        let report = outcome.map_err(|e| format!("{e}: {fix}"))?;
        if report.all_passed() {
            Ok(format!("the {} sandbox judged a test function", sandbox.name()))
        } else {
            Err(format!(
                "the {} sandbox failed a function that returns 1: {}: {fix}",
                sandbox.name(),
                report
                    .problem
                    .unwrap_or_else(|| format!("{} of {} cases failed", report.failed, report.total))
            ))
        }
    })
    .await;
    check("sandbox", result)
}

/// Sends the smallest real request the worker would send.
pub async fn model(settings: &Settings) -> Check {
    let llm = &settings.llm;
    let Some(model) = llm.model.clone() else {
        // Not a failure: batches may name their model.
        return Check {
            name: "model",
            ok: true,
            detail: "not tried: KILN_LLM_MODEL is not set (every batch must name options.model)".into(),
        };
    };
    let client = match crate::llm::build(llm) {
        Ok(c) => c,
        Err(e) => {
            return Check {
                name: "model",
                ok: false,
                detail: e.to_string(),
            };
        }
    };
    let request = ChatRequest {
        model: model.clone(),
        messages: vec![
            Message::system("Answer with a JSON object only."),
            Message::user(r#"Reply with {"files": [], "notes": "ok"}."#),
        ],
        // Small, but not so small that a server refuses it outright.
        max_tokens: llm.max_tokens.min(16),
        temperature: llm.temperature,
        tokens_param: None,
        extra_body: serde_json::Map::new(),
        json: true,
        attempt_id: format!("preflight-{}", uuid::Uuid::new_v4().simple()),
    };
    let started = Instant::now();
    let sent = format!(
        "{} {} at {} (KILN_LLM_JSON_MODE={}, {}, temperature {})",
        llm.provider.as_str(),
        model,
        llm.base_url,
        llm.json_mode.as_str(),
        llm.tokens_param.as_str(),
        llm.temperature.map_or_else(|| "off".to_owned(), |t| t.to_string()),
    );
    let detail = match client.chat(&request).await {
        Ok(answer) => Ok(format!(
            "{sent} answered in {} ms ({} completion tokens)",
            started.elapsed().as_millis(),
            answer.usage.completion_tokens
        )),
        Err(e) => Err(format!("{sent}: {}", advice(&e))),
    };
    check("model", detail)
}

/// The error, with the setting to look at when the error does not name one.
fn advice(e: &LlmError) -> String {
    let hint = match e {
        LlmError::Misconfigured { .. } => return e.to_string(),
        LlmError::Transport(_) | LlmError::Timeout(_) => "check KILN_LLM_BASE_URL (and that the server is up)",
        LlmError::Auth { .. } => "check KILN_LLM_API_KEY",
        LlmError::Quota { .. } => "the account is out of credit",
        LlmError::Rejected { .. } => "check KILN_LLM_MODEL, KILN_LLM_JSON_MODE and KILN_LLM_TOKENS_PARAM",
        LlmError::MalformedBody(_) => {
            "check KILN_LLM_BASE_URL and KILN_LLM_PROVIDER (the answer is not the protocol's)"
        }
        LlmError::RateLimited { .. } | LlmError::Unavailable { .. } => "the server is busy or failing; try again",
    };
    format!("{e}: {hint}")
}
