//! OpenAI-compatible chat completions (`POST {base}/chat/completions`), and
//! Azure OpenAI deployments, which speak the same body with a different URL
//! and key header.
//!
//! The same wire protocol serves OpenAI, vLLM, Ollama, llama.cpp's server,
//! LM Studio, LiteLLM and `kiln-mock-llm`; `KILN_LLM_BASE_URL` picks one.

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::{
    ChatRequest, ChatResponse, LlmClient, LlmError, clip_provider_message, files_schema, http_client, transport_error,
};
use crate::config::{JsonMode, LlmProvider, LlmSettings};
use crate::store::attempts::TokenUsage;

/// A client for one OpenAI-compatible (or Azure OpenAI) endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base: String,
    azure_api_version: Option<String>,
    json_mode: JsonMode,
    timeout: Duration,
}

impl OpenAiClient {
    pub fn new(settings: &LlmSettings) -> Result<OpenAiClient, LlmError> {
        let mut headers = Vec::new();
        if let Some(key) = &settings.api_key {
            // The only place the key is exposed (invariant 7).
            match settings.provider {
                LlmProvider::Azure => headers.push(("api-key", key.expose_secret().to_owned(), true)),
                _ => headers.push(("authorization", format!("Bearer {}", key.expose_secret()), true)),
            }
        }
        Ok(OpenAiClient {
            http: http_client(&headers, settings.request_timeout)?,
            base: settings.base_url.trim_end_matches('/').to_owned(),
            azure_api_version: (settings.provider == LlmProvider::Azure).then(|| settings.api_version.clone()),
            json_mode: settings.json_mode,
            timeout: settings.request_timeout,
        })
    }

    fn url(&self, model: &str) -> String {
        match &self.azure_api_version {
            Some(version) => format!(
                "{}/openai/deployments/{model}/chat/completions?api-version={version}",
                self.base
            ),
            None => format!("{}/chat/completions", self.base),
        }
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<CompletionUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    /// Set (with empty content) when a model refuses under structured outputs.
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct CompletionUsage {
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    completion_tokens: i64,
}

impl LlmClient for OpenAiClient {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let mut body = json!({
                "messages": request.messages,
                "max_tokens": request.max_tokens,
                "temperature": 0.2,
            });
            if self.azure_api_version.is_none() {
                body["model"] = request.model.clone().into();
            }
            if request.json {
                match self.json_mode {
                    JsonMode::Object => body["response_format"] = json!({"type": "json_object"}),
                    JsonMode::Schema => {
                        body["response_format"] = json!({
                            "type": "json_schema",
                            "json_schema": {"name": "kiln_files", "strict": true, "schema": files_schema()},
                        });
                    }
                    JsonMode::Off => {}
                }
            }
            let response = self
                .http
                .post(self.url(&request.model))
                .header("x-kiln-attempt-id", &request.attempt_id)
                .json(&body)
                .send()
                .await
                .map_err(|e| transport_error(&e, self.timeout))?;
            let status = response.status();
            let headers = response.headers().clone();
            let text = response.text().await.map_err(|e| transport_error(&e, self.timeout))?;
            if !status.is_success() {
                return Err(classify_status(status, &headers, &text));
            }
            parse_completion(&text)
        })
    }
}

/// Reads a chat-completions response body.
pub(crate) fn parse_completion(text: &str) -> Result<ChatResponse, LlmError> {
    let completion: Completion = serde_json::from_str(text).map_err(|e| {
        LlmError::MalformedBody(format!(
            "{e}; body starts {:?}",
            text.chars().take(120).collect::<String>()
        ))
    })?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| LlmError::MalformedBody("no choices in the response".into()))?;
    let usage = completion.usage.map_or_else(TokenUsage::default, |u| TokenUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    });
    // A refusal is the model's answer (it spends the attempt, and the
    // refusal text reaches the repair prompt as a format diagnostic).
    let content = match (choice.message.content, choice.message.refusal) {
        (Some(c), _) if !c.is_empty() => c,
        (_, Some(refusal)) => refusal,
        (c, None) => c.unwrap_or_default(),
    };
    Ok(ChatResponse {
        content,
        finish_reason: choice.finish_reason,
        usage,
    })
}

/// Maps a non-2xx answer to its fault class.
pub(crate) fn classify_status(status: StatusCode, headers: &HeaderMap, body: &str) -> LlmError {
    let message = clip_provider_message(body);
    let lower = body.to_ascii_lowercase();
    let code = status.as_u16();
    let billing = lower.contains("insufficient_quota")
        || lower.contains("billing")
        || lower.contains("credit balance")
        || lower.contains("exceeded your current quota");
    match code {
        402 => LlmError::Quota { status: code, message },
        400 | 429 if billing => LlmError::Quota { status: code, message },
        429 => LlmError::RateLimited {
            retry_after: retry_after(headers),
        },
        401 | 403 => LlmError::Auth { status: code, message },
        408 => LlmError::Timeout(Duration::ZERO),
        409 | 425 | 500..=599 => LlmError::Unavailable { status: code, message },
        _ => LlmError::Rejected { status: code, message },
    }
}

/// How long the provider asks us to wait, from the headers providers use:
/// `retry-after-ms`, `retry-after` (seconds or an HTTP date) and
/// `x-ratelimit-reset-requests` / `-tokens` (`1s`, `6m0s`, `20ms`).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<f64>()
            && secs.is_finite()
            && secs >= 0.0
        {
            return Some(Duration::from_secs_f64(secs));
        }
        if let Ok(when) = chrono::DateTime::parse_from_rfc2822(v) {
            let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
            return Some(wait.to_std().unwrap_or(Duration::ZERO));
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|h| get(h).and_then(parse_go_duration))
        .max()
}

/// Parses durations like `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        total += value
            * match unit {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 0.001,
                "us" | "µs" => 0.000_001,
                "ns" => 0.000_000_001,
                _ => return None,
            };
        rest = next;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_is_read_from_every_header_providers_use() {
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-reset-tokens", "20ms")
            ])),
            Some(Duration::from_mins(6))
        );
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn quota_errors_are_told_apart_from_rate_limits() {
        let quota = r#"{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}"#;
        assert!(matches!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), quota),
            LlmError::Quota { status: 429, .. }
        ));
        assert!(matches!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after", "1")]), "{}"),
            LlmError::RateLimited { retry_after: Some(_) }
        ));
        assert!(matches!(
            classify_status(StatusCode::from_u16(529).unwrap(), &HeaderMap::new(), "overloaded"),
            LlmError::Unavailable { status: 529, .. }
        ));
        assert!(matches!(
            classify_status(StatusCode::UNAUTHORIZED, &HeaderMap::new(), "{}"),
            LlmError::Auth { status: 401, .. }
        ));
    }
}
