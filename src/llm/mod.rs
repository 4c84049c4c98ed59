//! Talking to the model provider.
//!
//! [`LlmClient`] is the seam the pipeline calls; [`openai::OpenAiClient`]
//! speaks OpenAI-compatible chat completions over reqwest. Tests point it at a
//! real local HTTP server (`kiln-mock-llm`), never at a stand-in object.
//!
//! Errors are classified here, once, into what the pipeline must do with them
//! ([`LlmError::disposition`]): provider faults are retried under their own
//! limit and never spend an attempt (invariant 5); quota, auth and request
//! errors stop the job at once with a code that says why.

pub mod anthropic;
pub mod guard;
pub mod openai;
pub(crate) mod wire;

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::config::{JsonMode, LlmProvider, LlmSettings, TokensParam};
use crate::domain::{ErrorCode, TokenUsage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Message {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// One chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    /// Sampling temperature; `None` sends none (the model's own default).
    pub temperature: Option<f32>,
    /// The field that carries `max_tokens` (a batch's
    /// `options.tokens_param`); `None`: the client's `KILN_LLM_TOKENS_PARAM`.
    /// Anthropic always takes `max_tokens`.
    pub tokens_param: Option<TokensParam>,
    /// Fields laid over the body after `KILN_LLM_EXTRA_BODY` (a batch's
    /// `options.extra_body`).
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// Ask for a JSON object (provider's JSON mode where supported).
    pub json: bool,
    /// The attempt this request belongs to, sent as `X-Kiln-Attempt-Id` so
    /// provider-side logs (and the mock's duplicate counter) can tie requests
    /// to attempts. Not a secret.
    pub attempt_id: String,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub content: String,
    /// `stop`, `length` (truncated), …, as the provider reports it.
    pub finish_reason: Option<String>,
    pub usage: TokenUsage,
}

impl Answer {
    /// True when the provider cut the answer off at the token limit.
    pub fn truncated(&self) -> bool {
        matches!(self.finish_reason.as_deref(), Some("length" | "max_tokens"))
    }
}

/// Why a request produced no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// Connection refused or reset, DNS, TLS: the request may not have arrived.
    #[error("transport: {0}")]
    Transport(String),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// 429 rate limit; `retry_after` from the provider's headers when given.
    #[error("rate limited (HTTP 429){}", .retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, 529 overloaded.
    #[error("provider unavailable (HTTP {status}): {message}")]
    Unavailable { status: u16, message: String },
    /// A 2xx whose body is not the protocol's JSON (empty, cut, HTML…).
    #[error("malformed response body: {0}")]
    MalformedBody(String),
    /// Out of credit or quota: retrying cannot help.
    #[error("quota exhausted (HTTP {status}): {message}")]
    Quota { status: u16, message: String },
    /// Bad or missing API key, or no access to the model.
    #[error("not authorised (HTTP {status}): {message}")]
    Auth { status: u16, message: String },
    /// The provider refused the request itself (unknown model, too long…).
    #[error("request rejected (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// The provider refuses a parameter that a Kiln setting chose (the JSON
    /// mode, the token field, the temperature, the model): every request
    /// would fail the same way, so retrying cannot help. `fix` names the
    /// setting to change; some servers answer such a request with a 500.
    #[error("the server rejects {what} (HTTP {status}: {message}): {fix}")]
    Misconfigured {
        status: u16,
        what: String,
        message: String,
        fix: String,
    },
}

/// What the pipeline does with an [`LlmError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retry after backoff (at least the given delay, if any), counting
    /// against the provider-fault limit, not the attempt budget.
    Retry(Option<Duration>),
    /// Stop the job now with this error code.
    Fail(ErrorCode),
}

impl LlmError {
    pub fn disposition(&self) -> Disposition {
        match self {
            LlmError::Transport(_)
            | LlmError::Timeout(_)
            | LlmError::Unavailable { .. }
            | LlmError::MalformedBody(_) => Disposition::Retry(None),
            LlmError::RateLimited { retry_after } => Disposition::Retry(*retry_after),
            LlmError::Quota { .. } => Disposition::Fail(ErrorCode::LlmQuota),
            LlmError::Auth { .. } => Disposition::Fail(ErrorCode::LlmAuth),
            LlmError::Rejected { .. } => Disposition::Fail(ErrorCode::LlmRejected),
            LlmError::Misconfigured { .. } => Disposition::Fail(ErrorCode::LlmConfig),
        }
    }
}

/// The model provider, as the pipeline sees it.
pub trait LlmClient: Send + Sync {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Answer, LlmError>>;
}

/// A client that records every request in [`crate::metrics`]: its duration
/// by model and outcome, and for answered requests the tokens and cost
/// (at `KILN_LLM_PRICES`). The worker wraps its client in one, so every
/// request is counted, whatever the provider or the caller.
pub struct Measured {
    pub inner: std::sync::Arc<dyn LlmClient>,
    pub prices: std::collections::BTreeMap<String, crate::config::Price>,
}

impl LlmClient for Measured {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Answer, LlmError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.inner.chat(request).await;
            let m = &*crate::metrics::METRICS;
            let model = request.model.clone();
            let outcome = result.as_ref().map_or_else(LlmError::class, |_| "ok");
            m.llm_request_seconds
                .get_or_create(&crate::metrics::ModelOutcomeLabels {
                    model: model.clone(),
                    outcome,
                })
                .observe(started.elapsed().as_secs_f64());
            if let Ok(answer) = &result {
                for (kind, n) in [
                    ("prompt", answer.usage.prompt_tokens),
                    ("completion", answer.usage.completion_tokens),
                ] {
                    m.llm_tokens
                        .get_or_create(&crate::metrics::ModelKindLabels {
                            model: model.clone(),
                            kind,
                        })
                        .inc_by(n.max(0) as u64);
                }
                if let Some(p) = self.prices.get(&model) {
                    let cost = (answer.usage.prompt_tokens as f64 * p.prompt_per_mtok
                        + answer.usage.completion_tokens as f64 * p.completion_per_mtok)
                        / 1_000_000.0;
                    m.llm_cost_usd
                        .get_or_create(&crate::metrics::ModelLabels { model })
                        .inc_by(cost);
                }
            }
            result
        })
    }
}

/// The client for the configured provider.
pub fn build(settings: &LlmSettings) -> Result<std::sync::Arc<dyn LlmClient>, LlmError> {
    Ok(match settings.provider {
        LlmProvider::OpenAi | LlmProvider::Azure => std::sync::Arc::new(openai::OpenAiClient::new(settings)?),
        LlmProvider::Anthropic => std::sync::Arc::new(anthropic::AnthropicClient::new(settings)?),
    })
}

/// The JSON schema of Kiln's answer format (`{"files": [{"path", "content"}], "notes"}`),
/// for providers that can enforce one. Strict mode needs every property
/// required, so `notes` is required (an empty string is fine).
pub fn files_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "files": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                    "required": ["path", "content"],
                    "additionalProperties": false
                }
            },
            "notes": {"type": "string"}
        },
        "required": ["files", "notes"],
        "additionalProperties": false
    })
}

/// An HTTP client with the provider's fixed headers (the secret ones marked
/// sensitive, so debug output hides them) and timeouts.
pub(crate) fn http_client(
    headers: &[(&'static str, String, bool)],
    timeout: Duration,
) -> Result<reqwest::Client, LlmError> {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value, secret) in headers {
        let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| LlmError::Rejected {
            status: 0,
            message: format!("the {name} header value contains characters not allowed in HTTP headers"),
        })?;
        value.set_sensitive(*secret);
        map.insert(*name, value);
    }
    reqwest::Client::builder()
        .default_headers(map)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| LlmError::Transport(e.to_string()))
}

impl LlmError {
    /// A short stable name of the fault class, stored with each fault.
    pub fn class(&self) -> &'static str {
        match self {
            LlmError::Transport(_) => "transport",
            LlmError::Timeout(_) => "timeout",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::Unavailable { .. } => "unavailable",
            LlmError::MalformedBody(_) => "malformed_body",
            LlmError::Quota { .. } => "quota",
            LlmError::Auth { .. } => "auth",
            LlmError::Rejected { .. } => "rejected",
            LlmError::Misconfigured { .. } => "misconfigured",
        }
    }
}

/// Lays the configured extra fields, then the request's, over a request
/// body: they win over Kiln's own fields of the same name, which is how a
/// reasoning model is given what it needs. The reserved fields
/// ([`crate::config::RESERVED_BODY_FIELDS`]) were refused when the extras
/// were read.
pub(crate) fn add_extra_fields(
    body: &mut serde_json::Value,
    configured: &serde_json::Map<String, serde_json::Value>,
    request: &ChatRequest,
) {
    let object = body.as_object_mut().expect("request bodies are JSON objects");
    for (field, value) in configured.iter().chain(&request.extra_body) {
        object.insert(field.clone(), value.clone());
    }
}

/// The request parameters Kiln's settings chose, as sent: what a provider's
/// complaint is matched against to name the setting to change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    pub json_mode: Option<JsonMode>,
    pub tokens_param: TokensParam,
    pub temperature: Option<f32>,
}

/// Turns a refusal that names a parameter Kiln's settings chose into
/// [`LlmError::Misconfigured`], naming the setting; other errors pass
/// through. Only refusals are looked at (4xx other than 429, and 5xx whose
/// text names the parameter: llama.cpp's Python server answers a
/// `response_format` it cannot do with a 500), never transport faults.
pub(crate) fn name_the_setting(error: LlmError, sent: Sent, model: &str) -> LlmError {
    let (status, message) = match &error {
        LlmError::Rejected { status, message } | LlmError::Unavailable { status, message } => (*status, message),
        _ => return error,
    };
    let lower = message.to_ascii_lowercase();
    let refusal = |word: &str| {
        lower.contains(word)
            && [
                "unsupported",
                "not supported",
                "should be",
                "must be",
                "invalid",
                "unrecognized",
                "not allowed",
                "unknown",
                "extra",
                "not permitted",
                "does not support",
                "instead",
                "expected",
            ]
            .iter()
            .any(|w| lower.contains(w))
    };
    let found = if let Some(mode) = sent.json_mode
        && (refusal("response_format") || refusal("json_schema") || refusal("json_object"))
    {
        let others = match mode {
            JsonMode::Schema => "json_object or off",
            JsonMode::Object => "off (or json_schema)",
            JsonMode::Off => unreachable!("no response_format is sent with off"),
        };
        Some((
            format!("response_format {}", mode.as_str()),
            format!("set KILN_LLM_JSON_MODE={others}"),
        ))
    } else if refusal(sent.tokens_param.as_str()) {
        let other = match sent.tokens_param {
            TokensParam::MaxTokens => TokensParam::MaxCompletionTokens,
            TokensParam::MaxCompletionTokens => TokensParam::MaxTokens,
        };
        Some((
            format!("the field {}", sent.tokens_param.as_str()),
            format!("set KILN_LLM_TOKENS_PARAM={}", other.as_str()),
        ))
    } else if let Some(t) = sent.temperature
        && refusal("temperature")
    {
        Some((
            format!("temperature {t}"),
            "set KILN_LLM_TEMPERATURE=off (or a value the model accepts)".to_owned(),
        ))
    } else if (400..500).contains(&status)
        && lower.contains("model")
        && [
            "not found",
            "does not exist",
            "unknown model",
            "no such model",
            "not exist",
        ]
        .iter()
        .any(|w| lower.contains(w))
    {
        Some((
            format!("the model {model:?}"),
            "set KILN_LLM_MODEL (or the batch's options.model) to a model the server serves".to_owned(),
        ))
    } else {
        None
    };
    match found {
        Some((what, fix)) => LlmError::Misconfigured {
            status,
            what,
            message: message.clone(),
            fix,
        },
        None => error,
    }
}

/// Keeps a provider's error text short and free of anything that looks like
/// a credential before it is stored on an attempt or logged.
pub(crate) fn clip_provider_message(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/message"))
                .or_else(|| v.pointer("/error"))
                .and_then(|m| m.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| body.to_owned());
    // One line: it ends up in a job's error, a log line and the check's
    // report (servers put tracebacks in theirs).
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::text::clip(&redact_keys(&text), 500)
}

/// Replaces things shaped like API keys (`sk-…`, long opaque tokens).
/// Providers sometimes echo a key prefix in their error messages.
fn redact_keys(text: &str) -> String {
    static KEY: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(sk-[A-Za-z0-9_\-*]{4,}|[A-Za-z0-9_\-]{32,})").expect("valid regex")
    });
    KEY.replace_all(text, "[redacted]").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_faults_are_retried_and_caller_faults_fail_with_a_code() {
        assert_eq!(
            LlmError::Timeout(Duration::from_secs(1)).disposition(),
            Disposition::Retry(None)
        );
        assert_eq!(
            LlmError::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            }
            .disposition(),
            Disposition::Retry(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            LlmError::Quota {
                status: 429,
                message: String::new()
            }
            .disposition(),
            Disposition::Fail(ErrorCode::LlmQuota)
        );
    }

    fn sent(json_mode: Option<JsonMode>) -> Sent {
        Sent {
            json_mode,
            tokens_param: TokensParam::MaxTokens,
            temperature: Some(0.2),
        }
    }

    #[test]
    fn a_refused_setting_is_named_with_the_variable_to_change() {
        // llama-cpp-python's server: a 500 for a response_format it cannot do.
        let e = name_the_setting(
            LlmError::Unavailable {
                status: 500,
                message: "response_format.type should be 'text' or 'json_object'".into(),
            },
            sent(Some(JsonMode::Schema)),
            "m",
        );
        assert_eq!(e.disposition(), Disposition::Fail(ErrorCode::LlmConfig));
        assert!(
            e.to_string()
                .contains("rejects response_format json_schema (HTTP 500: response_format.type should be"),
            "{e}"
        );
        assert!(
            e.to_string().ends_with("set KILN_LLM_JSON_MODE=json_object or off"),
            "{e}"
        );
        // OpenAI's reasoning models.
        let e = name_the_setting(
            LlmError::Rejected {
                status: 400,
                message: "Unsupported parameter: 'max_tokens' is not supported with this model. Use                           'max_completion_tokens' instead."
                    .into(),
            },
            sent(Some(JsonMode::Object)),
            "m",
        );
        assert!(
            e.to_string()
                .ends_with("set KILN_LLM_TOKENS_PARAM=max_completion_tokens"),
            "{e}"
        );
        let e = name_the_setting(
            LlmError::Rejected {
                status: 404,
                message: "The model `gpt-9` does not exist".into(),
            },
            sent(None),
            "gpt-9",
        );
        assert!(e.to_string().contains("KILN_LLM_MODEL"), "{e}");
    }

    #[test]
    fn an_ordinary_outage_is_not_taken_for_a_setting() {
        for e in [
            LlmError::Unavailable {
                status: 503,
                message: "upstream overloaded".into(),
            },
            LlmError::Unavailable {
                status: 500,
                message: "response_format handling crashed: CUDA out of memory".into(),
            },
            LlmError::Timeout(Duration::from_secs(1)),
        ] {
            let before = e.clone();
            assert_eq!(name_the_setting(e, sent(Some(JsonMode::Object)), "m"), before);
        }
    }

    #[test]
    fn provider_messages_are_clipped_and_keys_redacted() {
        let body = r#"{"error": {"message": "Incorrect API key provided: sk-abc123456789. Find your key at ..."}}"#;
        let m = clip_provider_message(body);
        assert!(m.starts_with("Incorrect API key provided: [redacted]"), "{m}");
        assert!(clip_provider_message(&"x ".repeat(1000)).chars().count() <= 501);
    }
}
